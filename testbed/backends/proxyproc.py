"""The WAN proxy server of a run, in a process of its own.

A separate process, so that a test that crashes (or a runner that is killed) does not take
half the WAN's connections down with it, and so that the data path has a core of its own
instead of competing with the runner's Python. With `TESTBED_TOXIPROXY_URL` set, nothing is
started: the run uses that (possibly real) Toxiproxy server instead.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from testbed import launcher, procs
from testbed.backends.runs import ProcessRecord, RunDir
from testbed.errors import TestbedError
from testbed.netfault.client import ProxyUnavailable, ToxiproxyClient

NAME = "wan-proxy"


class ProxyProcess:
    def __init__(self, run: RunDir, port: int) -> None:
        self.run = run
        self.port = port
        self.external = os.environ.get("TESTBED_TOXIPROXY_URL")
        self.client = ToxiproxyClient(self.external or f"http://127.0.0.1:{port}")
        self._proc: launcher.Launched | None = None

    @property
    def logfile(self) -> Path:
        return self.run.path / "proxy.log"

    def start(self) -> ToxiproxyClient:
        if self.external:
            self.client.wait_until_ready(5.0)
            return self.client
        args = ["-host", "127.0.0.1", "-port", str(self.port)]
        self._proc = launcher.start("testbed.netfault", args, dict(os.environ), self.logfile)
        self.run.record_process(
            ProcessRecord(NAME, self._proc.pid, "testbed.netfault", self.client.url)
        )
        try:
            self.client.wait_until_ready(15.0)
        except ProxyUnavailable:
            self.stop()
            tail = self.logfile.read_text(errors="replace").strip().splitlines()
            raise TestbedError(
                f"the WAN proxy did not start: {tail[-1] if tail else 'no output'} "
                f"(log: {self.logfile})"
            ) from None
        return self.client

    def stop(self) -> None:
        if self._proc is None:
            return
        procs.stop_group(self._proc.pid, self._proc.pid, signal.SIGTERM, timeout=10.0)
        self._proc.wait(timeout=5)
        self._proc = None
        self.run.forget_process(NAME)

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None
