"""DeltaActivation layers and the espeak-ng keyword data (DeltaGRU: tests/nn/test_delta_gru.py)."""

import numpy as np
import pytest
import torch

from hwact.data import speech
from hwact.nn.delta import DeltaActivation, FrameMLP, delta_penalty
from hwact.train.delta import temporal_sparsity


def test_eval_forward_is_the_delta_act_op_and_quantizes_to_steps():
    layer = DeltaActivation(4, init_step=0.25).eval()
    x = torch.tensor([[[0.1, 0.125, 0.375, -0.3], [100.0, -100.0, 0.0, 0.6]]])
    y = layer(x)
    step = 0.25 + 1e-6
    expected = torch.clamp(torch.round(x / step), -127, 127) * step
    assert torch.equal(y, expected)
    assert y[0, 1, 0].item() == pytest.approx(127 * step)       # clamped to +levels
    graph = torch.export.export(layer, (x,)).graph
    assert [n.target for n in graph.nodes if n.op == "call_function"].count(torch.ops.hwact.delta_act.default) == 1


def test_straight_through_gradients_and_lsq_step_gradient():
    layer = DeltaActivation(3, init_step=0.5).train()
    x = torch.tensor([[[0.2, 0.9, 1000.0]]], requires_grad=True)
    layer(x).sum().backward()
    assert x.grad.tolist() == [[[1.0, 1.0, 0.0]]]               # STE inside the range, 0 when clamped
    q = 0.5 + 1e-6
    expected = [round(0.2 / q) - 0.2 / q, round(0.9 / q) - 0.9 / q, 127.0]
    assert layer.raw_step.grad.tolist() == pytest.approx(expected, abs=1e-5)


def test_penalty_is_neurons_times_mean_temporal_change():
    layer = DeltaActivation(2, granularity="layer", init_step=1.0).train()
    x = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [2.0, 1.0]]])
    layer(x)
    q = 1.0 + 1e-6
    changes = torch.tensor([[2.0, 0.0], [0.0, 1.0]]) * q
    assert float(layer.last_penalty) == pytest.approx(2 * float(changes.abs().mean()), rel=1e-6)
    model = FrameMLP(2, (3,), 2, delta=True).train()
    model(torch.randn(2, 5, 2))
    assert float(delta_penalty(model)) > 0


@pytest.mark.parametrize("granularity,shape", [("channel", (4,)), ("neuron", (4, 3, 3)), ("layer", (1,))])
def test_granularities_for_conv_shaped_sequences(granularity, shape):
    layer = DeltaActivation((4, 3, 3), granularity=granularity, channel_dim=2).train()
    assert tuple(layer.raw_step.shape) == shape
    y = layer(torch.randn(2, 5, 4, 3, 3))
    assert y.shape == (2, 5, 4, 3, 3)


def test_temporal_sparsity_counts_unchanged_codes():
    model = FrameMLP(2, (2,), 2, delta=True, init_steps=(1.0, 1.0))
    x = torch.tensor([[[0.0, 3.0], [0.0, 3.2], [2.0, 3.0], [2.0, 3.0]]])
    # input codes: (0,3) (0,3) (2,3) (2,3); previous: (0,0) (0,3) (0,3) (2,3) -> 6 of 8 unchanged
    assert temporal_sparsity(model, x)[0] == pytest.approx(6 / 8)


def test_espeak_keywords_are_real_speech():
    data = speech.build_keywords(per_word=2, words=("yes", "stop"), cache=False)
    assert data["x"].shape == (4, speech.T_FRAMES, speech.N_MELS)
    assert data["y"].tolist() == [0, 0, 1, 1]
    assert (data["durations"] > 0.1).all() and (data["durations"] < 1.0).all()
    assert np.isfinite(data["x"]).all()
    # speech frames stand out from the background: the per-sequence energy range is large
    spread = data["x"].max(axis=(1, 2)) - data["x"].min(axis=(1, 2))
    assert (spread > 3).all()
    samples = speech.synthesize("left", "en-us", 160, 50)
    assert np.abs(samples).max() > 0.05 and 0.2 < samples.size / speech.SAMPLE_RATE < 2.0
