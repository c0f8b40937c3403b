"""PID 1 of every swarm task: it runs the task's real process (a PostgreSQL server, an ICON, a
GIM, a data source) as a child, and outlives it.

Why: when a swarm task's container exits, swarm tears down its network attachments, and the
only way back is a new task, which takes seconds (hours of scenario time at 1h = 1s). With
this supervisor a fault acts on the process, not the container, and a restart is as fast as
on the local backend. The node agent drives it with signals to the container (PID 1):

    SIGUSR1             start the child (its env overridden by SUPERVISE_DIR/env.json)
    SIGUSR2             SIGKILL the child's whole process group (a crash, or a host losing power)
    SIGINT/TERM/QUIT    passed to the child (PostgreSQL's fast/smart/immediate shutdown)
    SIGHUP              stop the child with its own stop signal, then exit (task shutdown)

Each change is written to SUPERVISE_DIR/state.json, which the agent reads. With
SUPERVISE_RESTART=on-failure (standing environments only) a child that fails on its own is
started again after a second.
Standard library only: it runs in every image.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HANDLED = (
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGINT,
    signal.SIGTERM,
    signal.SIGQUIT,
    signal.SIGHUP,
    signal.SIGCHLD,
)
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT)


class Supervisor:
    def __init__(
        self, command: list[str], folder: Path, stop_signal: int, retry: bool = False
    ) -> None:
        self.command = command
        # Start the child again when it fails on its own (a standing environment's standby
        # whose clone ran before the WAN proxy was up); never after a signal we passed on.
        self.retry = retry
        self.on_purpose = False
        self.folder = folder
        self.stop_signal = stop_signal
        self.child: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.last_exit: int | None = None
        folder.mkdir(parents=True, exist_ok=True)

    def running(self) -> bool:
        return self.child is not None and self.child.returncode is None

    def _env(self) -> dict[str, str]:
        overrides: dict[str, Any] = {}
        with contextlib.suppress(OSError, ValueError):
            overrides = json.loads((self.folder / "env.json").read_text())
        env = {**os.environ, **{k: str(v) for k, v in overrides.items() if v is not None}}
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
        return env

    def start(self) -> None:
        if self.running():
            return
        log = open(self.folder / "process.log", "ab")  # noqa: SIM115 - the child keeps it
        self.child = subprocess.Popen(
            self.command,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            env=self._env(),
            start_new_session=True,  # its own process group: SIGUSR2 kills all of it
            preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []),
        )
        log.close()
        self.on_purpose = False
        self.starts += 1
        self.write_state()

    def signal_child(self, signum: int, group: bool = False) -> None:
        if not self.running():
            return
        assert self.child is not None
        self.on_purpose = True
        try:
            if group:
                os.killpg(self.child.pid, signum)
            else:
                self.child.send_signal(signum)
        except ProcessLookupError:
            pass

    def reap(self) -> None:
        """Collect every exited process: the child, and orphans re-parented to PID 1."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break
            if pid == 0:
                break
            if self.child is not None and pid == self.child.pid:
                self.child.returncode = os.waitstatus_to_exitcode(status)
                self.last_exit = self.child.returncode
                self.write_state()

    def write_state(self) -> None:
        state = {
            "state": "running" if self.running() else "stopped",
            "pid": self.child.pid if self.running() and self.child else None,
            "starts": self.starts,
            "exit": self.last_exit,
            "at": time.time(),
        }
        tmp = self.folder / "state.json.tmp"
        tmp.write_text(json.dumps(state))
        os.replace(tmp, self.folder / "state.json")

    def run(self, autostart: bool) -> int:
        signal.pthread_sigmask(signal.SIG_BLOCK, HANDLED)
        if autostart:
            self.start()
        else:
            self.write_state()
        while True:
            info = signal.sigtimedwait(HANDLED, 1.0)
            if info is None:
                self.reap()
                if self.retry and not self.running() and self.last_exit and not self.on_purpose:
                    self.start()
                continue
            signum = info.si_signo
            if signum == signal.SIGCHLD:
                self.reap()
            elif signum == signal.SIGUSR1:
                self.reap()
                self.start()
            elif signum == signal.SIGUSR2:
                self.signal_child(signal.SIGKILL, group=True)
            elif signum in FORWARDED:
                self.signal_child(signum)
            elif signum == signal.SIGHUP:
                return self.shut_down()

    def shut_down(self, patience: float = 10.0) -> int:
        self.signal_child(self.stop_signal)
        ends = time.monotonic() + patience
        while self.running() and time.monotonic() < ends:
            time.sleep(0.02)
            self.reap()
        self.signal_child(signal.SIGKILL, group=True)
        self.reap()
        return 0


def main() -> int:
    command = sys.argv[1:]
    if not command:
        print("usage: python3 -m testbed.backends.supervise COMMAND...", file=sys.stderr)
        return 2
    folder = Path(os.environ.get("SUPERVISE_DIR", "/run/supervise"))
    stop_signal = signal.Signals[os.environ.get("SUPERVISE_STOP_SIGNAL", "SIGTERM")]
    autostart = os.environ.get("SUPERVISE_AUTOSTART", "1") == "1"
    retry = os.environ.get("SUPERVISE_RESTART") == "on-failure"
    return Supervisor(command, folder, stop_signal, retry).run(autostart)


if __name__ == "__main__":
    sys.exit(main())
