"""What every toxic is: a named behaviour on one direction of every connection of a proxy.

A toxic sees the chunks of its direction one at a time, in order, and returns what goes on
(the same chunk, pieces of it, or nothing). It may wait, but only through `Pipe.sleep`,
which a change of the proxy's toxics interrupts: a toxic that was removed or updated
mid-wait lets its chunk go on at once (or re-plans with the new attributes), so no data is
dropped and no API call waits on the data path.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

INT64_MAX = 2**63 - 1


@dataclass(slots=True)
class Chunk:
    data: bytes
    received: float  # event-loop time when it was read from the socket


class Pipe(Protocol):
    """What a toxic may do to the direction it runs on (implemented by the connection)."""

    def now(self) -> float: ...
    @property
    def random(self) -> random.Random: ...  # this direction's own: a seed gives its draws
    async def sleep(self, seconds: float) -> bool: ...  # False when a toxic change woke it
    def current(self, name: str) -> Toxic | None: ...  # this toxic as configured now, if active
    def flush(self, chunks: list[Chunk]) -> None: ...  # write these out now, in order
    def link(self, name: str) -> Any: ...  # the shared link of that name (a `links.Link`)
    def close(self) -> None: ...  # close both ends, flushing what was written
    def reset(self) -> None: ...  # close both ends with a TCP RST
    @property
    def closed(self) -> bool: ...


class AttributeError_(ValueError):
    """An attribute value a toxic cannot work with; becomes a 400 with the reason."""


class Toxic:
    """Base class: a toxic that lets everything through (also the `noop` toxic)."""

    type_name: ClassVar[str] = "noop"
    # Attribute names in the order the reference serializes them; all are integers.
    attribute_names: ClassVar[tuple[str, ...]] = ()
    # Our extensions: optional text attributes, kept (and shown) only when given.
    text_attribute_names: ClassVar[tuple[str, ...]] = ()
    # False in a server started with `-reference`: it then ignores our extensions exactly
    # as the reference does (unknown attributes dropped), so the testbed's fallback to a
    # real Toxiproxy can be tested against a server at hand.
    extensions: ClassVar[bool] = True
    # Removing a toxic normally flushes what it held; a `timeout` instead closes the connection.
    closes_on_removal: ClassVar[bool] = False
    # Every byte through it vanishes (a `timeout`): a call across it can only end at a
    # deadline, so on the virtual clock it holds its connection as a delay does.
    swallows: ClassVar[bool] = False

    def __init__(self, name: str, attributes: dict[str, Any]) -> None:
        self.name = name
        self.attributes = attributes

    def __getattr__(self, item: str) -> Any:
        try:
            return self.__dict__["attributes"][item]
        except KeyError:
            raise AttributeError(item) from None

    @classmethod
    def check_attributes(cls, raw: dict[str, Any]) -> dict[str, Any]:
        """Every attribute of the type (0 when unset), validated; unknown keys are ignored."""
        values: dict[str, Any] = {}
        for key in cls.attribute_names:
            value = raw.get(key, 0)
            if isinstance(value, bool) or not isinstance(value, int | float):
                raise AttributeError_(f"attribute {key} must be an integer, not {value!r}")
            if isinstance(value, float) and not value.is_integer():
                raise AttributeError_(f"attribute {key} must be an integer, not {value!r}")
            if value < 0:
                raise AttributeError_(f"attribute {key} must not be negative ({value})")
            if value > INT64_MAX:  # the reference decodes into int64 and refuses the rest
                raise AttributeError_(f"attribute {key} is out of range ({value:g})")
            values[key] = int(value)
        for key in cls.text_attribute_names if Toxic.extensions else ():
            text = raw.get(key)
            if text is None or text == "":
                continue  # absent (or cleared by an update): the reference's behaviour
            if not isinstance(text, str):
                raise AttributeError_(f"attribute {key} must be a string, not {text!r}")
            values[key] = text
        cls.check_values(values)
        return values

    @classmethod
    def check_values(cls, values: dict[str, int]) -> None:
        """Type-specific rules beyond 'non-negative integer'."""

    def new_state(self, now: float) -> Any:
        """Per-connection state, made when the toxic becomes active on a connection at loop
        time `now`, and kept while the toxic exists (also across updates)."""
        return None

    async def on_chunk(self, chunk: Chunk, pipe: Pipe, state: Any) -> list[Chunk]:
        return [chunk]

    async def on_eof(self, pipe: Pipe, state: Any) -> bool:
        """Before the close that an EOF causes; False means the EOF was swallowed."""
        return True

    def deadline(self, state: Any) -> float | None:
        """Loop time at which `on_deadline` must run even if no data comes."""
        return None

    def on_deadline(self, pipe: Pipe, state: Any) -> None:
        pass


class Noop(Toxic):
    type_name = "noop"
