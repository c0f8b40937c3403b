"""The fork server a run's Python processes are started from: it imports them once, then
forks one child per request, each of which becomes what `python -m MODULE ARGS...` would
have been.

Started by `launcher` as `python -m testbed.zygote FD`, it reads requests (one JSON
object per line) from the socket FD and answers each with the child's pid; it reaps its
children and reports each one's exit status (as `subprocess` would give it: -N for a
signal). It ends when the other end of the socket closes; its children go on.
"""

from __future__ import annotations

import atexit
import contextlib
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

# Imported before the first request is taken: the WAN proxy, which a run starts first.
PRELOAD = ("testbed.netfault.server",)
OPTIONAL = ("uvloop",)  # the proxy's loop when installed
# Imported between requests (psycopg takes a few hundred ms): a child forked before its
# module is in imports what is missing itself, as a new interpreter would.
PRELOAD_LATER = ("testbed.pipeline.icon", "testbed.pipeline.gim", "testbed.pipeline.workload")


def serve(sock: socket.socket) -> None:
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_w, False)
    signal.set_wakeup_fd(wake_w)
    signal.signal(signal.SIGCHLD, lambda *_: None)  # only to wake the selector
    selector = selectors.DefaultSelector()
    selector.register(sock, selectors.EVENT_READ, "request")
    selector.register(wake_r, selectors.EVENT_READ, "child")
    inherited = [sock.fileno(), wake_r, wake_w, selector.fileno()]  # closed in children
    pending = b""
    later = list(PRELOAD_LATER)
    while True:
        ready = selector.select(timeout=0 if later else None)
        if not ready and later:
            with contextlib.suppress(Exception):  # the child that needs it will say why
                importlib.import_module(later.pop(0))
            continue
        for key, _ in ready:
            if key.data == "child":
                with contextlib.suppress(BlockingIOError):
                    os.read(wake_r, 512)
                _reap(sock)
                continue
            try:
                data = sock.recv(65536)
            except OSError:
                data = b""
            if not data:
                return  # the launcher is gone: so are we (our children go on)
            pending += data
            while b"\n" in pending:
                line, pending = pending.split(b"\n", 1)
                request = json.loads(line)
                _send(sock, {"id": request["id"], "pid": _fork(request, inherited)})
        _reap(sock)  # a child that exited while a request was being read


def _fork(request: dict[str, Any], inherited: list[int]) -> int:
    """A child for `request`; its pid once it leads a session of its own, so that a signal
    to its group right after the answer reaches it (as with `Popen`)."""
    session_r, session_w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(session_r)
        os._exit(_become(request, [*inherited, session_w], session_w))
    os.close(session_w)
    with contextlib.suppress(OSError):
        os.read(session_r, 1)  # one byte once the session is made; nothing if it failed
    os.close(session_r)
    return pid


def _reap(sock: socket.socket) -> None:
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
        _send(sock, {"exited": pid, "code": os.waitstatus_to_exitcode(status)})


def _send(sock: socket.socket, message: dict[str, Any]) -> None:
    with contextlib.suppress(OSError):  # the launcher went away: nobody to tell
        sock.sendall(json.dumps(message).encode() + b"\n")


def _become(request: dict[str, Any], inherited: list[int], session_made: int) -> int:
    """In the child: the component, started as a new interpreter would have started it.
    Returns the exit status."""
    try:
        os.setsid()
        os.write(session_made, b"s")
        signal.set_wakeup_fd(-1)
        for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGPIPE):
            signal.signal(sig, signal.SIG_DFL)
        signal.signal(signal.SIGPIPE, signal.SIG_IGN)  # as the interpreter sets it
        signal.signal(signal.SIGINT, signal.default_int_handler)
        for fd in inherited:
            os.close(fd)
        out = os.open(request["log"], os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        null = os.open(os.devnull, os.O_RDONLY)
        for target, source in ((0, null), (1, out), (2, out)):
            os.dup2(source, target)
        os.close(null)
        os.close(out)
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        extra = [p for p in request["env"].get("PYTHONPATH", "").split(os.pathsep) if p]
        sys.path[:] = [request["cwd"], *extra, *[p for p in sys.path[1:] if p not in extra]]
        module, args = request["module"], request["args"]
        import setproctitle

        title = " ".join([sys.executable, "-m", module, *args])
        setproctitle.setproctitle(title)
        if _own_cmdline() != title:  # `testbed down` finds a component by its command line
            print(f"warning: command line shortened to {_own_cmdline()!r}", file=sys.stderr)
        sys.argv = [module, *args]
        # As `python -m` runs it: fresh, as __main__ (not the module the server imported).
        for name in (module, f"{module}.__main__"):
            sys.modules.pop(name, None)
    except BaseException:  # nothing above may return into the server loop
        traceback.print_exc()
        return 1
    code = 0
    interrupted = False
    try:
        runpy.run_module(module, run_name="__main__", alter_sys=True)
    except SystemExit as exc:
        code = _exit_code(exc.code)
    except KeyboardInterrupt:
        traceback.print_exc()
        interrupted = True
    except BaseException:  # reported as the interpreter would, then exit 1
        traceback.print_exc()
        code = 1
    code = _finish(code)
    if interrupted:  # an interpreter stopped by SIGINT ends by it
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        os.kill(os.getpid(), signal.SIGINT)
    return code


def _own_cmdline() -> str:
    try:
        raw = Path("/proc/self/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.rstrip(b"\0").replace(b"\0", b" ").decode(errors="replace")


def _exit_code(value: object) -> int:
    if value is None:
        return 0
    if isinstance(value, int):
        return value & 0xFF
    print(value, file=sys.stderr)
    return 1


def _finish(code: int) -> int:
    """What the interpreter does at exit and a forked child would skip: wait for the
    threads that are not daemons, run the exit handlers, flush."""
    shutdown = getattr(threading, "_shutdown", None)  # what the interpreter calls at exit
    with contextlib.suppress(BaseException):
        if shutdown is not None:
            shutdown()
        else:
            for thread in threading.enumerate():
                if thread is not threading.current_thread() and not thread.daemon:
                    thread.join()
    with contextlib.suppress(BaseException):
        atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(BaseException):
            stream.flush()
    return code


def main() -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a Ctrl-C is for the run; it stops us
    for module in PRELOAD:
        importlib.import_module(module)
    for module in OPTIONAL:
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    import setproctitle

    # Set up here, while the environment is whole: it makes room for a longer command line
    # by moving the environment, and the children's titles go in that room.
    setproctitle.setproctitle(f"{sys.executable} -m testbed.zygote {sys.argv[1]}")

    sock = socket.socket(fileno=int(sys.argv[1]))
    _send(sock, {"ready": True})
    serve(sock)


if __name__ == "__main__":
    main()
