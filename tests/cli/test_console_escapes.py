"""No control character from the data reaches the terminal (pipeline.text.printable): the run summary,
`vidfeat status` and `vidfeat verify` print hostile ids, uris, errors and paths as visible escapes,
one failure per line, and leave ordinary Unicode as it is."""
from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import unicodedata

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.store.commit import provenance, write_part
from pipeline.config import Config
from pipeline.cli.console import failure_lines, print_summary
from pipeline.text import printable
from pipeline.store.ledger import Ledger

from conftest import ray_env
from featurekit import build_output

TITLE_AND_CLEAR = "\x1b[2J\x1b]0;title\x07"
HOSTILE = [TITLE_AND_CLEAR + ".mp4", "two\nlines\r\tx", "rtl\u202eevil\u2066x\u2069",
           "nel\x85csi\x9b31m", "del\x7f", "bad-utf8-\udcff", "zw\u200bsp\ufeff", "ls\u2028ps\u2029"]
ORDINARY = ["café", "東京タワー", "e\u0301 (combining)", "Ελληνικά", "עברית ومرحبا", "👨\u200d👩\u200d👧 family",
            "🏴\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f flag", "❤\ufe0f",
            "\u00a0nbsp \u3000wide", "back\\slash", "plain ascii.mp4", "private\ue000use"]
BIDI = {chr(c) for c in [*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F, 0x061C]}


def safe(text: str) -> bool:
    """Nothing a terminal acts on: no C0/C1/DEL, no bidi control, no line/paragraph separator, and
    encodable as UTF-8 (no lone surrogate)."""
    text.encode("utf-8")
    return not any(unicodedata.category(c) in ("Cc", "Zl", "Zp") or c in BIDI for c in text)


def assert_terminal_safe(data: bytes) -> None:
    """The bytes a command printed: no byte below 0x20 but newline, no DEL, no C1 control once decoded."""
    assert not [b for b in data if (b < 0x20 and b != 0x0A) or b == 0x7F], data
    assert not [c for c in data.decode("utf-8") if 0x80 <= ord(c) <= 0x9F], data


@pytest.mark.parametrize("text", HOSTILE)
def test_hostile_text_is_escaped_on_one_line(text):
    shown = printable(text)
    assert safe(shown) and "\n" not in shown and shown.isprintable()
    assert "\\" in shown


def test_escapes_are_the_familiar_ones():
    assert printable(TITLE_AND_CLEAR) == "\\x1b[2J\\x1b]0;title\\x07"
    assert printable("a\nb\tc\x00\x7f\x9b") == "a\\nb\\tc\\x00\\x7f\\x9b"
    assert printable("x\u202ey") == "x\\u202ey" and printable("bad\udcff") == "bad\\udcff"
    assert printable(None) == "None" and printable(7) == "7"


@pytest.mark.parametrize("text", ORDINARY)
def test_ordinary_unicode_is_unchanged(text):
    assert printable(text) == text


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(codec=None, exclude_categories=())))
def test_any_text_comes_out_safe_and_keeps_what_is_safe(text):
    shown = printable(text)
    assert safe(shown)
    kept = "".join(c for c in text if unicodedata.category(c) not in ("Cc", "Cs", "Zl", "Zp", "Cf"))
    assert all(c in shown for c in kept)
    if all(unicodedata.category(c)[0] in "LMNPS" or c == " " for c in text):
        assert shown == text                          # letters, marks, numbers, punctuation, symbols


def hostile_failures(n: int = 3) -> list[dict]:
    return [{"video_id": f"{HOSTILE[i % len(HOSTILE)]}-{i}", "uri": f"/v/{HOSTILE[(i + 1) % len(HOSTILE)]}",
             "stage": "decode", "error": f"corrupt: {HOSTILE[(i + 2) % len(HOSTILE)]}"} for i in range(n)]


def test_summary_prints_each_hostile_failure_on_one_escaped_line():
    out = io.StringIO()
    failures = hostile_failures(len(HOSTILE))
    summary = {"ok": 0, "failed": len(failures), "skipped": 0, "total": len(failures), "clips": 0,
               "video_hours": 0.0, "wall_s": 1.0, "video_s_per_s": 0.0, "decode_s": 0.0, "infer_s": 0.0,
               "commit_s": 0.0, "devices": ["cuda:0\x1b[31m"], "failures": failures}
    print_summary(summary, out="/o/" + TITLE_AND_CLEAR, stream=out)
    assert_terminal_safe(out.getvalue().encode("utf-8"))
    lines = out.getvalue().splitlines()
    assert sum(line.startswith("  failed: ") for line in lines) == len(failures)
    assert failure_lines(failures, len(failures), None)[0] == (
        "  failed: \\x1b[2J\\x1b]0;title\\x07.mp4-0 [decode] corrupt: rtl\\u202eevil\\u2066x\\u2069")


def run_cli_bytes(*args: str) -> subprocess.CompletedProcess:
    """`python -m pipeline ARGS`, its stdout and stderr as bytes (exactly what a terminal would get)."""
    return subprocess.run([sys.executable, "-m", "pipeline", *args], env=ray_env(), capture_output=True, timeout=300)


def write_failures_only(out: str, failures: list[dict]) -> None:
    """A committed output holding one part of failures only (no Ray, no model)."""
    config = Config.from_preset("tiny", checkpoint="random")
    prov = provenance(config, "sha-test", "fp-test", "escapes")
    ledger = Ledger(out)
    write_part(ledger, "part-escapes-00000", [], {}, failures, prov)
    ledger.record("part-escapes-00000", [], failures)


@pytest.fixture(scope="module")
def hostile_output(tmp_path_factory):
    """A finished output at a path with escapes in its name, holding hostile failures as well."""
    root = tmp_path_factory.mktemp("escapes")
    kit = build_output(str(root / "kit"), per_class=1, videos_per_part=2)
    out = str(root / f"out{TITLE_AND_CLEAR}\u202e")
    shutil.copytree(kit.out, out)
    write_failures_only(out, hostile_failures())
    return out


@pytest.mark.parametrize("command", [["status"], ["verify"], ["status", "--json"], ["verify", "--json"]])
def test_status_and_verify_print_no_control_character(hostile_output, command):
    done = run_cli_bytes(command[0], hostile_output, *command[1:])
    assert done.returncode == 0, done.stderr
    assert_terminal_safe(done.stdout)
    assert_terminal_safe(done.stderr)
    if command == ["status"]:
        text = done.stdout.decode()
        assert text.startswith(printable(hostile_output) + ": ")
        assert sum(line.startswith("  failed: ") for line in text.splitlines()) == 4   # 3 + the kit's one


def test_error_messages_are_escaped(tmp_path):
    typo = str(tmp_path / f"typo{TITLE_AND_CLEAR}\n")
    done = run_cli_bytes("verify", typo)
    assert done.returncode == 2
    assert_terminal_safe(done.stderr)
    assert done.stderr.decode().count("\n") == 1 and printable(typo) in done.stderr.decode()
    assert not os.path.exists(typo)


def test_console_log_lines_are_escaped_the_log_file_keeps_the_record(capsys, tmp_path):
    import logging

    from pipeline.cli.console import StderrHandler, configure_logging

    configure_logging(verbose=False)
    file_handler = logging.FileHandler(tmp_path / "run.log", encoding="utf-8")
    logging.getLogger().addHandler(file_handler)
    try:
        logging.getLogger("pipeline.store.ledger").warning("skipping %s", TITLE_AND_CLEAR)
    finally:
        logging.getLogger().removeHandler(file_handler)
        file_handler.close()
        for handler in [h for h in logging.getLogger().handlers if isinstance(h, StderrHandler)]:
            logging.getLogger().removeHandler(handler)
    err = capsys.readouterr().err
    assert "skipping \\x1b[2J\\x1b]0;title\\x07" in err and "\x1b" not in err
    assert TITLE_AND_CLEAR in (tmp_path / "run.log").read_text()
