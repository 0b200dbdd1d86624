"""Issue 14: `hwact inspect`'s advice for an integer-only target comes from one table,
hwact.passes.lowerable.INT8_LOWERABLE: "lower it with --recipe int8-shiftgelu (<pass>)" only for an op a pass
of that recipe lowers, "no integer lowering exists for this op" for any other; and what the table calls
lowerable, a convert with the recipe does lower (zoo models, and the eleven Hugging Face models of
hwact.hf_suite: there also every op the recipe takes to integers is one the table lists)."""

from __future__ import annotations

import json

import pytest
import torch

from hwact.ir.graph import op_name
from hwact.ir.summary import float_compute_nodes, is_bookkeeping
from hwact.passes.base import all_passes
from hwact.passes.lowerable import INT8_CONDITIONS, INT8_LOWERABLE, INT8_RECIPE, lowering_advice
from hwact.passes.recipes import RECIPES


class Mixed(torch.nn.Module):
    """linear, GELU, LayerNorm, sigmoid (lowerable) and exp, sub (no integer lowering)."""

    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(8, 8)
        self.norm = torch.nn.LayerNorm(8)

    def forward(self, x):
        h = torch.nn.functional.gelu(self.fc(x))
        return self.norm(h) - torch.sigmoid(h) * torch.exp(h)


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
    recipe = RECIPES[INT8_RECIPE].passes
    assert set(recipe) <= set(all_passes())
    for op, passes in INT8_LOWERABLE.items():
        named = passes.split(" + ")
        assert set(named) <= set(recipe), op
        assert named == sorted(named, key=recipe.index), f"{op}: {passes} not in recipe order"
    assert set(INT8_CONDITIONS) <= set(INT8_LOWERABLE)


def test_the_table_names_the_newer_lowerings():
    """Issue 14: what canonicalize, decompose-sdpa, explicit-padding, fold-quant-scales and lut-activations
    learned is advised (a sample of each)."""
    expected = {"aten.scaled_dot_product_attention.default": "decompose-sdpa + fold-quant-scales + shiftmax",
                "aten.embedding.default": "fold-quant-scales", "aten.dropout.default": "canonicalize",
                "aten.conv1d.default": "canonicalize + fold-quant-scales",
                "aten.pad.default": "canonicalize + fold-quant-scales",
                "aten.adaptive_avg_pool2d.default": "canonicalize + fold-quant-scales",
                "aten.silu.default": "lut-activations", "aten.sigmoid.default": "lut-activations",
                "aten.tanh.default": "lut-activations", "aten.hardswish.default": "lut-activations",
                "aten.hardtanh.default": "fold-quant-scales", "aten.relu6.default": "fold-quant-scales",
                "aten.clamp.default": "fold-quant-scales", "aten.batch_norm.default": "fold-bn",
                "aten.where.ScalarOther": "fold-quant-scales",
                "aten.addmm.default": "canonicalize + fold-quant-scales",
                "aten.split.Tensor": "canonicalize + fold-quant-scales",
                "aten.add_.Tensor": "canonicalize + fold-quant-scales",
                "aten.conv2d.padding": "explicit-padding + fold-quant-scales",
                "aten.conv1d.padding": "explicit-padding + canonicalize + fold-quant-scales"}
    assert {op: INT8_LOWERABLE.get(op) for op in expected} == expected
    assert "-inf" in INT8_CONDITIONS["aten.where.ScalarOther"]
    for op in ("aten.sub.Tensor", "aten.exp.default", "aten.repeat_interleave.self_int"):
        assert lowering_advice(op) == "no integer lowering exists for this op"


def test_inspect_advises_the_recipe_only_for_ops_it_lowers(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    path = tmp_path / "mixed.pt2"
    torch.export.save(program, path)
    code, stdout, stderr = cli("inspect", path)
    assert code == 0, stderr
    npu = _npu_lines(stdout)
    for op in ("aten.linear.default", "aten.gelu.default", "aten.layer_norm.default", "aten.sigmoid.default"):
        assert op in npu, stdout
        assert f"lower it with --recipe int8-shiftgelu ({INT8_LOWERABLE[op]}" in npu[op]
        assert "no integer lowering" not in npu[op]
    for op in ("aten.exp.default", "aten.sub.Tensor"):
        assert op in npu, stdout
        assert "no integer lowering exists for this op" in npu[op]
        assert "--recipe" not in npu[op]
    assert "int8-relu or int8-shiftgelu" not in stdout
    code, stdout, _ = cli("inspect", path, "--json")
    reasons = {op: entry["reason"] for op, entry in json.loads(stdout)["targets"]["npu-int8"]["not_native"].items()}
    assert reasons["aten.exp.default"].endswith("; " + lowering_advice("aten.exp.default"))
    assert reasons["aten.sigmoid.default"].endswith("; " + lowering_advice("aten.sigmoid.default"))
    assert reasons["aten.gelu.default"].endswith("; " + lowering_advice("aten.gelu.default"))


def test_a_target_with_float_units_gets_no_integer_advice(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    torch.export.save(program, tmp_path / "mixed.pt2")
    code, stdout, _ = cli("inspect", tmp_path / "mixed.pt2", "--json")
    assert code == 0
    assert json.loads(stdout)["targets"]["cpu"]["deployable"] is True


def test_convert_reports_the_same_advice_as_inspect(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    torch.export.save(program, tmp_path / "mixed.pt2")
    code, stdout, _ = cli("inspect", tmp_path / "mixed.pt2", "--json")
    assert code == 0
    inspected = json.loads(stdout)["targets"]["npu-int8"]["not_native"]
    code, _, stderr = cli("convert", tmp_path / "mixed.pt2", "--target", "npu-int8", "-o", tmp_path / "out")
    assert code == 0, stderr
    reported = json.loads((tmp_path / "out" / "report.json").read_text())["target_support"]["not_native"]
    for op in ("aten.sigmoid.default", "aten.exp.default", "aten.gelu.default"):
        assert reported[op]["reason"] == inspected[op]["reason"]
    assert reported["aten.sigmoid.default"]["reason"].endswith("; " + lowering_advice("aten.sigmoid.default"))
    assert reported["aten.exp.default"]["reason"].endswith("; no integer lowering exists for this op")


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


@pytest.fixture(scope="module")
def hf_exported(tmp_path_factory):
    """name -> (.pt2 path, calibration .npz of 4 samples), each Hugging Face model exported once."""
    hf_suite = pytest.importorskip("hwact.hf_suite")
    pytest.importorskip("transformers")
    root = tmp_path_factory.mktemp("hf_lowerable")
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = hf_suite.save_files(name, root, calibration=4)[:2]
        return cache[name]

    return get


def _hf_names() -> list[str]:
    try:
        from hwact import hf_suite
        return hf_suite.names()
    except ImportError:
        return []


# canonicalize removes a cast to the dtype a tensor already has (GPT-2's to.dtype_layout), but the table
# cannot list the op: the same name is a real cast too (token ids to float), where a float path starts
IDENTITY_CASTS = {"aten.to.dtype", "aten.to.dtype_layout", "aten.to.device", "aten._to_copy.default"}


def _float_ops(graph) -> set[str]:
    """The ops support_report judges that compute in float (bookkeeping such as getitem left out)."""
    return {op_name(node) for node in float_compute_nodes(graph) if not is_bookkeeping(node)}


@pytest.mark.slow
@pytest.mark.parametrize("name", _hf_names())
def test_the_table_matches_what_the_recipe_lowers_on_hugging_face_models(name, hf_exported):
    """On each model of the suite, after the recipe's passes (2 calibration batches of 2, no postcondition):
    no op of the float graph that the table lists computes in float; no op still computing in float is
    listed; and every op that computed in float and no longer does is listed (inspect would otherwise say
    "no integer lowering exists" for an op the convert lowers)."""
    from hwact.load import load
    from hwact.passes.manager import load_calibration, run_passes

    pt2, calib = hf_exported(name)
    graph = load(str(pt2)).graph
    all_ops = {op_name(node) for node in graph.call_nodes()}
    before = _float_ops(graph)
    batches = load_calibration(str(calib), graph.inputs, batch=2, fixed_batch=graph.fixed_batch)
    assert len(batches) == 2
    graph, _ = run_passes(graph, list(RECIPES[INT8_RECIPE].passes), {}, batches)
    after = _float_ops(graph)
    listed = all_ops & set(INT8_LOWERABLE)
    assert not (listed & after), f"listed as lowerable but left in float: {sorted(listed & after)}"
    assert not (after & set(INT8_LOWERABLE)), f"still float yet listed: {sorted(after & set(INT8_LOWERABLE))}"
    unlisted = (before - after) - set(INT8_LOWERABLE) - IDENTITY_CASTS
    assert not unlisted, f"lowered by {INT8_RECIPE} but inspect says no integer lowering exists: {sorted(unlisted)}"


def test_an_ethos_u_target_advises_its_own_recipe(tmp_path, cli):
    program = torch.export.export(Mixed().eval(), (torch.randn(2, 8),))
    torch.export.save(program, tmp_path / "mixed.pt2")
    code, stdout, _ = cli("inspect", tmp_path / "mixed.pt2", "--json")
    assert code == 0
    reasons = {op: entry["reason"] for op, entry in json.loads(stdout)["targets"]["ethos-u55-128"]["not_native"].items()}
    assert "; lower it with --recipe int8-npu (the target's default recipe" in reasons["aten.sigmoid.default"]
    assert reasons["aten.gelu.default"].endswith("; lower it with --recipe int8-npu (the target's default recipe)")
    assert reasons["aten.exp.default"].endswith("; no integer lowering exists for this op")
    assert not any("int8-shiftgelu" in reason for reason in reasons.values())
