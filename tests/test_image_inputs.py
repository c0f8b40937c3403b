"""What goes into an image's build context: the package's sources, never what a local
install compiled for this machine's Python (the proxy's C relay loop)."""

from __future__ import annotations

from pathlib import Path

from testbed.backends.images import ImageSpec


def test_a_locally_built_extension_stays_out_of_the_image(tmp_path: Path) -> None:
    package = tmp_path / "testbed" / "netfault"
    package.mkdir(parents=True)
    (package / "relay.py").write_text("# source\n")
    (package / "_relayloop.c").write_text("/* source */\n")
    (package / "_relayloop.cpython-311-x86_64-linux-gnu.so").write_bytes(b"\x7fELF")
    (package / "__pycache__").mkdir()
    (package / "__pycache__" / "relay.cpython-311.pyc").write_bytes(b"")
    spec = ImageSpec(
        name="probe", dockerfile=tmp_path / "Dockerfile", files=(("testbed", tmp_path / "testbed"),)
    )
    assert [target for target, _ in spec.inputs()] == [
        "testbed/netfault/_relayloop.c",
        "testbed/netfault/relay.py",
    ]
