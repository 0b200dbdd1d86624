"""Bit-sliced C kernel for logic netlists: bit-exact with Netlist.evaluate / class_counts (x86 and aarch64)."""

import os
import shutil

import numpy as np
import pytest

from hwact.backends import logic_c
from hwact.errors import InputError, ToolMissingError
from hwact.ir.netlist import Netlist
from logic_helpers import all_gates_netlist, random_bits, random_netlist

BATCHES = (1, 63, 64, 65, 255, 257, 1000)
NETS = {  # name: (seed, inputs, gates, outputs, classes, window)
    "shallow-wide": (1, 40, 600, 100, 10, None),
    "deep-narrow": (2, 8, 900, 12, 3, 6),
    "one-class": (3, 17, 300, 40, 1, 40),
    "big-groups": (4, 64, 3000, 1200, 2, 400),
    "odd-groups": (5, 9, 200, 21, 7, 30),
}


def build(netlist, folder, **options):
    info = logic_c.build_c(netlist, folder, **options)
    return logic_c.LogicCKernel(folder / info["library"], netlist), info


@pytest.fixture(scope="module")
def gates_kernel(tmp_path_factory):
    return build(all_gates_netlist(), tmp_path_factory.mktemp("gates"))[0]


@pytest.mark.parametrize("n", [5, 300, 1001])
def test_each_of_the_16_gates_is_bit_exact(gates_kernel, n):
    pairs = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.uint8)
    bits = pairs[np.arange(n) % 4]
    out = gates_kernel.output_bits(bits)
    for op in range(16):                         # the truth table read off the gate id
        expected = [(op >> (3 - (2 * int(a) + int(b)))) & 1 for a, b in pairs]
        assert out[:4, op].tolist() == expected, f"gate {op}"
    assert np.array_equal(out, all_gates_netlist().evaluate(bits).astype(np.uint8))
    assert np.array_equal(gates_kernel.class_counts(bits), out.astype(np.int32))   # groups of one


def test_all_16_gates_summed_in_one_group(tmp_path):
    netlist = all_gates_netlist(num_classes=1)
    kernel, _ = build(netlist, tmp_path)
    bits = np.array([[0, 0], [0, 1], [1, 0], [1, 1]] * 65, dtype=np.uint8)
    counts = kernel.class_counts(bits)
    assert counts[:4, 0].tolist() == [8, 8, 8, 8]     # each row of the 16 truth tables has eight ones
    assert np.array_equal(counts, netlist.class_counts(bits))


@pytest.fixture(scope="module", params=sorted(NETS))
def random_case(request, tmp_path_factory):
    seed, inputs, gates, outputs, classes, window = NETS[request.param]
    netlist = random_netlist(seed, inputs, gates, outputs, classes, window)
    kernel, info = build(netlist, tmp_path_factory.mktemp(request.param))
    return netlist, kernel, info


def test_random_netlists_are_bit_exact_for_every_batch_size(random_case):
    netlist, kernel, info = random_case
    assert info["style"] == "table" and info["library"] == "logic_net.so"
    assert kernel.kernel == ("avx2" if logic_c.host_arch_flags() else "u64")
    for n in BATCHES:
        bits = random_bits(n, n, netlist.num_inputs)
        counts = kernel.class_counts(bits)
        assert counts.dtype == np.int32 and counts.shape == (n, netlist.num_classes)
        assert np.array_equal(counts, netlist.class_counts(bits)), f"batch {n}"
        assert np.array_equal(kernel.output_bits(bits), netlist.evaluate(bits).astype(np.uint8)), f"batch {n}"


def test_straight_line_style_is_bit_exact(tmp_path):
    netlist = random_netlist(7, 12, 150, 30, 5, 20)
    kernel, info = build(netlist, tmp_path, style="straight")
    assert info["style"] == "straight"
    bits = random_bits(0, 700, 12)
    assert np.array_equal(kernel.class_counts(bits), netlist.class_counts(bits))
    assert np.array_equal(kernel.output_bits(bits), netlist.evaluate(bits).astype(np.uint8))


def test_outputs_that_are_inputs_repeated_nodes_and_constants(tmp_path):
    # outputs read inputs directly and the same node twice; gate 0/15 constants; a count bit that is always 0
    netlist = Netlist(3, [0, 15, 6], [0, 1, 0], [0, 2, 2], [0, 0, 2, 3, 4, 5, 5, 1], 2)
    kernel, _ = build(netlist, tmp_path)
    bits = random_bits(1, 130, 3)
    assert np.array_equal(kernel.class_counts(bits), netlist.class_counts(bits))
    assert np.array_equal(kernel.output_bits(bits), netlist.evaluate(bits).astype(np.uint8))


def test_counts_wider_than_16_bits_take_the_bit_by_bit_unpacking(tmp_path):
    # one group of 70000 outputs (count up to 70000 > 2^16): 17 count bits
    netlist = Netlist(4, [9, 1], [0, 2], [1, 3], np.r_[np.full(69990, 4), np.arange(6), [5, 5, 0, 1]], 1)
    kernel, _ = build(netlist, tmp_path)
    bits = random_bits(2, 200, 4)
    assert np.array_equal(kernel.class_counts(bits), netlist.class_counts(bits))


def test_adder_tree_width_and_dead_gates(tmp_path):
    netlist = random_netlist(8, 10, 400, 50, 5, 50)
    programs = logic_c.compile_netlist(netlist)
    assert programs["count_bits"] == 4                            # groups of 10 -> counts 0..10
    assert programs["counts"].results.size == 5 * 4
    ops = programs["counts"].ops
    full_adders = int((ops == logic_c.XOR3).sum())
    assert full_adders == int((ops == logic_c.MAJ).sum()) > 0    # each full adder: one sum, one carry
    assert not (programs["bits"].ops >= 16).any()                 # 3-input instructions only in GroupSum
    reachable = logic_c.compile_program(netlist.num_inputs, netlist.ops, netlist.a, netlist.b, netlist.outputs)
    assert reachable.ops.size == programs["bits"].ops.size < 400   # gates no output reads are dropped
    assert programs["bits"].num_slots < netlist.num_nodes          # slots are reused


def test_throughput_runs_on_prepacked_input(random_case):
    _, kernel, _ = random_case
    assert logic_c.throughput(kernel, samples=4096, repeat=2) > 0


def test_aarch64_runner_under_qemu_is_bit_exact(tmp_path):
    if shutil.which("aarch64-linux-gnu-gcc") is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("aarch64 cross compiler or qemu-user missing")
    netlist = random_netlist(9, 20, 800, 60, 6, 80)
    info = logic_c.build_c(netlist, tmp_path, arch="aarch64")
    assert info["library"] == "logic_net_aarch64" and (tmp_path / "logic_net_aarch64").is_file()
    bits = random_bits(3, 1000, 20)
    result = logic_c.run_runner(tmp_path / info["library"], bits, netlist, tmp_path / "run")
    assert result["kernel"] == "neon"
    assert np.array_equal(result["counts"], netlist.class_counts(bits))
    assert np.array_equal(result["bits"], netlist.evaluate(bits).astype(np.uint8))


def test_missing_compiler_is_a_tool_error(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolMissingError, match="gcc is not installed") as error:
        logic_c.build_c(all_gates_netlist(), tmp_path)
    assert "apt-get install gcc" in str(error.value)
    with pytest.raises(ToolMissingError, match="aarch64-linux-gnu-gcc") as error:
        logic_c.build_c(all_gates_netlist(), tmp_path, arch="aarch64")
    assert "apt-get install gcc-aarch64-linux-gnu" in str(error.value)
    assert not any(tmp_path.iterdir())                            # nothing half-written


def test_bad_input_is_a_clear_error(gates_kernel, tmp_path):
    with pytest.raises(InputError, match="binary"):
        gates_kernel.class_counts(np.array([[0, 2]]))
    with pytest.raises(InputError, match=r"\(N, 2\)"):
        gates_kernel.output_bits(np.zeros((4, 3), dtype=np.uint8))
    with pytest.raises(InputError, match="C identifier"):
        logic_c.emit_c(all_gates_netlist(), tmp_path, name="my-net")
    with pytest.raises(InputError, match="style"):
        logic_c.emit_c(all_gates_netlist(), tmp_path, style="fast")
    with pytest.raises(InputError, match="arch"):
        logic_c.build_c(all_gates_netlist(), tmp_path, arch="riscv")
    other = random_netlist(10, 2, 5, 4, 2)
    library = tmp_path / "gates.so"
    build(all_gates_netlist(), tmp_path, name="gates")
    with pytest.raises(InputError, match="another netlist"):
        logic_c.LogicCKernel(library, other)
    with pytest.raises(InputError, match="no such"):
        logic_c.LogicCKernel(tmp_path / "missing.so", other)
    assert sorted(os.listdir(tmp_path)) == ["gates.c", "gates.so"]
