"""`vidfeat demo` as a user runs it (CLI, subprocess, embedded Ray): a console with only our lines, Ray's
logs in the printed log file, and the report it writes, loaded in a real browser (headless Chromium)."""
from __future__ import annotations

import io
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from browser import Chromium, chromium_path
from pipeline.synthetic.demo_set import SAMPLES
from pipeline.synthetic.samples import write_index_video
from pipeline.read.parts import read_table

from conftest import ray_env

# What Ray's console output looks like: Python records in Ray's format, C++ lines, Ray Data progress and
# plan lines, worker output forwarded to the driver, and the notices seen on this console before.
RAY_LINES = [re.compile(p) for p in (
    r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}\s+(DEBUG|INFO|WARNING|ERROR|CRITICAL)\b",
    r"^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} [DIWEF] \d+ \d+\]",
    r"\.(py|cc|h):\d+", r"^\((\w+ )?pid=\d+", r"Token authentication", r"logging_progress",
    r"Execution plan of Dataset", r"Running Dataset", r"constructor arguments", r"Started a local Ray",
    r"ray\.data|ray_data|Ray Data", r"\[dataset\]", r"it/s\]|%\|",
)]


def ray_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if any(p.search(line) for p in RAY_LINES)]


def demo_env(root) -> dict:
    """The loopback test environment, but with RAY_AUTH_MODE unset as on a user's machine, so that
    `ray.init` prints its token-authentication notice (the token itself comes from RAY_AUTH_TOKEN)."""
    env = {**ray_env(), "VIDFEAT_LOG_DIR": str(root / "logs"), "VIDFEAT_PROGRESS_INTERVAL_S": "1"}
    env.pop("RAY_AUTH_MODE")
    return env


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo")
    done = subprocess.run([sys.executable, "-m", "pipeline", "demo", "--out", str(root / "demo")],
                          env=demo_env(root), capture_output=True, text=True, timeout=500)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return root, done


def printed_path(label: str, stdout: str) -> str:
    match = re.search(rf"^{label}: (\S+)", stdout, re.M)
    assert match, f"no '{label}:' line in\n{stdout}"
    return match.group(1)


def test_console_shows_only_our_lines_and_the_summary(demo):
    root, done = demo
    assert ray_lines(done.stdout) == [] and ray_lines(done.stderr) == []
    assert done.stderr == "", done.stderr                                   # not even one stray line
    out = done.stdout
    n = len(SAMPLES)
    assert f"extracting {n} videos (0 of {n} already done or failed)" in out and "on Ray: 1 node" in out
    assert f"videos: {n} ok, 0 failed, 0 skipped (of {n})" in out and "time per stage" in out
    progress = [line for line in out.splitlines() if line.startswith("videos ") and " | clips " in line]
    assert progress and progress[-1].startswith(f"videos {n}/{n} | clips ") and progress[-1].endswith("done")
    assert "\r" not in out                                                  # not a terminal: whole lines
    log = open(printed_path("Ray's logs", out)).read()
    assert os.path.dirname(printed_path("Ray's logs", out)) == str(root / "logs")
    assert "Token authentication is enabled" in log and "Execution plan of Dataset" in log
    assert os.path.exists(printed_path("report", out))


def test_the_samples_look_like_video_and_even_random_weights_pair_them(demo):
    """Each sample's nearest video (cosine of the random-weight tiny model's video embeddings) is the other
    stretch of its own source, and the frames are pictures (many colours), not block patterns."""
    root, _ = demo
    table = read_table(str(root / "demo" / "features"), "videos", ["video_id", "embedding"])
    ids = table.column("video_id").to_pylist()
    emb = np.stack(table.column("embedding").to_numpy(zero_copy_only=False)).astype(np.float64)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    sim = emb @ emb.T
    np.fill_diagonal(sim, -np.inf)
    names = [s.name for s in SAMPLES]
    partner = {names[i]: names[i ^ 1] for i in range(len(names))}               # pairs: (0, 1), (2, 3), ...
    assert sorted(ids) == sorted(names)
    assert {v: ids[int(np.argmax(sim[i]))] for i, v in enumerate(ids)} == {v: partner[v] for v in ids}
    import av

    with av.open(str(root / "demo" / "samples" / names[2])) as container:
        frame = next(container.decode(video=0)).to_ndarray(format="rgb24")
    assert len(np.unique(frame.reshape(-1, 3), axis=0)) > 200                  # a picture, not black/white


def test_verbose_shows_rays_logs(tmp_path):
    os.makedirs(tmp_path / "videos")
    write_index_video(str(tmp_path / "videos" / "one.mp4"), 20)
    cmd = [sys.executable, "-m", "pipeline", "extract", str(tmp_path / "videos"), "--out", str(tmp_path / "out"),
           "--preset", "tiny", "--checkpoint", "random", "--verbose"]
    done = subprocess.run(cmd, env=demo_env(tmp_path), capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "Execution plan of Dataset" in done.stderr and "Token authentication is enabled" in done.stderr
    assert "videos: 1 ok" in done.stdout


@pytest.fixture(scope="module")
def browser():
    if chromium_path() is None:
        why = "Chromium is missing: `apt-get install chromium` (.ci/run installs it), or set VIDFEAT_CHROMIUM"
        if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
            pytest.fail(why)                       # CI installs it: missing there is a broken CI, not a skip
        pytest.skip(why + "; the report's browser check did not run (CI runs it)")
    with Chromium() as chromium:
        yield chromium


def test_report_in_a_real_browser(demo, browser):
    root, done = demo
    report = printed_path("report", done.stdout)
    page = browser.load("file://" + os.path.abspath(report))
    assert page.errors == []
    assert len(page.images) == 4 * (1 + 4) and all(i["ok"] for i in page.images), page.images  # 4 queries
                                                                                  # × (itself + 4 nearest)
    assert all(u.startswith("data:") or u == "file://" + os.path.abspath(report) for u in page.requests)
    from PIL import Image

    shot = np.asarray(Image.open(io.BytesIO(page.screenshot)).convert("L"))
    assert shot.shape[0] > 500 and shot.std() > 20 and len(np.unique(shot)) > 20      # not blank
