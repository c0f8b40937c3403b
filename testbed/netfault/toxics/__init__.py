"""The toxics, registered by type name (as in the reference's API)."""

from __future__ import annotations

from testbed.netfault.toxics.bandwidth import Bandwidth
from testbed.netfault.toxics.base import AttributeError_, Chunk, Noop, Pipe, Toxic
from testbed.netfault.toxics.latency import Latency
from testbed.netfault.toxics.limit_data import LimitData
from testbed.netfault.toxics.reset_peer import ResetPeer
from testbed.netfault.toxics.slicer import Slicer
from testbed.netfault.toxics.slow_close import SlowClose
from testbed.netfault.toxics.slow_open import SlowOpen
from testbed.netfault.toxics.timeout import Timeout

REGISTRY: dict[str, type[Toxic]] = {
    cls.type_name: cls
    for cls in (
        Noop,
        Latency,
        Bandwidth,
        SlowClose,
        Timeout,
        ResetPeer,
        Slicer,
        LimitData,
        SlowOpen,
    )
}

__all__ = ["REGISTRY", "AttributeError_", "Chunk", "Pipe", "Toxic"]
