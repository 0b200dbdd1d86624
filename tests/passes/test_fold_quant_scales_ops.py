"""fold-quant-scales' newer lowerings, each on a small model through calibrate + fold-quant-scales (and the
passes the int8 recipes run around them where the model needs one): embedding table lookups
(hwact.int_embedding), masked scores (hwact.int_mask, from a -inf fill or a transformers-style additive
mask built from integer ids), hardtanh / relu6 / clamp on codes, zero padding on codes, products of two
activations (hwact.int_mul); a where with a finite fill is not a mask.

For each: the op is in the lowered graph, the graph is integer-only, its outputs stay close to the float
model's on fresh inputs (the bar: max|err| <= 6 % and mean|err| <= 1.5 % of max|float output|, int8
activations on a few layers), and the ONNX export gives the integer graph's outputs bit for bit in
onnxruntime."""

from __future__ import annotations

import collections

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from hwact.backends.onnx import export_onnx, ort_session
from hwact.ir.graph import InputSpec, trace
from hwact.ir.summary import float_compute_nodes
from hwact.passes.manager import random_batches, run_passes

MIN = torch.finfo(torch.float32).min
MAX_ERR, MEAN_ERR = 0.06, 0.015


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def lowered(module, specs, before=(), after=(), integer=True):
    """module traced, then `before` + calibrate + fold-quant-scales + `after` (integer-only checked)."""
    torch.manual_seed(0)
    graph = trace(module.eval(), list(specs))
    batches = random_batches(graph.inputs, samples=256, batch=64)
    passes = [*before, "calibrate", "fold-quant-scales", *after]
    graph, _ = run_passes(graph, passes, {}, batches, postconditions=("integer-only",) if integer else ())
    return graph


def first(value):
    return value[0] if isinstance(value, (tuple, list)) else value


def check_close(module, graph, seeds=(21, 22)):
    for seed in seeds:
        inputs = graph.example_inputs(batch=16, seed=seed)
        expected, got = module(*inputs).detach(), first(graph(*inputs))
        err, peak = (got - expected).abs(), expected.abs().max()
        assert err.max() <= MAX_ERR * peak, (float(err.max()), float(peak))
        assert err.mean() <= MEAN_ERR * peak, (float(err.mean()), float(peak))


def check_onnx_bit_exact(graph, tmp_path, seeds=(31, 32)):
    path = export_onnx(graph, tmp_path / "model.onnx")
    session = ort_session(path)
    for seed in seeds:
        inputs = graph.example_inputs(batch=5, seed=seed)
        expected = first(graph(*inputs)).numpy()
        got = session.run(None, {spec.name: t.numpy() for spec, t in zip(graph.inputs, inputs)})[0]
        assert np.array_equal(got, expected)


def done(module, graph, tmp_path):
    assert float_compute_nodes(graph) == []
    check_close(module, graph)
    check_onnx_bit_exact(graph, tmp_path)


# ----- embeddings --------------------------------------------------------------------------------------
class Embed(nn.Module):
    """Token and segment lookups (int_embedding) plus a position table read with constant ids (cleanup folds
    that lookup into a constant, quantized offline)."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(1)
        self.table, self.segment, self.position = nn.Embedding(20, 8), nn.Embedding(2, 8), nn.Embedding(6, 8)
        self.head = nn.Linear(8, 4)

    def forward(self, ids, segments):
        return self.head(self.table(ids) + self.segment(segments) + self.position(torch.arange(ids.shape[1])))


def test_embedding_lookup(tmp_path):
    module = Embed()
    specs = [InputSpec("ids", (1, 6), torch.int64, high=20), InputSpec("segments", (1, 6), torch.int64, high=2)]
    graph = lowered(module, specs, before=("cleanup",))
    ops = census(graph)
    assert ops["hwact.int_embedding.default"] == 2 and ops["aten.embedding.default"] == 0
    lookups = [n for n in graph.fx.nodes if str(n.target) == "hwact.int_embedding.default"]
    assert {n.args[1].name for n in lookups} == {"ids", "segments"}
    assert all(graph.module.get_buffer(n.args[0].target).dtype == torch.int8 for n in lookups)
    done(module, graph, tmp_path)


# ----- masked scores -----------------------------------------------------------------------------------
class Attention(nn.Module):
    """Single-head attention; `mask`: 'causal' (where(tril, s, -inf)), 'ids' (a transformers eager mask
    where(ids != 0, 0, finfo.min) added to the scores) or 'finite' (where(tril, s, -100): not a mask)."""

    def __init__(self, mask: str):
        super().__init__()
        torch.manual_seed(2)
        self.q, self.k, self.v, self.out = (nn.Linear(8, 8) for _ in range(4))
        self.register_buffer("causal", torch.ones(6, 6, dtype=torch.bool).tril())
        self.mask = mask

    def forward(self, x, ids=None):
        s = self.q(x) @ self.k(x).transpose(-1, -2) * 0.35
        if self.mask == "causal":
            s = torch.where(self.causal, s, float("-inf"))
        elif self.mask == "finite":
            s = torch.where(self.causal, s, -100.0)
        else:
            keep = (ids != 0) | (torch.arange(ids.shape[1]) == 0)
            s = s + torch.where(keep[:, None, :], torch.zeros(()), MIN)
        return self.out(torch.softmax(s, -1) @ self.v(x))


X = InputSpec("x", (1, 6, 8))


def int_masks(graph):
    return [n for n in graph.fx.nodes if str(n.target) == "hwact.int_mask.default"]


def test_minus_inf_fill_becomes_int_mask(tmp_path):
    module = Attention("causal")
    graph = lowered(module, [X], after=("shiftmax",))
    (mask,) = int_masks(graph)
    assert mask.args[1].op == "get_attr" and mask.args[2] == -32768  # int16's lowest code
    assert census(graph)["aten.where.ScalarOther"] == 0
    done(module, graph, tmp_path)


def test_additive_mask_from_integer_ids_becomes_int_mask(tmp_path):
    module = Attention("ids")
    specs = [X, InputSpec("ids", (1, 6), torch.int64, high=3)]
    graph = lowered(module, specs, before=("canonicalize",), after=("shiftmax",))
    (mask,) = int_masks(graph)
    assert mask.args[1].meta["val"].dtype == torch.bool   # keep: computed from ids, no float mask left
    assert census(graph)["aten.add.Tensor"] == 0
    done(module, graph, tmp_path)


def test_where_with_a_finite_fill_is_not_a_mask():
    graph = lowered(Attention("finite"), [X], after=("shiftmax",), integer=False)
    assert int_masks(graph) == []
    (where,) = [n for n in graph.fx.nodes if str(n.target) == "aten.where.ScalarOther"]
    assert str(where.args[1].target) == "hwact.dequantize.default"   # a float island: -100 is a real score
    assert next(iter(where.users)).target == torch.ops.hwact.quantize.default
    assert [n.name for n in float_compute_nodes(graph)] == [where.name]


# ----- clamps, padding, products -----------------------------------------------------------------------
class Clamps(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.fc1, self.fc2, self.fc3, self.fc4 = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        h = F.hardtanh(self.fc1(x), -0.5, 0.5)
        h = F.relu6(self.fc2(h) * 8)
        h = torch.clamp(self.fc3(h), min=-0.2, max=0.3)
        return self.fc4(h)


def test_clamps_on_codes(tmp_path):
    module = Clamps()
    graph = lowered(module, [InputSpec("x", (1, 8))])
    ops = census(graph)
    assert ops["aten.hardtanh.default"] == 0 and ops["aten.relu6.default"] == 0
    clamps = [n for n in graph.fx.nodes if str(n.target) == "aten.clamp.default"]
    assert len(clamps) == 3 and all(str(c.args[0].target) == "hwact.int_linear.default" for c in clamps)
    assert all(isinstance(c.args[1], int) and isinstance(c.args[2], int) for c in clamps)
    done(module, graph, tmp_path)


class Padded(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.conv1, self.conv2 = nn.Conv2d(3, 4, 3), nn.Conv2d(4, 2, 3)

    def forward(self, x):
        return self.conv2(F.pad(self.conv1(x), (1, 2, 0, 1)))


def test_zero_padding_on_codes(tmp_path):
    module = Padded()
    graph = lowered(module, [InputSpec("x", (1, 3, 8, 8))], before=("canonicalize",))
    (pad,) = [n for n in graph.fx.nodes if str(n.target) == "aten.constant_pad_nd.default"]
    assert str(pad.args[0].target) == "hwact.int_conv2d.default" and pad.args[2] == 0
    done(module, graph, tmp_path)


class Product(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(5)
        self.a, self.b, self.head = nn.Linear(8, 8), nn.Linear(8, 8), nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.a(x) * torch.relu(self.b(x)))


def test_product_of_two_activations(tmp_path):
    module = Product()
    graph = lowered(module, [InputSpec("x", (1, 8))])
    (mul,) = [n for n in graph.fx.nodes if str(n.target) == "hwact.int_mul.default"]
    assert all(str(a.target) == "hwact.int_linear.default" for a in mul.args[:2])
    done(module, graph, tmp_path)


# ----- GroupNorm (canonicalize -> layer_norm + per-channel affine) through the whole int8 recipe --------
class ConvGroupNormConv(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(6)
        self.conv1, self.norm, self.conv2 = nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.Conv2d(8, 4, 3)
        with torch.no_grad():
            self.norm.weight.copy_(1 + 0.2 * torch.randn(8))
            self.norm.bias.copy_(0.2 * torch.randn(8))

    def forward(self, x):
        return self.conv2(self.norm(self.conv1(x)))


def test_group_norm_with_the_int8_shiftgelu_recipe(tmp_path):
    from hwact.passes.recipes import RECIPES

    module = ConvGroupNormConv().eval()
    recipe = RECIPES["int8-shiftgelu"]
    torch.manual_seed(0)
    graph = trace(module, [InputSpec("x", (1, 3, 8, 8))])
    batches = random_batches(graph.inputs, samples=256, batch=64)
    graph, _ = run_passes(graph, list(recipe.passes), {}, batches, postconditions=recipe.postconditions)
    ops = census(graph)
    assert ops["aten.group_norm.default"] == 0 and ops["hwact.i_layernorm.default"] == 1
    assert ops["hwact.int_mul.default"] == 1 and ops["hwact.int_add.default"] == 1   # x·w[c] + b[c]
    done(module, graph, tmp_path)
