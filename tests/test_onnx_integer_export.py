"""An integer graph's ONNX export skips onnxscript's O(nodes²) slice-split rule (hwact/backends/onnx.py,
_optimize_without_slice_split) and writes the very file torch.onnx.export(optimize=True) wrote."""

from __future__ import annotations

import torch

import hwact.backends.onnx as onnx_backend
from hwact.load import load
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.recipes import RECIPES


def test_integer_export_is_the_file_full_optimization_writes(tmp_path, monkeypatch):
    graph = load("zoo:vit-tiny").graph
    recipe = RECIPES["int8-shiftgelu"]
    graph, _ = run_passes(graph, list(recipe.passes), {}, random_batches(graph.inputs, 8, 4),
                          postconditions=recipe.postconditions)
    assert "hwact_integer" in graph.meta
    fast = onnx_backend.export_onnx(graph, tmp_path / "fast.onnx")

    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: export(*args, **{**kwargs, "optimize": True}))
    monkeypatch.setattr(onnx_backend, "_optimize_without_slice_split", lambda model: None)
    full = onnx_backend.export_onnx(graph, tmp_path / "full.onnx")
    assert fast.read_bytes() == full.read_bytes()
