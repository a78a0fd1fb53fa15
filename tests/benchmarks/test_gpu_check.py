"""The GPU check (benchmarks/gpu_check.py): its smoke mode runs every section on the CPU and writes a
complete report, and a section that fails is recorded while the next one runs."""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SECTIONS = ["env", "nvdec", "precision", "throughput", "embed", "profile", "max_batch", "sdpa", "cpu_decode",
            "nvdec_decode"]


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
    assert 0 < precision["ours bf16 weights + autocast (pipeline default)"]["cls_rel_err"] < 5e-2
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
    assert "65,535" in r["max_batch"]["cap_reason"]
    prof = r["profile"]
    assert prof["batch"] == 2 and prof["calls"] >= 1 and positive(prof["ms_per_forward"])
    assert abs(sum(prof["shares"].values()) - 1) < 1e-6 and prof["shares"]["gemm"] > 0
    assert {row["class"] for row in prof["top"]} >= {"gemm"}
    for kind in ("temporal_attention", "spatial_attention"):                # one SDPA operator seen in each
        assert any("scaled_dot_product" in op for op in prof["sdpa_ops"][kind]), prof["sdpa_ops"]


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


def benchmarks_module(monkeypatch, name: str):
    monkeypatch.syspath_prepend(os.path.join(ROOT, "benchmarks"))
    import importlib

    return importlib.import_module(name)


@pytest.mark.parametrize("name, fits", [
    ("av-18.1.0-cp312-cp312-manylinux_2_17_x86_64.manylinux2014_x86_64.whl", True),
    ("pynvvideocodec-2.2.4-cp312-cp312-manylinux_2_28_x86_64.whl", True),
    ("einops-0.8.1-py3-none-any.whl", True),
    ("foo-1.0-cp39-abi3-manylinux_2_17_x86_64.whl", True),              # stable ABI from 3.9 on
    ("av-18.1.0-cp311-cp311-manylinux_2_17_x86_64.whl", False),          # another Python
    ("av-18.1.0-cp312-cp312-manylinux_2_28_aarch64.whl", False),         # another processor
    ("av-18.1.0-cp312-cp312-manylinux_2_34_x86_64.whl", False),          # a newer glibc than fetched for
    ("av-18.1.0-cp312-cp312-macosx_11_0_x86_64.whl", False),
    ("av-18.1.0.tar.gz", False),
])
def test_wheel_tags_are_checked_against_the_device_machine(monkeypatch, name, fits):
    wheels = benchmarks_module(monkeypatch, "gpu_wheels")
    assert (wheels.tag_problem(name) is None) == fits, wheels.tag_problem(name)


def fake_wheel(folder, name: str, version: str, tag: str, requires: tuple[str, ...] = ()) -> str:
    """A minimal installable wheel: one module `name` whose import sets VALUE."""
    import zipfile

    path = os.path.join(folder, f"{name}-{version}-{tag}.whl")
    info = f"{name}-{version}.dist-info"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(f"{name}/__init__.py", "VALUE = 1\n")
        z.writestr(f"{info}/METADATA", "Metadata-Version: 2.1\n" + f"Name: {name}\nVersion: {version}\n"
                   + "".join(f"Requires-Dist: {r}\n" for r in requires))
        z.writestr(f"{info}/WHEEL", f"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: {tag}\n")
        z.writestr(f"{info}/RECORD", "")
    return path


def test_each_wheel_installs_on_its_own_and_a_bad_one_is_skipped_with_its_reason(monkeypatch, tmp_path):
    wheels = benchmarks_module(monkeypatch, "gpu_wheels")
    folder, target = tmp_path / "whl", tmp_path / "site"
    folder.mkdir()
    fake_wheel(folder, "goodpkg", "1.0", "py3-none-any")
    fake_wheel(folder, "oldpy", "1.0", "cp310-cp310-manylinux_2_17_x86_64")
    fake_wheel(folder, "newtorch", "1.0", "py3-none-any", requires=("torch>=2.12",))
    fake_wheel(folder, "oldtorch", "1.0", "py3-none-any", requires=("torch==2.11.*", "numpy"))
    (folder / "broken-1.0-py3-none-any.whl").write_bytes(b"not a zip")
    outcome = wheels.install(str(folder), str(target))
    assert outcome["goodpkg-1.0-py3-none-any.whl"] == "installed"
    assert outcome["oldtorch-1.0-py3-none-any.whl"] == "installed"
    assert (target / "goodpkg" / "__init__.py").exists() and (target / "oldtorch").exists()
    assert "fit no Python 3.12" in outcome["oldpy-1.0-cp310-cp310-manylinux_2_17_x86_64.whl"]
    assert "needs torch>=2.12, the machine has 2.11" in outcome["newtorch-1.0-py3-none-any.whl"]
    assert outcome["broken-1.0-py3-none-any.whl"].startswith("skipped: unreadable wheel")
    assert not (target / "oldpy").exists() and not (target / "newtorch").exists()


def test_the_device_run_fits_its_limits_and_leaves_a_rerun():
    """BENCHMARKS.md's device command: its timeout holds the check's hard limit and the tests' with room,
    and a machine start plus two such runs fit in the 15 device minutes."""
    import re

    script = open(os.path.join(ROOT, "benchmarks", "gpu_run.sh")).read()
    budget = int(re.search(r"BUDGET_S=\$\{BUDGET_S:-(\d+)\}", script).group(1))
    tests = int(re.search(r"TESTS_S=\$\{TESTS_S:-(\d+)\}", script).group(1))
    assert "timeout -k 10 $((BUDGET_S + 45))" in script
    doc = open(os.path.join(ROOT, "BENCHMARKS.md")).read()
    timeout_s = int(re.search(r'`bash benchmarks/gpu_run.sh \$OUT`.*?`timeout_s: (\d+)`', doc, re.S).group(1))
    worst = 20 + (budget + 45 + 10) + (tests + 5)       # install, check (its timeout and kill), tests
    assert worst <= timeout_s and 120 + 2 * timeout_s <= 900, (worst, timeout_s)


def test_the_run_script_goes_on_without_pyav_and_records_the_wheels(tmp_path):
    """A carried PyAV that does not fit (here: no usable PyAV at all) skips the decode sections with the
    reason, and every model section still runs; wheels.json says what happened to each wheel."""
    folder, out, fake = tmp_path / "whl", tmp_path / "out", tmp_path / "fake"
    folder.mkdir()
    fake_wheel(folder, "av", "18.1.0", "cp311-cp311-manylinux_2_17_x86_64")
    (fake / "av").mkdir(parents=True)
    (fake / "av" / "__init__.py").write_text("raise ImportError('libavcodec.so.61: cannot open shared object')\n")
    env = {**os.environ, "OUT": str(out), "WHEELS": str(folder), "SITE": str(tmp_path / "site"),
           "PYTHONPATH": os.pathsep.join([str(fake), ROOT]), "BUDGET_S": "60", "TESTS_S": "60",
           "GPU_CHECK_ARGS": "--smoke --only env,precision,cpu_decode",
           "TESTS": "tests/model/test_accel.py::test_mean_and_std_are_made_once_per_device"}
    proc = subprocess.run(["bash", os.path.join(ROOT, "benchmarks", "gpu_run.sh")], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "gpu_run: gpu_check exit 0" in proc.stdout and "gpu_run: tests exit 0" in proc.stdout
    wheels = json.loads((out / "wheels.json").read_text())
    assert "fit no Python 3.12" in wheels["av-18.1.0-cp311-cp311-manylinux_2_17_x86_64.whl"]
    report = json.loads((out / "gpu_check.json").read_text())
    sections = report["sections"]
    assert sections["precision"]["status"] == "ok"
    assert "libavcodec" in sections["cpu_decode"]["result"]["skipped"]
    assert sections["env"]["result"]["wheels"] == wheels
    assert (out / "gpu_check.log").exists() and "1 passed" in (out / "tests.log").read_text()


def test_the_watchdog_ends_a_run_that_outlives_its_budget_and_keeps_what_it_measured(tmp_path):
    code = ("import sys, time; sys.path.insert(0, 'benchmarks'); import gpu_check;"
            "gpu_check.SECTIONS = [('quick', lambda ctx: {'x': 1}, 0.5), ('stuck', lambda ctx: time.sleep(60), 0.5)];"
            f"sys.exit(gpu_check.main([{str(tmp_path)!r}, '--smoke', '--budget-s', '1']))")
    env = {**os.environ, "GPU_CHECK_GRACE_S": "2",
           "PYTHONPATH": os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=120)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-2000:]
    report = json.loads((tmp_path / "gpu_check.json").read_text())
    assert report["sections"]["quick"]["result"] == {"x": 1}
    assert report["sections"]["stuck"]["error"].startswith("timed out")
