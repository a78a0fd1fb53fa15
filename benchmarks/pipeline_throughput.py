"""End-to-end video-seconds per second of the pipeline vs its stages measured alone, in one run.

    python benchmarks/pipeline_throughput.py --videos 4 --seconds 120

Videos: generated 640×360 H.264 with B-frames (as benchmarks/decode_throughput.py). Model: the `tiny`
network (random weights) at the real sampling and size (96 frames, one every 32 at 30 fps, 224 px),
so that on a CPU-only machine the run measures the machinery (decode, transfer, batching, commit)
rather than a TimeSformer-L forward (~2.4 TMAC a clip). Prints, in video-seconds per second:
  decode_only   one process decoding every video (the default decode path, with its watchdog worker)
  model_only    the inference stage's work on ready uint8 clips (normalise + forward), one process
  pipeline      `run_extract` with an embedded local Ray (wall time, Ray start included, and the
                steady part from the first committed result on)
and the pipeline's rate as a fraction of its slowest stage given the cores each stage gets.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time

import numpy as np
import torch

from decode_throughput import encode
from pipeline.config import Config
from pipeline.decode import decode_clips
from pipeline.run.decode_stage import decoding_config
from pipeline.run.infer import ClipEmbedder
from pipeline.run.runner import run_extract


def bench_config() -> Config:
    return Config.from_preset("tiny", checkpoint="random").replace(
        sampling={"num_frames": 96, "stride": 32, "target_fps": 30.0}, preprocess={"size": 224},
        run={"commit_every": 1})


def decode_only(paths: list[str], config: Config) -> tuple[float, int]:
    """Seconds to decode every clip of every video in this process; clips decoded."""
    start, clips, config = time.perf_counter(), 0, decoding_config(config)     # as the decode stage runs
    for path in paths:
        clips += sum(1 for _ in decode_clips(path, config))
    return time.perf_counter() - start, clips


def model_only(config: Config, clips: int) -> float:
    """Seconds for the inference stage's work on `clips` ready clips (uint8, already cropped)."""
    embedder = ClipEmbedder(config.to_dict())
    s, t = config.preprocess.size, config.sampling.num_frames
    frames = np.random.default_rng(0).integers(0, 256, (1, 1, t, s, s, 3), dtype=np.uint8)
    embedder.embed(frames)                                             # warm-up
    start = time.perf_counter()
    for _ in range(clips):
        embedder.embed(frames)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--videos", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=120.0)
    ap.add_argument("--workdir", default=os.path.join(tempfile.gettempdir(), "vidfeat-pipeline-bench"))
    args = ap.parse_args()
    os.makedirs(os.path.join(args.workdir, "videos"), exist_ok=True)
    paths = [encode(os.path.join(args.workdir, "videos", f"v{i}.mp4"), args.seconds + 7 * i)
             for i in range(args.videos)]
    video_s = sum(args.seconds + 7 * i for i in range(args.videos))
    config = bench_config()
    t_decode, clips = decode_only(paths, config)
    t_model = model_only(config, clips)
    out = os.path.join(args.workdir, f"out-{int(time.time())}")
    start = time.perf_counter()
    summary = run_extract(os.path.join(args.workdir, "videos"), out, config, progress=False)
    t_pipe = time.perf_counter() - start
    cores = os.cpu_count() or 1
    decode_cores = max(1, cores - 1)                   # the inference actor holds one CPU (see runner)
    rates = {"decode_only_per_core": video_s / t_decode, "model_only": video_s / t_model,
             "pipeline": video_s / t_pipe}
    bound = min(rates["decode_only_per_core"] * decode_cores, rates["model_only"])
    print(json.dumps({
        "machine": f"{platform.machine()} {cores} cores", "torch_threads": torch.get_num_threads(),
        "videos": args.videos, "video_s": video_s, "clips": clips, "ok": summary.ok,
        "seconds": {"decode_only": t_decode, "model_only": t_model, "pipeline_wall": t_pipe},
        "video_s_per_s": rates, "video_s_per_s_per_core_pipeline": rates["pipeline"] / cores,
        "slowest_stage_bound": bound, "pipeline_over_bound": rates["pipeline"] / bound,
        "operators": summary.operators,
    }, indent=2))


if __name__ == "__main__":
    main()
