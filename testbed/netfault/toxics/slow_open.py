"""slow_open (an extension): a new connection waits `delay` ms before the proxy dials the
upstream, as on a WAN where the handshake itself is slow. Bytes the client sends meanwhile
wait too; live connections are not affected. Put it on the `upstream` stream (on the
`downstream` stream it does nothing)."""

from __future__ import annotations

from testbed.netfault.toxics.base import Toxic


class SlowOpen(Toxic):
    type_name = "slow_open"
    attribute_names = ("delay",)
