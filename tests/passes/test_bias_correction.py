import pytest
import torch
import torch.nn as nn

from hwact import models
from hwact.errors import InputError
from hwact.ir.graph import InputSpec, trace
from hwact.passes.base import make_pass
from hwact.passes.manager import random_batches, run_outputs, run_passes
from hwact.quant.layers import fake_quantize_weight, layers, weight_quantized

from test_fold_bn import randomize_bn


def test_fake_quantize_weight_is_int8_per_output_channel():
    weight = torch.tensor([[0.5, -1.0, 0.26], [10.0, 3.0, -0.01]])
    quantized = fake_quantize_weight(weight)
    scales = torch.tensor([1.0, 10.0]) / 127
    codes = quantized / scales[:, None]
    torch.testing.assert_close(codes, torch.round(codes))
    assert codes.abs().max().item() == pytest.approx(127)
    assert ((quantized - weight).abs() <= scales[:, None] / 2 + 1e-7).all()


@pytest.mark.parametrize("kind", ["linear", "conv"])
def test_corrected_layer_has_the_float_output_mean_on_the_calibration_data(kind):
    torch.manual_seed(0)
    if kind == "linear":
        net, spec = nn.Linear(6, 5, bias=False), InputSpec("x", (1, 6))
    else:
        net, spec = nn.Conv2d(3, 4, 3, padding=1), InputSpec("x", (1, 3, 5, 5))
    graph = trace(net.eval(), [spec])
    batches = [(torch.rand(16, *spec.shape[1:]) + 0.5,) for _ in range(3)]  # E[x] far from 0
    x = torch.cat([b[0] for b in batches])
    axes = [0] if kind == "linear" else [0, 2, 3]
    before = (weight_quantized(graph)(x) - graph(x)).mean(axes)
    assert before.abs().max().item() > 1e-4
    corrected, changed = make_pass("bias-correction", {"calibration_batches": batches})(graph.copy())
    assert changed == 1
    after = (weight_quantized(corrected)(x) - graph(x)).mean(axes)
    assert after.abs().max().item() < 1e-6
    if kind == "linear":  # b = −ε·E[x] exactly
        weight = net.weight.detach()
        epsilon = fake_quantize_weight(weight) - weight
        (layer,) = layers(corrected)
        torch.testing.assert_close(layer.bias(corrected), -(epsilon.double() @ x.double().mean(0)).float())


@pytest.mark.parametrize("name,pre", [("cnn-tiny", ["fold-bn"]), ("vit-digits", ["gelu-to-relu"])])
def test_bias_correction_reduces_the_weight_quantized_output_error(name, pre):
    module, specs = models.build(name)
    graph = trace(randomize_bn(module).eval(), specs)
    batches = random_batches(graph.inputs, 64, 16)
    held_out = random_batches(graph.inputs, 64, 16, seed=7)  # errors measured on other inputs
    graph, _ = run_passes(graph, pre, {}, batches)
    reference = run_outputs(graph, held_out).flat
    corrected, records = run_passes(graph.copy(), ["bias-correction"], {"weight_bits": 4}, batches)
    assert records[0].changed == len(layers(graph))
    error_before = ((run_outputs(weight_quantized(graph, 4), held_out).flat - reference) ** 2).mean().item()
    error_after = ((run_outputs(weight_quantized(corrected, 4), held_out).flat - reference) ** 2).mean().item()
    assert error_after < 0.5 * error_before


def test_bad_input():
    graph = trace(nn.Linear(3, 2).eval(), [InputSpec("x", (1, 3))])
    with pytest.raises(InputError, match="no calibration batches"):
        make_pass("bias-correction", {})(graph)
    with pytest.raises(InputError, match="weight_bits must lie in"):
        make_pass("bias-correction", {"weight_bits": 1})
