"""The event loop the proxy server runs on, chosen in this one place.

uvloop (the optional `fast` extra) runs the same protocols with far less interpreter work
per read and write, which is most of what a relay of small messages costs; without it the
standard library's loop does the same job, slower. `TESTBED_PROXY_LOOP=asyncio` forces the
standard loop (to compare, or to rule uvloop out); `=uvloop` insists on it.
"""

from __future__ import annotations

import asyncio
import importlib
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

LOOP_ENV = "TESTBED_PROXY_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's loop when it is wanted and installed; None for the standard one."""
    choice = os.environ.get(LOOP_ENV, "auto") or "auto"
    if choice not in CHOICES:
        raise SystemExit(f"error: {LOOP_ENV}={choice} is not one of: {', '.join(CHOICES)}")
    if choice == "asyncio":
        return None
    try:
        uvloop = importlib.import_module("uvloop")  # optional: not a dependency
    except ImportError:
        if choice == "uvloop":
            raise SystemExit(
                f"error: {LOOP_ENV}=uvloop but uvloop is not installed; "
                "pip install 'bc-testbed[fast]'"
            ) from None
        return None
    factory: Callable[[], asyncio.AbstractEventLoop] = uvloop.new_event_loop
    return factory


def loop_name(loop: asyncio.AbstractEventLoop) -> str:
    return "uvloop" if type(loop).__module__.startswith("uvloop") else "asyncio"


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
