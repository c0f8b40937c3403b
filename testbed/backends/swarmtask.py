"""One swarm task as the testbed drives it: its container, found through the manager, and
acted on through the agent of the node it runs on (signals to its supervisor, the freezer,
files on its volume). Servers and pipeline components are both tasks; `ComponentProcess` is
a pipeline component's task with the verbs of a local process.
"""

from __future__ import annotations

import json
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

from testbed.errors import PortInUse, TestbedError

TASK_TIMEOUT_S = 120.0


class AgentError(TestbedError):
    pass


class AgentClient:
    """The HTTP client of one node's agent (testbed.backends.agent)."""

    def __init__(self, url: str, token: str) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _call(self, method: str, path: str, data: bytes | None = None) -> bytes | None:
        request = urllib.request.Request(
            self.url + path,
            data=data,
            method=method,
            headers={"Authorization": f"Bearer {self.token}"},
        )
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return response.read()
        except urllib.error.HTTPError as exc:
            if exc.code == 404 and method == "GET":
                return None
            detail = exc.read().decode(errors="replace")[:300]
            raise AgentError(f"node agent {self.url}: {method} {path}: {detail}") from None
        except OSError as exc:
            raise AgentError(f"node agent {self.url} does not answer: {exc}") from None

    def ping(self) -> bool:
        try:
            return self._call("GET", "/ping") is not None
        except AgentError:
            return False

    def containers(self, run: str) -> list[dict[str, Any]]:
        return json.loads(self._call("GET", f"/containers?run={run}") or b"[]")

    def signal(self, container: str, signal: str) -> None:
        self._call("POST", f"/containers/{container}/signal?signal={signal}")

    def freeze(self, container: str, frozen: bool) -> None:
        self._call("POST", f"/containers/{container}/{'pause' if frozen else 'unpause'}")

    def read(self, volume: str, path: str) -> bytes | None:
        quoted = urllib.parse.quote(path)
        return self._call("GET", f"/volumes/{volume}/file?path={quoted}")

    def write(self, volume: str, path: str, data: bytes) -> None:
        self._call("PUT", f"/volumes/{volume}/file?path={urllib.parse.quote(path)}", data)

    def remove(self, volume: str, path: str) -> None:
        self._call("DELETE", f"/volumes/{volume}/file?path={urllib.parse.quote(path)}")

    def clear(self, volume: str) -> None:
        self._call("POST", f"/volumes/{volume}/clear")


class Task:
    """A service with one replica, and its running container on some node.

    The container outlives every fault (its PID 1 is the supervisor), so it is looked up
    once; only a service update (a new task) makes a new one."""

    def __init__(self, backend: Any, service: str, volume: str, supervise_dir: str) -> None:
        self.backend = backend
        self.service = service
        self.volume = volume
        self.supervise_dir = supervise_dir  # relative to the volume's root
        self.container: str | None = None
        self.node_address: str | None = None
        self.agent: AgentClient | None = None
        self.frozen = False

    def wait_running(self, timeout: float = TASK_TIMEOUT_S) -> None:
        """Until swarm runs the service's task; its placement error if it cannot."""
        deadline = time.monotonic() + timeout
        last = "no task yet"
        while time.monotonic() < deadline:
            for task in self.backend.tasks(self.service):
                status = task.get("Status", {})
                state = status.get("State")
                if state == "running" and status.get("ContainerStatus", {}).get("ContainerID"):
                    self.container = status["ContainerStatus"]["ContainerID"]
                    self.node_address, self.agent = self.backend.node_of(task["NodeID"])
                    self._wait_supervisor(deadline)
                    return
                if "port already in use" in status.get("Err", "") + status.get("Message", ""):
                    raise PortInUse(f"{self.service}: {status.get('Err') or status['Message']}")
                if state in ("failed", "rejected"):
                    raise TestbedError(
                        f"{self.service}: swarm could not run its task: {status.get('Err', state)}"
                    )
                last = f"{state}: {status.get('Message', '')} {status.get('Err', '')}".strip()
            time.sleep(0.05)
        raise TestbedError(f"{self.service}: no running task within {timeout:.0f}s ({last})")

    def _wait_supervisor(self, deadline: float) -> None:
        """Until the supervisor reports: before, it has not taken over its signals, and a
        signal to PID 1 without a handler is dropped."""
        if not self.supervise_dir:
            return
        assert self.agent is not None and self.container is not None
        while self.agent.read(self.volume, f"{self.supervise_dir}/state.json") is None:
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.service}: its supervisor did not report")
            time.sleep(0.02)

    def _agent(self) -> AgentClient:
        if self.agent is None or self.container is None:
            self.wait_running()
        assert self.agent is not None
        return self.agent

    def signal(self, name: str) -> None:
        self._agent().signal(self.container or "", name)

    def freeze(self, frozen: bool) -> None:
        self._agent().freeze(self.container or "", frozen)
        self.frozen = frozen

    def start_child(self, timeout: float = 30.0) -> None:
        """Have the supervisor start its child, and wait until it says it did (a state read
        before would still show the child that ended)."""
        before = self.supervised().get("starts", 0)
        self.signal("SIGUSR1")
        deadline = time.monotonic() + timeout
        while self.supervised().get("starts", 0) <= before:
            if time.monotonic() > deadline:
                raise TestbedError(f"{self.service}: its supervisor did not start the process")
            time.sleep(0.01)

    def thaw(self) -> None:
        if self.frozen:
            self.freeze(False)

    def kill_child(self) -> bool:
        """SIGKILL of the child's process group (a frozen one dies once thawed); whether it
        is gone within 10 s."""
        self.signal("SIGUSR2")
        self.thaw()
        return self.wait_state("stopped", 10.0)

    def read(self, path: str) -> bytes | None:
        return self._agent().read(self.volume, path)

    def write(self, path: str, data: bytes) -> None:
        self._agent().write(self.volume, path, data)

    def remove(self, path: str) -> None:
        self._agent().remove(self.volume, path)

    def clear(self) -> None:
        self._agent().clear(self.volume)

    def supervised(self) -> dict[str, Any]:
        """The supervisor's report: state (running | stopped), pid, exit, starts."""
        raw = self.read(f"{self.supervise_dir}/state.json")
        return json.loads(raw) if raw else {"state": "stopped", "pid": None, "exit": None}

    def state(self) -> str:
        if self.container is None:
            return "stopped"
        if self.frozen:
            return "paused"
        return str(self.supervised()["state"])

    def wait_state(self, wanted: str, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.state() == wanted:
                return True
            time.sleep(0.02)
        return self.state() == wanted

    def last_log_line(self) -> str:
        raw = self.read(f"{self.supervise_dir}/process.log") if self.container else None
        lines = [line for line in (raw or b"").decode(errors="replace").splitlines() if line]
        return lines[-1] if lines else "no output"


class ComponentProcess:
    """A pipeline component (data source, ICON, GIM) in a swarm task, with the verbs and
    figures of `ManagedProcess`. Its files (config, status, queue, ledger) are on its volume,
    under /state; `local_path` brings one back to the host for the verdict."""

    STATE = "/state"

    def __init__(
        self,
        name: str,
        module: str,
        config: dict[str, Any],
        workdir: Path,
        task: Task,
    ) -> None:
        self.name = name
        self.module = module
        self.config = config
        self.workdir = workdir  # where files brought back from the volume go
        self.task = task
        self.log = workdir / "process.log"
        workdir.mkdir(parents=True, exist_ok=True)
        self._configured = False

    @property
    def pid(self) -> int | None:
        if self.task.container is None:
            return None
        return self.task.supervised().get("pid")

    def state(self) -> str:
        return self.task.state()

    def exit_code(self) -> int | None:
        if self.task.container is None:
            return None
        return self.task.supervised().get("exit")

    def start(self) -> ComponentProcess:
        if self.state() != "stopped":
            raise TestbedError(f"{self.name} is already {self.state()}")
        if not self._configured:
            self.task.write("config.json", json.dumps(self.config, indent=2).encode())
            self._configured = True
        self.task.remove("status.json")
        self.task.start_child()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        if self.task.container is None:
            return
        self.task.thaw()
        if self.state() == "running":
            self.task.signal("SIGTERM")
            if not self.task.wait_state("stopped", timeout):
                self.task.signal("SIGUSR2")
                self.task.wait_state("stopped", 10.0)

    def kill(self) -> None:
        """SIGKILL of the component's process group inside its container (the supervisor
        stays): no chance to flush or clean anything up."""
        if self.state() == "stopped":
            raise TestbedError(f"{self.name} is not running")
        if not self.task.kill_child():
            raise TestbedError(f"{self.name} survived SIGKILL")

    def pause(self) -> None:
        if self.state() != "running":
            raise TestbedError(f"{self.name} is {self.state()}, cannot pause")
        self.task.freeze(True)

    def resume(self) -> None:
        self.task.thaw()

    def restart(self) -> None:
        self.stop()
        self.start()

    def reconfigure(self, config: dict[str, Any]) -> None:
        self.config = {**config, "name": self.name, "status": f"{self.STATE}/status.json"}
        self.task.write("config.json", json.dumps(self.config, indent=2).encode())
        self._configured = True

    def status(self) -> dict[str, Any] | None:
        if self.task.container is None:
            return None
        raw = self.task.read("status.json")
        try:
            return json.loads(raw) if raw else None
        except ValueError:
            return None

    def local_path(self, key: str) -> Path:
        """A copy on the host of the file that config[key] names (and a SQLite file's WAL)."""
        remote = str(self.config[key])
        relative = remote.removeprefix(self.STATE + "/")
        target = self.workdir / Path(relative).name
        for suffix in ("", "-wal", "-shm"):
            data = self.task.read(relative + suffix) if self.task.container else None
            copy = target.with_name(target.name + suffix)
            if data is None:
                copy.unlink(missing_ok=True)
            else:
                copy.write_bytes(data)
        return target

    def last_log_line(self) -> str:
        return self.task.last_log_line()
