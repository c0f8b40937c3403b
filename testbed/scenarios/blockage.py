"""What the faults in force block, as the virtual clock asks it: a call waiting on a
black-holed link or on a frozen part can only end at its deadline, so the time may jump
there; any other call is running (a refused or reset connection fails at once, a healthy
server is working).

The engine keeps it up to date as it applies steps, with the clock held.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from testbed.topology import link_key


@dataclass
class Blockage:
    black_holed: set[str] = field(default_factory=set)  # link keys
    frozen: set[str] = field(default_factory=set)  # servers and components under SIGSTOP

    def blocked(self, target: str, route: str | None) -> bool:
        return target in self.frozen or (route is not None and route in self.black_holed)

    def partition(self, a: str, b: str, mode: str) -> None:
        if mode == "blackhole":
            self.black_holed.add(link_key(a, b))

    def heal(self, a: str | None = None, b: str | None = None) -> None:
        if a is None or b is None:
            self.black_holed.clear()
        else:
            self.black_holed.discard(link_key(a, b))

    def process_fault(self, verb: str, names: list[str]) -> None:
        """After `verb` on these parts: frozen by a pause, running or gone after the rest."""
        for name in names:
            if verb == "pause":
                self.frozen.add(name)
            else:
                self.frozen.discard(name)
