"""The relay workers' loop: C where it was built at install, Python when asked or when it
was not built, and a one-line error for a choice that cannot be met."""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Any

import pytest

from testbed.netfault import relayloop

C_LOOP_BUILT = importlib.util.find_spec("testbed.netfault._relayloop") is not None


def _without_c_loop(monkeypatch: pytest.MonkeyPatch) -> None:
    real = importlib.import_module

    def fake(name: str, *args: Any) -> Any:
        if name.endswith("._relayloop"):
            raise ImportError(name)
        return real(name, *args)

    monkeypatch.setattr(importlib, "import_module", fake)


def test_the_c_loop_is_built_in_ci() -> None:
    """CI installs a compiler and Python's headers: a C loop missing there is a broken
    build, not a machine without a compiler (where the Python relay is the right fallback)."""
    if os.environ.get("CI") != "true":
        pytest.skip("only CI promises a compiler")
    assert C_LOOP_BUILT, "the package was installed without its C relay loop"


def test_the_c_loop_when_built(monkeypatch: pytest.MonkeyPatch) -> None:
    if not C_LOOP_BUILT:
        pytest.skip("the C relay loop is not built here (no compiler at install)")
    monkeypatch.delenv(relayloop.RELAY_ENV, raising=False)
    assert relayloop.name(relayloop.native()) == "C"


def test_the_python_relay_when_asked(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(relayloop.RELAY_ENV, "python")
    assert relayloop.native() is None


def test_the_python_relay_when_the_c_loop_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(relayloop.RELAY_ENV, raising=False)
    _without_c_loop(monkeypatch)
    assert relayloop.name(relayloop.native()) == "Python"


def test_insisting_on_a_missing_c_loop_says_how_to_build_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(relayloop.RELAY_ENV, "c")
    _without_c_loop(monkeypatch)
    with pytest.raises(SystemExit, match=r"C compiler and Python's headers"):
        relayloop.native()


def test_an_unknown_choice_is_refused_in_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(relayloop.RELAY_ENV, "rust")
    with pytest.raises(SystemExit, match=r"^error: TESTBED_PROXY_RELAY=rust is not one of"):
        relayloop.native()
