"""Which loop relays the connections lent to the relay workers, chosen in this one place.

The C loop (`_relayloop`, built at install where a C compiler and Python's headers are)
runs each lent connection on a thread of its own with the GIL released: a relayed message
then costs a poll, a read and a write, and the scheduler can keep each connection on the
core its peers use. Without it the workers relay in Python on their event loop, slower but
with the standard library alone. `TESTBED_PROXY_RELAY=python` forces the Python relay (to
compare, or to rule the C loop out); `=c` insists on the C loop.
"""

from __future__ import annotations

import importlib
import os
from types import ModuleType

RELAY_ENV = "TESTBED_PROXY_RELAY"
CHOICES = ("auto", "c", "python")


def native() -> ModuleType | None:
    """The C relay loop when it is wanted and built; None for the Python relay."""
    choice = os.environ.get(RELAY_ENV, "auto") or "auto"
    if choice not in CHOICES:
        raise SystemExit(f"error: {RELAY_ENV}={choice} is not one of: {', '.join(CHOICES)}")
    if choice == "python":
        return None
    try:
        return importlib.import_module("testbed.netfault._relayloop")
    except ImportError:
        if choice == "c":
            raise SystemExit(
                f"error: {RELAY_ENV}=c but the C relay loop is not built: reinstall the "
                "package where a C compiler and Python's headers are (on Debian, "
                "bin/bootstrap installs gcc and python3-dev)"
            ) from None
        return None


def name(loop: ModuleType | None) -> str:
    return "C" if loop is not None else "Python"
