"""The proxy's event loop: uvloop when installed (the `fast` extra), the standard one when
asked or when uvloop is missing, and a one-line error for a choice that cannot be met."""

from __future__ import annotations

import asyncio
import importlib
from typing import Any

import pytest

from testbed.netfault import loop


def _without_uvloop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name == "uvloop":
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_the_standard_loop_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.LOOP_ENV, "asyncio")
    assert loop.loop_factory() is None
    assert loop.run(_loop_name()) == "asyncio"


def test_uvloop_when_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("uvloop")
    monkeypatch.delenv(loop.LOOP_ENV, raising=False)
    assert loop.run(_loop_name()) == "uvloop"


def test_the_standard_loop_when_uvloop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(loop.LOOP_ENV, raising=False)
    _without_uvloop(monkeypatch)
    assert loop.loop_factory() is None


def test_insisting_on_a_missing_uvloop_says_how_to_install_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(loop.LOOP_ENV, "uvloop")
    _without_uvloop(monkeypatch)
    with pytest.raises(SystemExit, match=r"bc-testbed\[fast\]"):
        loop.loop_factory()


def test_an_unknown_choice_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(loop.LOOP_ENV, "tokio")
    with pytest.raises(SystemExit, match="not one of"):
        loop.loop_factory()


async def _loop_name() -> str:
    return loop.loop_name(asyncio.get_running_loop())
