"""Stage planning for staged swapping, and the recovery report section."""

import pytest
import torch

from hwact.errors import InputError
from hwact.load import load
from hwact.train.data import load_dataset, split
from hwact.train.recover import natural_stage, plan_stages, recover


@pytest.mark.parametrize("path, stage", [("blocks.3.mlp.act", "blocks.3"), ("stages.1.0.mlp.act", "stages.1"),
                                         ("layers.0.ffn.act", "layers.0"), ("features.5.act", "features.5"),
                                         ("mlp.act", "mlp"), ("", "model")])
def test_natural_stage(path, stage):
    assert natural_stage(path) == stage


def test_plans_for_zoo_models():
    vit = load("zoo:vit-digits").graph
    assert [(s.name, len(s.nodes)) for s in plan_stages(vit)] == [(f"blocks.{i}", 1) for i in range(4)]
    assert [s.name for s in plan_stages(vit, stages=2)] == ["blocks.0..blocks.1", "blocks.2..blocks.3"]
    assert [len(s.nodes) for s in plan_stages(vit, stages=3)] == [1, 2, 1]
    assert [s.name for s in plan_stages(vit, stages=9)] == [f"blocks.{i}" for i in range(4)]
    assert [s.name for s in plan_stages(vit, skip=("blocks.0*",))] == ["blocks.1", "blocks.2", "blocks.3"]
    explicit = plan_stages(vit, stage_globs=("blocks.3", "blocks.[01]*"))
    assert [(s.name, len(s.nodes)) for s in explicit] == [("blocks.3", 1), ("blocks.[01]*", 2), ("rest", 1)]
    swin = load("zoo:swin-tiny").graph
    assert [(s.name, len(s.nodes)) for s in plan_stages(swin)] == [("stages.0", 2), ("stages.1", 2)]
    convnext = load("zoo:convnext-tiny").graph   # one stage per resolution, not one per block
    assert [(s.name, len(s.nodes)) for s in plan_stages(convnext)] == [("stages.0", 1), ("stages.1", 1)]
    with pytest.raises(InputError, match="--only 'nothing\\*' matches no GELU site"):
        plan_stages(vit, only=("nothing*",))
    with pytest.raises(InputError, match="no GELU sites"):
        plan_stages(vit, skip=("blocks.*",))
    with pytest.raises(InputError, match="matches no remaining GELU site"):
        plan_stages(vit, stage_globs=("blocks.9",))


def test_staged_section_counts_swaps_per_stage():
    train_data, val_data = split(load_dataset("digits"), 0.2, seed=0)
    data = (train_data.subset(torch.arange(128)), val_data.subset(torch.arange(64)))
    teacher = load("zoo:vit-digits").graph
    student, section = recover(teacher, "relu", data, {"epochs": 1, "stages": 2, "progress": False, "seed": 7},
                               log=lambda *a: None)
    ops = [str(n.target) for n in student.call_nodes()]
    assert ops.count("aten.relu.default") == 4 and "aten.gelu.default" not in ops
    assert [str(n.target) for n in teacher.call_nodes()].count("aten.gelu.default") == 4  # teacher untouched
    assert section["seeds"] == {"split": 0, "train": 7} and section["plan"] == [
        {"stage": "blocks.0..blocks.1", "sites": 2}, {"stage": "blocks.2..blocks.3", "sites": 2}]
    assert section["original"]["teacher_agreement"] == 1.0
    for stage in section["stages"]:
        assert stage["swapped"] == 2 and stage["epochs_run"] == 1
        assert 0 <= stage["after_swap"]["accuracy"] <= 1 and 0 <= stage["after_distill"]["teacher_agreement"] <= 1
    assert section["final"] == section["stages"][-1]["after_distill"]
