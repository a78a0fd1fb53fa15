"""A vidfeat command held at a named pause point (faults.py: VIDFEAT_PAUSEPOINTS), for the tests that land a
signal, or a second writer, inside one phase of it (tests/run/test_stop_phases.py, tests/store/test_writer_race.py)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading

from conftest import ray_env, wait_for


class Held:
    """A vidfeat command (`python -m pipeline ARGS`, supervised as a user runs it) held at the pause point
    `point`; its stdout and stderr read as they come. `tmp`: its temporary folder (TMPDIR)."""

    def __init__(self, args: list[str], point: str, tmp: str, env: dict | None = None):
        self.point, self.pauses, self.tmp = point, os.path.join(tmp, "pauses"), tmp
        os.makedirs(self.pauses)
        env = {**(env or ray_env()), "VIDFEAT_PAUSEPOINTS": point, "VIDFEAT_PAUSE_DIR": self.pauses,
               "TMPDIR": tmp, "VIDFEAT_LOG_DIR": os.path.join(tmp, "logs"),
               "RAY_TMPDIR": tempfile.gettempdir()}          # Ray's sockets: a short path, as without TMPDIR
        self.proc = subprocess.Popen([sys.executable, "-m", "pipeline", *args], env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out, self.err = [], []
        self.readers = [threading.Thread(target=lambda s=s, d=d: d.extend(s), daemon=True)
                        for s, d in ((self.proc.stdout, self.out), (self.proc.stderr, self.err))]
        for reader in self.readers:
            reader.start()

    def ended(self) -> bool:
        return self.proc.poll() is not None

    def stop_there(self, sig: int) -> None:
        """Wait until the command is held at its point, send `sig`, wait until the command says it took
        the signal (or it has ended), then let it go on."""
        assert wait_for(lambda: os.path.exists(os.path.join(self.pauses, f"{self.point}.paused")) or self.ended(),
                        timeout=900), f"never reached {self.point}"
        assert not self.ended(), f"ended before {self.point}: {''.join(self.err)}"
        self.proc.send_signal(sig)
        name = signal.Signals(sig).name
        said = lambda: any(line.startswith(f"{name}: ") for line in self.out + self.err)     # noqa: E731
        assert wait_for(lambda: said() or self.ended(), timeout=300)
        open(os.path.join(self.pauses, f"{self.point}.go"), "w").close()

    def finish(self, timeout: float = 600) -> tuple[int, str, str]:
        code = self.proc.wait(timeout=timeout)
        for reader in self.readers:
            reader.join(timeout=60)
        return code, "".join(self.out), "".join(self.err)
