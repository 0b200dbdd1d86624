"""C delta runtime (x86 AVX2 build, aarch64 NEON build under qemu-user) bit-exact against the reference."""

import shutil

import numpy as np
import pytest
import torch

from delta_helpers import delta_model, lowered, walk
from hwact.backends import delta_c
from hwact.errors import InputError


@pytest.fixture(scope="module")
def library(tmp_path_factory):
    return delta_c.build_library(tmp_path_factory.mktemp("delta_lib"))


def edge_sequence(batch, steps, features, step=0.125, seed=0):
    """Random walk plus exact rounding ties (x/step = k + 0.5), values far beyond the clamp, zeros, -0.0."""
    x = walk(batch, steps, features, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    ties = (torch.randint(-20, 20, (batch, steps, features), generator=g).float() + 0.5) * step
    mask = torch.rand(batch, steps, features, generator=g)
    x = torch.where(mask < 0.15, ties, x)
    x = torch.where(mask > 0.97, torch.sign(x) * 1e6, x)
    x[:, 3] = 0.0
    x[:, 4] = -0.0
    return x


@pytest.mark.parametrize("threshold,key_interval", [(0.0, 0), (0.2, 0), (0.6, 5)])
def test_x86_runtime_is_bit_exact_with_the_reference(library, threshold, key_interval):
    # power-of-two steps make the rounding ties exact in float32
    graph = lowered(delta_model(steps=(0.125, 0.0625, 0.0625)), threshold=threshold, key_interval=key_interval)
    runtime = delta_c.DeltaRuntime(delta_c.net_blob(graph), library)
    assert runtime.kernel == ("avx2" if delta_c.host_arch_flags() else "scalar")
    for seed in range(4):
        x = edge_sequence(3, 25, 24, seed=seed)
        expected, fired = delta_c.reference_stream(graph, x)
        runtime.reset(3)
        y, used = runtime.run(x.numpy())
        assert np.array_equal(y, expected.numpy()), f"seed {seed}: {(y != expected.numpy()).sum()} values differ"
        assert used.tolist() == fired          # the columns the kernel used are the reference's fired inputs


def test_odd_widths_exercise_the_scalar_tail(library):
    graph = lowered(delta_model(features=13, hidden=(37, 19), classes=5, steps=(0.1, 0.07, 0.03)), threshold=0.1)
    runtime = delta_c.DeltaRuntime(delta_c.net_blob(graph), library)
    x = walk(2, 30, 13, seed=9)
    expected, fired = delta_c.reference_stream(graph, x)
    y, used = runtime.run(x.numpy())
    assert np.array_equal(y, expected.numpy()) and used.tolist() == fired


def test_dense_mode_equals_threshold_zero_and_state_carries_across_calls(library, tmp_path):
    graph = lowered()
    runtime = delta_c.DeltaRuntime(delta_c.net_blob(graph), library)
    x = walk(2, 40, 24, seed=2).numpy()
    whole, used_whole = runtime.run(x)
    runtime.reset(2)
    dense, used_dense = runtime.run(x, dense=True)
    assert np.array_equal(whole, dense)
    assert used_dense.tolist() == [2 * 40 * n_in for n_in, _ in runtime.shapes]
    assert (used_whole < used_dense).all()
    runtime.reset(2)
    first, _ = runtime.run(x[:, :15])
    runtime.save_state(tmp_path / "state.npz")
    runtime.reset(2)
    runtime.load_state(tmp_path / "state.npz")
    second, _ = runtime.run(x[:, 15:])
    assert np.array_equal(np.concatenate([first, second], axis=1), whole)


def test_runtime_threshold_and_key_frames(library):
    graph = lowered()
    runtime = delta_c.DeltaRuntime(delta_c.net_blob(graph), library)
    x = walk(1, 30, 24, seed=4)
    runtime.set_threshold(0.4)
    runtime.set_key_interval(10)
    y, used = runtime.run(x.numpy())
    expected, fired = delta_c.reference_stream(graph, x, threshold=0.4, key_interval=10)
    assert np.array_equal(y, expected.numpy()) and used.tolist() == fired
    dense, _ = delta_c.reference_stream(graph, x, threshold=0.0)
    assert np.array_equal(y[:, [0, 10, 20]], dense.numpy()[:, [0, 10, 20]])
    assert not np.array_equal(y, dense.numpy())


def test_bad_input_errors(library, tmp_path):
    graph = lowered()
    runtime = delta_c.DeltaRuntime(delta_c.net_blob(graph), library)
    with pytest.raises(InputError, match=r"expected \(batch, time, 24\)"):
        runtime.run(np.zeros((1, 5, 23), np.float32))
    with pytest.raises(InputError, match=">= 0"):
        runtime.set_threshold(-0.5)
    other = delta_c.DeltaRuntime(delta_c.net_blob(lowered(delta_model(seed=7))), library)
    other.run(np.zeros((1, 3, 24), np.float32))
    other.save_state(tmp_path / "other.npz")
    with pytest.raises(InputError, match="state of another model"):
        runtime.load_state(tmp_path / "other.npz")
    (tmp_path / "junk.npz").write_bytes(b"not a state")
    with pytest.raises(InputError, match="not a delta state file"):
        runtime.load_state(tmp_path / "junk.npz")
    # the same net with another threshold keeps its identity (thresholds are run-time settings)
    assert delta_c.fingerprint(delta_c.net_blob(lowered(threshold=0.3))) == runtime.fingerprint


@pytest.mark.skipif(shutil.which("qemu-aarch64") is None or shutil.which("aarch64-linux-gnu-gcc") is None,
                    reason="aarch64 cross toolchain / qemu-user not installed")
def test_aarch64_neon_build_under_qemu_is_bit_exact(tmp_path):
    graph = lowered(delta_model(features=13, hidden=(37, 40), steps=(0.125, 0.0625, 0.0625)), threshold=0.2)
    exe = delta_c.build_aarch64(tmp_path)
    x = edge_sequence(2, 20, 13, seed=11)
    expected, fired = delta_c.reference_stream(graph, x)
    result = delta_c.run_under_qemu(exe, delta_c.net_blob(graph), x.numpy(), tmp_path / "run")
    assert result["kernel"] == "neon"
    assert np.array_equal(result["y"], expected.numpy())
    assert result["fired"].tolist() == fired
