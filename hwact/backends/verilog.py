"""Verilog backend for logic-gate netlists: RTL emission, yosys synthesis, verilator/iverilog equivalence.

RTL (`emit_verilog`). One Verilog-2001 module per netlist:

    module logic_net(input wire [num_inputs-1:0] x,            // (+ input wire clk when pipelined)
                     output wire [num_outputs-1:0] y,          // raw output bits, y[j] = node outputs[j]
                     output wire [num_classes*W-1:0] counts);  // counts[c*W +: W] = popcount of group c

Every gate g (node num_inputs + g) is one `assign g<g> = <expr>;` whose expression is the gate's
truth table written as a Boolean formula of its operands A, B (ids as in hwact.ir.netlist:
out(a, b) = (op >> (3 - (2a + b))) & 1):

    0 1'b0   1 A&B   2 A&~B   3 A    4 ~A&B    5 B    6 A^B     7 A|B
    8 ~(A|B) 9 ~(A^B) 10 ~B  11 A|~B 12 ~A    13 ~A|B 14 ~(A&B) 15 1'b1

GroupSum: the outputs split, in order, into num_classes groups of n = O / num_classes bits; each
count is a balanced binary adder tree over the group's bits where every partial sum is exactly as wide
as its largest value needs (a sum of m bits is bit_length(m) wide), so the root is
W = ceil(log2(n + 1)) bits wide and nothing can overflow.

Pipelining (`pipeline_every = k > 0`). A gate at logic level L (Netlist.levels()) is computed in stage
s(L) = (L - 1) // k; inputs belong to stage 0. A gate in stage s reads an operand u of stage s(u) <= s
through s - s(u) registers (a shared delay chain per node), so every path from an input to a gate
crosses the same number of registers: the pipeline is delay-balanced. The outputs of the last stage S
are registered once more into y_r (every output node u through S - s(u) + 1 registers), the adder tree
reads y_r and its result is registered into the `counts` port while y_r moves to the `y` port, so

    latency_cycles = S + 2          (S = max output stage; 0 when combinational)

and the raw bits and the class counts of one sample appear in the same cycle. A new sample can enter
every cycle.

Verification (`simulate`) streams random and edge input vectors (all zeros, all ones, each one-hot)
through verilator (a generated C++ harness) or iverilog (a generated testbench) in one simulator
process, both reading `<hex x>` lines from a file and writing `<hex y> <hex counts>` lines, and compares
every output bit and class count with Netlist.evaluate / class_counts.

Synthesis (`synthesize`) runs yosys `synth -lut 6` (generic LUT6 fabric: $lut cells, flip-flops, LUT
depth = longest register-to-register path counted in LUTs by `ltp -noff`) or `synth_xilinx` (7-series
cells: LUT1..LUT6, FDRE/..., CARRY4, MUXF7/8) and parses `stat -json`.
"""

from __future__ import annotations

import json
import re
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from hwact.backends.toolchain import require_tool, run_tool, write_atomic
from hwact.errors import InputError, UnsupportedError, VerificationError
from hwact.ir.netlist import Netlist

GATE_EXPRESSIONS = ("1'b0", "A & B", "A & ~B", "A", "~A & B", "B", "A ^ B", "A | B",
                    "~(A | B)", "~(A ^ B)", "~B", "A | ~B", "~A", "~A | B", "~(A & B)", "1'b1")

HEADER_PATTERN = re.compile(r"^// hwact-verilog (.*)$", re.MULTILINE)
HEX_DIGITS = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


# ------------------------------------------------------------------------------------------- emission
def count_bits(netlist: Netlist) -> int:
    """W = ceil(log2(group_size + 1)): the width of one class count."""
    return max(1, (netlist.outputs.size // netlist.num_classes).bit_length())


def gate_stages(netlist: Netlist, pipeline_every: int) -> np.ndarray:
    """Pipeline stage of every node: inputs 0, a gate at level L in stage (L - 1) // k."""
    levels = netlist.levels()
    stages = np.zeros(netlist.num_nodes, dtype=np.int64)
    if pipeline_every > 0:
        gate_levels = levels[netlist.num_inputs:]
        stages[netlist.num_inputs:] = np.maximum(gate_levels - 1, 0) // pipeline_every
    return stages


def _node_name(netlist: Netlist, node: int, delay: int = 0) -> str:
    if node < netlist.num_inputs:
        return f"x[{node}]" if delay == 0 else f"x{node}_d{delay}"
    gate = node - netlist.num_inputs
    return f"g{gate}" if delay == 0 else f"g{gate}_d{delay}"


def _zero_extend(name: str, width: int, target: int) -> str:
    return name if width == target else f"{{{target - width}'b0, {name}}}"


def _adder_tree(source: str, bits: list[int], prefix: str, lines: list[str]) -> tuple[str, int]:
    """Balanced adder tree summing source[bits]; appends wire declarations, returns (root, max value)."""
    if len(bits) == 1:
        return f"{source}[{bits[0]}]", 1
    half = len(bits) // 2
    left, left_max = _adder_tree(source, bits[:half], prefix + "l", lines)
    right, right_max = _adder_tree(source, bits[half:], prefix + "r", lines)
    total = left_max + right_max
    width = total.bit_length()
    left_width, right_width = left_max.bit_length(), right_max.bit_length()
    lines.append(f"  wire [{width - 1}:0] {prefix} = {_zero_extend(left, left_width, width)} + "
                 f"{_zero_extend(right, right_width, width)};")
    return prefix, total


def verilog_source(netlist: Netlist, top: str = "logic_net", pipeline_every: int = 0) -> tuple[str, int]:
    """The module text and its latency in cycles (see the module docstring)."""
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", top):
        raise InputError(f"verilog: module name {top!r} is not a Verilog identifier")
    if pipeline_every < 0:
        raise InputError(f"verilog: pipeline_every must be >= 0, got {pipeline_every}")
    if netlist.num_inputs < 1 or netlist.outputs.size < 1:
        raise UnsupportedError("verilog: the netlist needs at least one input and one output")
    n_in, n_out, n_classes = netlist.num_inputs, int(netlist.outputs.size), netlist.num_classes
    width = count_bits(netlist)
    group = n_out // n_classes
    pipelined = pipeline_every > 0
    stages = gate_stages(netlist, pipeline_every)
    last_stage = int(stages[netlist.outputs].max()) if pipelined else 0
    latency = last_stage + 2 if pipelined else 0

    # longest delay chain each node needs: its consumers' stages (and the output register) minus its own
    delays = np.zeros(netlist.num_nodes, dtype=np.int64)
    if pipelined:
        own = stages[n_in:]
        np.maximum.at(delays, netlist.a, own - stages[netlist.a])
        np.maximum.at(delays, netlist.b, own - stages[netlist.b])
        np.maximum.at(delays, netlist.outputs, last_stage + 1 - stages[netlist.outputs])

    header = (f"// hwact-verilog top={top} inputs={n_in} outputs={n_out} classes={n_classes} "
              f"count_bits={width} gates={netlist.num_gates} pipeline_every={pipeline_every} "
              f"latency_cycles={latency}")
    lines = [header,
             "// Generated by hwact (hwact/backends/verilog.py) from a logic-gate netlist. Verilog-2001.",
             "`default_nettype none",
             f"module {top} (",
             *(["  input  wire clk,"] if pipelined else []),
             f"  input  wire [{n_in - 1}:0] x,",
             f"  output wire [{n_out - 1}:0] y,",
             f"  output wire [{n_classes * width - 1}:0] counts",
             ");"]
    for gate in range(netlist.num_gates):
        node = n_in + gate
        operand_a = _node_name(netlist, int(netlist.a[gate]), int(stages[node] - stages[netlist.a[gate]]))
        operand_b = _node_name(netlist, int(netlist.b[gate]), int(stages[node] - stages[netlist.b[gate]]))
        expression = GATE_EXPRESSIONS[int(netlist.ops[gate])].replace("A", "@A").replace("B", "@B")
        expression = expression.replace("@A", operand_a).replace("@B", operand_b)
        lines.append(f"  wire g{gate} = {expression};")

    if pipelined:
        registered = [node for node in range(netlist.num_nodes) if delays[node] > 0]
        for node in registered:
            names = " ".join(f"{_node_name(netlist, node, d)}," for d in range(1, int(delays[node]) + 1))
            lines.append(f"  reg {names.rstrip(',')};")
        lines.append("  always @(posedge clk) begin")
        for node in registered:
            for d in range(1, int(delays[node]) + 1):
                lines.append(f"    {_node_name(netlist, node, d)} <= {_node_name(netlist, node, d - 1)};")
        lines.append("  end")
        sources = [_node_name(netlist, int(u), int(last_stage + 1 - stages[u])) for u in netlist.outputs]
        lines.append(f"  wire [{n_out - 1}:0] y_r = {{{', '.join(reversed(sources))}}};")
        tree_input = "y_r"
    else:
        sources = [_node_name(netlist, int(u)) for u in netlist.outputs]
        lines.append(f"  assign y = {{{', '.join(reversed(sources))}}};")
        tree_input = "y"

    roots = []
    for c in range(n_classes):
        root, _ = _adder_tree(tree_input, list(range(c * group, (c + 1) * group)), f"sum{c}_", lines)
        roots.append(root)
    count_bus = f"{{{', '.join(reversed(roots))}}}"
    if pipelined:
        lines += [f"  reg [{n_out - 1}:0] y_q;",
                  f"  reg [{n_classes * width - 1}:0] counts_q;",
                  "  always @(posedge clk) begin",
                  "    y_q <= y_r;",
                  f"    counts_q <= {count_bus};",
                  "  end",
                  "  assign y = y_q;",
                  "  assign counts = counts_q;"]
    else:
        lines.append(f"  assign counts = {count_bus};")
    lines += ["endmodule", "`default_nettype wire", ""]
    return "\n".join(lines), latency


def testbench_source(top: str, n_in: int, n_out: int, count_width: int, latency: int) -> str:
    """iverilog testbench: reads hex x lines from sim_in.hex, writes '<hex y> <hex counts>' to sim_out.hex."""
    clocked = latency > 0
    step = "      #1 clk = 1; #1 clk = 0;" if clocked else "      #1;"
    return f"""// hwact iverilog testbench for {top}: one sample per line, a new sample every cycle.
`timescale 1ns/1ps
module {top}_tb;
  reg  [{n_in - 1}:0] x;
  reg  [{n_in - 1}:0] v;
  wire [{n_out - 1}:0] y;
  wire [{count_width - 1}:0] counts;
  reg clk;
  integer fi, fo, r, t, nread, written, eof;
  {top} dut ({".clk(clk), " if clocked else ""}.x(x), .y(y), .counts(counts));
  initial begin
    clk = 0; x = 0; t = 0; nread = 0; written = 0; eof = 0;
    fi = $fopen("sim_in.hex", "r");
    fo = $fopen("sim_out.hex", "w");
    while (!eof || written < nread) begin
      x = 0;
      if (!eof) begin
        r = $fscanf(fi, "%h\\n", v);
        if (r == 1) begin x = v; nread = nread + 1; end else eof = 1;
      end
{step}
      if (t >= {latency - 1} && written < nread) begin
        $fdisplay(fo, "%h %h", y, counts);
        written = written + 1;
      end
      t = t + 1;
    end
    $fclose(fo);
    $finish;
  end
endmodule
"""


def harness_source(top: str, latency: int) -> str:
    """verilator C++ harness: argv[1] hex x lines in, argv[2] '<hex y> <hex counts>' lines out."""
    step = ("dut.clk = 0; dut.eval();\n    dut.clk = 1; dut.eval();" if latency > 0 else "dut.eval();")
    cycles = "n + kLatency - 1" if latency > 0 else "n"
    return f"""// hwact verilator harness for {top}: one sample per line, a new sample every cycle.
#include "V{top}.h"
#include "verilated.h"
#include <cstdint>
#include <cstdio>
#include <fstream>
#include <string>
#include <type_traits>
#include <vector>

static const long kLatency = {latency};

static std::vector<uint32_t> hex_words(const std::string& hex) {{
  std::vector<uint32_t> words;
  for (long end = (long)hex.size(); end > 0; end -= 8) {{
    long start = end - 8 < 0 ? 0 : end - 8;
    words.push_back((uint32_t)std::stoul(hex.substr(start, end - start), nullptr, 16));
  }}
  return words;
}}

template <class T> static void load(T& port, const std::vector<uint32_t>& w) {{
  uint64_t value = w.size() > 0 ? w[0] : 0;
  if (w.size() > 1) value |= (uint64_t)w[1] << 32;
  port = (T)value;
}}
template <std::size_t N> static void load(VlWide<N>& port, const std::vector<uint32_t>& w) {{
  for (std::size_t i = 0; i < N; i++) port[i] = i < w.size() ? w[i] : 0;
}}
template <class T> static void dump(FILE* f, const T& port) {{
  fprintf(f, "%016llx", (unsigned long long)port);
}}
template <std::size_t N> static void dump(FILE* f, const VlWide<N>& port) {{
  for (long i = (long)N - 1; i >= 0; i--) fprintf(f, "%08x", (unsigned)port[i]);
}}

int main(int argc, char** argv) {{
  if (argc != 3) {{ fprintf(stderr, "usage: %s IN.hex OUT.hex\\n", argv[0]); return 2; }}
  std::ifstream in(argv[1]);
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);) if (!line.empty()) lines.push_back(line);
  FILE* out = fopen(argv[2], "w");
  if (!out) return 2;
  VerilatedContext context;
  V{top} dut(&context);
  const std::vector<uint32_t> zero;
  const long n = (long)lines.size();
  const long cycles = {cycles};
  for (long t = 0; t < cycles; t++) {{
    load(dut.x, t < n ? hex_words(lines[t]) : zero);
    {step}
    if (t >= kLatency - 1) {{
      dump(out, dut.y); fputc(' ', out); dump(out, dut.counts); fputc('\\n', out);
    }}
  }}
  dut.final();
  fclose(out);
  return 0;
}}
"""


def emit_verilog(netlist: Netlist, outdir: Path, top: str = "logic_net", pipeline_every: int = 0) -> dict:
    """Write outdir/{top}.v, the iverilog testbench {top}_tb.v and the verilator harness {top}_harness.cpp.

    Returns {"files": [relative paths], "latency_cycles": int, "count_bits": int}.
    """
    source, latency = verilog_source(netlist, top, pipeline_every)
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    width = count_bits(netlist)
    files = {f"{top}.v": source,
             f"{top}_tb.v": testbench_source(top, netlist.num_inputs, int(netlist.outputs.size),
                                             netlist.num_classes * width, latency),
             f"{top}_harness.cpp": harness_source(top, latency)}
    for name, text in files.items():
        write_atomic(outdir / name, text)
    return {"files": list(files), "latency_cycles": latency, "count_bits": width}


def read_header(verilog_file: Path) -> dict:
    """The `// hwact-verilog key=value ...` line emit_verilog writes first."""
    if not verilog_file.is_file():
        raise InputError(f"verilog: {verilog_file} does not exist", hint="run emit_verilog first")
    match = HEADER_PATTERN.search(verilog_file.read_text()[:4096])
    if match is None:
        raise InputError(f"verilog: {verilog_file} has no hwact-verilog header line", hint="emit it with emit_verilog")
    fields = dict(item.split("=", 1) for item in match.group(1).split())
    return {key: (value if key == "top" else int(value)) for key, value in fields.items()}


# ----------------------------------------------------------------------------------------- simulation
def input_vectors(num_inputs: int, samples: int, seed: int = 0) -> np.ndarray:
    """(N, num_inputs) uint8: all zeros, all ones, every one-hot vector, then random vectors (half with
    bit density 1/2, half with a per-sample density drawn from U(0, 1)) up to `samples` rows."""
    edges = np.concatenate([np.zeros((1, num_inputs), np.uint8), np.ones((1, num_inputs), np.uint8),
                            np.eye(num_inputs, dtype=np.uint8)])
    rng = np.random.default_rng(seed)
    n_random = max(0, samples - edges.shape[0])
    density = np.where(np.arange(n_random) % 2 == 0, 0.5, rng.random(n_random))[:, None]
    random_bits = (rng.random((n_random, num_inputs)) < density).astype(np.uint8)
    return np.concatenate([edges, random_bits])


def bits_to_hex(bits: np.ndarray) -> list[str]:
    """Rows of bits (bit i of a row = x[i]) as hex strings, most significant digit first."""
    n, width = bits.shape
    digits = -(-width // 4)
    padded = np.zeros((n, digits * 4), dtype=np.uint8)
    padded[:, :width] = bits
    nibbles = padded.reshape(n, digits, 4) @ np.array([1, 2, 4, 8], dtype=np.uint8)
    chars = HEX_DIGITS[nibbles[:, ::-1]]
    return [row.tobytes().decode() for row in chars]


def hex_to_bits(words: list[str], width: int) -> tuple[np.ndarray, np.ndarray]:
    """Inverse of bits_to_hex for `width` low bits; returns (bits (N, width) uint8, valid (N,) bool) where
    rows holding x/z or other non-hex characters are marked invalid."""
    digits = -(-width // 4)
    n = len(words)
    table = np.full(256, 255, dtype=np.uint8)
    table[HEX_DIGITS] = np.arange(16, dtype=np.uint8)
    table[np.frombuffer(b"ABCDEF", dtype=np.uint8)] = np.arange(10, 16, dtype=np.uint8)
    text = np.zeros((n, digits), dtype=np.uint8)
    for i, word in enumerate(words):
        word = word[-digits:].rjust(digits, "0")
        text[i] = np.frombuffer(word.encode(), dtype=np.uint8)
    nibbles = table[text]
    valid = (nibbles != 255).all(axis=1)
    nibbles = np.where(nibbles == 255, 0, nibbles)[:, ::-1]
    bits = ((nibbles[:, :, None] >> np.arange(4, dtype=np.uint8)) & 1).reshape(n, digits * 4)[:, :width]
    return bits.astype(np.uint8), valid


def _run_verilator(netlist_dir: Path, top: str, workdir: Path) -> None:
    require_tool("verilator", "verilator")
    require_tool("make", "make")
    require_tool("g++", "g++")
    harness = netlist_dir / f"{top}_harness.cpp"
    if not harness.is_file():
        raise InputError(f"verilog: {harness} does not exist", hint="run emit_verilog first")
    run_tool(["verilator", "--cc", "--exe", "--build", "-j", "2", "-Wno-fatal", "-Wno-lint", "-Wno-style",
               "--top-module", top, "-Mdir", str(workdir / "obj"), "-o", str(workdir / "sim"),
               "-MAKEFLAGS", "OPT_FAST=-O1", str((netlist_dir / f"{top}.v").resolve()), str(harness.resolve())],
              "verilator build", workdir)
    run_tool([str(workdir / "sim"), "sim_in.hex", "sim_out.hex"], "verilator simulation", workdir)


def _run_iverilog(netlist_dir: Path, top: str, workdir: Path) -> None:
    require_tool("iverilog", "iverilog")
    require_tool("vvp", "iverilog")
    testbench = netlist_dir / f"{top}_tb.v"
    if not testbench.is_file():
        raise InputError(f"verilog: {testbench} does not exist", hint="run emit_verilog first")
    run_tool(["iverilog", "-g2005", "-o", str(workdir / "sim.vvp"), "-s", f"{top}_tb",
               str((netlist_dir / f"{top}.v").resolve()), str(testbench.resolve())], "iverilog compile", workdir)
    run_tool(["vvp", "-n", str(workdir / "sim.vvp")], "vvp simulation", workdir)


def simulate(netlist: Netlist, netlist_dir: Path, top: str, samples: int = 10000, seed: int = 0,
             simulator: str = "verilator") -> dict:
    """Run the emitted RTL in netlist_dir on edge + random vectors and compare with the reference.

    Every sample whose raw output bits or class counts differ anywhere from Netlist.evaluate /
    class_counts (or that the simulator did not produce, or produced as x/z) counts as one mismatch.
    Returns {"samples": n, "mismatches": m, "simulator": name, "latency_cycles": L, "seconds": s}.
    """
    if simulator not in ("verilator", "iverilog"):
        raise InputError(f"verilog: unknown simulator {simulator!r}", hint="use verilator or iverilog")
    netlist_dir = Path(netlist_dir)
    header = read_header(netlist_dir / f"{top}.v")
    if header["inputs"] != netlist.num_inputs or header["outputs"] != netlist.outputs.size \
            or header["classes"] != netlist.num_classes:
        raise InputError(f"verilog: {top}.v was emitted for another netlist "
                         f"({header['inputs']} inputs, {header['outputs']} outputs, {header['classes']} classes)")
    vectors = input_vectors(netlist.num_inputs, samples, seed)
    expected_bits = netlist.evaluate(vectors).astype(np.uint8)
    expected_counts = netlist.class_counts(vectors)
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="hwact_sim_") as tmp:
        workdir = Path(tmp)
        (workdir / "sim_in.hex").write_text("\n".join(bits_to_hex(vectors)) + "\n")
        if simulator == "verilator":
            _run_verilator(netlist_dir, top, workdir)
        else:
            _run_iverilog(netlist_dir, top, workdir)
        lines = [line.split() for line in (workdir / "sim_out.hex").read_text().splitlines() if line.strip()]
    seconds = time.perf_counter() - start
    n = vectors.shape[0]
    got = [line for line in lines[:n] if len(line) == 2]
    n_got = len(got)
    width = header["count_bits"]
    y_bits, y_valid = hex_to_bits([line[0] for line in got], netlist.outputs.size)
    count_bits_, c_valid = hex_to_bits([line[1] for line in got], netlist.num_classes * width)
    counts = (count_bits_.reshape(n_got, netlist.num_classes, width).astype(np.int64)
              << np.arange(width)).sum(axis=2)
    bad = ~(y_valid & c_valid) | (y_bits != expected_bits[:n_got]).any(axis=1) \
        | (counts != expected_counts[:n_got]).any(axis=1)
    mismatches = int(bad.sum()) + (n - n_got)
    return {"samples": n, "mismatches": mismatches, "simulator": simulator,
            "latency_cycles": header["latency_cycles"], "seconds": round(seconds, 3)}


# ------------------------------------------------------------------------------------------ synthesis
SYNTH_COMMANDS = {"lut6": "synth -top {top} -flatten -lut 6",
                  "xc7": "synth_xilinx -top {top} -flatten -family xc7 -noiopad"}
# cells a combinational path is counted through (ltp on this selection: flip-flops and SRLs cut paths)
DEPTH_CELLS = {"lut6": "w:* t:$lut", "xc7": "w:* t:LUT1 t:LUT2 t:LUT3 t:LUT4 t:LUT5 t:LUT6 t:MUXF7 t:MUXF8 t:CARRY4 t:INV"}
FLIP_FLOP_PATTERN = re.compile(r"^\$_+(S?DFF|DFFE|SDFF|SDFFE|DFFSR|ALDFF)|^\$(dff|adff|sdff|dffe|sdffe)$|^FD[A-Z]*$")
LUT_DEPTH_PATTERN = re.compile(r"Longest topological path in \S+ \(length=(\d+)\)")


def _stat_cells(stat: dict, top: str) -> dict:
    modules = stat.get("modules", {})
    module = modules.get(f"\\{top}") or modules.get(top) or (next(iter(modules.values())) if modules else {})
    return {name: int(count) for name, count in module.get("num_cells_by_type", {}).items()}


def synthesize(netlist_dir: Path, top: str, flavor: str) -> dict:
    """yosys on netlist_dir/{top}.v: flavor "lut6" (synth -lut 6) or "xc7" (synth_xilinx).

    Returns {"luts", "ffs" (flip-flops), "srls" (xc7 shift-register LUTs holding pipeline delay chains,
    not counted in luts), "lut_depth" (logic cells on the longest path between registers/ports, from
    `ltp -noff` over the LUT cells -- for xc7 also MUXF7/8, CARRY4, INV; None if yosys printed none), "cells" (cell type -> count), "log" (path relative to
    netlist_dir), "seconds"}.
    """
    if flavor not in SYNTH_COMMANDS:
        raise InputError(f"synthesize: unknown flavor {flavor!r}", hint="use lut6 or xc7")
    yosys = require_tool("yosys", "yosys")
    netlist_dir = Path(netlist_dir)
    verilog_file = netlist_dir / f"{top}.v"
    if not verilog_file.is_file():
        raise InputError(f"synthesize: {verilog_file} does not exist", hint="run emit_verilog first")
    log_name = f"{top}_{flavor}_yosys.log"
    with tempfile.TemporaryDirectory(prefix="hwact_yosys_") as tmp:
        stat_file = Path(tmp) / "stat.json"
        script = "; ".join([f"read_verilog {verilog_file.resolve()}",
                            SYNTH_COMMANDS[flavor].format(top=top),
                            f"tee -q -o {stat_file} stat -json",
                            "stat",
                            f"ltp -noff {DEPTH_CELLS[flavor]}"])
        start = time.perf_counter()
        done = subprocess.run([yosys, "-p", script], cwd=tmp, capture_output=True, text=True)
        seconds = time.perf_counter() - start
        write_atomic(netlist_dir / log_name, done.stdout + done.stderr)
        if done.returncode != 0:
            errors = [line for line in (done.stdout + done.stderr).splitlines() if "ERROR" in line]
            raise VerificationError(f"yosys failed on {verilog_file.name}: {(errors or ['no message'])[-1].strip()}",
                                    hint=f"see {netlist_dir / log_name}")
        try:
            stat = json.loads(stat_file.read_text())
        except (OSError, ValueError) as error:
            raise VerificationError(f"yosys wrote no readable stat -json ({error})",
                                    hint=f"see {netlist_dir / log_name}") from None
    cells = _stat_cells(stat, top)
    if flavor == "lut6":
        luts = cells.get("$lut", 0)
    else:
        luts = sum(count for name, count in cells.items() if re.fullmatch(r"LUT[1-6]", name))
    ffs = sum(count for name, count in cells.items() if FLIP_FLOP_PATTERN.search(name))
    srls = sum(count for name, count in cells.items() if name.startswith("SRL"))
    depths = LUT_DEPTH_PATTERN.findall(done.stdout)
    return {"luts": int(luts), "ffs": int(ffs), "srls": int(srls), "lut_depth": int(depths[-1]) if depths else None,
            "cells": cells, "log": log_name, "seconds": round(seconds, 3)}


def check_lut_budget(luts: int, budget: int, target: str) -> None:
    """UnsupportedError when the synthesized netlist needs more LUTs than the target offers."""
    if luts > budget:
        raise UnsupportedError(f"the netlist needs {luts} LUTs, over the {budget}-LUT budget of target {target}",
                               hint="train a smaller logic model (fewer or narrower layers) or pick a larger device")
