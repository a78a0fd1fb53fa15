"""The wheels the GPU check carries to the device machine: fetch them here, check and install them there.

The device machine (x86-64 Linux, Python 3.12, torch 2.11, no package registry, no Ray; the device
tool's README and KINDS.md) has torch, timm, einops, transformers, numpy, pyarrow, h5py and fsspec. It
lacks PyAV (our decoder: the decode sections and their test video) and a GPU decoder:

    python benchmarks/gpu_wheels.py download          # here: into the git-ignored .whl/ (≤ 64 MiB in all)
    python3 benchmarks/gpu_wheels.py install .whl DIR  # there (benchmarks/gpu_run.sh does it)

`install` installs each wheel on its own and never fails: a wheel whose tags do not fit the machine's
Python and platform, that needs another torch than the machine's, or that pip refuses is skipped, and
what happened to each is printed as JSON, so the model sections run whatever happens to the wheels.
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import subprocess
import sys
import zipfile

from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import InvalidWheelFilename, parse_wheel_filename
from packaging.version import Version

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# What the device tool's README and KINDS.md state of the machine: python3 3.12.3, torch 2.11.0+cu130,
# x86-64; wheels are fetched for manylinux up to glibc 2.28 (the README's download command).
DEVICE = {"python": (3, 12), "machine": "x86_64", "glibc": (2, 28), "torch": "2.11.0"}
PINNED = {"av": "18.1.0", "pynvvideocodec": "2.2.4"}     # NO_NVDEC=1: PyAV alone (34 of the 60 MiB)
LEGACY = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
LIMIT = 64 * 2**20


def tag_problem(filename: str, device: dict = DEVICE) -> str | None:
    """Why this wheel cannot install on `device` (its interpreter, ABI or platform tags), or None."""
    try:
        _, _, _, tags = parse_wheel_filename(os.path.basename(filename))
    except InvalidWheelFilename as exc:
        return f"not a wheel name: {exc}"
    if any(_python_fits(t.interpreter, t.abi, device) and _platform_fits(t.platform, device) for t in tags):
        return None
    return (f"tags {sorted(str(t) for t in tags)} fit no Python {'.'.join(map(str, device['python']))} on "
            f"{device['machine']} Linux (glibc ≤ {'.'.join(map(str, device['glibc']))})")


def _python_fits(interpreter: str, abi: str, device: dict) -> bool:
    major, minor = device["python"]
    if interpreter in (f"py{major}", f"py{major}{minor}"):
        return abi == "none"
    if abi == "abi3" and interpreter.startswith(f"cp{major}"):
        return int(interpreter[3:] or 0) <= minor
    return interpreter == f"cp{major}{minor}" and abi in (f"cp{major}{minor}", "none")


def _platform_fits(platform: str, device: dict) -> bool:
    if platform == "any":
        return True
    if not platform.endswith("_" + device["machine"]):
        return False
    policy = platform[: -len(device["machine"]) - 1]
    if policy in LEGACY:
        return LEGACY[policy] <= device["glibc"]
    if policy.startswith("manylinux_"):
        glibc = tuple(int(x) for x in policy.split("_")[1:3])
        return glibc <= device["glibc"]
    return policy == "linux"


def torch_problem(path: str, device: dict = DEVICE) -> str | None:
    """Why this wheel's torch requirement (its METADATA's Requires-Dist) rules out the device's torch."""
    try:
        with zipfile.ZipFile(path) as wheel:
            name = next(n for n in wheel.namelist() if n.endswith(".dist-info/METADATA"))
            lines = wheel.read(name).decode("utf-8", "replace").splitlines()
    except (OSError, zipfile.BadZipFile, StopIteration) as exc:
        return f"unreadable wheel: {type(exc).__name__}: {exc}"
    for line in lines:
        if not line.startswith("Requires-Dist:"):
            continue
        try:
            req = Requirement(line.split(":", 1)[1].strip())
        except InvalidRequirement:
            continue
        if req.name.lower() == "torch" and req.marker is None and Version(device["torch"]) not in req.specifier:
            return f"needs torch{req.specifier}, the machine has {device['torch']}"
    return None


def install(folder: str, target: str) -> dict[str, str]:
    """Install every wheel of `folder` into `target`, each on its own: wheel name → "installed" or why not."""
    outcome = {}
    for path in sorted(glob.glob(os.path.join(folder, "*.whl"))):
        name = os.path.basename(path)
        problem = tag_problem(name) or torch_problem(path)
        if problem:
            outcome[name] = f"skipped: {problem}"
            continue
        proc = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps",
                               "--no-compile", "--no-cache-dir", "--upgrade", "--target", target, path],
                              capture_output=True, text=True)
        tail = (proc.stderr.strip().splitlines() or [""])[-1]
        outcome[name] = "installed" if proc.returncode == 0 else f"failed: pip exit {proc.returncode}: {tail}"[:300]
    return outcome


def download(folder: str, nvdec: bool = True) -> list[str]:
    """Fetch the pinned wheels for the device machine into `folder` (replaced); their paths."""
    pins = {k: v for k, v in PINNED.items() if nvdec or k == "av"}
    platforms = [f"manylinux_2_{n}_x86_64" for n in range(DEVICE["glibc"][1], 4, -1)] + \
        [f"{p}_x86_64" for p in LEGACY]
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--implementation", "cp",
           "--python-version", "".join(map(str, DEVICE["python"])), "-d", folder]
    cmd += [arg for p in platforms for arg in ("--platform", p)] + [f"{k}=={v}" for k, v in pins.items()]
    for old in glob.glob(os.path.join(folder, "*.whl")):
        os.remove(old)
    subprocess.run(cmd, check=True)
    return sorted(glob.glob(os.path.join(folder, "*.whl")))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="verb", required=True)
    sub.add_parser("download").add_argument("folder", nargs="?", default=os.path.join(ROOT, ".whl"))
    inst = sub.add_parser("install")
    inst.add_argument("folder")
    inst.add_argument("target")
    args = ap.parse_args(argv)
    if args.verb == "install":
        print(json.dumps(install(args.folder, args.target), indent=1))
        return 0
    return report_download(download(args.folder, nvdec=os.environ.get("NO_NVDEC") != "1"))


def report_download(paths: list[str]) -> int:
    """Print each wheel with its check; 1 when one does not fit the machine or the carry is over 64 MiB."""
    tree = subprocess.run("git ls-files -co --exclude-standard -z | xargs -0 du -cb | tail -1", shell=True,
                          cwd=ROOT, capture_output=True, text=True).stdout.split()
    total = sum(os.path.getsize(p) for p in paths) + int(tree[0] if tree else 0)
    bad = {p: tag_problem(p) or torch_problem(p) for p in paths}
    for path, problem in bad.items():
        print(f"{os.path.basename(path)}: {problem or 'fits the device machine'}")
    print(f"wheels and working tree: {total / 2**20:.1f} MiB (a device run carries at most 64 MiB)")
    return 1 if total > LIMIT or any(bad.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
