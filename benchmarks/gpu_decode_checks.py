"""GPU check, decode sections: CPU decoding on the machine's cores, and NVDEC (the GPU's video decoder).

The test video is generated here with PyAV (no ffmpeg CLI needed), as `decode_throughput.py` makes its
own: 640×360 at 30 fps, a moving test pattern with temporal noise, libx264 `-preset fast -crf 23` with
x264's default B-frames (b-pyramid, keyint 250).
"""
from __future__ import annotations

import ctypes
import glob
import importlib.metadata
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DISTRIBUTIONS = {"PyNvVideoCodec": "pynvvideocodec", "av": "av"}
LIBRARIES = ("libnvcuvid.so.1", "libnvidia-encode.so.1", "libcuda.so.1")
LIBRARY_DIRS = ("/usr/lib/x86_64-linux-gnu", "/usr/lib64", "/usr/local/nvidia/lib64", "/usr/local/nvidia/lib",
                "/usr/lib/wsl/lib")


def package_version(name: str) -> str | None:
    """The installed version of a distribution, or None."""
    try:
        return importlib.metadata.version(DISTRIBUTIONS.get(name, name))
    except importlib.metadata.PackageNotFoundError:
        return None


def driver_version() -> str | None:
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def nvdec_probe(ctx) -> dict:
    """Does the driver's video decode library load, where is it, and which GPU decoders import."""
    libraries = {}
    for lib in LIBRARIES:
        try:
            ctypes.CDLL(lib)
            libraries[lib] = "loads"
        except OSError as exc:
            libraries[lib] = f"missing: {exc}"[:200]
    files = sorted({f for d in LIBRARY_DIRS for f in glob.glob(os.path.join(d, "libnvcuvid*"))})
    decoders = {module: imports(module) for module in ("PyNvVideoCodec", "torchcodec")}
    return {"libnvcuvid": libraries["libnvcuvid.so.1"] == "loads", "libraries": libraries,
            "libnvcuvid_files": files, "decoders": decoders}


def imports(module: str) -> str:
    """Whether `module` imports, tried in a child process (a native library that crashes on import
    takes only the child down)."""
    try:
        out = subprocess.run([sys.executable, "-c", f"import {module}"], capture_output=True, text=True,
                             timeout=120)
    except subprocess.TimeoutExpired:
        return "unavailable: import hung for 120 s"
    if out.returncode == 0:
        return f"imports ({package_version(module)})"
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    errors = [line for line in lines if re.match(r"[\w.]+(Error|Exception)\b", line)]
    return f"unavailable (exit status {out.returncode}): {(errors or lines or [''])[-1]}"[:300]


def write_pattern_video(path: str, seconds: float, width: int = 640, height: int = 360, fps: int = 30) -> str:
    """A `seconds`-long H.264 test-pattern video with noise (see the module's docstring); returns `path`."""
    import av

    graph = av.filter.Graph()
    chain = [graph.add("testsrc2", f"size={width}x{height}:rate={fps}:duration={seconds}"),
             graph.add("noise", "alls=6:allf=t"), graph.add("format", "pix_fmts=yuv420p"), graph.add("buffersink")]
    for a, b in zip(chain, chain[1:]):
        a.link_to(b)
    graph.configure()
    with av.open(path, "w") as out:
        stream = out.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"preset": "fast", "crf": "23", "x264-params": "b-pyramid=normal:keyint=250"}
        while True:
            try:
                frame = chain[-1].pull()
            except (av.error.EOFError, av.error.BlockingIOError):
                break
            frame.pict_type = av.video.frame.PictureType.NONE      # else x264 makes every frame a keyframe
            out.mux(stream.encode(frame))
        out.mux(stream.encode(None))
    return path


def test_video(ctx) -> tuple[str, float]:
    """The run's test video (generated once) and its duration in seconds."""
    if "video" not in ctx.notes:
        seconds = 8.0 if ctx.smoke else 180.0
        start = time.perf_counter()
        path = write_pattern_video(os.path.join(ctx.workdir, f"pattern_{seconds:g}s.mp4"), seconds)
        ctx.log(f"generated {seconds:g} s of 640x360 H.264 in {time.perf_counter() - start:.1f} s")
        ctx.notes["video"] = (path, seconds)
    return ctx.notes["video"]


_DECODER_CODE = """
import json, os, sys, time
import torch
torch.set_num_threads(1)
from pipeline.config import Config
from pipeline.decode import decode_clips
from pipeline.run.decode_stage import decoding_config
path, warm, rounds = sys.argv[1], sys.argv[2], int(sys.argv[3])
config = decoding_config(Config())               # as the pipeline's decode stage runs it
sum(1 for _ in decode_clips(warm, config))       # imports done, watchdog worker started
print("ready", flush=True)
sys.stdin.readline()
start, clips = time.perf_counter(), 0
for _ in range(rounds):
    clips += sum(1 for _ in decode_clips(path, config))
wall = time.perf_counter() - start
sys.path.insert(0, os.path.join(os.getcwd(), "benchmarks"))       # cwd: the checkout
from measure import cpu_seconds
print(json.dumps({"wall_s": wall, "clips": clips, "parent_cpu_s": cpu_seconds()}), flush=True)
"""


def parallel_decode(ctx, video: str, seconds: float, n: int, rounds: int) -> dict:
    """`n` processes each decode `video` `rounds` times with the pipeline's default decode (PyAV exact
    mode, one thread, in its watchdog worker), all starting together: video-seconds per wall second."""
    warm = write_pattern_video(os.path.join(ctx.workdir, "warm.mp4"), 1.0) \
        if not os.path.exists(os.path.join(ctx.workdir, "warm.mp4")) else os.path.join(ctx.workdir, "warm.mp4")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    procs = [subprocess.Popen([sys.executable, "-c", _DECODER_CODE, video, warm, str(rounds)], cwd=ROOT, env=env,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True) for _ in range(n)]
    try:
        for p in procs:
            if p.stdout.readline().strip() != "ready":
                raise RuntimeError(f"a decoder process failed to start (exit status {p.wait()})")
        start = time.perf_counter()
        for p in procs:
            p.stdin.write("go\n")
            p.stdin.flush()
        results = [json.loads(p.stdout.readline()) for p in procs]
        wall = time.perf_counter() - start
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
            p.wait()
    return {"decoders": n, "rounds": rounds, "wall_s": wall, "video_s_per_s": n * rounds * seconds / wall,
            "per_decoder_video_s_per_s": statistics.median(rounds * seconds / r["wall_s"] for r in results),
            "clips_per_decoder": results[0]["clips"]}


def pyav_missing() -> dict | None:
    """{"skipped": why} when PyAV (a carried wheel on the device machine) does not import, else None."""
    state = imports("av")
    return None if state.startswith("imports") else {"skipped": f"PyAV: {state}"}


def cpu_decode(ctx) -> dict:
    """Video-seconds/s of one decoder, and of one per core all at once, on the generated video."""
    if missing := pyav_missing():
        return missing
    video, seconds = test_video(ctx)
    cores = os.cpu_count() or 1
    counts = (cores,) if ctx.smoke else (1, cores)            # a smoke run skips the single decoder
    rows = [parallel_decode(ctx, video, seconds, n, 1 if ctx.smoke else 2) for n in counts]
    return {"video": "640x360 30 fps H.264, x264 preset fast, crf 23, b-pyramid, keyint 250",
            "video_seconds": seconds, "cores": cores, "rows": rows,
            "scaling_over_one_decoder": rows[-1]["video_s_per_s"] / rows[0]["video_s_per_s"]}


def sampled_indices(video: str) -> list[int]:
    """The frame indices the default sampling (1/32 at 30 fps) decodes from `video`."""
    from pipeline.decode.clips import plan_clips
    from pipeline.config import Config
    from pipeline.decode import probe_video

    info = probe_video(video)
    plan = plan_clips(info.timestamps, info.duration_s, Config().sampling)
    return sorted({i for spec in plan for i in spec.frame_indices})


def nvdec_decode(ctx) -> dict:
    """Video-seconds/s of each carried GPU decoder on the test video at the default 1/32 sampling."""
    if ctx.device.type != "cuda":
        return {"skipped": "needs CUDA"}
    if missing := pyav_missing():                           # the test video is made with PyAV
        return missing
    video, seconds = test_video(ctx)
    indices = sampled_indices(video)
    result = {"frames_per_video": len(indices)}
    for name, decode in (("PyNvVideoCodec", _pynvvideocodec), ("torchcodec", _torchcodec)):
        try:
            result[name] = _rates(ctx, decode, video, indices, seconds)
        except ImportError as exc:
            result[name] = {"skipped": f"not carried: {exc}"[:200]}
        except Exception as exc:                               # noqa: BLE001 - recorded, next decoder runs
            result[name] = {"error": f"{type(exc).__name__}: {exc}"[:300]}
    return result


def _rates(ctx, decode, video: str, indices: list[int], seconds: float) -> dict:
    """One decoder's rate (best of 2), then 4 decoders in threads at once."""
    import torch

    count, shape = decode(video, indices)                   # warm: decoder creation, CUDA context
    walls = []
    for _ in range(2):
        start = time.perf_counter()
        decode(video, indices)
        torch.cuda.synchronize()
        walls.append(time.perf_counter() - start)
    row = {"frames": count, "frame_shape": shape, "one_decoder_video_s_per_s": seconds / min(walls)}
    if ctx.left() > 4 * min(walls) + 2:
        errors: list[str] = []
        threads = [threading.Thread(target=_keep_errors(decode, errors), args=(video, indices)) for _ in range(4)]
        start = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        torch.cuda.synchronize()
        row["four_decoders_video_s_per_s"] = 4 * seconds / (time.perf_counter() - start)
        if errors:
            row["four_decoders_error"] = errors[0]
    return row


def _keep_errors(fn, errors: list[str]):
    def run(*args):
        try:
            fn(*args)
        except Exception as exc:                               # noqa: BLE001 - reported by the caller
            errors.append(f"{type(exc).__name__}: {exc}"[:300])
    return run


def _pynvvideocodec(video: str, indices: list[int]) -> tuple[int, list[int]]:
    """Decode `indices` a clip (96 frames) at a time into RGB clip tensors on the GPU, as the pipeline
    would hold them; (frames decoded, one frame's shape)."""
    import PyNvVideoCodec as nvc
    import torch

    decoder = nvc.SimpleDecoder(video, gpu_id=0, use_device_memory=True, output_color_type=nvc.OutputColorType.RGB)
    count, shape = 0, []
    for start in range(0, len(indices), 96):
        frames = decoder.get_batch_frames_by_index(indices[start:start + 96])
        clip = torch.stack([torch.from_dlpack(f) for f in frames])       # a copy: the decoder's surfaces are reused
        count, shape = count + len(clip), list(clip.shape[1:])
    return count, shape


def _torchcodec(video: str, indices: list[int]) -> tuple[int, list[int]]:
    from torchcodec.decoders import VideoDecoder

    frames = VideoDecoder(video, device="cuda").get_frames_at(indices=indices).data
    return len(frames), list(frames.shape[1:])
