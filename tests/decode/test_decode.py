"""The streaming decoder: exact frames (read back from the pixels), modes, backends, inputs, failures."""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import fsspec
import numpy as np
import pytest

from pipeline.synthetic import samples

from pipeline.decode import watchdog
from pipeline.decode.clips import plan_clips
from pipeline.config import Config
from pipeline.decode import decode_clips, local_copy, probe_video, upright
from pipeline.decode.pyav import GopFilter, pyav_pass
from pipeline.decode.restarts import restart_points
from pipeline.decode.worker import POOL
from pipeline.errors import ConfigError, DecodeError
from pipeline.decode.transforms import crop, resize_short_side

TINY = Config.from_preset("tiny")                     # 4 frames, stride 8 at 30 fps, 32 px
IN_PROCESS = TINY.replace(decode={"timeout_s": 0})


def cfg(**decode) -> Config:
    return IN_PROCESS.replace(decode=decode) if decode else IN_PROCESS


@pytest.fixture(scope="session")
def videos(tmp_path_factory):
    """Small index videos, written once per session."""
    d = tmp_path_factory.mktemp("videos")
    vfr_ts = list(np.cumsum([0.0] + [0.02 if i % 5 else 0.19 for i in range(1, 60)]))
    specs = {
        "cfr30": dict(num_frames=150, fps=30.0, bframes=3),
        "ntsc": dict(num_frames=120, fps=30000 / 1001, bframes=3),
        "pal": dict(num_frames=90, fps=25.0, bframes=2),
        "film": dict(num_frames=80, fps=24000 / 1001),
        "fps60": dict(num_frames=200, fps=60.0, bframes=8, gop=60),
        "fps50": dict(num_frames=96, fps=50.0),
        "vfr": dict(num_frames=60, fps=30.0, timestamps=vfr_ts),
        "portrait": dict(num_frames=60, fps=30.0, width=48, height=64),
        "odd": dict(num_frames=50, fps=30.0, width=66, height=38),
        "lossless": dict(num_frames=70, fps=30.0, lossless=True, width=65, height=47),
        "one": dict(num_frames=1, fps=30.0),
        "rotated": dict(num_frames=40, fps=30.0, width=128, height=64, rotation=90),
    }
    out = {}
    for name, spec in specs.items():
        ext = ".mkv" if name == "vfr" else ".mp4"
        out[name] = samples.write_index_video(str(d / (name + ext)), **spec)
    return out


def _planned(path: str, config: Config):
    info = probe_video(path)
    return info, plan_clips(info.timestamps, info.duration_s, config.sampling)


def _content(clip_or_frames) -> list[int]:
    frames = getattr(clip_or_frames, "frames", clip_or_frames)
    return [samples.read_frame_index(f) for f in frames]


# ---------------------------------------------------------------- exact frames


@pytest.mark.parametrize("name", ["cfr30", "ntsc", "pal", "film", "fps60", "fps50", "vfr", "portrait", "odd",
                                  "lossless", "one"])
def test_exact_mode_decodes_exactly_the_planned_frames(videos, name):
    path = videos[name]
    info, plan = _planned(path, TINY)
    clips = list(decode_clips(path, cfg(mode="exact")))
    assert [c.index for c in clips] == [p.index for p in plan]
    for clip, spec in zip(clips, plan):
        assert clip.frame_indices == spec.frame_indices
        assert _content(clip) == list(spec.frame_indices)
        assert (clip.start_s, clip.end_s, clip.valid_frames) == (spec.start_s, spec.end_s, spec.valid_frames)
        assert clip.frames.dtype == np.uint8 and clip.frames.shape[0] == TINY.sampling.num_frames
        assert min(clip.frames.shape[1:3]) == TINY.preprocess.size and clip.frames.shape[3] == 3


def test_probe_reports_the_stream(videos):
    info = probe_video(videos["ntsc"])
    assert info.num_frames == 120 and info.fps == pytest.approx(29.97, abs=1e-3) and not info.vfr
    assert info.duration_s == pytest.approx(120 / (30000 / 1001))
    assert (info.width, info.height, info.codec, info.rotation) == (64, 48, "h264", 0)
    vfr = probe_video(videos["vfr"])
    assert vfr.vfr and vfr.num_frames == 60
    assert vfr.timestamps[5] == pytest.approx(0.02 * 4 + 0.19, abs=1e-3)
    assert set(probe_video(videos["portrait"]).to_dict()) >= {"fps", "num_frames", "duration_s", "width", "height"}


def test_default_sampling_on_a_one_frame_video(videos):
    (clip,) = decode_clips(videos["one"], Config().replace(decode={"timeout_s": 0}))
    assert clip.frame_indices == (0,) * 96 and clip.valid_frames == 1
    assert clip.frames.shape == (96, 224, 298, 3)


def test_lossless_frames_equal_resized_source_pixels(videos):
    clips = list(decode_clips(videos["lossless"], cfg(mode="exact")))
    for clip in clips:
        for frame, index in zip(clip.frames, clip.frame_indices):
            expected = resize_short_side(samples.index_frame(index, 65, 47)[None], 32)[0]
            assert np.array_equal(frame, expected)


@pytest.mark.parametrize("threads", [1, 2])
def test_fast_mode_snaps_within_max_snap_and_reports_the_frame_used(videos, threads):
    for name in ("cfr30", "fps60", "ntsc"):
        _, plan = _planned(videos[name], TINY)
        clips = list(decode_clips(videos[name], cfg(mode="fast", threads=threads)))
        assert len(clips) == len(plan)
        for clip, spec in zip(clips, plan):
            assert _content(clip) == list(clip.frame_indices)          # the reported frame is the real one
            assert max(abs(a - b) for a, b in zip(clip.frame_indices, spec.frame_indices)) <= 2


def test_fast_mode_with_max_snap_zero_is_exact(videos):
    _, plan = _planned(videos["fps60"], TINY)
    clips = list(decode_clips(videos["fps60"], cfg(mode="fast", max_snap=0)))
    assert [c.frame_indices for c in clips] == [p.frame_indices for p in plan]
    assert all(_content(c) == list(c.frame_indices) for c in clips)


def test_fast_mode_falls_back_when_no_reference_frame_is_close(videos):
    # 8 B-frames in a row: the middle ones are more than 2 frames from any reference frame
    _, plan = _planned(videos["fps60"], TINY)
    clips = list(decode_clips(videos["fps60"], cfg(mode="fast", max_snap=1)))
    for clip, spec in zip(clips, plan):
        assert _content(clip) == list(clip.frame_indices)
        assert max(abs(a - b) for a, b in zip(clip.frame_indices, spec.frame_indices)) <= 1


def test_the_decode_side_never_loads_torch(videos):
    """What the Ray decode stage imports (config, decode, transforms, errors, faults) and its watchdog
    worker stay without torch: a decode slot holds tens of MB, not the ~700 MB torch costs."""
    code = ("import sys\n"
            "import pipeline.config, pipeline.decode, pipeline.errors, pipeline.faults, pipeline.decode.transforms\n"
            "from pipeline.decode.worker import POOL\n"
            "from pipeline.config import Config\n"
            "clips = list(pipeline.decode.decode_clips(sys.argv[1], Config.from_preset('tiny')))\n"
            "maps = open(f'/proc/{POOL.pids()[0]}/maps').read()\n"
            "print(len(clips), 'torch' in sys.modules, 'libtorch' in maps)")
    out = subprocess.run([sys.executable, "-c", code, videos["pal"]], capture_output=True, text=True, check=True)
    assert out.stdout.split()[1:] == ["False", "False"] and int(out.stdout.split()[0]) > 0


def test_the_decord_backend_loads_no_cuda_library():
    """decord2 preloads every CUDA library of the environment's `nvidia` pip packages at import (~800 MB
    of RSS per decode worker where torch's CUDA wheels are installed); the backend imports it without."""
    code = ("from pipeline.decode.decord_backend import import_decord; import_decord(); "
            "print(sum('/nvidia/' in line for line in open('/proc/self/maps')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"


@pytest.mark.parametrize("threads", [1, 2, 0])
def test_exact_mode_with_decoder_threads(videos, threads):
    _, plan = _planned(videos["fps60"], TINY)
    clips = list(decode_clips(videos["fps60"], cfg(mode="exact", threads=threads)))
    assert [_content(c) for c in clips] == [list(p.frame_indices) for p in plan]


# decord fails on 48 px wide frames (a size-specific bug: "DECORDArrayCopyFromTo: The size must exactly
# match") and the backend then decodes the video with PyAV; on every other test video decord decodes.
DECORD_FALLS_BACK = {"portrait"}


@pytest.fixture
def pyav_fallbacks(monkeypatch):
    """The videos the decord backend handed to PyAV (its fallback), in order."""
    from pipeline.decode import decord_backend

    seen, original = [], decord_backend.pyav_clips

    def spy(path, info, plan, config, video, progress, start):
        seen.append(os.path.basename(path).rsplit(".", 1)[0])
        return original(path, info, plan, config, video, progress, start)
    monkeypatch.setattr(decord_backend, "pyav_clips", spy)
    return seen


def expected_fallbacks(name: str, decodes: int = 1) -> list[str]:
    return [name] * decodes if name in DECORD_FALLS_BACK else []


@pytest.mark.parametrize("name", ["cfr30", "ntsc", "portrait", "odd", "lossless", "rotated", "one"])
def test_decord_and_pyav_agree_in_exact_mode(videos, name, pyav_fallbacks):
    info = probe_video(videos[name])
    pyav = list(decode_clips(videos[name], cfg(mode="exact")))
    decord = list(decode_clips(videos[name], cfg(mode="exact", backend="decord")))
    assert pyav_fallbacks == expected_fallbacks(name)          # decord really decoded (or the named bug)
    assert [c.frame_indices for c in pyav] == [c.frame_indices for c in decord]
    for a, b in zip(pyav, decord):
        assert a.frames.shape == b.frames.shape
        assert np.abs(a.frames.astype(int) - b.frames.astype(int)).max() <= 2
        assert _content(upright(b.frames, -info.rotation)) == list(b.frame_indices)


@pytest.mark.parametrize("name", ["cfr30", "portrait", "odd", "lossless", "rotated", "one"])
@pytest.mark.parametrize("backend", ["pyav", "decord"])
def test_centre_crop_in_the_decoder_equals_cropping_its_frames(videos, name, backend, pyav_fallbacks):
    """`decode.centre_crop` (what the pipeline asks with one crop) gives the crop of the frames it
    would give otherwise, bit for bit, uint8 and float32."""
    for dtype in ("uint8", "float32"):
        plain = cfg(backend=backend).replace(preprocess={"frame_dtype": dtype})
        whole = list(decode_clips(videos[name], plain))
        cut = list(decode_clips(videos[name], plain.replace(decode={"centre_crop": True})))
        assert [c.frame_indices for c in cut] == [c.frame_indices for c in whole]
        for a, b in zip(whole, cut):
            assert np.array_equal(b.frames, crop(a.frames, TINY.preprocess.size, 1)[0]), (name, dtype)
    assert pyav_fallbacks == (expected_fallbacks(name, decodes=4) if backend == "decord" else [])


def test_rotation_is_recorded_and_applied(videos):
    info = probe_video(videos["rotated"])
    assert info.rotation == 90 and (info.width, info.height) == (128, 64)
    (clip, *_) = decode_clips(videos["rotated"], cfg())
    assert clip.frames.shape[1:3] == (64, 32)                  # upright: portrait
    turned_back = upright(clip.frames, -90)
    assert [samples.read_frame_index(f) for f in turned_back] == list(clip.frame_indices)


def _peak_bytes_taking_clips_one_at_a_time(path: str, config: Config) -> tuple[int, int]:
    """(peak traced bytes, clip bytes) while a consumer keeps no clip: numpy reports its buffers to
    tracemalloc, so frames the decoder held on to would show in the peak."""
    import tracemalloc

    tracemalloc.start()
    try:
        clip_bytes = max(c.frames.nbytes for c in decode_clips(path, config))
        return tracemalloc.get_traced_memory()[1], clip_bytes
    finally:
        tracemalloc.stop()


def test_memory_does_not_grow_with_the_videos_length(tmp_path):
    """The decode contract: memory does not grow with the video's length. A 40-clip video peaks within
    two clips' worth of a 2-clip one (buffering the video would cost 38 clips more)."""
    config = cfg(mode="exact").replace(preprocess={"size": 96})
    short = samples.write_index_video(str(tmp_path / "short.mp4"), num_frames=64, width=160, height=120)
    long = samples.write_index_video(str(tmp_path / "long.mp4"), num_frames=40 * 32, width=160, height=120)
    _peak_bytes_taking_clips_one_at_a_time(short, config)          # warm: imports and codec tables
    short_peak, clip_bytes = _peak_bytes_taking_clips_one_at_a_time(short, config)
    long_peak, _ = _peak_bytes_taking_clips_one_at_a_time(long, config)
    assert len(_planned(long, config)[1]) == 40
    assert long_peak - short_peak < 2 * clip_bytes, (long_peak, short_peak, clip_bytes)


# ---------------------------------------------------------------- inputs


def test_file_and_memory_urls(videos):
    expected = [c.frame_indices for c in decode_clips(videos["pal"], cfg())]
    assert [c.frame_indices for c in decode_clips("file://" + videos["pal"], cfg())] == expected
    with open(videos["pal"], "rb") as src, fsspec.open("memory://bucket/pal.mp4", "wb") as dst:
        dst.write(src.read())
    clips = list(decode_clips("memory://bucket/pal.mp4", cfg(), video_id="pal-1"))
    assert [c.frame_indices for c in clips] == expected
    assert {c.video for c in clips} == {"pal-1"}


def spooled(tmp: str) -> list[str]:
    """The spool directories under the temp dir `tmp` (decode/spool.py: `<tmp>/vidfeat-spool/<pid>-…`)."""
    root = os.path.join(tmp, "vidfeat-spool")
    return os.listdir(root) if os.path.isdir(root) else []


def test_remote_spool_is_removed_after_success_error_and_close(videos, tmp_path, monkeypatch):
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    with open(videos["cfr30"], "rb") as src, fsspec.open("memory://spool/v.mp4", "wb") as dst:
        dst.write(src.read())
    fsspec.filesystem("memory").pipe("memory://spool/bad.mp4", b"\x00" * 100)
    list(decode_clips("memory://spool/v.mp4", cfg()))
    assert spooled(tmp_path) == []
    with pytest.raises(DecodeError):
        list(decode_clips("memory://spool/bad.mp4", cfg()))
    assert spooled(tmp_path) == []
    gen = decode_clips("memory://spool/v.mp4", cfg())
    next(gen)
    assert len(spooled(tmp_path)) == 1                       # spooled while in use
    gen.close()
    assert spooled(tmp_path) == []
    with local_copy("memory://spool/v.mp4") as path:
        assert os.path.getsize(path) == os.path.getsize(videos["cfr30"])
    assert spooled(tmp_path) == []


def test_missing_remote_file_is_not_found():
    with pytest.raises(DecodeError) as err:
        list(decode_clips("memory://nowhere/x.mp4", cfg()))
    assert err.value.kind == "not_found" and "memory://nowhere/x.mp4" in str(err.value)


# ---------------------------------------------------------------- failures


@pytest.fixture(scope="session")
def broken(tmp_path_factory, videos):
    d = tmp_path_factory.mktemp("broken")
    cut_index_last = samples.write_index_video(str(d / "src_end.mp4"), 150, 30.0)
    cut_index_first = samples.write_index_video(str(d / "src_front.mp4"), 150, 30.0, faststart=True)
    cut_mkv = samples.write_index_video(str(d / "src.mkv"), 150, 30.0)
    return {
        "empty": (samples.write_empty(str(d / "empty.mp4")), "not_a_video"),
        "random": (samples.write_random_bytes(str(d / "random.mp4")), "not_a_video"),
        "audio": (samples.write_audio_only(str(d / "audio.mp4")), "not_a_video"),
        "image": (samples.write_image(str(d / "image.mp4")), "not_a_video"),
        "directory": (str(d), "not_a_video"),
        "missing": (str(d / "missing.mp4"), "not_found"),
        "truncated_no_index": (samples.write_truncated(cut_index_last, str(d / "cut_end.mp4")), "corrupt"),
        "truncated_front_index": (samples.write_truncated(cut_index_first, str(d / "cut_front.mp4")), None),
        "truncated_mkv": (samples.write_truncated(cut_mkv, str(d / "cut.mkv")), None),
    }


@pytest.mark.parametrize("name", ["empty", "random", "audio", "image", "directory", "missing",
                                  "truncated_no_index"])
def test_broken_inputs_raise_the_right_kind_naming_the_video(broken, name):
    path, kind = broken[name]
    with pytest.raises(DecodeError) as err:
        list(decode_clips(path, cfg()))
    assert err.value.kind == kind
    assert str(err.value).startswith(path) and err.value.video == path
    with pytest.raises(DecodeError) as err:
        list(decode_clips(path, cfg(), video_id="vid-42"))
    assert str(err.value).startswith("vid-42:")


@pytest.mark.parametrize("name", ["truncated_front_index", "truncated_mkv"])
@pytest.mark.parametrize("mode", ["exact", "fast"])
def test_truncated_files_give_what_is_decodable(broken, name, mode):
    path, _ = broken[name]
    clips = list(decode_clips(path, cfg(mode=mode)))
    assert clips and all(_content(c) == list(c.frame_indices) for c in clips)
    last = max(i for c in clips for i in c.frame_indices)
    assert 8 <= last < 140                                       # some, not all, of the 150 frames
    info = probe_video(path)
    assert info.num_frames < 150 and (info.truncated or name == "truncated_mkv")


def test_unreadable_file_is_permission_denied(videos, tmp_path):
    """chmod 000; as root the check runs with the effective uid of `nobody` (root reads everything),
    in-process (timeout_s=0) so no worker has to start under that uid."""
    path = tmp_path / "locked.mp4"
    path.write_bytes(open(videos["pal"], "rb").read())
    list(decode_clips(str(path), cfg(timeout_s=0)))          # imports everything lazily imported, first
    path.chmod(0)
    as_root = os.geteuid() == 0
    if as_root:
        os.seteuid(65534)
    try:
        with pytest.raises(DecodeError) as err:
            list(decode_clips(str(path), cfg(timeout_s=0)))
    finally:
        if as_root:
            os.seteuid(0)
    assert err.value.kind == "permission_denied" and "locked.mp4" in str(err.value)


@pytest.mark.parametrize("exc,kind", [(PermissionError("denied"), "permission_denied"),
                                      (FileNotFoundError("gone"), "not_found"),
                                      (ConnectionError("reset by peer"), "io")])
def test_remote_storage_errors_map_to_kinds(monkeypatch, exc, kind):
    fs = fsspec.filesystem("memory")
    fs.pipe("memory://flaky/x.mp4", b"x")
    monkeypatch.setattr(type(fs), "open", lambda *a, **k: (_ for _ in ()).throw(exc))
    with pytest.raises(DecodeError) as err:
        list(decode_clips("memory://flaky/x.mp4", cfg()))
    assert err.value.kind == kind and "memory://flaky/x.mp4" in str(err.value)


def test_bad_decode_config_is_a_config_error(videos):
    with pytest.raises(ConfigError):
        list(decode_clips(videos["pal"], cfg(backend="opencv")))
    with pytest.raises(ConfigError):
        list(decode_clips(videos["pal"], cfg(mode="approximate")))


# ---------------------------------------------------------------- watchdog worker


def _worker_processes() -> set[int]:
    pids = set()
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    if b"pipeline.decode.watchdog import worker_main" in fh.read() and int(pid) != os.getpid():
                        pids.add(int(pid))
            except OSError:
                pass
    return pids


def _children_of_this_process() -> set[int]:
    return {pid for pid in _worker_processes() if _parent(pid) == os.getpid()}


def _parent(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[1])
    except OSError:
        return -1


def test_worker_streams_the_same_clips(videos):
    config = TINY.replace(decode={"timeout_s": 60})
    for name in ("ntsc", "vfr"):
        in_worker = list(decode_clips(videos[name], config))
        local = list(decode_clips(videos[name], cfg()))
        assert [c.frame_indices for c in in_worker] == [c.frame_indices for c in local]
        assert all(np.array_equal(a.frames, b.frames) for a, b in zip(in_worker, local))


def test_worker_reports_errors_and_stays_usable(videos, broken):
    config = TINY.replace(decode={"timeout_s": 60})
    with pytest.raises(DecodeError) as err:
        list(decode_clips(broken["audio"][0], config))
    assert err.value.kind == "not_a_video"
    assert len(list(decode_clips(videos["pal"], config))) > 0


def test_watchdog_kills_a_hanging_decode(tmp_path, videos):
    fifo = str(tmp_path / "hang.mp4")
    os.mkfifo(fifo)                              # opening it blocks forever inside FFmpeg
    config = TINY.replace(decode={"timeout_s": 2})
    list(decode_clips(videos["pal"], config))    # a warm worker, so the test times only the hang
    before = _children_of_this_process()
    with pytest.raises(DecodeError) as err:
        list(decode_clips(fifo, config))
    assert err.value.kind == "timeout" and str(err.value).startswith(fifo)
    assert _children_of_this_process() <= before       # the hung worker is gone, not left behind
    assert len(list(decode_clips(videos["pal"], config))) > 0   # and the caller goes on


def test_closing_early_leaves_no_busy_worker(videos):
    config = TINY.replace(decode={"timeout_s": 60})
    POOL.shutdown()                                              # no idle worker from earlier tests
    gen = decode_clips(videos["fps60"], config)
    next(gen)
    serving = _children_of_this_process()
    gen.close()
    assert _children_of_this_process() == set(POOL.pids())      # every live worker is idle: none busy
    assert serving <= set(POOL.pids())                           # the one that served stopped and was kept
    assert len(list(decode_clips(videos["fps60"], config))) == len(_planned(videos["fps60"], TINY)[1])
    assert _children_of_this_process() == serving                # and served again: no new worker


def test_shutdown_ends_all_workers(videos):
    list(decode_clips(videos["pal"], TINY.replace(decode={"timeout_s": 60})))
    assert _children_of_this_process()
    POOL.shutdown()
    assert not _children_of_this_process()


# ---------------------------------------------------------------- leaving out what no sample needs


@pytest.fixture(scope="session")
def gop_videos(tmp_path_factory):
    """Short-GOP videos (a keyframe every 10 frames, B-frames): closed and open GOPs, H.264 in MP4 and
    in MPEG-TS (Annex B), HEVC, VP9."""
    d = tmp_path_factory.mktemp("gops")
    specs = {"closed.mp4": {}, "closed.ts": {}, "open.mp4": {"open_gop": True},
             "hevc.mkv": {"codec": "libx265"}, "hevc_open.mp4": {"codec": "libx265", "open_gop": True},
             "vp9.webm": {"codec": "libvpx-vp9"}}
    return {name: samples.write_index_video(str(d / name), 150, gop=10, bframes=3, **kw)
            for name, kw in specs.items()}


def _frame_numbers(info, pts) -> list[int]:
    return [int(np.searchsorted(info.pts, p)) for p in pts]


def test_restart_points_are_independent_keyframes_that_cut_time_cleanly(gop_videos):
    for name in ("closed.mp4", "closed.ts", "hevc.mkv", "vp9.webm"):
        info = probe_video(gop_videos[name])
        assert _frame_numbers(info, info.restarts) == list(range(0, 150, 10)), name
    for name in ("open.mp4", "hevc_open.mp4"):            # keyframes, but not IDR: B-frames reach back
        info = probe_video(gop_videos[name])
        assert _frame_numbers(info, info.restarts) == [0], name


def test_restart_points_need_a_clean_cut_in_time():
    # closed GOPs in decode order, I0 P3 B1 B2 | K4 P7 B5 B6 | K8 P11 B9 B10: every keyframe is clean
    closed = np.array([0, 3, 1, 2, 4, 7, 5, 6, 8, 11, 9, 10])
    assert _restarts(closed, [0, 4, 8]) == [0, 4, 8]
    # open GOPs, I0 P3 B1 B2 | K6 B4 B5 | K9 B7 B8: frames decoded after a keyframe are shown before it
    assert _restarts(np.array([0, 3, 1, 2, 6, 4, 5, 9, 7, 8]), [0, 4, 7]) == [0]
    # a keyframe decoded before a frame shown after it (P4 before K3) is no cut either
    assert _restarts(np.array([0, 4, 3, 5]), [0, 2]) == [0]
    assert _restarts(closed, []) == []


def _restarts(decode_pts: np.ndarray, keyframes: list[int]) -> list[int]:
    key = np.zeros(len(decode_pts), bool)
    key[keyframes] = True
    return restart_points(decode_pts, key).tolist()


@pytest.mark.parametrize("name", ["closed.mp4", "closed.ts", "open.mp4", "hevc.mkv", "hevc_open.mp4", "vp9.webm"])
@pytest.mark.parametrize("stride", [8, 32])
def test_packets_no_sample_needs_are_dropped_and_frames_stay_exact(gop_videos, name, stride, caplog):
    """Exact mode leaves out the packets after a GOP's last sample and whole GOPs without one (stride 32
    skips two GOPs in three), yet every frame equals the frame of a full decode, bit for bit."""
    path = gop_videos[name]
    config = IN_PROCESS.replace(sampling={"stride": stride})
    info, plan = _planned(path, config)
    with caplog.at_level("DEBUG", logger="pipeline.decode"):
        clips = list(decode_clips(path, config.replace(decode={"mode": "exact"})))
    dropped = [int(r.getMessage().split(" dropped ")[1].split()[0]) for r in caplog.records
               if " dropped " in r.getMessage()]
    full = list(pyav_pass(path, info, plan, 0, "full", config, path, lambda: None))
    assert [c.frame_indices for c in clips] == [c.frame_indices for c in full] == [p.frame_indices for p in plan]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(clips, full))
    assert [_content(c) for c in clips] == [list(p.frame_indices) for p in plan]
    if "open" not in name:
        assert dropped and dropped[0] > (60 if stride == 32 else 10)


@pytest.mark.parametrize("name", ["closed.mp4", "open.mp4", "vp9.webm"])
def test_fast_mode_drops_packets_without_changing_its_choices(gop_videos, name, monkeypatch, caplog):
    """Fast mode may use any decoded frame within max_snap; leaving out packets must not change which
    frame it uses (nor its pixels) against the same mode decoding every packet."""
    path = gop_videos[name]
    config = IN_PROCESS.replace(sampling={"stride": 32}, decode={"mode": "fast"})
    info, plan = _planned(path, config)
    with caplog.at_level("DEBUG", logger="pipeline.decode"):
        with_dropping = list(decode_clips(path, config))
    dropped = [int(r.getMessage().split(" dropped ")[1].split()[0]) for r in caplog.records
               if " nonref pass dropped " in r.getMessage()]
    assert dropped and (dropped[0] > 40 if name != "open.mp4" else True)
    monkeypatch.setattr(GopFilter, "of", classmethod(lambda cls, *a: None))
    every_packet = list(decode_clips(path, config))
    assert [c.frame_indices for c in with_dropping] == [c.frame_indices for c in every_packet]
    assert all(np.array_equal(a.frames, b.frames) for a, b in zip(with_dropping, every_packet))
    assert all(abs(u - p) <= config.decode.max_snap for c, s in zip(with_dropping, plan)
               for u, p in zip(c.frame_indices, s.frame_indices))
