"""report.json (machine-readable) and report.md (the same, as tables a person reads); versions."""

from __future__ import annotations

import json
import math
import platform
from pathlib import Path


def json_safe(value):
    """`value` as strict JSON data: NaN and infinite floats become None (JSON has no such numbers; a cosine
    of two zero outputs or a ratio over a zero time can legitimately be one), numpy scalars Python numbers."""
    if isinstance(value, dict):
        return {key: json_safe(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(item) for item in value]
    if hasattr(value, "item") and getattr(value, "ndim", None) == 0:  # numpy / torch scalars
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def to_json(value, **options) -> str:
    """Strict JSON text (never NaN or Infinity) of `value`; options go to json.dumps."""
    return json.dumps(json_safe(value), allow_nan=False, **options)


def versions() -> dict:
    import numpy
    import onnx
    import onnxruntime
    import torch

    import hwact

    return {"hwact": hwact.__version__, "torch": torch.__version__, "onnx": onnx.__version__,
            "onnxruntime": onnxruntime.__version__, "numpy": numpy.__version__,
            "python": platform.python_version()}


def machine() -> dict:
    import os

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "system": platform.system(), "machine": platform.machine()}


def _fmt(value) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if value is None:
        return "-"
    return str(value)


def table(rows: list[dict], columns: list[str] | None = None) -> str:
    if not rows:
        return "(none)\n"
    columns = columns or list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_fmt(r.get(c)) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def census_table(before: dict, after: dict) -> str:
    ops = sorted(set(before) | set(after))
    rows = [{"op": op, "before": before.get(op, 0), "after": after.get(op, 0)} for op in ops
            if before.get(op, 0) != after.get(op, 0)]
    unchanged = len(ops) - len(rows)
    return table(rows) + f"\n{unchanged} other op types unchanged.\n"


def render_markdown(report: dict) -> str:
    """A readable rendering of a convert report: input, passes, op changes, activations, ONNX check."""
    out = ["# hwact convert report\n"]
    src = report["input"]
    out.append(f"Input: `{src['path']}` ({src['format']}), inputs "
               + ", ".join(f"{k}: {v}" for k, v in src["input_shapes"].items())
               + (f", sha256 `{src['sha256'][:16]}…`" if src.get("sha256") else "") + "\n")
    if "target" in report:
        out.append(f"Target: `{report['target']}`\n")
    if report.get("passes"):
        out.append("## Passes (each verified against its input graph on calibration inputs)\n")
        out.append(table(report["passes"], ["name", "changed", "max_abs_err", "mean_abs_err", "cosine",
                                            "top1_agreement", "seconds", "note"]))
    if "ops_before" in report:
        out.append("## Op census changes\n")
        out.append(census_table(report["ops_before"], report["ops_after"]))
    if "activations_before" in report:
        out.append("## Activation sites\n")
        out.append(f"Before: {len(report['activations_before'])} sites, after: {len(report['activations_after'])}.\n")
        out.append(table(report["activations_after"], ["node", "op", "form", "module"]))
    if "onnx" in report:
        out.append("## ONNX export (verified with onnxruntime)\n")
        out.append(table([report["onnx"]]))
    if "target_support" in report:
        support = report["target_support"]
        out.append(f"## Target `{support['target']}`: {'deployable' if support['deployable'] else 'NOT deployable'}\n")
        out.append(table([{"op": op, "count": v["count"], "reason": v["reason"]}
                          for op, v in support["not_native"].items()]))
    if "integer" in report:
        integer = report["integer"]
        floats = integer["float_nodes"]
        out.append(f"## Integer lowering: {'integer-only' if not floats else 'float nodes left: ' + ', '.join(floats)}\n")
        out.append(table(integer["layers"]))
        if integer["nonlinear"]:
            out.append(table(integer["nonlinear"]))
    extra = {k: v for k, v in report.items() if k not in {"input", "target", "passes", "ops_before", "ops_after",
                                                          "activations_before", "activations_after", "onnx",
                                                          "target_support", "artifacts", "versions", "integer"}}
    for key, value in extra.items():
        out.append(f"## {key}\n")
        out.append(table(value) if isinstance(value, list) and value and isinstance(value[0], dict)
                   else table([value]) if isinstance(value, dict) and all(not isinstance(v, (dict, list)) for v in value.values())
                   else "```json\n" + to_json(value, indent=2, default=str) + "\n```\n")
    out.append("## Artifacts\n")
    out += [f"- `{a}`" for a in report.get("artifacts", [])]
    out.append("\n## Versions\n")
    out.append(", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items()) + "\n")
    return "\n".join(out)


def write_report(outdir: Path, report: dict) -> None:
    (outdir / "report.json").write_text(to_json(report, indent=2, default=str) + "\n")
    (outdir / "report.md").write_text(render_markdown(report))
