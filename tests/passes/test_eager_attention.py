"""transformers' eager attention (attn_implementation="eager") through the int8-shiftgelu recipe: BERT with an
attention_mask and GPT-2 (causal) from hwact.hf_suite's configs, exported with a dynamic batch, lower
integer-only and their ONNX export is bit-exact in onnxruntime.

Eager attention writes softmax(q·kᵀ·s + M) with M = where(mask, 0, finfo.min) built from the integer
attention_mask (BERT) or the causal positions (GPT-2), no SDPA node: canonicalize rewrites add(scores, M)
into where(mask, scores, finfo.min), fold-quant-scales lowers that to hwact.int_mask and shiftmax takes the
softmax."""

from __future__ import annotations

import collections

import numpy as np
import pytest
import torch

from hwact.backends.onnx import export_onnx, ort_session
from hwact.ir.graph import InputSpec, from_exported
from hwact.passes.manager import run_passes
from hwact.passes.recipes import RECIPES

pytest.importorskip("transformers")
from hwact import hf_suite  # noqa: E402


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def eager_graph(name: str):
    model, entry = hf_suite.build(name)
    model.model.set_attn_implementation("eager")
    inputs = entry.inputs(2, torch.Generator().manual_seed(0))
    batch = torch.export.Dim("batch", min=1, max=1024)
    ep = torch.export.export(model, inputs, dynamic_shapes=tuple({0: batch} for _ in inputs))
    specs = [InputSpec(n, tuple(t.shape), t.dtype, high=500 if n == "input_ids" else 2)
             for n, t in zip(entry.input_names, inputs)]
    return from_exported(ep, specs), entry, model


@pytest.mark.parametrize("name", ["bert", "gpt2"])
def test_eager_attention_lowers_integer_only(name, tmp_path):
    graph, entry, model = eager_graph(name)
    ops = census(graph)
    assert ops["aten.scaled_dot_product_attention.default"] == 0 and ops["aten.softmax.int"] == 2
    masks = [n for n in graph.fx.nodes if str(n.target) == "aten.where.ScalarOther"
             and n.args[2] == torch.finfo(torch.float32).min]
    assert len(masks) == 1   # the additive mask, shared by both layers

    batches = [entry.inputs(8, torch.Generator().manual_seed(seed)) for seed in (1, 2)]
    recipe = RECIPES["int8-shiftgelu"]
    graph, records = run_passes(graph, list(recipe.passes), {}, batches, postconditions=recipe.postconditions)
    ops = census(graph)
    assert ops["hwact.int_mask.default"] == 2 and ops["hwact.shiftmax.default"] == 2
    assert ops["aten.add.Tensor"] == 0 and ops["aten.where.ScalarOther"] == 0
    assert records[-1].cosine > 0.99   # vs the float model on the calibration batches

    path = export_onnx(graph, tmp_path / "model.onnx")
    session = ort_session(path)
    inputs = entry.inputs(5, torch.Generator().manual_seed(9))
    expected = graph(*inputs)
    expected = expected[0] if isinstance(expected, (tuple, list)) else expected
    got = session.run(None, {n: t.numpy() for n, t in zip(entry.input_names, inputs)})[0]
    assert np.array_equal(got, expected.numpy())
    agreement = hf_suite.agreement(model(*inputs).detach(), expected)
    assert agreement["cosine"] > 0.99
