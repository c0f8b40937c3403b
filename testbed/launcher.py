"""How the Python processes of a run (the pipeline's components, the WAN proxy) are
started: forked from a warm fork server, or executed afresh.

A component's own work at start is a few milliseconds; a new interpreter importing psycopg
(its C library included) is a few hundred, and a run starts eight such processes on a
machine with two cores. So they are forked from a fork server (`zygote`) that has imported
them once. Each is a real process all the same: a session of its own, the command line a
freshly executed one would show (so `testbed down` and `ps` see no difference), its output
in its log, the environment and working folder of the moment, and an exit status like any
child's. The server starts in the background at the first `prewarm()`, while the servers
come up, and serves every run of this process.

The standard library's forkserver would do the forking, but it imports the caller's main
script again in every child: a user's script that runs a scenario at top level would run
it once more per component.

`TESTBED_COMPONENT_LAUNCH=exec` starts each one as `python -m MODULE CONFIG` instead (and so
does a platform without fork), which is the reference the fork is tested against.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Protocol

from testbed import procs
from testbed.errors import TestbedError

LAUNCH_ENV = "TESTBED_COMPONENT_LAUNCH"
CHOICES = ("fork", "exec")
TITLE_ROOM = "-" * 4096
WAIT_SLICE_S = 0.5  # a wait with no end still notices a fork server that died
READY_TIMEOUT_S = 30.0  # the server's imports, on a machine busy bringing servers up
ANSWER_TIMEOUT_S = 10.0  # one fork


class Launched(Protocol):
    """A started component, as its run control sees it (what `subprocess.Popen` offers)."""

    @property
    def pid(self) -> int: ...

    def poll(self) -> int | None: ...

    def wait(self, timeout: float | None = None) -> int: ...


def launch_mode() -> str:
    choice = os.environ.get(LAUNCH_ENV, "") or "fork"
    if choice not in CHOICES:
        raise TestbedError(f"{LAUNCH_ENV}={choice} is not one of: {', '.join(CHOICES)}")
    return choice if hasattr(os, "fork") else "exec"


def prewarm() -> None:
    """Start the fork server now, if components will be forked: it imports them while the
    caller does something else (brings the servers up), and is ready when they start."""
    if launch_mode() == "fork":
        _server()


def start(module: str, args: list[str], env: dict[str, str], log: Path) -> Launched:
    """`python -m module *args` with `env`, output appended to `log`, in a new session."""
    if launch_mode() == "exec":
        with open(log, "ab") as out:
            return subprocess.Popen(
                [sys.executable, "-m", module, *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=out,
                start_new_session=True,
                env=env,
            )
    return _server().fork(module, args, env, str(log))


class _Forked:
    """A forked component: its exit status comes from the fork server, which reaps it."""

    def __init__(self, server: _ForkServer, pid: int) -> None:
        self.server = server
        self.pid = pid
        self.exited = threading.Event()
        self.code: int | None = None

    def poll(self) -> int | None:
        # Only once the server's last report has been read (`gone`): until then its exit
        # status may still be on the way.
        if self.code is None and self.server.gone and not procs.alive(self.pid):
            self._ended(-1)  # the server died before telling: the status is lost
        return self.code

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            left = WAIT_SLICE_S if deadline is None else deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired(f"component {self.pid}", timeout or 0.0)
            self.exited.wait(min(left, WAIT_SLICE_S))
        assert self.code is not None
        return self.code

    def _ended(self, code: int) -> None:
        self.code = code
        self.exited.set()


class _ForkServer:
    """The run process's end of one fork server."""

    def __init__(self) -> None:
        mine, theirs = socket.socketpair()
        with theirs:
            self.process = subprocess.Popen(
                # The room a child's command line is written into (setproctitle reuses the
                # server's own argv and environment, which may be short: `env -i`, cron).
                [sys.executable, "-m", "testbed.zygote", str(theirs.fileno()), TITLE_ROOM],
                stdin=subprocess.DEVNULL,
                pass_fds=(theirs.fileno(),),
                start_new_session=True,  # a Ctrl-C is for the run, which then stops it
            )
        self.sock = mine
        self.ready = threading.Event()
        self.lock = threading.Lock()
        self.ids = itertools.count(1)
        self.answers: dict[int, dict[str, Any]] = {}
        self.answered = threading.Condition()
        self.children: dict[int, _Forked] = {}
        self.early_exits: dict[int, int] = {}  # reported before the fork's answer was read
        self.abandoned: set[int] = set()  # requests given up on: a late child is killed
        self.unwanted: set[int] = set()  # the pids of those, until their exit is reported
        self.gone = False
        threading.Thread(target=self._read, name="fork-server", daemon=True).start()

    def running(self) -> bool:
        return not self.gone and self.process.poll() is None

    def fork(self, module: str, args: list[str], env: dict[str, str], log: str) -> _Forked:
        if not self.ready.wait(READY_TIMEOUT_S) or self.gone:
            raise TestbedError(f"the components' fork server did not start: {self._why()}")
        request_id = next(self.ids)
        request = {
            "id": request_id,
            "module": module,
            "args": args,
            "env": env,
            "log": log,
            "cwd": os.getcwd(),
        }
        with self.lock:
            try:
                self.sock.sendall(json.dumps(request).encode() + b"\n")
            except OSError as exc:
                raise TestbedError(f"the components' fork server is gone: {exc}") from None
        with self.answered:
            if (
                not self.answered.wait_for(
                    lambda: request_id in self.answers or self.gone, ANSWER_TIMEOUT_S
                )
                or request_id not in self.answers
            ):
                self.abandoned.add(request_id)
                raise TestbedError(f"the components' fork server did not fork: {self._why()}")
            pid = self.answers.pop(request_id)["pid"]
            child = _Forked(self, pid)
            self.children[pid] = child
            if pid in self.early_exits:
                child._ended(self.early_exits.pop(pid))
        return child

    def _read(self) -> None:
        buffered = b""
        while True:
            try:
                data = self.sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                break
            buffered += data
            while b"\n" in buffered:
                line, buffered = buffered.split(b"\n", 1)
                self._message(json.loads(line))
        with self.answered:
            self.gone = True
            self.answered.notify_all()
        self.ready.set()

    def _message(self, message: dict[str, Any]) -> None:
        if message.get("ready"):
            self.ready.set()
            return
        with self.answered:
            if "exited" in message:
                child = self.children.pop(message["exited"], None)
                if message["exited"] in self.unwanted:
                    self.unwanted.discard(message["exited"])
                elif child is None:
                    self.early_exits[message["exited"]] = message["code"]
                else:
                    child._ended(message["code"])
            elif message["id"] in self.abandoned:  # its caller gave up: nobody runs it
                self.abandoned.discard(message["id"])
                self.unwanted.add(message["pid"])
                procs.signal_group(message["pid"], signal.SIGKILL)
            else:
                self.answers[message["id"]] = message
                self.answered.notify_all()

    def _why(self) -> str:
        code = self.process.poll()
        return "it is still starting" if code is None else f"it exited with status {code}"

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=5)


_current: _ForkServer | None = None
_current_lock = threading.Lock()


def _server() -> _ForkServer:
    """This process's fork server, started (again, if the last one died) on demand."""
    global _current
    with _current_lock:
        if _current is None or not _current.running():
            _current = _ForkServer()
        return _current
