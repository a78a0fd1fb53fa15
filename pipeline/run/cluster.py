"""Joining and leaving a Ray cluster for one run: an embedded local Ray on 127.0.0.1 or the cluster at
an address; telling Ray's own failures from a task's; leaving a Ray that a signal is taking down;
keeping the process's SIGTERM / SIGINT handlers across Ray's start and shutdown (keeping_signal_handlers).
"""
from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import tempfile
import threading
from typing import Iterator

from pipeline.errors import ClusterUnreachable, ConfigError

log = logging.getLogger(__name__)

AUTH_FAILED = ("Unauthenticated", "InvalidAuthToken", "PermissionDenied")   # what Ray's GCS client logs


def connect_ray(address: str | None, metrics_port: int = 0) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, else start an embedded local Ray bound to 127.0.0.1
    (serving its Prometheus metrics on 127.0.0.1:`metrics_port`, published every second, when given).
    Returns True when this call started or joined Ray (and so must shut down / disconnect)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        # single node on loopback; Ray reads this when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        if metrics_port:
            log.warning("--metrics-port serves an embedded Ray's metrics; on the cluster at %s every node "
                        "serves its own (ray start --metrics-export-port)", address)
        check_reachable(address)
        with _named_join_failures(address), keeping_signal_handlers():
            ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": forwarded_env()})
        return ray.is_initialized()             # not when a stop (SIGTERM) cut ray.init short
    _check_port_free(metrics_port)
    metrics = {"_metrics_export_port": metrics_port,
               "_system_config": {"metrics_report_interval_ms": 1000}} if metrics_port else {}
    with keeping_signal_handlers():
        ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False, **metrics)
    if not ray.is_initialized():
        return False                            # its processes die with this one (PR_SET_PDEATHSIG)
    from pipeline.run.ray_reaper import reap_on_driver_death

    reap_on_driver_death()                  # an embedded Ray dies with its driver, even by SIGKILL
    return True


def connect_s() -> float:
    """How long joining a cluster may take to get an answer (`VIDFEAT_RAY_CONNECT_S`, default 30 s)."""
    return float(os.environ.get("VIDFEAT_RAY_CONNECT_S", "30"))


def check_reachable(address: str | None) -> None:
    """Raise ClusterUnreachable, naming `address`, when nothing answers a TCP connection to it within
    `connect_s()` (Ray itself would retry the GCS for minutes); `address` None: RAY_ADDRESS's; "auto",
    "local" and no address pass."""
    address = address or os.environ.get("RAY_ADDRESS")
    host_port = (address or "").split("://")[-1]
    if ":" not in host_port:
        return
    host, port = host_port.rsplit(":", 1)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=connect_s()).close()
    except (OSError, ValueError) as exc:
        why = "nothing listens there" if isinstance(exc, ConnectionRefusedError) else \
            f"no answer within {connect_s():.0f} s" if isinstance(exc, TimeoutError) else str(exc)
        raise ClusterUnreachable(f"cannot reach the Ray cluster at {address} ({why}); is it up, and is "
                                 f"this its address (`ray status` on its head)? The output was not touched") from None


@contextlib.contextmanager
def _named_join_failures(address: str) -> Iterator[None]:
    """Within the block, Ray's native stderr is captured (then passed on as it was): a join that fails
    because the cluster refuses this driver's credentials raises ConfigError naming the cause, which Ray
    logs natively and leaves out of its ConnectionError."""
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except ConnectionError as exc:
            cause = _auth_failure(_read(captured))
            if cause:
                raise ConfigError(f"cannot join the Ray cluster at {address}: it refused this driver's "
                                  f"credentials ({cause}); RAY_AUTH_MODE (and RAY_AUTH_TOKEN) must be the "
                                  f"cluster's") from exc
            raise ClusterUnreachable(f"cannot join the Ray cluster at {address} ({exc})") from exc
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            os.write(2, _read(captured).encode(errors="replace"))


def _read(captured) -> str:
    captured.seek(0)
    return captured.read().decode(errors="replace")


def _auth_failure(native_log: str) -> str | None:
    """The line of Ray's native log that says a cluster refused the credentials, if one does."""
    lines = [line for line in native_log.splitlines() if any(word in line for word in AUTH_FAILED)]
    return lines[-1].split("] ", 1)[-1].strip() if lines else None


def _check_port_free(port: int) -> None:
    """A clear error for a metrics port that cannot be served (out of range, or taken), before Ray starts."""
    if not port:
        return
    if not 0 < port < 65536:
        raise ConfigError(f"--metrics-port must be a TCP port (1-65535), got {port}")
    with socket.socket() as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError as exc:
            raise ConfigError(f"--metrics-port {port}: 127.0.0.1:{port} cannot be served ({exc.strerror})") from None


def embedded(address: str | None) -> bool:
    """Whether a run with `address` starts its own Ray (no address given, none in RAY_ADDRESS)."""
    return not (address or os.environ.get("RAY_ADDRESS"))


def forwarded_env() -> dict[str, str]:
    """The driver's VIDFEAT_* and FSSPEC_* variables (failpoints, storage settings such as an S3
    endpoint), passed on to the cluster's workers: on a cluster they do not inherit the driver's env."""
    return {k: v for k, v in os.environ.items() if k.startswith(("VIDFEAT_", "FSSPEC_"))}


def cluster_failure(exc: BaseException) -> bool:
    """Whether `exc` is Ray failing (a raylet, the GCS, a node, an object lost), not a task's own error."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(exc, ray.exceptions.RayTaskError)


@contextlib.contextmanager
def keeping_signal_handlers() -> Iterator[None]:
    """Within the block Ray may take SIGTERM over; at its end the SIGTERM and SIGINT handlers in force at
    its start are put back. `ray.init` installs a handler that calls sys.exit(15), and its C++ core one
    of its own (it prints a stack, then calls Python's); `ray.shutdown` leaves SIGTERM at SIG_DFL while
    `signal.getsignal` still names the Python handler, so a later SIGTERM killed the process outright (no
    run record, the lease left behind). A SIGTERM that Ray's handler turned into SystemExit(15) within the
    block goes to the handler that was in force: it raises (Terminated) or asks the run to stop."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    ours = {sig: signal.getsignal(sig) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield
    except SystemExit as exc:
        if exc.code != signal.SIGTERM or not callable(ours[signal.SIGTERM]):
            raise
        signal.signal(signal.SIGTERM, ours[signal.SIGTERM])
        ours[signal.SIGTERM](signal.SIGTERM, None)
    finally:
        for sig, handler in ours.items():
            if handler is not None:                     # None: not installed from Python, left as it is
                signal.signal(sig, handler)


def shutdown_ray() -> None:
    """`ray.shutdown()`, the process's signal handlers kept (keeping_signal_handlers)."""
    import ray

    with keeping_signal_handlers():
        ray.shutdown()


def abandon_ray() -> bool:
    """Leave an embedded Ray without `ray.shutdown()`: after a signal to the whole process group its
    processes are going too, and shutting down a Ray whose GCS is gone aborts natively (exit 134) before
    the lease is released. The reaper (ray_reaper.py) ends whatever is left once this process exits."""
    import atexit

    import ray

    atexit.unregister(ray.shutdown)
    return False
