"""Input packing in C (logic_kernel.c): (N, inputs) 0/1 bytes -> 64-sample bit planes, checked byte by byte,
fused with the gates in LogicCKernel.class_counts / output_bits. Bit-exact against the numpy packing
(logic_c.pack_bits) and the netlist reference, on the AVX2 tile (32 inputs), the scalar tile (8 inputs)
and the partial tail, for batch sizes around the 64-sample word and the kernel block."""

import shutil
import subprocess

import numpy as np
import pytest
import torch

from hwact.backends import logic_c
from hwact.backends.toolchain import host_arch_flags
from hwact.errors import InputError
from logic_helpers import random_bits, random_netlist

# 1..7: tail only; 8, 16: scalar tiles; 31-33, 64, 65: around the AVX2 tile; 100, 259: everything
INPUT_COUNTS = (1, 3, 7, 8, 9, 16, 31, 32, 33, 64, 65, 100, 259)
BATCHES = (1, 2, 63, 64, 65, 127, 511, 512, 513, 1000)


def build(netlist, folder, flags=None):
    """The kernel built by build_c, or (flags given) compiled from the emitted source with those flags."""
    if flags is None:
        info = logic_c.build_c(netlist, folder)
        return logic_c.LogicCKernel(folder / info["library"], netlist)
    logic_c.emit_c(netlist, folder)
    subprocess.run(["gcc", *logic_c.C_FLAGS, *flags, "-shared", "-fPIC", str(folder / "logic_net.c"),
                    "-o", str(folder / "logic_net.so")], check=True)
    return logic_c.LogicCKernel(folder / "logic_net.so", netlist)


def net_for(num_inputs: int):
    return random_netlist(num_inputs, num_inputs, 120, 30, 5, 60)


@pytest.fixture(scope="module", params=INPUT_COUNTS)
def case(request, tmp_path_factory):
    netlist = net_for(request.param)
    return netlist, build(netlist, tmp_path_factory.mktemp(f"in{request.param}"))


def test_c_packing_and_fused_kernel_are_bit_exact(case):
    netlist, kernel = case
    for n in BATCHES:
        bits = random_bits(n, n, netlist.num_inputs)
        planes, count = kernel.pack_bits(bits)
        expected_planes, _ = logic_c.pack_bits(bits, netlist.num_inputs)
        assert count == n and planes.dtype == np.uint64
        assert np.array_equal(planes, expected_planes), f"planes, batch {n}"
        assert np.array_equal(kernel.class_counts(bits), netlist.class_counts(bits)), f"counts, batch {n}"
        assert np.array_equal(kernel.class_counts(bits), kernel.class_counts_packed(planes, n))
        assert np.array_equal(kernel.output_bits(bits), netlist.evaluate(bits).astype(np.uint8)), f"bits, batch {n}"


def test_every_sample_and_input_lands_in_its_bit(tmp_path):
    # one 1 per row at a distinct input: plane i must have exactly the bits of the rows that set i
    netlist = net_for(77)
    kernel = build(netlist, tmp_path)
    n = 77 * 3
    bits = np.zeros((n, 77), dtype=np.uint8)
    bits[np.arange(n), np.arange(n) % 77] = 1
    planes, _ = kernel.pack_bits(bits)
    for i in range(77):
        samples = [s for s in range(n) if s % 77 == i]
        expected = np.zeros(planes.shape[1], dtype=np.uint64)
        for s in samples:
            expected[s // 64] |= np.uint64(1) << np.uint64(s % 64)
        assert np.array_equal(planes[i], expected), f"input {i}"


def test_scalar_path_without_avx2_is_bit_exact(tmp_path):
    netlist = net_for(45)
    kernel = build(netlist, tmp_path, flags=["-mno-avx2"] if host_arch_flags() else [])
    assert kernel.kernel == "u64"
    for n in (1, 64, 700):
        bits = random_bits(n + 1, n, 45)
        assert np.array_equal(kernel.pack_bits(bits)[0], logic_c.pack_bits(bits, 45)[0])
        assert np.array_equal(kernel.class_counts(bits), netlist.class_counts(bits))
        assert np.array_equal(kernel.output_bits(bits), netlist.evaluate(bits).astype(np.uint8))
    with pytest.raises(InputError, match="sample 600, input 44 is 2"):
        bad = random_bits(9, 700, 45)
        bad[600, 44] = 2
        kernel.class_counts(bad)


def test_other_dtypes_and_layouts_give_the_same_counts(case):
    netlist, kernel = case
    bits = random_bits(5, 300, netlist.num_inputs)
    expected = netlist.class_counts(bits)
    fortran = np.asfortranarray(bits)
    wide = np.zeros((300, netlist.num_inputs + 5), dtype=np.uint8)
    wide[:, :netlist.num_inputs] = bits
    for variant in (bits.astype(bool), bits.astype(np.int8), bits.astype(np.int64), bits.astype(np.float32),
                    fortran, wide[:, :netlist.num_inputs], torch.as_tensor(bits).bool(), torch.as_tensor(bits)):
        assert np.array_equal(kernel.class_counts(variant), expected)
    empty = np.zeros((0, netlist.num_inputs), dtype=np.uint8)
    assert kernel.class_counts(empty).shape == (0, netlist.num_classes)
    assert kernel.output_bits(empty).shape == (0, netlist.outputs.size)


@pytest.mark.parametrize("value", [2, 255, 128, 3])
def test_non_binary_bytes_are_rejected_where_they_are(case, value):
    netlist, kernel = case
    n, k = 1000, netlist.num_inputs
    for sample, column in ((0, 0), (999, k - 1), (700, k // 2), (513, min(40, k - 1))):
        bits = random_bits(sample, n, k)
        bits[sample, column] = value
        message = f"binary \\(0/1\\): sample {sample}, input {column} is {value} "
        for call in (kernel.class_counts, kernel.output_bits, kernel.pack_bits):
            with pytest.raises(InputError, match=message):
                call(bits)
        with pytest.raises(InputError, match=message):
            logic_c.pack_bits(bits, k)                       # the numpy reference says the same


def test_the_first_bad_value_is_reported_and_wide_dtypes_do_not_wrap(case):
    netlist, kernel = case
    k = netlist.num_inputs
    bits = random_bits(1, 900, k)
    bits[800, 0] = 7
    bits[130, k - 1] = 2
    with pytest.raises(InputError, match=f"sample 130, input {k - 1} is 2 "):
        kernel.class_counts(bits)
    with pytest.raises(InputError, match="sample 3, input 0 is -1 "):
        signed = random_bits(2, 10, k).astype(np.int8)
        signed[3, 0] = -1
        kernel.class_counts(signed)
    wide = random_bits(3, 10, k).astype(np.int64)
    wide[4, 0] = 256                                         # 0 as a byte: must not pass
    with pytest.raises(InputError, match="sample 4, input 0 is 256 "):
        kernel.class_counts(wide)
    with pytest.raises(InputError, match="is 0.5 "):
        kernel.output_bits(np.full((2, k), 0.5))
    with pytest.raises(InputError, match=rf"\(N, {k}\)"):
        kernel.class_counts(np.zeros((3, k + 1), dtype=np.uint8))


def test_aarch64_runner_packs_odd_shapes_and_refuses_bad_bytes(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("aarch64 cross compiler or qemu-user missing")
    netlist = net_for(37)
    info = logic_c.build_c(netlist, tmp_path, arch="aarch64")
    bits = random_bits(4, 130, 37)
    result = logic_c.run_runner(tmp_path / info["library"], bits, netlist, tmp_path / "run")
    assert result["kernel"] == "neon"
    assert np.array_equal(result["counts"], netlist.class_counts(bits))
    assert np.array_equal(result["bits"], netlist.evaluate(bits).astype(np.uint8))
    bits[129, 36] = 2
    with pytest.raises(InputError, match="sample 129, input 36 is 2 "):
        logic_c.run_runner(tmp_path / info["library"], bits, netlist, tmp_path / "run2")
    assert not (tmp_path / "run2").exists()
    # the runner itself refuses such a byte (exit 4), e.g. when its file comes from elsewhere
    (tmp_path / "run3").mkdir()
    header = np.array([130, 37], dtype="<i8").tobytes()
    (tmp_path / "run3" / "in.bin").write_bytes(header + bits.tobytes())
    done = subprocess.run([*logic_c.aarch64_emulator(), str(tmp_path / info["library"]),
                           str(tmp_path / "run3" / "in.bin"), str(tmp_path / "run3" / "out.bin")],
                          capture_output=True, text=True)
    assert done.returncode == 4 and f"input byte {129 * 37 + 36} is not 0 or 1" in done.stderr


def test_bench_reports_end_to_end_and_packed_rates(tmp_path):
    from hwact.backends.base import BenchRequest
    from hwact.backends.logic_backends import bench

    netlist = net_for(40)
    (tmp_path / "netlist.npz").write_bytes(netlist.to_bytes())
    result = bench(tmp_path, BenchRequest(iterations=1))
    assert result["c_samples_per_s"] > 0 and result["c_end_to_end_samples_per_s"] > 0
    assert result["c_end_to_end_vs_packed"] == result["c_end_to_end_samples_per_s"] / result["c_samples_per_s"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["netlist.npz"]     # built elsewhere, nothing left here
