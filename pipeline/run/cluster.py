"""Joining and leaving a Ray cluster for one run: an embedded local Ray on 127.0.0.1 or the cluster at
an address; telling Ray's own failures from a task's; leaving a Ray that a signal is taking down.
"""
from __future__ import annotations

import os


def connect_ray(address: str | None) -> bool:
    """Join the cluster at `address` / RAY_ADDRESS, else start an embedded local Ray bound to 127.0.0.1.
    Returns True when this call started or joined Ray (and so must shut down / disconnect)."""
    address = address or os.environ.get("RAY_ADDRESS")
    if not address or address.split("://")[-1].rsplit(":", 1)[0] in ("127.0.0.1", "localhost"):
        # single node on loopback; Ray reads this when it is first imported
        os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    import ray

    if ray.is_initialized():
        return False
    if address:
        ray.init(address=address, log_to_driver=False, runtime_env={"env_vars": forwarded_env()})
        return True
    ray.init(address="local", include_dashboard=False, log_to_driver=False, configure_logging=False)
    from pipeline.run.ray_reaper import reap_on_driver_death

    reap_on_driver_death()                  # an embedded Ray dies with its driver, even by SIGKILL
    return True


def forwarded_env() -> dict[str, str]:
    """The driver's VIDFEAT_* and FSSPEC_* variables (failpoints, storage settings such as an S3
    endpoint), passed on to the cluster's workers: on a cluster they do not inherit the driver's env."""
    return {k: v for k, v in os.environ.items() if k.startswith(("VIDFEAT_", "FSSPEC_"))}


def cluster_failure(exc: BaseException) -> bool:
    """Whether `exc` is Ray failing (a raylet, the GCS, a node, an object lost), not a task's own error."""
    import ray.exceptions

    return isinstance(exc, ray.exceptions.RayError) and not isinstance(exc, ray.exceptions.RayTaskError)


def abandon_ray() -> bool:
    """Leave an embedded Ray without `ray.shutdown()`: after a signal to the whole process group its
    processes are going too, and shutting down a Ray whose GCS is gone aborts natively (exit 134) before
    the lease is released. The reaper (ray_reaper.py) ends whatever is left once this process exits."""
    import atexit

    import ray

    atexit.unregister(ray.shutdown)
    return False
