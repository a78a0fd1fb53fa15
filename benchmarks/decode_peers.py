"""The decoders `decode_throughput.py` compares, each run in its own process (a peer server).

    python benchmarks/decode_peers.py PEER      # reads one JSON request a line on stdin, answers on stdout

A request is {"path", "clips": [[frame index, ...], ...], "size": [height, width]}: decode exactly
those source frames and bring them to `size` (the short side at 224), one clip at a time, keeping only
the current clip. The answer is {"wall_s", "cpu_s", "frames", "checksum"}: wall and CPU seconds (this
process plus our decode worker) from opening the file to the last frame, the frames delivered, and a
checksum of the first clip (a sanity check that a peer returned pixels, not a claim that they match).

Peers (one thread each):
  ours          `pipeline.decode.decode_clips` with the default config (exact mode, in its worker)
  ours_float32  the same with `preprocess.frame_dtype: float32` (exact preprocessing; not a peer)
  ours_crop     the same with `decode.centre_crop` (what the pipeline runs with one crop: the decoder
                resizes only the 224×224 centre the model sees; the same pixels as ours, then cropped)
  torchcodec    `VideoDecoder(seek_mode="exact", num_ffmpeg_threads=1)` + its decoder-side `Resize`
  torchcodec_torch  the same decoder at full size, then torch's bilinear (official pixels, like ours)
  decord        `VideoReader(width, height, num_threads=1).get_batch` (decord 0.6 or decord2: whichever
                `decord` is first on PYTHONPATH; the orchestrator points it at one install at a time)
  pyav_official the official TimeSformer way: decode every frame, convert every frame to RGB, then keep
                the sampled ones and resize them with torch (float, bilinear)
Peers' own resizes (swscale, FFmpeg filters) are not torch's bilinear: they are timed, not compared.
"""
from __future__ import annotations

import json
import os
import sys
import time
import zlib

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(1, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from measure import cpu_seconds  # noqa: E402


def ours(path, clips, size):
    from pipeline.decode import decode_clips

    for clip in decode_clips(path):
        yield clip.frames


def ours_float32(path, clips, size):
    from pipeline.config import Config
    from pipeline.decode import decode_clips

    for clip in decode_clips(path, Config().replace(preprocess={"frame_dtype": "float32"})):
        yield clip.frames


def ours_crop(path, clips, size):
    from pipeline.config import Config
    from pipeline.decode import decode_clips

    for clip in decode_clips(path, Config().replace(decode={"centre_crop": True})):
        yield clip.frames


def ours_pids():
    from pipeline.decode.worker import POOL

    return POOL.pids()


def torchcodec(path, clips, size):
    from torchcodec.decoders import VideoDecoder
    from torchcodec.transforms import Resize

    decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC",
                           transforms=[Resize(tuple(size))])
    for indices in clips:
        yield decoder.get_frames_at(indices).data.numpy()


def torchcodec_torch(path, clips, size):
    """torchcodec decoding full-size RGB, then the official resize (torch, float, bilinear): the same
    pixels as ours and the official code's."""
    from torchcodec.decoders import VideoDecoder

    decoder = VideoDecoder(path, seek_mode="exact", num_ffmpeg_threads=1, dimension_order="NHWC")
    for indices in clips:
        yield official_resize(decoder.get_frames_at(indices).data.numpy(), size)


def official_resize(frames: np.ndarray, size) -> np.ndarray:
    """uint8 [T, H, W, 3] → [T, size, 3] with torch's bilinear, float, rounded (the official resize)."""
    import torch
    import torch.nn.functional as F

    x = torch.from_numpy(frames).permute(0, 3, 1, 2).float()
    y = F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
    return y.round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()


def decord(path, clips, size):
    import decord as dec

    reader = dec.VideoReader(path, ctx=dec.cpu(0), width=size[1], height=size[0], num_threads=1)
    for indices in clips:
        yield reader.get_batch(indices).asnumpy()


def pyav_official(path, clips, size):
    import av

    wanted = {i for c in clips for i in c}
    with av.open(path) as container:
        stream = container.streams.video[0]
        stream.codec_context.thread_count = 1
        frames = {}
        for n, frame in enumerate(container.decode(stream)):
            rgb = frame.to_rgb().to_ndarray()              # every frame, as the official decoder does
            if n in wanted:
                frames[n] = rgb
    for indices in clips:
        yield official_resize(np.stack([frames[i] for i in indices]), size)


PEERS = {"ours": (ours, ours_pids), "ours_float32": (ours_float32, ours_pids), "ours_crop": (ours_crop, ours_pids),
         "torchcodec": (torchcodec, list),
         "torchcodec_torch": (torchcodec_torch, list), "decord": (decord, list),
         "pyav_official": (pyav_official, list)}


def version(name: str) -> str:
    """The version of the package a peer runs on."""
    import importlib.metadata

    if name == "decord":
        import decord as dec

        return f"{os.path.basename(os.path.dirname(os.path.dirname(dec.__file__)))}: decord {dec.__version__}"
    package = {"ours": "av", "ours_float32": "av", "ours_crop": "av", "pyav_official": "av",
               "torchcodec_torch": "torchcodec"}.get(name, name)
    return importlib.metadata.version(package) if package != "av" else f"PyAV {importlib.metadata.version('av')}"


def serve(name: str) -> None:
    fn, pids = PEERS[name]
    if os.environ.get("BENCH_CPU"):                 # one core for the whole case (its threads, our worker)
        os.sched_setaffinity(0, {int(os.environ["BENCH_CPU"])})
    if name in ("pyav_official", "torchcodec_torch"):
        import torch

        torch.set_num_threads(1)
    print(json.dumps({"version": version(name)}), flush=True)
    for line in sys.stdin:
        req = json.loads(line)
        before = pids()
        cpu0, t0 = cpu_seconds(before), time.perf_counter()
        frames, checksum = 0, None
        for batch in fn(req["path"], req["clips"], req["size"]):
            frames += len(batch)
            checksum = checksum if checksum is not None else zlib.crc32(np.ascontiguousarray(batch).tobytes())
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(before or pids()) - cpu0
        print(json.dumps({"wall_s": wall, "cpu_s": cpu, "frames": frames, "checksum": checksum}), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1])
