"""Verilog backend for logic netlists: emitted RTL simulated (iverilog, verilator) bit-exact against
Netlist.evaluate / class_counts, yosys LUT6 / xc7 synthesis counts, missing tools, LUT budget."""

from __future__ import annotations

import re

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hwact.backends.verilog import (bits_to_hex, check_lut_budget, emit_verilog, hex_to_bits, read_header,
                                    simulate, synthesize, input_vectors)
from hwact.errors import InputError, ToolMissingError, UnsupportedError
from hwact.ir.netlist import Netlist, random_layered


def random_netlist(num_inputs: int, num_gates: int, num_outputs: int, num_classes: int, seed: int) -> Netlist:
    """Seeded random topologically ordered netlist (operands anywhere earlier, all 16 gate ids)."""
    rng = np.random.default_rng(seed)
    earlier = num_inputs + np.arange(num_gates)
    a = (rng.random(num_gates) * earlier).astype(np.int64)
    b = (rng.random(num_gates) * earlier).astype(np.int64)
    outputs = rng.integers(0, num_inputs + num_gates, num_outputs)
    return Netlist(num_inputs, rng.integers(0, 16, num_gates), a, b, outputs, num_classes)


def all_gates_netlist() -> Netlist:
    """Two inputs, one gate per id 0..15 reading (x0, x1), every gate an output (one class of 16)."""
    return Netlist(2, np.arange(16), np.zeros(16), np.ones(16), 2 + np.arange(16), 1)


# --------------------------------------------------------------------------------------- emission
def test_emit_writes_module_testbench_and_harness(tmp_path):
    net = random_netlist(6, 20, 12, 3, seed=1)
    result = emit_verilog(net, tmp_path, top="my_net")
    assert result == {"files": ["my_net.v", "my_net_tb.v", "my_net_harness.cpp"], "latency_cycles": 0,
                      "count_bits": 3}
    text = (tmp_path / "my_net.v").read_text()
    assert text.count("  wire g") == 20
    assert "module my_net (" in text and "clk" not in text
    assert "input  wire [5:0] x" in text and "output wire [11:0] y" in text
    assert "output wire [8:0] counts" in text
    assert not list(tmp_path.glob("*.tmp"))
    assert read_header(tmp_path / "my_net.v")["latency_cycles"] == 0


@pytest.mark.parametrize("group,width", [(1, 1), (2, 2), (3, 2), (4, 3), (7, 3), (8, 4), (15, 4), (16, 5)])
def test_count_width_is_exactly_sufficient(tmp_path, group, width):
    net = random_netlist(4, 10, 2 * group, 2, seed=group)
    assert emit_verilog(net, tmp_path)["count_bits"] == width
    assert f"output wire [{2 * width - 1}:0] counts" in (tmp_path / "logic_net.v").read_text()


def test_pipelined_latency_and_ports(tmp_path):
    # a chain of 5 gates: levels 1..5; k=2 -> stages 0,0,1,1,2; latency = last stage + 2 (output, adder)
    chain = Netlist(2, [6, 1, 7, 9, 14], [0, 2, 3, 4, 5], [1, 0, 1, 0, 1], [6], 1)
    assert emit_verilog(chain, tmp_path, pipeline_every=2)["latency_cycles"] == 4
    assert emit_verilog(chain, tmp_path, pipeline_every=1)["latency_cycles"] == 6
    assert emit_verilog(chain, tmp_path, pipeline_every=5)["latency_cycles"] == 2
    assert "input  wire clk" in (tmp_path / "logic_net.v").read_text()


def test_emit_rejects_bad_names_and_options(tmp_path):
    net = random_netlist(3, 4, 2, 1, seed=0)
    with pytest.raises(InputError, match="not a Verilog identifier"):
        emit_verilog(net, tmp_path, top="1bad-name")
    with pytest.raises(InputError, match="pipeline_every"):
        emit_verilog(net, tmp_path, pipeline_every=-1)
    assert not (tmp_path / "logic_net.v").exists()


def test_hex_round_trip():
    bits = input_vectors(37, 200, seed=3)
    back, valid = hex_to_bits(bits_to_hex(bits), 37)
    assert valid.all() and np.array_equal(back, bits)
    _, valid = hex_to_bits(["1x", "ff"], 8)
    assert valid.tolist() == [False, True]


def input_vectors_hold_edges_then_random():
    vectors = input_vectors(5, 100, seed=0)
    assert vectors.shape == (100, 5)
    assert vectors[0].sum() == 0 and vectors[1].sum() == 5
    assert np.array_equal(vectors[2:7], np.eye(5, dtype=np.uint8))


# ------------------------------------------------------------------------------ iverilog simulation
@pytest.mark.parametrize("op", range(16))
def test_each_gate_iverilog(tmp_path, op):
    net = Netlist(2, [op], [0], [1], [2], 1)
    emit_verilog(net, tmp_path)
    assert simulate(net, tmp_path, "logic_net", samples=16, simulator="iverilog")["mismatches"] == 0


@pytest.mark.parametrize("pipeline_every", [0, 1, 2])
def test_all_gates_netlist_iverilog(tmp_path, pipeline_every):
    net = all_gates_netlist()
    emit_verilog(net, tmp_path, pipeline_every=pipeline_every)
    result = simulate(net, tmp_path, "logic_net", samples=64, simulator="iverilog")
    assert result == {**result, "samples": 64, "mismatches": 0, "simulator": "iverilog"}


@pytest.mark.parametrize("pipeline_every", [0, 1, 2, 3])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_random_netlists_iverilog(tmp_path, pipeline_every, seed):
    net = random_netlist(9, 60, 20, 4, seed=seed)
    emitted = emit_verilog(net, tmp_path, pipeline_every=pipeline_every)
    result = simulate(net, tmp_path, "logic_net", samples=500, seed=seed, simulator="iverilog")
    assert result["mismatches"] == 0 and result["samples"] == 500
    assert result["latency_cycles"] == emitted["latency_cycles"]


@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(num_inputs=st.integers(1, 70), num_gates=st.integers(0, 40), group=st.integers(1, 9),
       num_classes=st.integers(1, 3), pipeline_every=st.integers(0, 3), seed=st.integers(0, 2**31))
def test_random_netlists_property_iverilog(tmp_path_factory, num_inputs, num_gates, group, num_classes,
                                           pipeline_every, seed):
    net = random_netlist(num_inputs, num_gates, group * num_classes, num_classes, seed)
    folder = tmp_path_factory.mktemp("prop")
    emit_verilog(net, folder, pipeline_every=pipeline_every)
    assert simulate(net, folder, "logic_net", samples=200, seed=seed, simulator="iverilog")["mismatches"] == 0


def test_corrupted_gate_is_caught_iverilog(tmp_path):
    net = random_layered(8, 16, 3, 2, seed=4)
    emit_verilog(net, tmp_path)
    verilog_file = tmp_path / "logic_net.v"
    text = verilog_file.read_text()
    gate = net.num_gates - 1          # a last-layer gate: it is an output, so flipping it must show
    line = re.search(rf"^  wire g{gate} = (.*);$", text, re.MULTILINE)
    verilog_file.write_text(text.replace(line.group(0), f"  wire g{gate} = ~({line.group(1)});"))
    result = simulate(net, tmp_path, "logic_net", samples=300, simulator="iverilog")
    assert result["mismatches"] == 300


def test_simulate_rejects_missing_or_foreign_rtl(tmp_path):
    net = random_netlist(4, 6, 2, 1, seed=0)
    with pytest.raises(InputError, match="does not exist"):
        simulate(net, tmp_path, "logic_net", simulator="iverilog")
    emit_verilog(random_netlist(5, 6, 2, 1, seed=0), tmp_path)
    with pytest.raises(InputError, match="another netlist"):
        simulate(net, tmp_path, "logic_net", simulator="iverilog")
    with pytest.raises(InputError, match="unknown simulator"):
        simulate(net, tmp_path, "logic_net", simulator="modelsim")


# ----------------------------------------------------------------------------- verilator simulation
def test_verilator_10k_samples_combinational(tmp_path):
    net = random_layered(64, 48, 4, 6, seed=7)     # wide input bus (VlWide), 48 outputs, 6 classes
    emit_verilog(net, tmp_path)
    result = simulate(net, tmp_path, "logic_net", samples=10000, seed=11, simulator="verilator")
    assert result["samples"] == 10000 and result["mismatches"] == 0 and result["simulator"] == "verilator"


def test_verilator_pipelined_all_gates_and_corruption(tmp_path):
    net = Netlist(2, np.concatenate([np.arange(16), np.arange(16)]), np.r_[np.zeros(16), 2 + np.arange(16)],
                  np.r_[np.ones(16), np.zeros(16)], 2 + np.arange(32), 2)
    emitted = emit_verilog(net, tmp_path, pipeline_every=1)
    assert emitted["latency_cycles"] == 3     # levels 1, 2 -> stages 0, 1; + output and adder registers
    assert simulate(net, tmp_path, "logic_net", samples=2000, simulator="verilator")["mismatches"] == 0
    verilog_file = tmp_path / "logic_net.v"
    text = verilog_file.read_text()
    corrupted = text.replace("  wire g1 = x[0] & x[1];", "  wire g1 = x[0] | x[1];")
    assert corrupted != text
    verilog_file.write_text(corrupted)
    result = simulate(net, tmp_path, "logic_net", samples=2000, simulator="verilator")
    assert 0 < result["mismatches"] < 2000     # AND vs OR differ on exactly the mixed inputs


# ---------------------------------------------------------------------------------------- synthesis
def test_single_and_gate_is_one_lut(tmp_path):
    net = Netlist(2, [1], [0], [1], [2], 1)
    emit_verilog(net, tmp_path)
    lut6 = synthesize(tmp_path, "logic_net", "lut6")
    assert (lut6["luts"], lut6["ffs"], lut6["lut_depth"]) == (1, 0, 1)
    assert (tmp_path / lut6["log"]).is_file()
    xc7 = synthesize(tmp_path, "logic_net", "xc7")
    assert (xc7["luts"], xc7["ffs"]) == (1, 0)
    assert xc7["cells"].get("LUT2") == 1


def test_five_chained_gates_on_six_inputs_fit_one_lut6(tmp_path):
    # ((((x0 ^ x1) & x2) | x3) ^ x4) & ~x5 : 5 gates, 6 inputs, one output -> a single LUT6
    net = Netlist(6, [6, 1, 7, 6, 2], [0, 6, 7, 8, 9], [1, 2, 3, 4, 5], [10], 1)
    emit_verilog(net, tmp_path)
    lut6 = synthesize(tmp_path, "logic_net", "lut6")
    assert (lut6["luts"], lut6["ffs"], lut6["lut_depth"]) == (1, 0, 1)


def test_pipelined_synthesis_counts_flip_flops(tmp_path):
    # the same 5-gate chain, a register after every gate level: per stage s the chain value plus the
    # inputs still waiting (x_{s+2}..x5 for the stage-s gate) are registered, then y_r and the count.
    net = Netlist(6, [6, 1, 7, 6, 2], [0, 6, 7, 8, 9], [1, 2, 3, 4, 5], [10], 1)
    assert emit_verilog(net, tmp_path, pipeline_every=1)["latency_cycles"] == 6
    lut6 = synthesize(tmp_path, "logic_net", "lut6")
    # input delays: x2:1, x3:2, x4:3, x5:4 = 10; gate outputs g0..g3: 1 each = 4; g4 -> y_r: 1;
    # y_q and counts_q hold the same bit (yosys merges them) -> 1
    assert lut6["ffs"] == 16
    assert lut6["luts"] == 5 and lut6["lut_depth"] == 1


def test_tools_missing_raise_tool_missing_error(tmp_path, monkeypatch):
    net = random_netlist(3, 4, 2, 1, seed=0)
    emit_verilog(net, tmp_path)
    monkeypatch.setenv("PATH", "")
    with pytest.raises(ToolMissingError, match="yosys") as error:
        synthesize(tmp_path, "logic_net", "lut6")
    assert "apt-get install yosys" in str(error.value)
    with pytest.raises(ToolMissingError) as error:
        simulate(net, tmp_path, "logic_net", simulator="verilator")
    assert "apt-get install verilator" in str(error.value)
    with pytest.raises(ToolMissingError) as error:
        simulate(net, tmp_path, "logic_net", simulator="iverilog")
    assert "apt-get install iverilog" in str(error.value)


def test_synthesize_rejects_bad_flavor_and_missing_rtl(tmp_path):
    with pytest.raises(InputError, match="flavor"):
        synthesize(tmp_path, "logic_net", "ice40")
    with pytest.raises(InputError, match="does not exist"):
        synthesize(tmp_path, "logic_net", "lut6")


def test_check_lut_budget():
    check_lut_budget(100, 100, "fpga-lut6")
    with pytest.raises(UnsupportedError, match="101 LUTs, over the 100-LUT budget of target xc7"):
        check_lut_budget(101, 100, "xc7")


@pytest.mark.parametrize("pipeline_every", [0, 2])
def test_rtl_is_lint_clean(tmp_path, pipeline_every):
    """verilator -Wall finds nothing but unused (dead) gates/inputs: widths, nets and blocking are clean."""
    import subprocess

    emit_verilog(random_netlist(10, 40, 12, 3, seed=5), tmp_path, pipeline_every=pipeline_every)
    done = subprocess.run(["verilator", "--lint-only", "-Wall", "-Wno-UNUSED", str(tmp_path / "logic_net.v")],
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert "%Warning" not in done.stderr
