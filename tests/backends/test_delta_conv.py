"""hwact::delta_conv2d: the reference op, lower-delta on a FrameCNN, the C kernel (x86 and aarch64 under
qemu-user) and the ONNX step model, bit-exact against the reference."""

import copy
import shutil

import numpy as np
import pytest
import torch

import hwact.ir.delta_conv_ops as dco
from hwact.backends import delta_c, delta_conv_c, delta_onnx
from hwact.errors import PreconditionError
from hwact.ir.graph import InputSpec, trace
from hwact.nn.delta import DeltaActivation, FrameCNN, delta_penalty
from hwact.ir.delta_ops import delta_layers
from hwact.passes.lower_delta import LowerDelta, set_threshold

DELTA_CONV2D = torch.ops.hwact.delta_conv2d


def conv_layer(channels=5, size=(7, 6), n_out=19, kernel=(3, 3), stride=(1, 1), padding=(1, 1), dilation=(1, 1),
               threshold=0.0, key_interval=0, seed=0):
    """A random lowered layer: power-of-two steps (exact rounding ties), int8 weights, int32 bias_acc."""
    g = torch.Generator().manual_seed(seed)
    return {"step": 2.0 ** -torch.randint(2, 5, (channels,), generator=g).float(),
            "weight": torch.randint(-127, 128, (n_out, channels, *kernel), generator=g, dtype=torch.int32),
            "scale": torch.rand(n_out, generator=g) * 0.01 + 1e-4,
            "bias_acc": torch.randint(-5000, 5000, (n_out,), generator=g, dtype=torch.int32),
            "threshold": torch.tensor(float(threshold)), "levels": 127, "key_interval": key_interval,
            "stride": list(stride), "padding": list(padding), "dilation": list(dilation), "in_shape": (channels, *size)}


def reference(layer, x, state=None, acc=None, frame=None, threshold=None):
    limit = layer["threshold"] if threshold is None else torch.tensor(float(threshold))
    return DELTA_CONV2D(x, layer["step"], layer["levels"], layer["weight"], layer["scale"], layer["bias_acc"], limit,
                        layer["key_interval"], layer["stride"], layer["padding"], layer["dilation"], state, acc, frame)


def edge_sequence(layer, batch, steps, seed=0):
    """Random walk in code units plus exact ties (x/step = k + 0.5), values far beyond the clamp, zeros, -0.0."""
    g = torch.Generator().manual_seed(seed)
    shape = (batch, steps, *layer["in_shape"])
    step = layer["step"].reshape(-1, 1, 1)
    x = (torch.randn(shape, generator=g) * 1.5).cumsum(dim=1) * step
    ties = (torch.randint(-60, 60, shape, generator=g).float() + 0.5) * step
    mask = torch.rand(shape, generator=g)
    x = torch.where(mask < 0.15, ties, x)
    x = torch.where(mask > 0.97, torch.sign(x) * 1e6, x)
    x[:, min(3, steps - 1)] = 0.0
    x[:, min(4, steps - 1)] = -0.0
    return x


def sent_inputs(layer, x):
    """The reference frame by frame with its state carried: how many inputs sent a code change."""
    state = acc = frame = None
    sent = 0
    for t in range(x.shape[1]):
        before = torch.zeros(x.shape[0], *layer["in_shape"], dtype=torch.int32) if state is None else state
        _, state, acc, frame = reference(layer, x[:, t:t + 1], state, acc, frame)
        sent += int((state != before).sum())
    return sent


def dense_acc(layer, codes):
    """bias_acc + conv2d(codes, weight) as an int64 matmul of the unfolded codes, (B, O, H', W')."""
    weight = layer["weight"].to(torch.int64)
    columns = torch.nn.functional.unfold(codes.to(torch.float64), weight.shape[2:], layer["dilation"],
                                         layer["padding"], layer["stride"]).to(torch.int64)   # a gather: exact
    out_size = dco.output_shape(codes.shape, weight.shape, layer["stride"], layer["padding"], layer["dilation"])
    conv = (weight.reshape(weight.shape[0], -1) @ columns).reshape(codes.shape[0], weight.shape[0], *out_size)
    return conv + layer["bias_acc"].to(torch.int64).reshape(1, -1, 1, 1)


# ----- the reference op ------------------------------------------------------------------------
def test_hand_computed_two_frames():
    layer = {**conv_layer(channels=1, size=(2, 2), n_out=1, kernel=(2, 2), padding=(0, 0)),
             "step": torch.tensor([0.5]), "weight": torch.tensor([[[[1, 2], [3, 4]]]], dtype=torch.int32),
             "scale": torch.tensor([0.5]), "bias_acc": torch.tensor([10], dtype=torch.int32)}
    x = torch.tensor([[[0.5, 1.0], [0.0, -0.5]], [[0.5, 1.0], [1.0, -0.5]]]).reshape(1, 2, 1, 2, 2)
    y, state, acc, frame = reference(layer, x)
    # codes [[1, 2], [0, -1]] -> 10 + 1 + 4 + 0 - 4 = 11; then d = 2 at (1, 0) -> 11 + 2 * 3 = 17
    assert y.reshape(-1).tolist() == [5.5, 8.5] and acc.item() == 17 and frame.tolist() == [2]
    assert state.reshape(-1).tolist() == [1, 2, 2, -1]
    # threshold 0.75 -> code threshold ceil(0.75 / 0.5) = 2: only |d| >= 2 is sent
    y, state, acc, _ = reference(layer, x, threshold=0.75)
    assert y.reshape(-1).tolist() == [7.0, 10.0]               # 10 + 2 * 2 = 14, then 14 + 2 * 3 = 20
    assert state.reshape(-1).tolist() == [0, 2, 2, 0]


@pytest.mark.parametrize("stride,padding,dilation,kernel", [
    ((1, 1), (1, 1), (1, 1), (3, 3)), ((2, 2), (1, 1), (1, 1), (3, 3)), ((2, 1), (0, 2), (1, 1), (3, 2)),
    ((1, 1), (2, 2), (2, 2), (3, 3)), ((3, 2), (0, 0), (1, 2), (1, 3))])
def test_threshold_zero_is_the_dense_integer_conv_at_every_frame(stride, padding, dilation, kernel):
    layer = conv_layer(kernel=kernel, stride=stride, padding=padding, dilation=dilation)
    x = edge_sequence(layer, 2, 9)
    y, _, acc, _ = reference(layer, x)
    codes = dco.quantize_codes(x, layer["step"].reshape(-1, 1, 1), 127)
    for t in range(x.shape[1]):
        expected = dense_acc(layer, codes[:, t])
        assert torch.equal(y[:, t], expected.to(torch.int32).to(torch.float32) * layer["scale"].reshape(1, -1, 1, 1))
    assert torch.equal(acc.to(torch.int64), expected)
    fake_shape = dco.output_shape(x.shape, layer["weight"].shape, stride, padding, dilation)
    assert y.shape[3:] == fake_shape


def test_state_across_two_calls_equals_one_call():
    layer = conv_layer(threshold=0.3, key_interval=4)
    x = edge_sequence(layer, 2, 14, seed=3)
    whole = reference(layer, x)
    first = reference(layer, x[:, :5])
    second = reference(layer, x[:, 5:], *first[1:])
    assert torch.equal(torch.cat([first[0], second[0]], dim=1), whole[0])
    for a, b in zip(second[1:], whole[1:]):
        assert torch.equal(a, b)


def test_key_frames_resynchronise():
    layer = {**conv_layer(threshold=1.0, key_interval=5)}
    x = edge_sequence(layer, 1, 15, seed=5)
    y, *_ = reference(layer, x)
    dense, *_ = reference(layer, x, threshold=0.0)
    assert torch.equal(y[:, [0, 5, 10]], dense[:, [0, 5, 10]])
    assert not torch.equal(y, dense)


# ----- lower-delta on a FrameCNN ---------------------------------------------------------------
def frame_cnn(stride=1, seed=0, delta=True):
    torch.manual_seed(seed)
    model = FrameCNN(3, (9, 8), (8, 12), 5, stride=stride)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)):
                m.bias.uniform_(-0.3, 0.3)
    return model.to_delta(init_steps=(0.125, 0.0625, 0.0625)).eval() if delta else model.eval()


def lowered_cnn(threshold=0.0, key_interval=0, stride=1, steps=6):
    model = frame_cnn(stride)
    graph = trace(model, [InputSpec("x", (2, steps, 3, 9, 8))])
    graph, count = LowerDelta(delta_threshold=threshold, key_interval=key_interval)(graph)
    return model, graph, count


@pytest.mark.parametrize("stride", [1, 2])
def test_lower_delta_replaces_every_conv_and_linear(stride):
    model, graph, count = lowered_cnn(stride=stride)
    targets = [n.target for n in graph.call_nodes()]
    assert count == 3
    assert targets.count(torch.ops.hwact.delta_conv2d.default) == 2
    assert targets.count(torch.ops.hwact.delta_linear.default) == 1
    for gone in (torch.ops.aten.conv2d.default, torch.ops.aten.linear.default, torch.ops.hwact.delta_act.default):
        assert gone not in targets
    x = delta_conv_c.random_walk(3, 6, (3, 9, 8), seed=1)
    with torch.no_grad():
        expected = model(x)
    got = graph(x)
    assert got.shape == expected.shape
    # the lowered graph is the float model with its weights rounded to int8 per output channel ...
    with torch.no_grad():
        rounded = dequantized(model, graph)(x)
    assert float((got - rounded).abs().max()) < 1e-4 * float(rounded.abs().max())
    # ... which stays within a few percent of the trained model's output range
    error = float((got - expected).abs().max()) / float(expected.abs().max())
    assert error < 0.06, error


def dequantized(model, graph):
    """A copy of `model` whose weights are the lowered int8 ones: W = weight * scale / step, b = bias_acc * scale."""
    rounded = copy.deepcopy(model)
    layers = delta_conv_c.conv_layers(graph) + delta_layers(graph)
    with torch.no_grad():
        for module, layer in zip([*rounded.convs, rounded.linear], layers):
            shape = (-1,) + (1,) * (layer["weight"].dim() - 1)
            step = layer["step"].reshape((1, -1) + (1,) * (layer["weight"].dim() - 2))
            module.weight.copy_(layer["weight"].to(torch.float64) * layer["scale"].to(torch.float64).reshape(shape)
                                / step.to(torch.float64))
            module.bias.copy_(layer["bias_acc"].to(torch.float64) * layer["scale"].to(torch.float64))
    return rounded


def test_frame_cnn_steps_broadcast_per_channel():
    model = frame_cnn()
    step = model.deltas[0].step()
    assert step.shape == (3, 1, 1)
    x = torch.randn(2, 4, 3, 9, 8)
    codes = torch.round(x / step)
    assert torch.equal(model.deltas[0](x), torch.clamp(codes, -127, 127) * step)


def test_frame_cnn_trains_with_the_temporal_penalty():
    model = frame_cnn().train()
    x = delta_conv_c.random_walk(2, 5, (3, 9, 8), seed=4)
    loss = model(x).square().mean() + 0.01 * delta_penalty(model)
    loss.backward()
    assert float(delta_penalty(model).detach()) > 0
    assert all(float(m.raw_step.grad.abs().sum()) > 0 for m in [*model.deltas, model.head_delta])
    assert model.deltas[1].raw_step.shape == (8,) and model.head_delta.raw_step.shape == (12,)


def test_grouped_conv_is_refused():
    class Grouped(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.delta = DeltaActivation((4, 6, 6), channel_dim=2)
            self.conv = torch.nn.Conv2d(4, 4, 3, groups=2)

        def forward(self, x):
            return self.conv(self.delta(x).flatten(0, 1)).unflatten(0, (x.shape[0], x.shape[1]))

    graph = trace(Grouped(), [InputSpec("x", (2, 3, 4, 6, 6))])
    assert any("groups=2" in p for p in LowerDelta().check(graph))
    with pytest.raises(PreconditionError, match="groups=1 only"):
        LowerDelta()(graph)


def test_per_neuron_conv_steps_are_refused_and_thresholds_change_at_run_time():
    torch.manual_seed(0)
    neuron = FrameCNN(3, (9, 8), (4,), 5).to_delta(granularity="neuron").eval()
    graph = trace(neuron, [InputSpec("x", (2, 4, 3, 9, 8))])
    with pytest.raises(PreconditionError, match=r"one step per channel"):
        LowerDelta()(graph)
    _, graph, _ = lowered_cnn(steps=8)
    x = delta_conv_c.random_walk(2, 8, (3, 9, 8), seed=2)
    exact = graph(x)
    set_threshold(graph, 0.5, key_interval=4)
    thresholds = [float(getattr(graph.module, n.args[6].target)) for n in graph.call_nodes()
                  if n.target is DELTA_CONV2D.default]
    assert thresholds == [0.5, 0.5] and not torch.equal(graph(x), exact)
    set_threshold(graph, 0.0, key_interval=0)
    assert torch.equal(graph(x), exact)


# ----- C kernel --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return delta_conv_c.build_library(tmp_path_factory.mktemp("delta_conv_lib"))


GEOMETRIES = [dict(), dict(stride=(2, 2)), dict(kernel=(3, 2), stride=(2, 1), padding=(0, 2)),
              dict(dilation=(2, 2), padding=(2, 2), n_out=33), dict(kernel=(1, 1), padding=(0, 0), n_out=7)]


@pytest.mark.parametrize("geometry", range(len(GEOMETRIES)))
@pytest.mark.parametrize("threshold,key_interval", [(0.0, 0), (0.2, 0), (0.6, 5)])
def test_c_kernel_is_bit_exact_and_counts_fired_inputs(library, geometry, threshold, key_interval):
    layer = conv_layer(threshold=threshold, key_interval=key_interval, seed=geometry, **GEOMETRIES[geometry])
    runtime = delta_conv_c.ConvLayerRuntime(layer, library)
    assert runtime.kernel == ("avx2" if delta_c.host_arch_flags() else "scalar")
    for seed in range(3):
        x = edge_sequence(layer, 2, 12, seed=seed)
        y_ref, state_ref, acc_ref, frame_ref = reference(layer, x)
        runtime.reset(2)
        y, fired = runtime.run(x.numpy())
        assert np.array_equal(y, y_ref.numpy()), f"seed {seed}: {(y != y_ref.numpy()).sum()} values differ"
        state, acc = runtime.reference_state()
        assert torch.equal(state, state_ref) and torch.equal(acc, acc_ref)
        assert runtime.frame.tolist() == [int(frame_ref)] * 2
        # fired = inputs whose transmitted code changed; everything else was skipped
        assert fired == sent_inputs(layer, x)
        if threshold == 0.0 and key_interval == 0:
            codes = dco.quantize_codes(x, layer["step"].reshape(-1, 1, 1), 127)
            changed = int((codes[:, 0] != 0).sum()) + int((codes[:, 1:] != codes[:, :-1]).sum())
            assert fired == changed < x.numel()


def test_portable_scalar_build_is_bit_exact(tmp_path):
    scalar = delta_conv_c.build_library(tmp_path, arch_flags=[])
    layer = conv_layer(threshold=0.2, key_interval=3, n_out=21, **GEOMETRIES[2])
    runtime = delta_conv_c.ConvLayerRuntime(layer, scalar)
    assert runtime.kernel == "scalar"
    x = edge_sequence(layer, 2, 10, seed=6)
    y, fired = runtime.run(x.numpy())
    assert np.array_equal(y, reference(layer, x)[0].numpy()) and fired == sent_inputs(layer, x)


def test_c_state_carries_across_calls(library):
    layer = conv_layer(threshold=0.25, key_interval=3, stride=(2, 2))
    runtime = delta_conv_c.ConvLayerRuntime(layer, library)
    x = edge_sequence(layer, 3, 16, seed=8).numpy()
    whole, fired_whole = runtime.run(x)
    runtime.reset(3)
    first, fired_first = runtime.run(x[:, :7])
    second, fired_second = runtime.run(x[:, 7:])
    assert np.array_equal(np.concatenate([first, second], axis=1), whole)
    assert fired_first + fired_second == fired_whole


# ----- ONNX ------------------------------------------------------------------------------------
class OneLayerStep(torch.nn.Module):
    """One frame of one delta_conv2d layer with its state as inputs and outputs."""

    def __init__(self, layer):
        super().__init__()
        self.layer = layer

    def forward(self, x, threshold, state, acc, frame):
        layer = self.layer
        return DELTA_CONV2D(x.unsqueeze(1), layer["step"], layer["levels"], layer["weight"], layer["scale"],
                            layer["bias_acc"], threshold, layer["key_interval"], layer["stride"], layer["padding"],
                            layer["dilation"], state, acc, frame)


@pytest.mark.parametrize("geometry", [1, 2, 3, 4])
def test_onnx_translation_is_bit_exact_over_a_sequence(tmp_path, geometry):
    from hwact.ir.ops import ONNX_TRANSLATIONS

    layer = conv_layer(threshold=0.3, key_interval=4, seed=geometry, **GEOMETRIES[geometry])
    state, acc, frame = dco.initial_conv_state(2, layer["in_shape"][0], layer["in_shape"][1:],
                                               dco.output_shape(layer["in_shape"], layer["weight"].shape,
                                                                layer["stride"], layer["padding"], layer["dilation"]),
                                               layer["bias_acc"])
    args = (torch.zeros(2, *layer["in_shape"]), torch.tensor([0.3]), state, acc, frame)
    program = torch.export.export(OneLayerStep(layer), args)
    exported = torch.onnx.export(program, (), dynamo=True, opset_version=20, verbose=False,
                                 custom_translation_table=dict(ONNX_TRANSLATIONS),
                                 input_names=["x", "threshold", "state", "acc", "frame"])
    exported.save(str(tmp_path / "step.onnx"))
    sess = delta_onnx.session(tmp_path / "step.onnx")
    x = edge_sequence(layer, 2, 10, seed=geometry)
    expected, _, expected_acc, _ = reference(layer, x)
    feeds = {"threshold": np.array([0.3], np.float32), "state": state.numpy(), "acc": acc.numpy(),
             "frame": frame.numpy()}
    for t in range(x.shape[1]):
        y, feeds["state"], feeds["acc"], feeds["frame"] = sess.run(None, {**feeds, "x": x[:, t].numpy()})
        assert np.array_equal(y[:, 0], expected[:, t].numpy()), f"frame {t}"
    assert np.array_equal(feeds["acc"], expected_acc.numpy()) and feeds["frame"].tolist() == [10]


# ----- whole model: C + ONNX -------------------------------------------------------------------
@pytest.mark.parametrize("threshold,key_interval", [(0.0, 0), (0.15, 4)])
def test_convert_conv_is_bit_exact_in_c_and_onnx(tmp_path, threshold, key_interval):
    _, graph, _ = lowered_cnn(threshold=threshold, key_interval=key_interval, stride=2 if threshold else 1)
    report = delta_conv_c.convert_conv(graph, tmp_path, sequences=2, steps=10)
    assert report["bit_exact"] == {"c": True, "onnx": True}
    assert len(report["layers"]) == 2
    for name in report["artifacts"]:
        assert (tmp_path / name).exists()
    x = delta_conv_c.random_walk(2, 10, (3, 9, 8), seed=7)
    expected, fired = delta_conv_c.reference_fired(graph, x)
    assert torch.equal(expected, graph(x))
    sess = delta_onnx.session(tmp_path / "delta_conv_step.onnx")
    assert np.array_equal(delta_conv_c.run_onnx_stream(sess, graph, x.numpy()), expected.numpy())
    sparsity = [layer["temporal_sparsity"] for layer in report["layers"]]
    assert all(0.0 <= s < 1.0 for s in sparsity) and sparsity[1] > sparsity[0] * 0.5


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="aarch64 cross toolchain / qemu-user not installed")
def test_aarch64_neon_build_under_qemu_is_bit_exact(tmp_path):
    exe = delta_conv_c.build_aarch64(tmp_path)
    for seed, geometry in enumerate(GEOMETRIES[:4]):
        layer = conv_layer(threshold=0.2, key_interval=4, seed=seed, **geometry)
        x = edge_sequence(layer, 2, 8, seed=seed)
        y_ref, _, _, _ = reference(layer, x)
        result = delta_conv_c.run_under_qemu(exe, layer, x.numpy(), tmp_path / f"run{seed}")
        assert result["kernel"] == "neon"
        assert np.array_equal(result["y"], y_ref.numpy())
        assert result["fired"] == sent_inputs(layer, x)
