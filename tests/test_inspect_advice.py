"""Issue 14: `hwact inspect`'s advice for an integer-only target comes from one table,
hwact.passes.lowerable.INT8_LOWERABLE: "lower it with --recipe int8-shiftgelu (<pass>)" only for an op a pass
of that recipe lowers, "no integer lowering exists for this op" for any other; and what the table calls
lowerable, a convert with the recipe does lower."""

from __future__ import annotations

import json

import pytest
import torch

from hwact.ir.graph import op_name
from hwact.ir.summary import float_compute_nodes
from hwact.passes.base import all_passes
from hwact.passes.lowerable import INT8_LOWERABLE, INT8_RECIPE, lowering_advice
from hwact.passes.recipes import RECIPES


class Mixed(torch.nn.Module):
    """linear, GELU, LayerNorm (lowerable) and sigmoid, sub (no integer lowering)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc(x))
        return self.norm(h) - torch.sigmoid(h)


def _npu_lines(stdout: str) -> dict[str, str]:
    """op -> its line under '- npu-int8' in inspect's text output."""
    lines = stdout.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("- npu-int8"))
    block = []
    for line in lines[start + 1:]:
        if not line.startswith("    "):
            break
        block.append(line.strip())
    return {line.split(" ", 1)[0]: line for line in block}


def test_every_pass_the_table_names_runs_in_the_recipe_it_advises():
    assert INT8_RECIPE in RECIPES
    assert set(INT8_LOWERABLE.values()) <= set(RECIPES[INT8_RECIPE].passes) <= set(all_passes())


def test_inspect_advises_the_recipe_only_for_ops_it_lowers(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    path = tmp_path / "mixed.pt2"
    torch.export.save(program, path)
    code, stdout, stderr = cli("inspect", path)
    assert code == 0, stderr
    npu = _npu_lines(stdout)
    for op in ("aten.linear.default", "aten.gelu.default", "aten.layer_norm.default"):
        assert op in npu, stdout
        assert f"lower it with --recipe int8-shiftgelu ({INT8_LOWERABLE[op]}" in npu[op]
        assert "no integer lowering" not in npu[op]
    for op in ("aten.sigmoid.default", "aten.sub.Tensor"):
        assert op in npu, stdout
        assert "no integer lowering exists for this op" in npu[op]
        assert "--recipe" not in npu[op]
    assert "int8-relu or int8-shiftgelu" not in stdout
    code, stdout, _ = cli("inspect", path, "--json")
    reasons = {op: entry["reason"] for op, entry in json.loads(stdout)["targets"]["npu-int8"]["not_native"].items()}
    assert reasons["aten.sigmoid.default"].endswith("; " + lowering_advice("aten.sigmoid.default"))
    assert reasons["aten.gelu.default"].endswith("; " + lowering_advice("aten.gelu.default"))


def test_a_target_with_float_units_gets_no_integer_advice(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    torch.export.save(program, tmp_path / "mixed.pt2")
    code, stdout, _ = cli("inspect", tmp_path / "mixed.pt2", "--json")
    assert code == 0
    assert json.loads(stdout)["targets"]["cpu"]["deployable"] is True


@pytest.mark.slow
@pytest.mark.parametrize("model", ["vit-tiny", "cnn-tiny"])
def test_what_inspect_calls_lowerable_the_recipe_lowers(model):
    """Every op of the float graph that INT8_LOWERABLE lists computes in integers after the recipe's passes
    (run without the integer-only postcondition, so a miss names its op instead of stopping the convert)."""
    from hwact.load import load
    from hwact.passes.manager import random_batches, run_passes

    graph = load(f"zoo:{model}").graph
    listed = {op_name(node) for node in graph.call_nodes()} & set(INT8_LOWERABLE)
    assert listed
    batches = random_batches(graph.inputs, 16, 8, fixed_batch=graph.fixed_batch)
    graph, _ = run_passes(graph, list(RECIPES[INT8_RECIPE].passes), {}, batches)
    still_float = {op_name(node) for node in float_compute_nodes(graph)}
    assert not (listed & still_float), f"listed as lowerable but left in float: {sorted(listed & still_float)}"


@pytest.mark.slow
def test_convert_with_the_advised_recipe_leaves_no_float_node(tmp_path, cli):
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", INT8_RECIPE, "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["integer"]["float_nodes"] == []
    ops_before = set(report["ops_before"]) & set(INT8_LOWERABLE)
    assert {"aten.gelu.default", "aten.layer_norm.default", "aten.softmax.int", "aten.linear.default"} <= ops_before
