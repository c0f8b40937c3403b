"""A proxy's toxics, per stream, and the API errors their checks raise.

Below both the proxy (which edits the chain) and its connections (which read it), so
neither has to import the other.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from testbed.netfault.toxics import REGISTRY, AttributeError_, Toxic


class ApiError(Exception):
    """An error with the reference's message and HTTP status."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


PROXY_NOT_FOUND = ("proxy not found", 404)
PROXY_EXISTS = ("proxy already exists", 409)
TOXIC_NOT_FOUND = ("toxic not found", 404)
TOXIC_EXISTS = ("toxic already exists", 409)
INVALID_STREAM = ("stream was invalid, can be either upstream or downstream", 400)
INVALID_TYPE = ("invalid toxic type", 400)
STREAMS = ("upstream", "downstream")


def bad_request(detail: str) -> ApiError:
    return ApiError(f"bad request body: {detail}", 400)


@dataclass
class ToxicEntry:
    name: str
    type: str
    stream: str
    toxicity: float
    toxic: Toxic

    def to_json(self) -> dict[str, Any]:
        return {
            "attributes": dict(self.toxic.attributes),
            "name": self.name,
            "type": self.type,
            "stream": self.stream,
            "toxicity": self.toxicity,
        }


def parse_toxicity(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 <= value <= 1:
        raise bad_request(f"toxicity must be a number from 0 to 1, not {value!r}")
    return float(value)


def parse_attributes(
    toxic_type: str, raw: Any, base: dict[str, int] | None = None
) -> dict[str, int]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise bad_request("attributes must be an object")
    try:
        return REGISTRY[toxic_type].check_attributes({**(base or {}), **raw})
    except AttributeError_ as exc:
        raise bad_request(str(exc)) from None


@dataclass
class ToxicChain:
    """The toxics of one proxy, per stream, in insertion order; `version` counts changes."""

    streams: dict[str, list[ToxicEntry]] = field(
        default_factory=lambda: {stream: [] for stream in STREAMS}
    )
    version: int = 0

    def stream(self, name: str) -> list[ToxicEntry]:
        return self.streams[name]

    def all(self) -> list[ToxicEntry]:
        return self.streams["upstream"] + self.streams["downstream"]

    def find(self, name: str) -> ToxicEntry | None:
        return next((t for t in self.all() if t.name == name), None)

    @staticmethod
    def build(body: dict[str, Any]) -> ToxicEntry:
        """A toxic from an API body, checked in the reference's order."""
        stream = body.get("stream", "downstream")
        if not isinstance(stream, str) or stream.lower() not in STREAMS:
            raise ApiError(*INVALID_STREAM)
        stream = stream.lower()
        toxic_type = body.get("type")
        name = body.get("name") or f"{toxic_type}_{stream}"
        if not isinstance(name, str):
            raise bad_request("name must be a string")
        if toxic_type not in REGISTRY:
            raise ApiError(*INVALID_TYPE)
        toxicity = parse_toxicity(body.get("toxicity", 1.0))
        attributes = parse_attributes(toxic_type, body.get("attributes"))
        toxic = REGISTRY[toxic_type](name, attributes)
        return ToxicEntry(name, toxic_type, stream, toxicity, toxic)
