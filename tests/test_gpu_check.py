"""The GPU check (benchmarks/gpu_check.py): its smoke mode runs every section on the CPU and writes a
complete report, and a section that fails is recorded while the next one runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECTIONS = ["env", "nvdec", "precision", "throughput", "embed", "max_batch", "sdpa", "cpu_decode", "nvdec_decode"]


def positive(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value > 0


def finite(value) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value) and value >= 0


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, os.path.join("benchmarks", "gpu_check.py"), str(out), "--smoke"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "[gpu_check] throughput: ok" in proc.stdout                 # progress is printed as it goes
    report = json.loads((out / "gpu_check.json").read_text())
    return report, (out / "gpu_check.md").read_text()


def test_every_section_runs_in_smoke_mode(smoke):
    report, _ = smoke
    assert list(report["sections"]) == SECTIONS
    failed = {k: v.get("error") for k, v in report["sections"].items() if v["status"] != "ok"}
    assert not failed
    assert report["meta"]["smoke"] is True and report["meta"]["preset"] == "tiny"


def test_model_numbers_are_present_and_sane(smoke):
    r = {k: v["result"] for k, v in smoke[0]["sections"].items()}
    precision = {row["variant"]: row for row in r["precision"]["rows"]}
    assert all(finite(row[k]) for row in precision.values() for k in ("cls_rel_err", "logits_rel_err"))
    assert precision["HF fp32 vs ours fp32"]["cls_rel_err"] < 1e-4      # same weights, same function
    assert 0 < precision["ours bf16 autocast (pipeline default)"]["cls_rel_err"] < 5e-2
    assert r["precision"]["bf16_weights_bit_identical_to_autocast"] is True
    assert {(row["kind"], row["dtype"]) for row in r["sdpa"]["rows"]} == {
        (k, d) for k in ("temporal", "spatial") for d in ("bf16 autocast", "fp32")}
    assert all("attention" in row["default_op"] for row in r["sdpa"]["rows"])
    rows = {(row["batch"], row["variant"]): row for row in r["throughput"]["rows"]}
    for batch in (1, 2):
        for variant in ("hf", "ours", "ours+bf16w", "ours+bf16w+compile"):
            row = rows[batch, variant]
            assert positive(row["clips_per_s"]) and positive(row["tflops"]) and positive(row["x_hf"]), row
            assert row["cls_rel_err_vs_ours"] < 5e-2
        assert rows[batch, "ours+bf16w"]["cls_rel_err_vs_ours"] == 0          # bit-identical by design
    assert r["max_batch"]["largest_fitting_batch"] >= 2


def test_embed_and_decode_numbers_are_present_and_sane(smoke):
    r = {k: v["result"] for k, v in smoke[0]["sections"].items()}
    paths = {row["path"]: row for row in r["embed"]["rows"]}
    assert "bare model (input ready on device)" in paths and "__call__ (a Ray batch, plain upload)" in paths
    assert all(positive(row["clips_per_s"]) for row in paths.values())
    assert all(row["max_abs_diff_vs_plain"] < 1e-4 for row in paths.values() if "overhead_pct" in row)
    decode = r["cpu_decode"]["rows"][-1]
    assert decode["decoders"] == os.cpu_count() and positive(decode["video_s_per_s"])
    assert decode["clips_per_decoder"] >= 1
    assert r["nvdec"]["libnvcuvid"] in (True, False)
    assert r["nvdec_decode"] == {"skipped": "needs CUDA"}


def test_targets_and_markdown(smoke):
    report, md = smoke
    assert len(report["targets"]) == 5
    measured = [t["measured"] for t in report["targets"]]      # an overhead may be below zero: noise
    assert all(isinstance(v, (int, float)) and math.isfinite(v) for v in measured), report["targets"]
    assert all(t["met"] in (True, False) for t in report["targets"])
    assert "## Targets" in md
    for name in SECTIONS:
        assert f"## {name} — ok" in md
    assert "| batch | variant |" in md


def test_a_failing_section_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import gpu_check

    def broken(ctx):
        raise torch_oom("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(gpu_check, "SECTIONS", [("first", broken, 0.5), ("second", lambda ctx: {"x": 1.0}, 0.5)])
    assert gpu_check.main([str(tmp_path), "--smoke", "--budget-s", "5"]) == 0
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    first, second = report["sections"]["first"], report["sections"]["second"]
    assert first["status"] == "error" and "out of memory" in first["error"] and "Traceback" in first["traceback"]
    assert second == {"status": "ok", "result": {"x": 1.0}, "seconds": second["seconds"]}
    assert "## first — error" in (tmp_path / "gpu_check.md").read_text()


def torch_oom(message: str) -> Exception:
    import torch

    return torch.OutOfMemoryError(message)
