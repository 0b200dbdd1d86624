"""KD loss maths, feature taps, the training loop (HeLU backward in effect, checkpoints, resume)."""

import math

import pytest
import torch

from hwact.load import load
from hwact.train import distill
from hwact.train.data import load_dataset, split
from hwact.train.distill import TrainConfig, kd_loss, train, weights_digest
from hwact.train.recover import recover, swap


def test_kd_loss_is_t_squared_kl_batchmean():
    generator = torch.Generator().manual_seed(0)
    s, t = torch.randn(5, 7, generator=generator), torch.randn(5, 7, generator=generator)
    for T in (1.0, 4.0):
        p_t = torch.softmax(t / T, 1)
        expected = T * T * (p_t * (p_t.log() - torch.log_softmax(s / T, 1))).sum() / 5
        assert math.isclose(kd_loss(s, t, T).item(), expected.item(), rel_tol=1e-5)
    assert kd_loss(t, t, 4.0).item() == pytest.approx(0.0, abs=1e-6)
    assert kd_loss(s, t, 4.0).item() > 0


def test_feature_loss_is_mean_of_block_mses():
    a, b = [torch.ones(2, 3), torch.zeros(4)], [torch.zeros(2, 3), torch.full((4,), 2.0)]
    assert distill.feature_loss(a, b).item() == pytest.approx((1.0 + 4.0) / 2)


@pytest.fixture(scope="module")
def digits_small():
    train_data, val_data = split(load_dataset("digits"), 0.2, seed=0)
    return train_data.subset(torch.arange(256)), val_data.subset(torch.arange(128))


def test_taps_read_block_outputs_and_share_parameters():
    graph = load("zoo:vit-digits").graph
    names = distill.block_output_nodes(graph, ["blocks.0", "blocks.3"])
    assert len(names) == 2
    tapped = distill.tapped_module(graph, names)
    x = torch.randn(3, 1, 8, 8)
    logits, feats = distill.run_tapped(tapped, (x,))
    assert torch.equal(logits, graph(x)) and [tuple(f.shape) for f in feats] == [(3, 17, 64)] * 2
    assert {id(p) for p in tapped.parameters()} == {id(p) for p in graph.module.parameters()}


def _student(kind, alpha=None):
    teacher = load("zoo:vit-digits").graph
    student = teacher.copy()
    swap(student, kind, None, helu_alpha=alpha)
    return teacher, student


def test_helu_backward_is_used(digits_small):
    """HeLU with alpha 0 has ReLU's gradient (identical weights); alpha 0.5 lets more gradient through."""
    config = TrainConfig(epochs=1, batch_size=32, progress=False, patience=0)
    digests = {}
    for name, kind, alpha in (("relu", "relu", None), ("helu0", "helu", 0.0), ("helu05", "helu", 0.5)):
        teacher, student = _student(kind, alpha)
        ops = [str(n.target) for n in student.call_nodes()]
        assert ops.count("hwact.helu.default" if kind == "helu" else "aten.relu.default") == 4
        train(student, teacher, *digits_small, config, log=lambda *a: None)
        digests[name] = weights_digest(student.module)
    assert digests["relu"] == digests["helu0"]
    assert digests["helu05"] != digests["relu"]


def test_distillation_moves_the_student_towards_the_teacher(digits_small):
    teacher, student = _student("relu")
    _, val = digits_small
    before = kd_loss(student(val.x), teacher(val.x), 4.0).item()
    result = train(student, teacher, *digits_small, TrainConfig(epochs=3, batch_size=32, lr=2e-3, progress=False,
                                                                feature_weight=1.0),
                   log=lambda *a: None, feature_prefixes=["blocks.0", "blocks.1", "blocks.2", "blocks.3"])
    after = kd_loss(student(val.x), teacher(val.x), 4.0).item()
    assert result["epochs_run"] == 3 and len(result["history"]) == 3 and result["metric"] == "accuracy"
    assert after < 0.5 * before
    assert all(not p.requires_grad for p in student.module.parameters())


def test_early_stop_and_best_weights(digits_small):
    teacher, student = _student("relu")
    # lr 0 never improves after epoch 1, so patience 1 stops after epoch 2 and epoch 1's weights are kept
    start = weights_digest(student.module)
    result = train(student, teacher, *digits_small, TrainConfig(epochs=6, lr=0.0, patience=1, progress=False),
                   log=lambda *a: None)
    assert (result["epochs_run"], result["best_epoch"], result["stopped_early"]) == (2, 1, True)
    assert weights_digest(student.module) == start


def test_resume_gives_the_same_weights(digits_small, tmp_path):
    options = {"epochs": 2, "batch_size": 32, "progress": False, "patience": 0, "stages": 2, "seed": 5}
    data = digits_small

    full, _ = recover(load("zoo:vit-digits").graph, "helu", data, options, log=lambda *a: None,
                      checkpoint_dir=tmp_path / "a")

    class Stop(Exception):
        pass

    def stop_in_stage_two(line):
        if "stage 2/2 epoch 1:" in line:
            raise Stop

    with pytest.raises(Stop):
        recover(load("zoo:vit-digits").graph, "helu", data, options, log=stop_in_stage_two, checkpoint_dir=tmp_path / "b")
    saved = torch.load(tmp_path / "b" / "checkpoint.pt", weights_only=True)
    assert saved["round"] == 1 and saved["train"] is None and len(saved["records"]) == 1
    lines = []
    resumed, section = recover(load("zoo:vit-digits").graph, "helu", data, options, log=lines.append,
                               checkpoint_dir=tmp_path / "b", resume=True)
    assert any("resuming at stage 2/2" in line for line in lines)
    assert weights_digest(resumed.module) == weights_digest(full.module)
    assert [s["stage"] for s in section["stages"]] == ["blocks.0..blocks.1", "blocks.2..blocks.3"]
    with pytest.raises(Exception, match="other options"):
        recover(load("zoo:vit-digits").graph, "relu", data, options, log=lambda *a: None,
                checkpoint_dir=tmp_path / "b", resume=True)
