"""npu-softmax and npu-layernorm (and the int8-npu recipe they end): islands become hwact::npu_softmax /
hwact::npu_layernorm with the form the input bounds call for, a softmax over another dim is refused by name,
the zoo transformers stay close to float (numbers in the asserts), and the integer CPU backend, which has no
kernel for these ops, refuses them in one line."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F

from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.load import load
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.recipes import RECIPES

hw = torch.ops.hwact
PREPARE = ["calibrate", "fold-quant-scales"]


class Block(torch.nn.Module):
    """LayerNorm -> scores -> softmax over `dim`."""

    def __init__(self, dim: int = -1):
        super().__init__()
        self.norm, self.q, self.dim = torch.nn.LayerNorm(16), torch.nn.Linear(16, 16), dim

    def forward(self, x):
        y = self.norm(x)
        return torch.softmax(self.q(y) @ y.transpose(1, 2), dim=self.dim)


def _graph(dim: int = -1):
    torch.manual_seed(0)
    return trace(Block(dim), [InputSpec("x", (2, 12, 16))])


def census(graph):
    return collections.Counter(str(n.target) for n in graph.fx.nodes if n.op == "call_function")


def test_islands_become_npu_ops_with_their_records():
    graph = _graph()
    batches = random_batches(graph.inputs, samples=8, batch=4, seed=0)
    lowered, records = run_passes(graph, PREPARE + ["npu-layernorm", "npu-softmax"], {}, batches)
    ops = census(lowered)
    assert ops["hwact.npu_layernorm.default"] == 1 and ops["hwact.npu_softmax.default"] == 1
    assert not any("layer_norm" in op or "softmax.int" in op for op in ops)
    assert records[-1].cosine > 0.999 and records[-2].cosine > 0.999
    layers = {layer["pass"]: layer for layer in lowered.meta["hwact_nonlinear"]}
    assert layers["npu-softmax"]["wide"] is False                     # int8 scores: one table entry per code
    assert layers["npu-layernorm"]["channels"] == 16


def test_softmax_over_another_dim_is_refused_by_name():
    graph = _graph(dim=1)
    batches = random_batches(graph.inputs, samples=4, batch=4, seed=0)
    with pytest.raises(PreconditionError, match="softmax over dim 1 .* npu-softmax takes the last dim only"):
        run_passes(graph, PREPARE + ["npu-softmax"], {}, batches)


@pytest.mark.parametrize("model, cosine, top1", [("vit-tiny", 0.997, 0.94), ("swin-tiny", 0.9999, 0.98),
                                                 ("convnext-tiny", 0.9995, 0.97)])
def test_int8_npu_recipe_close_to_float(model, cosine, top1):
    """256 held-out random inputs, 16 calibration samples. Measured (cosine / top-1 agreement vs float):
    vit-tiny 0.99736 / 0.961 (int8-shiftgelu 0.99725 / 0.961), swin-tiny 0.99993 / 0.988 (0.99993 / 0.984),
    convnext-tiny 0.99962 / 0.980 (0.99961 / 0.977)."""
    graph = load(f"zoo:{model}").graph
    calib = random_batches(graph.inputs, samples=16, batch=8, seed=0)
    test = graph.example_inputs(batch=256, seed=11)
    want = graph(*test)
    lowered, _ = run_passes(graph.copy(), list(RECIPES["int8-npu"].passes), {}, calib,
                            postconditions=RECIPES["int8-npu"].postconditions)
    got = lowered(*test)
    assert F.cosine_similarity(got.flatten(1).double(), want.flatten(1).double()).mean() > cosine
    assert (got.argmax(1) == want.argmax(1)).double().mean() > top1


def test_integer_cpu_backend_refuses_npu_ops_in_one_line(tmp_path, cli):
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "int8-npu", "-o", out)
    assert code == 2
    assert "no kernel for hwact.npu_layernorm.default, hwact.npu_softmax.default" in stderr
    assert "Traceback" not in stderr and not out.exists()
