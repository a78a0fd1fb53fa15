"""`inspect_video` (the JSON of `vidfeat inspect`) and `dump_frames` (the PNGs of --dump-frames)."""
from __future__ import annotations

import json
import os

import fsspec
import numpy as np
import pytest
from PIL import Image

from pipeline.synthetic import samples
from pipeline.decode.clips import plan_cfr
from pipeline.config import Config
from pipeline.errors import DecodeError
from pipeline.decode.inspect import contact_sheet, dump_frames, inspect_video

TINY = Config.from_preset("tiny").replace(decode={"timeout_s": 0, "mode": "exact"})


@pytest.fixture(scope="module")
def video(tmp_path_factory):
    return samples.write_index_video(str(tmp_path_factory.mktemp("v") / "v.mp4"), 70, 30.0)


def test_inspect_json_shape_and_values(video):
    out = inspect_video(video, TINY)
    assert set(out) == {"video", "clips"}
    assert {"fps", "num_frames", "duration_s", "width", "height"} <= set(out["video"])
    assert out["video"]["num_frames"] == 70 and out["video"]["fps"] == 30.0
    plan = plan_cfr(70, 30.0, TINY.sampling)
    assert [c["frame_indices"] for c in out["clips"]] == [list(p.frame_indices) for p in plan]
    for c in out["clips"]:
        assert set(c) == {"index", "frame_indices", "start_s", "end_s", "valid_frames"}
    assert json.loads(json.dumps(out)) == out


def test_inspect_reports_snapped_frames_in_fast_mode(tmp_path):
    path = samples.write_index_video(str(tmp_path / "b.mp4"), 200, 60.0, bframes=8, gop=60)
    out = inspect_video(path, TINY.replace(decode={"mode": "fast"}))
    planned = [list(p.frame_indices) for p in plan_cfr(200, 60.0, TINY.sampling)]
    used = [c["frame_indices"] for c in out["clips"]]
    assert used != planned
    assert all(abs(a - b) <= 2 for u, p in zip(used, planned) for a, b in zip(u, p))


def test_inspect_memory_url(video):
    with open(video, "rb") as src, fsspec.open("memory://inspect/v.mp4", "wb") as dst:
        dst.write(src.read())
    assert inspect_video("memory://inspect/v.mp4", TINY)["clips"] == inspect_video(video, TINY)["clips"]


def test_inspect_failure_names_the_video(tmp_path):
    bad = samples.write_random_bytes(str(tmp_path / "bad.mp4"))
    with pytest.raises(DecodeError, match="bad.mp4"):
        inspect_video(bad, TINY)


def test_dump_frames_writes_what_the_model_sees(video, tmp_path):
    out_dir = tmp_path / "frames"
    written = dump_frames(video, str(out_dir), TINY)
    plan = plan_cfr(70, 30.0, TINY.sampling)
    expected = {f"clip{k:04d}_frame{j:02d}.png" for k in range(len(plan)) for j in range(4)}
    expected |= {f"clip{k:04d}_sheet.png" for k in range(len(plan))}
    assert set(os.listdir(out_dir)) == expected and len(written) == len(expected)
    for spec in plan:
        for j, index in enumerate(spec.frame_indices):
            image = np.asarray(Image.open(out_dir / f"clip{spec.index:04d}_frame{j:02d}.png"))
            assert image.shape == (32, 32, 3)                           # resized and centre-cropped
            # the centre crop drops 5 px of 42 on each side: the cells stay readable after un-cropping
            assert samples.read_frame_index(np.pad(image, ((0, 0), (5, 5), (0, 0)), mode="edge")) == index
        sheet = Image.open(out_dir / f"clip{spec.index:04d}_sheet.png")
        assert sheet.size == (4 * 32 + 3 * 2, 32)


def test_contact_sheet_layout():
    frames = np.zeros((10, 4, 6, 3), dtype=np.uint8)
    frames[9] = 7
    sheet = contact_sheet(frames, columns=4, gap=1)
    assert sheet.shape == (3 * 5 - 1, 4 * 7 - 1, 3)
    assert (sheet[10:14, 7:13] == 7).all() and (sheet[10:14, 0:6] == 0).all() and (sheet[4] == 255).all()
