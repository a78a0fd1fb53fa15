"""GPU check report: the issue's targets read off the results, and the whole report as Markdown."""
from __future__ import annotations

import math
from typing import Any

TARGETS = {
    "bf16_rel_err": ("bf16 autocast vs fp32, relative error of CLS and logits", "<= 2e-2"),
    "x_hf": ("ours / HF transformers clips/s at equal outputs (best variant, any batch)", ">= 2.5"),
    "tflops": ("TFLOP/s on a clip batch (best variant of ours)", ">= 400"),
    "actor_overhead_pct": ("actor path (`__call__`, plain upload) over the bare model, %", "<= 10"),
    "best_embed_overhead_pct": ("best `embed` upload over the bare model, %", "<= 10"),
}


def targets(report: dict) -> list[dict]:
    """One row per target: what was measured, where, and whether it is met (None: not measured)."""
    sections = {k: v.get("result") or {} for k, v in report.get("sections", {}).items()}
    measured = {
        "bf16_rel_err": _bf16_error(sections.get("precision", {})),
        "x_hf": _best(sections.get("throughput", {}).get("best_vs_hf", []), "x_hf",
                      lambda r: (r.get("cls_rel_err_vs_ours") or 0) <= 2e-2),
        "tflops": _best(sections.get("throughput", {}).get("rows", []), "tflops",
                        lambda r: r.get("variant", "").startswith("ours")),
        "actor_overhead_pct": _best([r for r in sections.get("embed", {}).get("rows", [])
                                     if r["path"].startswith("__call__")], "overhead_pct", lambda r: True, low=True),
        "best_embed_overhead_pct": _best([r for r in sections.get("embed", {}).get("rows", [])
                                          if r["path"].startswith("embed")], "overhead_pct", lambda r: True, low=True),
    }
    rows = []
    for key, (what, goal) in TARGETS.items():
        value, where = measured[key] or (None, "not measured")
        rows.append({"target": what, "goal": goal, "measured": value, "where": where,
                     "met": None if value is None else _meets(value, goal)})
    return rows


def _bf16_error(precision: dict) -> tuple[float, str] | None:
    for row in precision.get("rows", []):
        if row["variant"].startswith("ours bf16 autocast"):
            return max(row["cls_rel_err"], row["logits_rel_err"]), row["variant"]
    return None


def _best(rows: list[dict], key: str, keep, low: bool = False) -> tuple[float, str] | None:
    rows = [r for r in rows if isinstance(r.get(key), (int, float)) and keep(r)]
    if not rows:
        return None
    top = (min if low else max)(rows, key=lambda r: r[key])
    return top[key], f"batch {top.get('batch')}, {top.get('variant') or top.get('path')}"


def _meets(value: float, goal: str) -> bool:
    op, bound = goal.split()
    return value <= float(bound) if op == "<=" else value >= float(bound)


def markdown(report: dict) -> str:
    meta = report.get("meta", {})
    lines = [f"# GPU check — {meta.get('started', '')}", "",
             f"`{' '.join(map(str, meta.get('argv', [])))}` — preset {meta.get('preset')}, "
             f"budget {meta.get('budget_s')} s{', SMOKE (CPU, numbers mean nothing)' if meta.get('smoke') else ''}",
             "", "## Targets", "", *table(report.get("targets") or targets(report))]
    for name, record in report.get("sections", {}).items():
        lines += ["", f"## {name} — {record['status']} ({record.get('seconds', 0):.1f} s)", ""]
        if record["status"] != "ok":
            lines.append(f"    {record.get('error')}")
            continue
        lines += section_lines(record["result"])
    return "\n".join(lines) + "\n"


def section_lines(result: dict) -> list[str]:
    lines = []
    for key, value in result.items():
        if key == "rows" or isinstance(value, list) and value and isinstance(value[0], dict):
            lines += ["", f"{key}:", "", *table(value)] if key != "rows" else ["", *table(value)]
        elif isinstance(value, dict):
            lines.append(f"- {key}: " + ", ".join(f"{k} = {fmt(v)}" for k, v in value.items()))
        else:
            lines.append(f"- {key}: {fmt(value)}")
    return lines


def table(rows: list[dict]) -> list[str]:
    columns: list[str] = []
    for row in rows:
        columns += [c for c in row if c not in columns]
    if not columns:
        return ["(none)"]
    out = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    out += ["| " + " | ".join(fmt(row.get(c, "")) for c in columns) + " |" for row in rows]
    return out


def fmt(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        if math.isnan(value) or math.isinf(value):
            return str(value)
        return f"{value:.3g}" if abs(value) < 1e-2 or abs(value) >= 1e4 else f"{value:.4g}"
    return str(value).replace("|", "/").replace("\n", " ")
