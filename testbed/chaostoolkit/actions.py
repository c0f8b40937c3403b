"""The testbed's actions: the environment's start and stop, WAN faults, process and server
faults, the operator's procedures, and scenario time passing.

Each fault or procedure is a step of a scenario file (same names, same checks, same
one-line errors), applied now and recorded in the run's history with the scenario time it
began and took effect, so the verdict judges an experiment as it judges a scenario. Each
returns the step as applied. Durations are scenario time (`90s`, `15m`, `11h`, or seconds);
WAN toxics are in wall units, as a real network's numbers.
"""

from __future__ import annotations

from typing import Any

from testbed.chaostoolkit import environment
from testbed.chaostoolkit.environment import current, user_errors

__all__ = [
    "activate_gim",
    "add_latency",
    "add_site",
    "add_toxic",
    "fail_site",
    "heal",
    "kill",
    "limit_bandwidth",
    "partition",
    "pause",
    "promote",
    "recover_site",
    "resume",
    "settle",
    "start",
    "start_environment",
    "stop",
    "stop_environment",
    "switchover",
    "transfer",
    "wait",
]


# --- the environment -------------------------------------------------------------------


@user_errors
def start_environment(
    topology: str = "active-standby",
    clock: str | float = "1h = 1s",
    rate: str | float = "600/h",
    seed: int = 1,
    settings: dict[str, Any] | None = None,
    backend: str = "local",
    out: str | None = None,
    home: str | None = None,
    name: str = "chaostoolkit",
) -> dict[str, Any]:
    """Bring a topology up with the pipeline running on it (the control does this for the
    whole experiment; this action is for an experiment that starts one itself). Returns
    where its servers, routes and run folder are."""
    scenario = environment.scenario_for(name, topology, clock, rate, seed, settings)
    return environment.start(scenario, backend, out, home).describe()


@user_errors
def stop_environment(finish: bool = True) -> dict[str, Any] | None:
    """End the run: with `finish`, as a scenario ends (the WAN healed, everything resumed,
    a final settle, the reports written) and its final verdict returned; every process and
    server stops either way. Nothing to do when none runs."""
    run = environment.stop(finish)
    return environment.summary(run) if run is not None else None


# --- the WAN ---------------------------------------------------------------------------


@user_errors
def partition(link: list[str], mode: str = "reset", direction: str | None = None) -> dict:
    """Cut the WAN between two sites: `reset` refuses and cuts connections, `blackhole`
    lets bytes vanish (connections hang); `direction` ("site1->site2") cuts one way."""
    step: dict[str, Any] = {"partition": link, "mode": mode}
    if direction is not None:
        step["direction"] = direction
    return _apply(step)


@user_errors
def heal(link: list[str] | None = None) -> dict:
    """Remove every partition and toxic between two sites, or on the whole WAN."""
    return _apply({"heal": link if link is not None else "all"})


@user_errors
def add_latency(link: list[str], ms: int, jitter: int = 0) -> dict:
    """Delay the link's traffic by `ms` wall milliseconds each way (plus or minus `jitter`)."""
    return _apply({"latency": link, "ms": ms, "jitter": jitter})


@user_errors
def limit_bandwidth(link: list[str], rate: int) -> dict:
    """Limit the link to `rate` KB/s each way, one capacity shared by all its connections."""
    return _apply({"bandwidth": link, "rate": rate})


@user_errors
def add_toxic(
    link: list[str],
    toxic_type: str,
    stream: str = "both",
    toxicity: float = 1.0,
    attributes: dict[str, int] | None = None,
) -> dict:
    """Any Toxiproxy toxic on every proxy of the link (`slicer`, `reset_peer`, ...)."""
    step: dict[str, Any] = {"toxic": link, "type": toxic_type, "stream": stream}
    step |= {"toxicity": toxicity, "attributes": attributes or {}}
    return _apply(step)


# --- processes and servers -------------------------------------------------------------


@user_errors
def kill(target: str) -> dict:
    """SIGKILL a component (`icon2b`, `gim1`, `source1`), a server (`idb2`) or a whole site."""
    return _apply({"kill": target})


@user_errors
def stop(target: str) -> dict:
    """Stop a component, a server (PostgreSQL's fast shutdown) or a whole site."""
    return _apply({"stop": target})


@user_errors
def start(target: str) -> dict:
    """Start what was killed or stopped again; done once it reports."""
    return _apply({"start": target})


@user_errors
def pause(target: str) -> dict:
    """Freeze a component, a server or a whole site (SIGSTOP): its connections hang."""
    return _apply({"pause": target})


@user_errors
def resume(target: str) -> dict:
    """Thaw what `pause` froze."""
    return _apply({"resume": target})


# --- the operator's procedures ---------------------------------------------------------


@user_errors
def fail_site(site: str) -> dict:
    """Lose a site entirely: every server and component of it dies at once."""
    return _apply({"fail-site": site})


@user_errors
def promote(site: str, force: bool = False) -> dict:
    """Promote the site's standby Info Mart; refused while its primary still runs."""
    return _apply({"promote": site, "force": force})


@user_errors
def activate_gim(site: str, force: bool = False) -> dict:
    """Bring the site's GIM into service; refused while another one is in service."""
    return _apply({"activate-gim": site, "force": force})


@user_errors
def add_site(site: str, replaces: str | None = None) -> dict:
    """A replacement site: an IDB, an empty Info Mart, WAN links to the survivors."""
    step: dict[str, Any] = {"add-site": site}
    if replaces is not None:
        step["replaces"] = replaces
    return _apply(step)


@user_errors
def recover_site(site: str, disks: str = "kept") -> dict:
    """The lost site back under its own name: on its old disks (`kept`), or on new ones."""
    return _apply({"recover-site": site, "disks": disks})


@user_errors
def transfer(
    from_site: str, to_site: str, gim: str = "running", method: str = "basebackup"
) -> dict:
    """Copy the Info Mart to another site over the WAN (base backup, or pg_rewind of an old
    primary left behind; then streaming), with GIM `running` or `stopped` meanwhile."""
    return _apply({"transfer": {"from": from_site, "to": to_site, "gim": gim, "method": method}})


@user_errors
def switchover(site: str) -> dict:
    """A planned switchover: the site's Info Mart becomes the primary, the old one follows."""
    return _apply({"switchover": site})


# --- scenario time ---------------------------------------------------------------------


@user_errors
def wait(duration: str | float) -> float:
    """Let scenario time pass (`11h` is 11 wall seconds at 1h = 1s; on the virtual clock,
    the time the pipeline takes to play 11 h); returns the scenario time it is then, in
    seconds."""
    return current().wait(environment.duration(duration, "duration"))


@user_errors
def settle(within: str | float = "3h") -> dict:
    """Wait until reporting has caught up with now; fails if it has not `within` that much
    scenario time."""
    return _apply({"settle": within})


def _apply(step: dict[str, Any]) -> dict:
    return current().step(step).to_json()
