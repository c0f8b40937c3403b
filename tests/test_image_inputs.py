"""What goes into an image's build context: our package's sources, never what a local
install compiled into it for this machine's Python (the proxy's C relay loop); installed
packages copied in keep their compiled modules (psycopg's binary build)."""

from __future__ import annotations

from pathlib import Path

import pytest

from testbed.backends.images import ImageSpec, specs


def test_a_locally_built_extension_stays_out_but_a_copied_package_keeps_its_own(
    tmp_path: Path,
) -> None:
    package = tmp_path / "testbed" / "netfault"
    package.mkdir(parents=True)
    (package / "relay.py").write_text("# source\n")
    (package / "_relayloop.c").write_text("/* source */\n")
    (package / "_relayloop.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "relay.cpython-311.pyc").write_bytes(b"")
    installed = tmp_path / "site-packages" / "psycopg_binary"
    installed.mkdir(parents=True)
    (installed / "__init__.py").write_text("")
    (installed / "_psycopg.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    spec = ImageSpec(
        name="probe",
        dockerfile=tmp_path / "Dockerfile",
        files=(("testbed", tmp_path / "testbed"), ("site/psycopg_binary", installed)),
    )
    assert [target for target, _ in spec.inputs()] == [
        "testbed/netfault/_relayloop.c",
        "testbed/netfault/relay.py",
        "site/psycopg_binary/__init__.py",
        "site/psycopg_binary/_psycopg.cpython-311-x86_64-linux-gnu.so",
    ]


def test_the_pipeline_image_keeps_psycopgs_binary_build_where_it_is_installed() -> None:
    pipeline = specs()["pipeline"]
    copied = [t for t, _ in pipeline.files if t == "site/psycopg_binary"]
    if not copied:
        pytest.skip("psycopg's binary build is not installed for Python 3.11 here")
    built = [t for t, _ in pipeline.inputs() if t.startswith("site/psycopg_binary/")]
    assert any(t.endswith(".so") for t in built), built
