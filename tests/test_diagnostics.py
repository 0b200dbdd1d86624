"""Issue 14 (diagnostics): island preconditions name the node left in float, scale errors name their node and
pass, degenerate (all-zero) reference outputs warn instead of reporting cosine 0, and -inf mask constants of a
decomposed graph are not mistaken for bad calibration data."""

from __future__ import annotations

import json

import pytest
import torch

from hwact.errors import InputError, PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.ir.metrics import collect, compare
from hwact.passes.calibrate import Calibrate
from hwact.passes.i_layernorm import ILayerNorm
from hwact.passes.manager import random_batches, run_passes
from hwact.passes.shift_gelu import ShiftGelu
from hwact.quant.observers import HistogramObserver, MinMaxObserver

hw = torch.ops.hwact


def _lowered(module: torch.nn.Module, spec: InputSpec, passes=("calibrate", "fold-quant-scales")):
    graph = trace(module.eval(), [spec])
    graph, _ = run_passes(graph, list(passes), {}, random_batches(graph.inputs, 16, 8))
    return graph


class FromTokens(torch.nn.Module):
    """GELU fed by a linear whose input comes from token ids: nothing on that path is integer codes."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(6, 8)
        self.out = torch.nn.Linear(8, 3)

    def forward(self, ids):
        return self.out(torch.nn.functional.gelu(self.fc(torch.sin(ids.to(torch.float32)))))


def test_island_violation_names_the_float_producer_not_fold_quant_scales():
    spec = InputSpec("ids", (2, 6), torch.int64)
    before = trace(FromTokens().eval(), [spec])
    [line] = ShiftGelu().check(before)
    assert "run fold-quant-scales first" in line  # it has not run
    graph = _lowered(FromTokens(), spec)
    assert "hwact_integer" in graph.meta
    [line] = ShiftGelu().check(graph)
    assert "run fold-quant-scales first" not in line
    assert line.startswith("gelu (aten.gelu.default): its input comes from linear (aten.linear.default, fc), "
                           "which was not lowered to integers; the float path starts at ")
    assert "no pass lowers" in line
    with pytest.raises(PreconditionError) as caught:
        run_passes(graph, ["shift-gelu"], {}, random_batches(graph.inputs, 8, 8))
    assert caught.value.message.startswith("pass shift-gelu (after: none): precondition")
    assert "run fold-quant-scales first" not in caught.value.message


class Norm(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x):
        return self.head(self.norm(self.fc(x)))


def _tamper_island_output_scale(graph, scale: float) -> None:
    [quantize] = [n for n in graph.call_nodes() if n.target is hw.quantize.default
                  and n.args[0].target is torch.ops.aten.layer_norm.default]
    quantize.args = (quantize.args[0], scale, *quantize.args[2:])


def test_a_scale_error_names_the_island_its_op_module_and_pass():
    graph = _lowered(Norm(), InputSpec("x", (2, 8)))
    _tamper_island_output_scale(graph, 1e-80)
    [line] = ILayerNorm().check(graph)
    assert line.startswith("layer_norm (aten.layer_norm.default, norm): ") and "dyadic" in line
    with pytest.raises(PreconditionError) as caught:
        ILayerNorm()(graph)
    assert caught.value.message.startswith("i-layernorm: layer_norm (aten.layer_norm.default, norm): ")
    with pytest.raises(PreconditionError) as caught:
        run_passes(graph, ["i-layernorm"], {}, random_batches(graph.inputs, 8, 8))
    assert caught.value.message.startswith("pass i-layernorm (after: none): precondition")
    assert "layer_norm (aten.layer_norm.default, norm): " in caught.value.message


class Residual(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)

    def forward(self, x):
        return x + self.fc(x)


def test_an_op_failing_while_the_graph_runs_is_named():
    graph = _lowered(Residual(), InputSpec("x", (2, 8)))
    [add] = [n for n in graph.call_nodes() if n.target is hw.int_add.default]
    add.args = (add.args[0], add.args[1], 1e-80, *add.args[3:])
    graph.recompile()
    with pytest.raises(PreconditionError) as caught:
        run_passes(graph, ["cleanup"], {}, random_batches(graph.inputs, 8, 8))
    message = caught.value.message
    assert message.startswith("the graph given to the passes: the graph fails to run at int_add")
    assert "hwact.int_add.default" in message and "underflows" in message


class Dead(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 4)
        torch.nn.init.zeros_(self.fc.weight)
        torch.nn.init.zeros_(self.fc.bias)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_all_zero_outputs_warn_once_and_exact_passes_keep_cosine_one():
    graph = trace(Dead().eval(), [InputSpec("x", (2, 8))])
    warnings = []
    _, records = run_passes(graph, ["fold-bn", "cleanup", "calibrate"], {}, random_batches(graph.inputs, 16, 8),
                            warn=warnings.append)
    assert warnings == ["the model's outputs are all zero on the calibration data: cosine is meaningless; "
                        "check the weights/calibration"]
    assert all(r.cosine == 1.0 for r in records)
    assert records[0].details["warning"] == warnings[0]
    json.dumps([r.as_dict() for r in records], allow_nan=False)


def test_cosine_of_identical_zero_runs_is_one_and_of_one_zero_run_is_zero():
    zeros = collect([[torch.zeros(4, 3)]])
    ones = collect([[torch.ones(4, 3)]])
    assert compare(zeros, zeros)["cosine"] == 1.0
    assert compare(zeros, ones)["cosine"] == 0.0


def test_the_cli_prints_one_warning_line_for_a_dead_model(tmp_path, cli):
    torch.export.save(torch.export.export(Dead().eval(), (torch.randn(2, 8),)), tmp_path / "dead.pt2")
    code, stdout, stderr = cli("convert", tmp_path / "dead.pt2", "--recipe", "fold-bn", "-o", tmp_path / "out")
    assert code == 0, stderr
    assert stderr.count("warning: the model's outputs are all zero") == 1
    assert "cos 0.000000" not in stdout


class Masked(torch.nn.Module):
    """Attention scores masked with -inf (causal) before softmax."""

    def __init__(self):
        super().__init__()
        self.qk = torch.nn.Linear(8, 16)
        self.register_buffer("mask", torch.triu(torch.ones(5, 5, dtype=torch.bool), diagonal=1))

    def forward(self, x):
        q, k = self.qk(x).chunk(2, dim=-1)
        scores = (q @ k.transpose(-2, -1)).masked_fill(self.mask, float("-inf"))
        return torch.softmax(scores, dim=-1) @ x


def test_a_decomposed_graph_with_a_minus_inf_mask_calibrates(tmp_path):
    from hwact.load import load

    program = torch.export.export(Masked().eval(), (torch.randn(2, 5, 8),)).run_decompositions()
    torch.export.save(program, tmp_path / "masked.pt2")
    graph = load(str(tmp_path / "masked.pt2")).graph
    batch = graph.fixed_batch or 8
    graph, records = run_passes(graph, ["calibrate"], {}, random_batches(graph.inputs, 16, 8, fixed_batch=batch))
    calibration = graph.meta["hwact_calibration"]
    assert calibration["infinite_values"], calibration
    assert all(count > 0 for count in calibration["infinite_values"].values())
    ranged = [name for name in calibration["infinite_values"] if name in calibration["ranges"]]
    assert ranged  # the masked scores: a range of their finite values (an all -inf constant gets none)
    for name in ranged:
        assert torch.isfinite(torch.tensor(calibration["ranges"][name])).all()
    json.dumps(records[0].details, allow_nan=False)
    # graph inputs still must be finite
    bad = [(torch.full((batch, 5, 8), float("inf")),)]
    with pytest.raises(InputError, match="input 'x' holds NaN or infinite values"):
        Calibrate(calibration_batches=bad)(graph)


def test_observers_skip_infinite_values_only_when_asked_and_never_nan():
    x = torch.tensor([1.0, -2.0, float("-inf"), 3.0, float("inf")])
    for observer in (MinMaxObserver(), HistogramObserver()):
        with pytest.raises(InputError, match="NaN or infinite"):
            observer.observe(x)
        observer.observe(x, ignore_infinite=True)
        assert observer.infinite == 2 and observer.count == 3
        lo, hi = observer.range()
        assert -2.0 <= lo <= hi <= 3.0
        with pytest.raises(InputError, match="NaN"):
            observer.observe(torch.tensor([float("nan"), 1.0]), ignore_infinite=True)
