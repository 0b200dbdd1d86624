"""An integer graph's ONNX export (hwact/backends/onnx.py, _optimize_without_slice_split) runs what
torch.onnx.export(optimize=True) runs, without onnxscript's O(nodes²) slice-split rule and with constants
folded up to FOLD_LIMIT elements: the same outputs, every weight stored as the uint8 operand its integer
GEMM reads (no Cast/Add/Cast left for onnxruntime to fold at session start), fewer nodes."""

from __future__ import annotations

import numpy as np
import onnx
import torch

import hwact.backends.onnx as onnx_backend
from hwact.load import load
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.recipes import RECIPES


def gemm_operand_sources(path) -> list[str]:
    """For each MatMulInteger/ConvInteger: what its B operand is ('initializer UINT8' or the producing op)."""
    model = onnx.load(str(path))
    initializers = {i.name: onnx.TensorProto.DataType.Name(i.data_type) for i in model.graph.initializer}
    producers = {out: node.op_type for node in model.graph.node for out in node.output}
    return [f"initializer {initializers[node.input[1]]}" if node.input[1] in initializers else producers[node.input[1]]
            for node in model.graph.node if node.op_type in ("MatMulInteger", "ConvInteger")]


def test_integer_export_folds_weight_offsets_and_keeps_the_outputs(tmp_path, monkeypatch):
    graph = load("zoo:vit-tiny").graph
    recipe = RECIPES["int8-shiftgelu"]
    batches = random_batches(graph.inputs, 8, 4)
    graph, _ = run_passes(graph, list(recipe.passes), {}, batches, postconditions=recipe.postconditions)
    assert "hwact_integer" in graph.meta
    fast = onnx_backend.export_onnx(graph, tmp_path / "fast.onnx")

    export = torch.onnx.export
    monkeypatch.setattr(torch.onnx, "export", lambda *args, **kwargs: export(*args, **{**kwargs, "optimize": True}))
    monkeypatch.setattr(onnx_backend, "_optimize_without_slice_split", lambda model: None)
    full = onnx_backend.export_onnx(graph, tmp_path / "full.onnx")

    weights = sum(str(node.target) in ("hwact.int_linear.default", "hwact.int_conv2d.default")
                  for node in graph.fx.nodes)
    assert weights == 10           # vit-tiny: the patch conv, 4 linears in each of its 2 blocks, the head
    fast_sources, full_sources = gemm_operand_sources(fast), gemm_operand_sources(full)
    assert fast_sources.count("initializer UINT8") == weights
    # torch's default folding stops at 8,192 elements: larger weights keep their int8 -> uint8 chain (7 here)
    assert full_sources.count("initializer UINT8") == 3
    assert len(onnx.load(str(fast)).graph.node) <= len(onnx.load(str(full)).graph.node) - 2 * weights
    for args in batches:
        feed = {spec.name: a.numpy() for spec, a in zip(graph.inputs, args)}
        got = onnx_backend.ort_session(fast).run(None, feed)
        want = onnx_backend.ort_session(full).run(None, feed)
        assert all(np.array_equal(g, w) for g, w in zip(got, want))
