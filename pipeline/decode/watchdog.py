"""Run a generator function in a reusable worker process, behind a progress watchdog.

Native code (FFmpeg, decord) can hang or crash where no Python thread can interrupt it. `Pool.stream`
runs `target(*args, progress=...)` in a worker process and streams what it yields back over a socket,
at most `_PREFETCH` items ahead of the consumer. The target calls `progress()` as it advances; the worker
turns that into a heartbeat at most every `_TICK_S`. A worker that sends nothing for `timeout_s` is
killed and `Stalled` is raised; one that dies raises `Crashed`. Exceptions the target raises are re-raised
in the caller, and the worker goes back to the pool for the next job.

Items travel as `pipeline.decode.transport` sends them: large buffers in shared memory, one copy in all.

Workers are started with `python -c` (they neither fork the caller, which may be multi-threaded, nor
re-import its `__main__`), run an init function once (imports, thread settings) before they report
ready, and exit when the caller dies.
"""
from __future__ import annotations

import atexit
import contextlib
import importlib
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import Any, Callable, Iterator

from pipeline.decode.transport import picklable, send_item, unpack

_PREFETCH = 2            # items a worker may produce ahead of the consumer
_TICK_S = 1.0            # heartbeat period of a busy worker
MAX_IDLE_WORKERS = 2     # idle workers a pool keeps for reuse
_STARTUP_TIMEOUT_S = 300.0
log = logging.getLogger(__name__)

_WORKER_CODE = "import sys; from pipeline.decode.watchdog import worker_main; worker_main(*sys.argv[1:])"


class Stalled(Exception):
    """The worker made no progress for `timeout_s` (it has been killed)."""

    def __init__(self, what: str, timeout_s: float):
        super().__init__(f"{what} made no progress for {timeout_s:g} s")
        self.what, self.timeout_s = what, timeout_s


class Crashed(Exception):
    """The worker process died (its exit status in `returncode`)."""

    def __init__(self, returncode: int | None):
        super().__init__(f"worker process died (exit status {returncode})")
        self.returncode = returncode


def _resolve(name: str) -> Callable:
    """'package.module:function' → the function."""
    module, _, attr = name.partition(":")
    return getattr(importlib.import_module(module), attr)


class _Worker:
    def __init__(self, init: str):
        parent, child = socket.socketpair()
        main = "1" if threading.current_thread() is threading.main_thread() else "0"
        self.proc = subprocess.Popen(
            [sys.executable, "-c", _WORKER_CODE, str(child.fileno()), main, init], pass_fds=(child.fileno(),),
            env=_worker_env(), stdin=subprocess.DEVNULL,
        )
        child.close()
        self.conn = Connection(parent.detach())
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(self.conn.fileno()))
        self.jobs = 0
        self.ready = False

    def wait_ready(self) -> None:
        """Wait for the worker's init (seconds, once per worker; not counted against `timeout_s`)."""
        if not self.ready:
            self.ready = self.receive(_STARTUP_TIMEOUT_S, "starting the worker process")[0] == "ready"

    def receive(self, timeout_s: float, what: str):
        """The next message other than a heartbeat; Stalled / Crashed."""
        while True:
            try:
                msg = self._recv() if self.conn.poll(timeout_s) else None
            except (EOFError, OSError):
                raise self._crashed() from None
            if msg is None:
                self.kill()
                raise Stalled(what, timeout_s)
            if msg[0] != "tick":
                return msg

    def send(self, msg) -> None:
        """Send a control message; a worker that died meanwhile raises Crashed (not a broken pipe)."""
        try:
            self.conn.send(msg)
        except (EOFError, OSError):
            raise self._crashed() from None

    def _crashed(self) -> "Crashed":
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10)
        return Crashed(self.proc.returncode)

    def _recv(self):
        """One message; an item's shared-memory buffers are received and mapped with it."""
        msg = self.conn.recv()
        if msg[0] == "item":
            msg = ("item", unpack(msg[1], msg[2], self.sock))
        return msg

    def stop(self, job: int) -> bool:
        """Ask a busy worker to drop `job` (the consumer stopped early); True when it acknowledged."""
        if not self.alive():
            return False
        try:
            self.conn.send(("stop", job))
            deadline = time.monotonic() + 5.0
            while self.conn.poll(max(0.0, deadline - time.monotonic())):
                if self._recv()[0] in ("stopped", "end", "error"):
                    return True
        except (EOFError, OSError):
            pass
        return False

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        with contextlib.suppress(OSError):
            self.proc.kill()
        with contextlib.suppress(Exception):
            self.proc.wait(timeout=10)
        self.conn.close()
        self.sock.close()


def _worker_env() -> dict:
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in [env.get("PYTHONPATH")] if p])
    return env


class Pool:
    """Worker processes that run `init` ('module:function', optional) once at start, kept idle for reuse
    (starting one costs an interpreter and its imports)."""

    def __init__(self, init: str = ""):
        self.init = init
        self.idle: list[_Worker] = []
        self.lock = threading.Lock()
        atexit.register(self.shutdown)

    def stream(self, target: str, args: tuple, timeout_s: float, what: str = "the job") -> Iterator[Any]:
        """Yield what `target(*args, progress=...)` yields, run in a worker. Raises Stalled when the worker
        sends nothing for `timeout_s`, Crashed when it dies, or the target's own exception."""
        worker = self._acquire()
        worker.jobs += 1
        job, healthy = worker.jobs, False
        try:
            worker.wait_ready()
            worker.send(("run", job, target, args))
            while True:
                msg = worker.receive(timeout_s, what)
                if msg[0] == "item":
                    worker.send(("next", job))
                    yield msg[1]
                elif msg[0] == "end":
                    healthy = True
                    return
                elif msg[0] == "error":
                    healthy = True
                    raise msg[1]
        finally:
            if not healthy:
                healthy = worker.stop(job)
            self._release(worker, healthy)

    def pids(self) -> list[int]:
        """Process ids of the idle live workers (for measurements)."""
        return [w.proc.pid for w in self.idle if w.alive()]

    def shutdown(self) -> None:
        with self.lock:
            workers, self.idle = self.idle, []
        for worker in workers:
            worker.kill()

    def _acquire(self) -> _Worker:
        with self.lock:
            while self.idle:
                worker = self.idle.pop()
                if worker.alive():
                    return worker
                worker.kill()
        return _Worker(self.init)

    def _release(self, worker: _Worker, healthy: bool) -> None:
        with self.lock:
            if healthy and worker.alive() and len(self.idle) < MAX_IDLE_WORKERS:
                self.idle.append(worker)
                return
        worker.kill()


# ---------------------------------------------------------------- inside the worker process

def worker_main(fd: str, spawned_by_main_thread: str, init: str) -> None:
    """Entry point of a worker process: run `init`, then serve jobs until the socket closes."""
    _die_with_parent(spawned_by_main_thread == "1")
    if init:
        _resolve(init)()
    conn = Connection(int(fd))
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM, fileno=os.dup(conn.fileno()))
    conn.send(("ready",))
    while True:
        try:
            msg = conn.recv()
        except (EOFError, OSError):
            return
        if msg[0] == "run":          # anything else is a late control message for a finished job
            _serve(conn, sock, *msg[1:])


class _Stopped(BaseException):
    """The consumer asked to drop the job. Raised inside the target (from `progress()`), so it derives
    from BaseException: a target's `except Exception` must not turn it into a failure."""


def _serve(conn: Connection, sock: socket.socket, job: int, target: str, args: tuple) -> None:
    credits = [_PREFETCH]
    last_tick = [time.monotonic()]

    def control(block: bool) -> None:
        while (block and credits[0] == 0) or conn.poll(0):
            kind, msg_job = conn.recv()[:2]
            if msg_job != job:
                continue
            if kind == "stop":
                raise _Stopped
            credits[0] += 1

    def progress() -> None:
        if time.monotonic() - last_tick[0] >= _TICK_S:
            last_tick[0] = time.monotonic()
            conn.send(("tick",))
            control(block=False)

    try:
        with contextlib.closing(_resolve(target)(*args, progress=progress)) as items:
            for item in items:
                control(block=True)
                send_item(conn, sock, item)
                credits[0] -= 1
        conn.send(("end",))
    except _Stopped:
        conn.send(("stopped",))
    except Exception as exc:
        conn.send(("error", picklable(exc)))


def _die_with_parent(spawned_by_main_thread: bool) -> None:
    """Exit when the parent process dies: PR_SET_PDEATHSIG (Linux; only when the parent's main thread
    started us, as the signal follows the spawning thread), plus a watcher thread for the rest."""
    parent = os.getppid()
    if spawned_by_main_thread and sys.platform.startswith("linux"):
        with contextlib.suppress(Exception):
            import ctypes
            import signal

            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(1.0)
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="vidfeat-parent-watch").start()
