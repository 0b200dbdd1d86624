"""hwact::delta_gru: the reference op, its lowering, the C kernel (x86, aarch64 under qemu) and the
ONNX step model, all bit-exact against the reference."""

import math
import shutil
import struct

import numpy as np
import pytest
import torch

from hwact.backends import delta_c, delta_gru_c
from hwact.backends.delta_onnx import session
from hwact.errors import InputError
from hwact.ir.delta_ops import code_thresholds, quantize_codes
from hwact.ir.graph import InputSpec, from_exported
from hwact.nn.delta import DeltaGRU
from hwact.passes.lower_delta import LowerDelta, set_threshold


def gru_graph(widths=(6, 16), threshold=0.0, key_interval=0, seed=0, steps_t=8):
    """A random (stack of) DeltaGRU, exported and lowered; widths = (features, hidden_1, ...)."""
    torch.manual_seed(seed)
    layers = [DeltaGRU(a, b, init_step_x=0.05 if i == 0 else 1 / 64) for i, (a, b) in
              enumerate(zip(widths[:-1], widths[1:]))]
    model = torch.nn.Sequential(*layers).eval()
    with torch.no_grad():
        for layer in layers:
            layer.raw_step_x.mul_(torch.empty_like(layer.raw_step_x).uniform_(0.5, 2.0))
            layer.raw_step_h.mul_(torch.empty_like(layer.raw_step_h).uniform_(0.5, 2.0))
            layer.cell.bias_ih.uniform_(-0.5, 0.5)
    example = torch.randn(2, steps_t, widths[0])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    graph = from_exported(program, [InputSpec("x", (2, steps_t, widths[0]))])
    graph, count = LowerDelta(delta_threshold=threshold, key_interval=key_interval)(graph)
    assert count == len(layers)
    return graph, model


def walk(batch, steps, features, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, features, generator=g) * scale).cumsum(dim=1)


def saturating(batch, steps, features, seed=0):
    """Random walk plus values far beyond the code clamp, rounding ties of step 0.05-ish, zeros."""
    x = walk(batch, steps, features, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    mask = torch.rand(batch, steps, features, generator=g)
    x = torch.where(mask > 0.9, torch.sign(x) * 1e6, x)
    x = torch.where(mask < 0.05, torch.full_like(x, -40.0), x)
    x[:, 2] = 0.0
    return x


def frames(layer, x, threshold=None):
    """Run one layer frame by frame; yields (state before, state after) per frame."""
    state = (None,) * 6
    for t in range(x.shape[1]):
        before = state
        _, *state = delta_gru_c.call_layer(layer, x[:, t:t + 1].contiguous(), tuple(state), threshold)
        yield before, state


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return delta_gru_c.build_library(tmp_path_factory.mktemp("delta_gru_lib"))


# ----- the reference op --------------------------------------------------------------------------
def test_reference_matches_a_hand_computed_one_unit_case():
    # F = H = 1; rows r, z, n; θx = 1.0 -> x code threshold ceil(1 / 0.5) = 2, θh = 0 -> 1
    wx, wh = torch.tensor([[2], [-1], [3]]), torch.tensor([[1], [1], [-2]])
    sx, sh = torch.tensor([0.1, 0.1, 0.1]), torch.tensor([0.2, 0.2, 0.2])
    bx, bh = torch.tensor([1, 0, -1]), torch.tensor([0, 2, 0])
    x = torch.tensor([[[0.6], [0.7], [1.6], [1.4]]])
    y, codes_x, codes_h, acc_x, acc_h, h, frame = torch.ops.hwact.delta_gru(
        x, torch.tensor([0.5]), torch.tensor([0.25]), 127, wx, wh, sx, sh, bx, bh, torch.tensor([1.0, 0.0]), 0)
    sigmoid = lambda v: 1 / (1 + math.exp(-v))              # noqa: E731
    sent_x = sent_h = 0
    hh, expected = 0.0, []
    for value in (0.6, 0.7, 1.6, 1.4):
        kx = round(value / 0.5)                              # codes 1, 1, 3, 3
        if abs(kx - sent_x) >= 2:
            sent_x = kx
        kh = round(hh / 0.25)
        if abs(kh - sent_h) >= 1:
            sent_h = kh
        mx = [b + w * sent_x for b, w in zip((1, 0, -1), (2, -1, 3))]
        mh = [b + w * sent_h for b, w in zip((0, 2, 0), (1, 1, -2))]
        r, z = sigmoid(0.1 * mx[0] + 0.2 * mh[0]), sigmoid(0.1 * mx[1] + 0.2 * mh[1])
        hh = (1 - z) * math.tanh(0.1 * mx[2] + r * 0.2 * mh[2]) + z * hh
        expected.append(hh)
    assert sent_x == 3 and codes_x.tolist() == [[3]] and codes_h.tolist() == [[sent_h]]
    assert acc_x.tolist() == [mx] and acc_h.tolist() == [mh] and frame.tolist() == [4]
    assert y.flatten().tolist() == pytest.approx(expected, abs=1e-6)   # rational tanh/sigmoid: <= 4e-7
    assert h.flatten().tolist() == [y.flatten()[-1].item()]


def test_threshold_zero_accumulators_equal_the_dense_computation():
    graph, _ = gru_graph()
    layer = delta_gru_c.gru_chain(graph)[0]
    x = saturating(3, 20, 6, seed=4)
    for t, (before, after) in enumerate(frames(layer, x)):
        h_prev = torch.zeros(3, 16) if before[4] is None else before[4]
        kx, kh = quantize_codes(x[:, t], layer["step_x"], 127), quantize_codes(h_prev, layer["step_h"], 127)
        assert torch.equal(after[0], kx) and torch.equal(after[1], kh)
        assert torch.equal(after[2], (layer["bias_x"].long() + kx.long() @ layer["weight_x"].long().t()).int())
        assert torch.equal(after[3], (layer["bias_h"].long() + kh.long() @ layer["weight_h"].long().t()).int())


def test_state_carried_across_two_calls_equals_one_call():
    graph, _ = gru_graph(threshold=0.1, key_interval=7)
    layer = delta_gru_c.gru_chain(graph)[0]
    x = walk(2, 30, 6, seed=5)
    whole = delta_gru_c.call_layer(layer, x, (None,) * 6)
    first = delta_gru_c.call_layer(layer, x[:, :13].contiguous(), (None,) * 6)
    second = delta_gru_c.call_layer(layer, x[:, 13:].contiguous(), tuple(first[1:]))
    assert torch.equal(torch.cat([first[0], second[0]], dim=1), whole[0])
    assert all(torch.equal(a, b) for a, b in zip(second[1:], whole[1:]))


def test_key_frames_resynchronise_every_code():
    graph, _ = gru_graph(threshold=0.5, key_interval=5)
    layer = delta_gru_c.gru_chain(graph)[0]
    x = walk(2, 21, 6, seed=6)
    stale = 0
    for t, (before, after) in enumerate(frames(layer, x)):
        h_prev = torch.zeros(2, 16) if before[4] is None else before[4]
        kx, kh = quantize_codes(x[:, t], layer["step_x"], 127), quantize_codes(h_prev, layer["step_h"], 127)
        synced = torch.equal(after[0], kx) and torch.equal(after[1], kh)
        if t % 5 == 0:
            assert synced
            assert torch.equal(after[2], (layer["bias_x"].long() + kx.long() @ layer["weight_x"].long().t()).int())
        else:
            stale += not synced
            limit = code_thresholds(0.5, layer["step_x"])
            assert ((after[0] - kx).abs() < limit).all()       # what is not sent stays below the threshold
    assert stale >= 10


def test_lowered_gru_is_close_to_the_float_model():
    graph, model = gru_graph()
    x = walk(2, 25, 6, seed=7)
    with torch.no_grad():
        error = float((graph(x) - model(x)).abs().max())
    assert 0 < error < 0.03                                      # int8 weights, nothing else


# ----- the C kernel ------------------------------------------------------------------------------
@pytest.mark.parametrize("widths,threshold,key_interval", [((6, 16), 0.0, 0), ((6, 16), 0.05, 0),
                                                           ((7, 13), 0.1, 6), ((6, 16, 11), 0.03, 4)])
def test_c_kernel_is_bit_exact_with_the_reference(library, widths, threshold, key_interval):
    graph, _ = gru_graph(widths, threshold, key_interval, seed=len(widths) + int(threshold * 100))
    runtime = delta_gru_c.DeltaGRURuntime(delta_gru_c.net_blob(graph), library)
    assert runtime.kernel == ("avx2" if delta_c.host_arch_flags() else "scalar")
    for seed in range(5):
        x = saturating(3, 30, widths[0], seed=seed)
        expected, fired = delta_gru_c.reference_stream(graph, x)
        runtime.reset(3)
        y, used = runtime.run(x.numpy())
        assert delta_gru_c.max_error(y, expected.numpy()) == delta_gru_c.TOLERANCE == 0.0, f"seed {seed}"
        assert used.tolist() == [list(f) for f in fired]


def test_portable_scalar_build_is_bit_exact(tmp_path):
    graph, _ = gru_graph((7, 13), threshold=0.05, key_interval=3)
    runtime = delta_gru_c.DeltaGRURuntime(delta_gru_c.net_blob(graph), delta_gru_c.build_library(tmp_path, []))
    assert runtime.kernel == "scalar"
    x = saturating(2, 25, 7, seed=3)
    expected, fired = delta_gru_c.reference_stream(graph, x)
    y, used = runtime.run(x.numpy())
    assert np.array_equal(y, expected.numpy()) and used.tolist() == [list(f) for f in fired]


def test_fired_counts_are_the_columns_actually_read(library):
    graph, _ = gru_graph(threshold=0.05)
    layer = delta_gru_c.gru_chain(graph)[0]
    x = walk(2, 24, 6, seed=8)
    x[:, :, 3] = 0.7                                             # feature 3: sent at frame 0, never again
    zeros_x = zeros_h = 0
    for before, after in frames(layer, x):
        zeros_x += int((after[0] == (0 if before[0] is None else before[0])).sum())
        zeros_h += int((after[1] == (0 if before[1] is None else before[1])).sum())
    blob = delta_gru_c.net_blob(graph)
    runtime = delta_gru_c.DeltaGRURuntime(blob, library)
    reference, _ = runtime.run(x.numpy())
    runtime.reset(2)
    y_first, used_first = runtime.run(x[:, :1].numpy())
    y_rest, used_rest = runtime.run(x[:, 1:].numpy())
    used = used_first + used_rest
    assert used[0].tolist() == [2 * 24 * 6 - zeros_x, 2 * 24 * 16 - zeros_h]
    assert np.array_equal(np.concatenate([y_first, y_rest], axis=1), reference)

    def corrupted_run(column):
        """Run frame 0, overwrite W_x column `column` in the loaded net, run the rest."""
        runtime.reset(2)
        runtime.run(x[:, :1].numpy())
        offset = 16 + 24 + 4 * (6 + 16) + 48 * 16 + column * 48
        ctypes_buffer = runtime._buffer
        for i in range(48):
            ctypes_buffer[offset + i] = struct.pack("b", 100)
        y, _ = runtime.run(x[:, 1:].numpy())
        ctypes_buffer[offset:offset + 48] = blob[offset:offset + 48]
        return y

    assert np.array_equal(corrupted_run(3), y_rest)               # column 3 was skipped after frame 0
    assert not np.array_equal(corrupted_run(0), y_rest)           # a column that fires is read


def test_runtime_threshold_and_errors(library):
    graph, _ = gru_graph(threshold=0.0)
    runtime = delta_gru_c.DeltaGRURuntime(delta_gru_c.net_blob(graph), library)
    x = walk(2, 20, 6, seed=9)
    runtime.set_threshold(0.1, 0.05)
    runtime.set_key_interval(4)
    y, used = runtime.run(x.numpy())
    set_threshold(graph, 0.1, key_interval=4, threshold_h=0.05)  # the same change in the graph
    layer = delta_gru_c.gru_chain(graph)[0]
    assert layer["threshold"].tolist() == pytest.approx([0.1, 0.05]) and layer["key_interval"] == 4
    assert np.array_equal(y, graph(x).numpy())
    runtime.reset(2)
    runtime.set_threshold(0.0)
    assert not np.array_equal(runtime.run(x.numpy())[0], y)
    with pytest.raises(InputError, match=r"expected \(batch, time, 6\)"):
        runtime.run(np.zeros((2, 3, 5), np.float32))
    with pytest.raises(InputError, match=">= 0"):
        runtime.set_threshold(-1.0)


# ----- ONNX and convert --------------------------------------------------------------------------
def test_onnx_step_model_and_convert_report(tmp_path):
    graph, _ = gru_graph((6, 16, 9), threshold=0.05, key_interval=6)
    report = delta_gru_c.convert_gru(graph, tmp_path, sequences=3, steps=30)
    assert report["max_abs_error"] == {"c": 0.0, "onnx": 0.0} and report["tolerance"] == 0.0
    assert [(l["n_in"], l["hidden"]) for l in report["layers"]] == [(6, 16), (16, 9)]
    assert all(0 < l["h_sparsity"] < 1 for l in report["layers"])
    assert {"delta_gru_net.bin", "delta_gru_step.onnx", "delta_gru.c", "libhwact_delta_gru.so"} <= set(report["artifacts"])
    x = saturating(2, 40, 6, seed=12)
    expected, _ = delta_gru_c.reference_stream(graph, x)
    y = delta_gru_c.run_stream(session(tmp_path / "delta_gru_step.onnx"), graph, x.numpy())
    assert np.array_equal(y, expected.numpy())


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="aarch64 cross toolchain / qemu-user not installed")
def test_aarch64_neon_build_under_qemu_is_bit_exact(tmp_path):
    graph, _ = gru_graph((7, 13, 10), threshold=0.05, key_interval=5)
    exe = delta_gru_c.build_aarch64(tmp_path)
    x = saturating(2, 20, 7, seed=13)
    expected, fired = delta_gru_c.reference_stream(graph, x)
    result = delta_gru_c.run_under_qemu(exe, delta_gru_c.net_blob(graph), x.numpy(), tmp_path / "run")
    assert result["kernel"] == "neon"
    assert np.array_equal(result["y"], expected.numpy())
    assert result["fired"].tolist() == [list(f) for f in fired]
