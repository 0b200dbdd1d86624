import pytest
import torch
import torch.nn as nn

from hwact import models
from hwact.errors import InputError
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.calibrate import RANGE_KEY, float_nodes
from hwact.passes.manager import random_batches, run_passes


class Small(nn.Module):
    def __init__(self):
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.fc2 = nn.Linear(8, 3)

    def forward(self, x):
        return self.fc2(torch.relu(self.fc1(x)))


@pytest.fixture(scope="module")
def vit_digits():
    module, specs = models.build("vit-digits")
    return trace(module, specs)


@pytest.mark.parametrize("method", ["minmax", "percentile", "mse"])
def test_calibrate_annotates_every_float_node_of_vit_digits(vit_digits, method):
    graph = vit_digits.copy()
    batches = random_batches(graph.inputs, samples=32, batch=16)
    graph, records = run_passes(graph, ["calibrate"], {"calib_method": method}, batches)
    nodes = float_nodes(graph)
    assert len(nodes) > 80
    assert records[0].changed == len(nodes) and records[0].max_abs_err == 0.0
    for node in nodes:
        lo, hi = node.meta[RANGE_KEY]
        assert isinstance(lo, float) and isinstance(hi, float) and lo <= hi, node.name
    # int-valued nodes (sym_size) and get_attr weights are not annotated
    assert all(RANGE_KEY not in n.meta for n in graph.fx.nodes if n.op == "get_attr")
    summary = graph.meta["hwact_calibration"]
    assert {k: summary[k] for k in ("method", "samples", "nodes")} == {"method": method, "samples": 32, "nodes": len(nodes)}
    # the ranges reach the pass's record (report.json "passes"[i]["details"])
    assert records[0].details["hwact_calibration"]["ranges"] == {n.name: list(n.meta[RANGE_KEY]) for n in nodes}
    # annotations survive a copy of the graph (later passes work on copies)
    assert sum(RANGE_KEY in n.meta for n in graph.copy().fx.nodes) == len(nodes)


def test_minmax_ranges_are_the_exact_extremes_of_each_node():
    net = Small().eval()
    graph = trace(net, [InputSpec("x", (1, 4))])
    generator = torch.Generator().manual_seed(0)
    batches = [(torch.randn(5, 4, generator=generator) * (i + 1),) for i in range(4)]
    graph, changed = make_pass("calibrate", {"calibration_batches": batches})(graph)
    assert changed == 4  # x, fc1, relu, fc2
    # batch by batch, as the pass sees them: one GEMM over all 20 rows may round differently
    x = torch.cat([b[0] for b in batches])
    hidden = torch.cat([net.fc1(b[0]) for b in batches])
    output = torch.cat([net(b[0]) for b in batches])
    expected = {"x": x, "linear": hidden, "relu": torch.relu(hidden), "linear_1": output}
    for node in float_nodes(graph):
        tensor = expected[node.name].detach()
        assert node.meta[RANGE_KEY] == (tensor.min().item(), tensor.max().item()), node.name
    assert float_nodes(graph)[2].meta[RANGE_KEY][0] == 0.0  # relu output never negative


def test_percentile_range_is_inside_minmax_range():
    graph = trace(Small().eval(), [InputSpec("x", (1, 4))])
    batches = random_batches(graph.inputs, samples=256, batch=64)
    minmax, _ = make_pass("calibrate", {"calibration_batches": batches})(graph.copy())
    pct, _ = make_pass("calibrate", {"calibration_batches": batches, "calib_method": "percentile"})(graph.copy())
    for a, b in zip(float_nodes(minmax), float_nodes(pct)):
        (lo, hi), (plo, phi) = a.meta[RANGE_KEY], b.meta[RANGE_KEY]
        assert lo <= plo <= phi <= hi


def test_bad_input_errors():
    graph = trace(Small().eval(), [InputSpec("x", (1, 4))])
    with pytest.raises(InputError, match="unknown calibration method 'kl'"):
        make_pass("calibrate", {"calibration_batches": [(torch.randn(2, 4),)], "calib_method": "kl"})
    with pytest.raises(InputError, match="no calibration batches"):
        make_pass("calibrate", {})(graph)
    assert make_pass("calibrate", {}).check(graph) == ["graph: no calibration batches were given"]
    with pytest.raises(InputError, match=r"batch 1 input 'x' has shape \(2, 5\), the model expects \(N, 4\)"):
        make_pass("calibrate", {"calibration_batches": [(torch.randn(2, 4),), (torch.randn(2, 5),)]})(graph)
    with pytest.raises(InputError, match="batch 0 has 2 inputs, the model takes 1"):
        make_pass("calibrate", {"calibration_batches": [(torch.randn(2, 4), torch.randn(2, 4))]})(graph)
    bad = torch.randn(2, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(InputError, match="batch 0 input 'x' holds NaN"):
        make_pass("calibrate", {"calibration_batches": [(bad,)]})(graph)


def test_overflowing_node_is_named():
    class Overflow(nn.Module):
        def forward(self, x):
            return torch.exp(x * 1000.0)

    graph = trace(Overflow().eval(), [InputSpec("x", (1, 3))])
    with pytest.raises(InputError, match="calibrate: node exp: tensor holds NaN or infinite"):
        make_pass("calibrate", {"calibration_batches": [(torch.ones(2, 3),)]})(graph)


def test_cli_convert_with_calibrate(cli, tmp_path):
    code, out, err = cli("convert", "zoo:vit-digits", "--passes", "calibrate", "--calib-method", "percentile",
                         "-o", tmp_path / "out")
    assert code == 0, err
    assert "calibrate" in out
    code, out, err = cli("convert", "zoo:vit-digits", "--passes", "calibrate", "--calib-method", "kl",
                         "-o", tmp_path / "out2")
    assert code == 2
