"""The `onnx` backend: one self-contained model.onnx (opset 20, dynamic batch), verified with onnxruntime.

Verification runs the ONNX model on the calibration batches and compares it with the graph it came from:
within 1e-4 (max abs) for a float graph; bit for bit for an integer graph (`hwact_integer` in its meta:
only the output dequantize is float, so every value must match exactly). `hwact bench` times the model
with onnxruntime (hwact/bench/ort_runner.py).
"""

from __future__ import annotations

from pathlib import Path

from hwact.backends.base import Backend, EmitContext, register
from hwact.backends.onnx import OPSET, export_onnx, verify
from hwact.ir.graph import Graph

FLOAT_TOLERANCE = 1e-4
MODEL = "model.onnx"


def is_integer(graph: Graph) -> bool:
    return "hwact_integer" in graph.meta


@register
class OnnxBackend(Backend):
    """One self-contained model.onnx (opset 20), verified with onnxruntime (bit-exact when integer)."""
    name = "onnx"

    def __init__(self, filename: str = MODEL, shown: str | None = None):
        self.filename = filename          # the file written into the output folder
        self.shown = shown or filename    # what errors call it (its final name, not a temporary one)

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        path = export_onnx(graph, Path(outdir) / self.filename)
        return {"path": self.filename, "opset": OPSET, "bytes": path.stat().st_size,
                "batch": graph.fixed_batch or "dynamic", "artifacts": [self.filename]}

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        integer = is_integer(graph)
        metrics = verify(graph, Path(outdir) / self.filename, context.batches, name=self.shown,
                         tolerance=0.0 if integer else FLOAT_TOLERANCE, reference_runs=context.reference)
        checked = {"ort_max_abs_err": metrics["max_abs_err"], "ort_cosine": metrics["cosine"],
                   "ort_top1_agreement": metrics["top1_agreement"]}
        if integer:
            checked["bit_exact"] = metrics["max_abs_err"] == 0.0
        return checked
