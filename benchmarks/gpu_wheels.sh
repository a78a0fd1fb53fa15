#!/usr/bin/env bash
# Download the wheels that the GPU check carries to the device machine into .whl/ at the repo root.
#
# The device machine (python3 3.12, x86-64 Linux, torch 2.11, no package registry, no Ray) already has
# torch, timm, einops, transformers, numpy, pyarrow, h5py, fsspec, pyyaml and pillow. It lacks:
#   av==18.1.0            PyAV, our decoder (cpu_decode section, and the test video it encodes)
#   pynvvideocodec==2.2.4 NVIDIA's NVDEC decoder (nvdec_decode section; bundles its own demuxer)
# Together about 60 MiB; the working tree that travels with them must stay under 64 MiB in all, so
# the script checks the sum. NO_NVDEC=1 downloads PyAV only (34 MiB).
#
#   bash benchmarks/gpu_wheels.sh      # then name ".whl" in the device run's carry (see BENCHMARKS.md)
set -euo pipefail
cd "$(dirname "$0")/.."

WHEELS=("av==18.1.0")
[ "${NO_NVDEC:-0}" = 1 ] || WHEELS+=("pynvvideocodec==2.2.4")
LIMIT=$((64 * 1024 * 1024))

git check-ignore -q .whl/x.whl || { echo "error: .whl/ is not ignored by git (see .gitignore)" >&2; exit 2; }
rm -rf .whl && mkdir -p .whl
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${WHEELS[@]}"

wheels=$(du -cb .whl/*.whl | tail -1 | cut -f1)
tree=$(git ls-files -co --exclude-standard -z | xargs -0 du -cb 2>/dev/null | tail -1 | cut -f1)
total=$((wheels + tree))
awk -v w="$wheels" -v t="$tree" 'BEGIN { m = 1048576;
    printf "wheels %.1f MiB + working tree %.1f MiB = %.1f MiB (limit 64 MiB)\n", w / m, t / m, (w + t) / m }'
if [ "$total" -gt "$LIMIT" ]; then
    echo "error: over the 64 MiB the device run carries; rerun with NO_NVDEC=1 or remove untracked files" >&2
    exit 1
fi
ls -l .whl
