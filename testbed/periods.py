"""The documented periods: how long the pipeline waits before it notices a fault, at a
given clock. The stubs (sources, ICONs, GIM) obey them and the reference model reads them;
neither owns them, so the model never reads a stub's code or tuning, and a stub that waits
longer than documented disagrees with its judge instead of widening it. They are written
out for users in scenarios/README.md ("Periods").

The compression trap: at 1h = 1s a 10 s timeout is 10 scenario hours. Every wait that
decides when a fault is noticed (an acknowledgement, a retry back-off) is therefore written
in scenario time, the heartbeat interval being its unit, and turned into wall time here:
never shorter than a floor that real processes and servers need, never longer than what
serves at slow clocks.
"""

from __future__ import annotations

from testbed.clock import Clock

# How long a connection attempt and a statement may take, in wall seconds, before a
# component gives up on a server (libpq's connect_timeout, the server's statement_timeout).
CONNECT_TIMEOUT_S = 2  # libpq's smallest useful connect_timeout
STATEMENT_TIMEOUT_S = 3.0

# On the virtual clock: a call to a server (connect or statement) that has not answered
# within this much scenario time has failed. Only a call that the faults block (a black
# hole, a frozen server) can reach it, since the time does not move while a server works.
IO_DEADLINE_S = 10.0
# ... and wall time backs it up only against a defect, far beyond any busy machine.
VIRTUAL_CONNECT_BACKSTOP_WALL_S = 60

# Floors: a busy 2-core machine still answers within these (wall seconds).
# A data source's wait for an ICON's acknowledgement: long enough that a live ICON busy
# with a backlog (fsync, a draining queue, a loaded machine) is never taken for a dead one;
# a frozen one's misses start that much after the freeze (the model allows for it).
ACK_FLOOR_S = 0.5
RETRY_FLOOR_S = 0.005  # an ICON's back-off between attempts on an unreachable IDB
# Caps: what the components used before the clock was taken into account.
ACK_CAP_S = 10.0
RETRY_CAP_S = 0.2
GIM_CYCLE_S = 0.02  # wall seconds between GIM's cycles at most
# The longest a fault's effect is noticed late, in wall seconds: an ICON's retry, a GIM
# cycle and an extraction's round trips on a busy machine. (A frozen ICON's acknowledgement
# wait is longer; the model widens that edge on its own, see `ack_timeout`.)
DETECTION_WALL_S = 0.1
# A site's return is noticed through a new connection to its IDB: TCP, a PostgreSQL backend
# starting and a snapshot, through the WAN proxy (and on the docker backend a published
# port). Measured: ~30 ms on an idle machine, ~120 ms on a busy 2-core CI machine. A return
# is therefore up to this much late, never early (the model widens that side of the edge).
RECONNECT_WALL_S = 0.15
# A server's `stop` step: a fast shutdown still under way after this long is made
# immediate (a walsender waits for a standby behind a black hole until the replication
# timeout). A fast shutdown with its checkpoint takes ~0.1-0.3 s on a busy machine.
STOP_PATIENCE_WALL_S = 1.0
# A GIM back in service judges sites once every source has answered anew: a source behind
# a black-holed WAN answers (fails) only when its connection or statement deadline passes.
PRIMING_WALL_S = CONNECT_TIMEOUT_S + STATEMENT_TIMEOUT_S + 0.5


def scaled(clock: Clock, scenario_s: float, floor: float, cap: float) -> float:
    """`scenario_s` scenario seconds in wall seconds, within [floor, cap]."""
    return min(cap, max(floor, clock.wall_seconds(scenario_s)))


def ack_timeout(clock: Clock, heartbeat_interval: float) -> float:
    """A source gives up on an ICON's acknowledgement after one heartbeat interval."""
    return scaled(clock, heartbeat_interval, ACK_FLOOR_S, ACK_CAP_S)


def retry_cap(clock: Clock, heartbeat_interval: float) -> float:
    """An ICON retries an unreachable IDB at least four times a heartbeat interval."""
    return scaled(clock, heartbeat_interval / 4, RETRY_FLOOR_S, RETRY_CAP_S)


def detection_delay(factor: float, heartbeat_interval: float) -> float:
    """The longest, in scenario seconds, between a fault taking effect and the pipeline
    acting on it: one heartbeat interval, or the wall floors at this clock if longer."""
    return max(heartbeat_interval, DETECTION_WALL_S * factor)


# --- the virtual clock's periods (scenario seconds; see scenarios/README.md, "Periods") ---
# A data source hands its ICONs the calls of one heartbeat interval at once, each with its
# own time stamp; an ICON's heartbeats and a GIM's cycles fall on the same grid of
# multiples of the heartbeat interval, so that one instant serves them all.
# A GIM takes its sources' answers at the instant of its cycle: those that the faults
# block answer at their deadline, for a later cycle (`Mailbox.get(settled=True)`).


def next_on_grid(now: float, period: float) -> float:
    """The first multiple of `period` after `now`: the instants a periodic duty falls on."""
    steps = int(now // period) + 1
    return steps * period
