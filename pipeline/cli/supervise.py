"""`vidfeat extract` (and `demo`) run in a child process that this one watches, so the run always ends
with a code that means one thing and a line that says what happened.

Why: Ray's C++ core ends the driver process by itself when its node fails — "The connection to the
plasma store is failed. Terminate the process." after a raylet dies — with exit status 1, the code that
means "finished, some videos failed", and no word on stderr; nothing in that process can catch it. The
supervisor starts the real command as a child (`python -m pipeline ...`, in its own process group,
killed by the kernel if the supervisor dies: PR_SET_PDEATHSIG), forwards SIGINT, SIGTERM and SIGHUP to
it once, and waits. The child reports its exit code through a pipe just before it leaves
(exits.exit_now); a child that ends without reporting was ended from outside its Python code: status 1
→ 69 (the Ray cluster failed under the run), a signal N → 128+N, each with one line on stderr saying
that committed work is safe and the same command resumes.

Its own process group also keeps a signal sent to the supervisor's whole group (timeout(1), a terminal's
Ctrl-C, a batch system) away from the embedded Ray's processes, which would otherwise die under the run.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys

ENV = "VIDFEAT_SUPERVISED"                  # set in the child: the fd of the pipe it reports its code on
COMMANDS = ("extract", "demo")
FORWARDED = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
EXIT_UNAVAILABLE = 69


def wanted(argv: list[str]) -> bool:
    """Whether `argv` (without the program name) is a command to run under a supervisor."""
    command = next((a for a in argv if not a.startswith("-")), None)
    return command in COMMANDS and ENV not in os.environ and os.name == "posix"


def supervise(argv: list[str]) -> int:
    """Run `vidfeat argv` as a watched child; its exit code (see module doc)."""
    read_end, write_end = os.pipe()
    child = subprocess.Popen([sys.executable, "-m", "pipeline", *argv], env={**os.environ, ENV: str(write_end)},
                             pass_fds=(write_end,), start_new_session=True, preexec_fn=_die_with_parent)
    os.close(write_end)
    previous = {sig: signal.signal(sig, _forwarder(child)) for sig in FORWARDED}
    try:
        status = child.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    reported = os.read(read_end, 16)
    os.close(read_end)
    return int(reported) if reported.strip() else abrupt(status, argv)


def abrupt(status: int, argv: list[str]) -> int:
    """The code and the one line for a child that ended without reporting (exit `status`, or -signal)."""
    command = next((a for a in argv if not a.startswith("-")), "extract")
    if status < 0:
        name = signal.Signals(-status).name
        why = f"its process was killed ({name}{': out of memory?' if -status == signal.SIGKILL else ''})"
        code = 128 - status
    else:
        why = (f"its process was ended by Ray (exit status {status}): the Ray cluster failed under the run "
               f"(a raylet, its object store or the GCS died); Ray's log is named at the start of the run")
        code = EXIT_UNAVAILABLE
    print(f"vidfeat {command}: {why}; committed work is safe; the same command resumes", file=sys.stderr, flush=True)
    return code


def report(code: int) -> None:
    """In the child: tell the supervisor the code this process ends with (no-op when not supervised)."""
    fd = os.environ.get(ENV)
    if fd:
        try:
            os.write(int(fd), str(code).encode())
        except (OSError, ValueError):
            pass


def _forwarder(child: subprocess.Popen):
    def forward(signum, frame):
        if child.poll() is None:
            child.send_signal(signum)
    return forward


def _die_with_parent() -> None:
    """In the child, before exec: the kernel sends it SIGKILL when the supervisor dies (Linux)."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGKILL)          # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass
