"""The toxics side of the HTTP API: defaults, validation order and messages, serialization of
every attribute, update semantics and list order; plus attribute validation, which the
reference lacks (a negative rate panics it, a slicer of average size 0 recurses forever)."""

from __future__ import annotations

from typing import Any

import pytest
from netfault_support import TOXIC_KEYS, Api, Reply

ALL_ATTRIBUTES = {
    "latency": {"latency": 0, "jitter": 0},
    "bandwidth": {"rate": 0},
    "slow_close": {"delay": 0},
    "timeout": {"timeout": 0},
    "reset_peer": {"timeout": 0},
    "limit_data": {"bytes": 0},
    "noop": {},
}


def assert_error(reply: Reply, status: int, message: str) -> None:
    assert reply.status == status, reply
    assert reply.json() == {"error": message, "status": status}, reply
    assert (reply.header("Content-Type") or "").startswith("text/plain"), reply.headers


def post_toxic(api: Api, body: Any, proxy: str = "echo") -> Reply:
    return api.post(f"/proxies/{proxy}/toxics", body)


# --------------------------------------------------------------------------- create


def test_create_answers_200_with_the_defaults_filled_in(api: Api, echo_proxy: dict) -> None:
    """200, not 201 (clients check it); stream downstream, toxicity 1, name <type>_<stream>."""
    reply = post_toxic(api, {"type": "latency", "attributes": {"latency": 10}})
    assert reply.status == 200, reply
    toxic = reply.json()
    assert set(toxic) == TOXIC_KEYS
    assert toxic == {
        "attributes": {"latency": 10, "jitter": 0},
        "name": "latency_downstream",
        "type": "latency",
        "stream": "downstream",
        "toxicity": 1.0,
    }
    assert api.get("/proxies/echo/toxics/latency_downstream").json() == toxic
    assert api.toxics("echo") == [toxic]
    assert api.proxy("echo")["toxics"] == [toxic]


def test_the_stream_is_case_insensitive(api: Api, echo_proxy: dict) -> None:
    toxic = api.add_toxic("echo", "latency", stream="UpStream", latency=10)
    assert toxic["stream"] == "upstream"
    assert toxic["name"] == "latency_upstream"


@pytest.mark.parametrize("stream", ["sideways", "", "up"])
def test_an_invalid_stream_is_400(api: Api, echo_proxy: dict, stream: str) -> None:
    """An explicit empty stream is invalid too; only a missing one defaults."""
    assert_error(
        post_toxic(api, {"type": "latency", "stream": stream}),
        400,
        "stream was invalid, can be either upstream or downstream",
    )
    assert api.toxics("echo") == []


@pytest.mark.parametrize("type_", ["lag", "", "Latency "])
def test_an_invalid_type_is_400(api: Api, echo_proxy: dict, type_: str) -> None:
    assert_error(post_toxic(api, {"type": type_}), 400, "invalid toxic type")
    assert api.toxics("echo") == []


def test_the_stream_is_checked_before_the_type(api: Api, echo_proxy: dict) -> None:
    assert_error(
        post_toxic(api, {"type": "nope", "stream": "nope"}),
        400,
        "stream was invalid, can be either upstream or downstream",
    )


def test_a_body_that_is_not_json_is_400(api: Api, echo_proxy: dict) -> None:
    reply = api.post("/proxies/echo/toxics", raw=b'{"type": ')
    assert reply.status == 400, reply
    assert reply.error.startswith("bad request body"), reply


def test_a_name_clash_is_409_even_across_streams(api: Api, echo_proxy: dict) -> None:
    api.add_toxic("echo", "latency", name="slow", stream="upstream", latency=10)
    assert_error(
        post_toxic(api, {"name": "slow", "type": "latency", "stream": "downstream"}),
        409,
        "toxic already exists",
    )
    assert_error(
        post_toxic(api, {"name": "slow", "type": "bandwidth", "stream": "upstream"}),
        409,
        "toxic already exists",
    )
    api.add_toxic("echo", "latency")
    assert_error(post_toxic(api, {"type": "latency"}), 409, "toxic already exists")
    assert [toxic["name"] for toxic in api.toxics("echo")] == ["slow", "latency_downstream"]


def test_default_names_let_both_streams_coexist(api: Api, echo_proxy: dict) -> None:
    up = api.add_toxic("echo", "latency", stream="upstream", latency=10)
    down = api.add_toxic("echo", "latency", stream="downstream", latency=20)
    assert up["name"] == "latency_upstream"
    assert down["name"] == "latency_downstream"
    assert api.toxics("echo") == [up, down]


def test_toxicity_round_trips_as_a_float(api: Api, echo_proxy: dict) -> None:
    toxic = api.add_toxic("echo", "latency", toxicity=0.2, latency=10)
    assert toxic["toxicity"] == 0.2
    assert isinstance(toxic["toxicity"], float)
    assert api.get("/proxies/echo/toxics/latency_downstream").json()["toxicity"] == 0.2


def test_noop_is_a_valid_type(api: Api, echo_proxy: dict) -> None:
    toxic = api.add_toxic("echo", "noop")
    assert toxic["type"] == "noop"
    assert toxic["name"] == "noop_downstream"
    assert toxic["attributes"] == {}


@pytest.mark.parametrize("type_", sorted(ALL_ATTRIBUTES))
def test_every_attribute_of_the_type_is_serialized(api: Api, echo_proxy: dict, type_: str) -> None:
    """Clients read attributes without checking presence: unset ones are 0."""
    toxic = api.add_toxic("echo", type_)
    assert toxic["attributes"] == ALL_ATTRIBUTES[type_]
    assert api.toxics("echo")[0]["attributes"] == ALL_ATTRIBUTES[type_]


def test_every_attribute_of_the_slicer_is_serialized(api: Api, echo_proxy: dict) -> None:
    toxic = api.add_toxic("echo", "slicer", average_size=10)
    assert toxic["attributes"] == {"average_size": 10, "size_variation": 0, "delay": 0}


def test_unknown_fields_and_attributes_are_ignored(api: Api, echo_proxy: dict) -> None:
    body = {"type": "latency", "attributes": {"latency": 5, "colour": "red"}, "extra": True}
    reply = post_toxic(api, body)
    assert reply.status == 200, reply
    assert set(reply.json()) == TOXIC_KEYS
    assert reply.json()["attributes"] == {"latency": 5, "jitter": 0}


def test_toxics_of_a_missing_proxy_are_404(api: Api) -> None:
    assert_error(api.get("/proxies/missing/toxics"), 404, "proxy not found")
    assert_error(post_toxic(api, {"type": "latency"}, "missing"), 404, "proxy not found")
    assert_error(api.get("/proxies/missing/toxics/latency_downstream"), 404, "proxy not found")
    assert_error(api.delete("/proxies/missing/toxics/latency_downstream"), 404, "proxy not found")


# --------------------------------------------------------------------------- list order


def test_the_list_has_upstream_first_then_downstream_each_in_insertion_order(
    api: Api, echo_proxy: dict
) -> None:
    for name, stream in (
        ("d1", "downstream"),
        ("u1", "upstream"),
        ("d2", "downstream"),
        ("u2", "upstream"),
    ):
        api.add_toxic("echo", "latency", name=name, stream=stream)
    assert [toxic["name"] for toxic in api.toxics("echo")] == ["u1", "u2", "d1", "d2"]
    assert [toxic["name"] for toxic in api.proxy("echo")["toxics"]] == ["u1", "u2", "d1", "d2"]
    api.remove_toxic("echo", "u1")
    api.add_toxic("echo", "latency", name="u1", stream="upstream")
    assert [toxic["name"] for toxic in api.toxics("echo")] == ["u2", "u1", "d1", "d2"]


# --------------------------------------------------------------------------- get, update, delete


def test_get_a_missing_toxic_is_404(api: Api, echo_proxy: dict) -> None:
    assert_error(api.get("/proxies/echo/toxics/missing"), 404, "toxic not found")


@pytest.mark.parametrize("method", ["POST", "PATCH"])
def test_update_merges_attributes_and_changes_toxicity(
    api: Api, echo_proxy: dict, method: str
) -> None:
    api.add_toxic("echo", "latency", toxicity=0.5, latency=100, jitter=5)
    path = "/proxies/echo/toxics/latency_downstream"
    reply = api.request(method, path, {"attributes": {"jitter": 20}})
    assert reply.status == 200, reply
    assert reply.json()["attributes"] == {"latency": 100, "jitter": 20}
    assert reply.json()["toxicity"] == 0.5
    reply = api.request(method, path, {"toxicity": 0.25})
    assert reply.status == 200, reply
    assert reply.json()["toxicity"] == 0.25
    assert reply.json()["attributes"] == {"latency": 100, "jitter": 20}
    assert api.get(path).json() == reply.json()


def test_update_changes_nothing_but_attributes_and_toxicity(api: Api, echo_proxy: dict) -> None:
    created = api.add_toxic("echo", "latency", latency=100)
    updated = api.update_toxic(
        "echo",
        "latency_downstream",
        {"name": "renamed", "type": "bandwidth", "stream": "upstream", "attributes": {}},
    )
    assert updated == created
    assert api.toxics("echo") == [created]


def test_update_of_a_missing_toxic_or_proxy_is_404(api: Api, echo_proxy: dict) -> None:
    body = {"toxicity": 0.5}
    assert_error(api.post("/proxies/echo/toxics/missing", body), 404, "toxic not found")
    assert_error(api.patch("/proxies/echo/toxics/missing", body), 404, "toxic not found")
    assert_error(api.post("/proxies/missing/toxics/latency", body), 404, "proxy not found")


def test_update_with_a_bad_body_is_400(api: Api, echo_proxy: dict) -> None:
    created = api.add_toxic("echo", "latency", latency=100)
    reply = api.post("/proxies/echo/toxics/latency_downstream", raw=b"{oops")
    assert reply.status == 400, reply
    assert reply.error.startswith("bad request body"), reply
    assert api.toxics("echo") == [created]


def test_delete_is_204_then_404(api: Api, echo_proxy: dict) -> None:
    api.add_toxic("echo", "latency", latency=100)
    reply = api.delete("/proxies/echo/toxics/latency_downstream")
    assert reply.status == 204, reply
    assert reply.body == b""
    assert api.toxics("echo") == []
    assert_error(api.delete("/proxies/echo/toxics/latency_downstream"), 404, "toxic not found")


# --------------------------------------------------------------------------- validation (do better)

INVALID_ATTRIBUTES = [
    ("bandwidth", {"rate": -1}, "rate"),
    ("slicer", {"average_size": 0}, "average_size"),
    ("slicer", {"average_size": -5}, "average_size"),
    ("latency", {"latency": -100}, "latency"),
    ("latency", {"jitter": -1}, "jitter"),
    ("latency", {"latency": "slow"}, "latency"),
    ("timeout", {"timeout": -1}, "timeout"),
    ("reset_peer", {"timeout": -1}, "timeout"),
    ("slow_close", {"delay": -1}, "delay"),
    ("limit_data", {"bytes": -1}, "bytes"),
    ("bandwidth", {"rate": [1]}, "rate"),
    ("bandwidth", {"rate": 1e300}, "rate"),  # past int64, as the reference decodes it
    ("latency", {"latency": 2**63}, "latency"),
]


@pytest.mark.parametrize(
    ("type_", "attributes", "culprit"),
    INVALID_ATTRIBUTES,
    ids=[f"{t}-{next(iter(a))}={a[next(iter(a))]}" for t, a, _ in INVALID_ATTRIBUTES],
)
def test_an_invalid_attribute_is_400_with_a_reason(
    api: Api, echo_proxy: dict, type_: str, attributes: dict, culprit: str
) -> None:
    """A value that would break the data path is refused up front, naming the attribute."""
    reply = post_toxic(api, {"type": type_, "attributes": attributes})
    assert reply.status == 400, reply
    assert reply.json()["status"] == 400
    assert culprit in reply.error.lower(), reply
    assert api.toxics("echo") == []


def test_an_invalid_attribute_in_an_update_is_400_and_changes_nothing(
    api: Api, echo_proxy: dict
) -> None:
    created = api.add_toxic("echo", "bandwidth", rate=100)
    reply = api.post("/proxies/echo/toxics/bandwidth_downstream", {"attributes": {"rate": -1}})
    assert reply.status == 400, reply
    assert "rate" in reply.error.lower(), reply
    assert api.toxics("echo") == [created]
