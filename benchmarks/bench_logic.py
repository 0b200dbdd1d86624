"""Logic-gate netlist inference on this CPU: hwact's bit-sliced C kernel, end to end from (N, inputs) uint8 bits
and on pre-packed bit planes, vs difflogic's CompiledLogicNet C (the anchor) vs the discretized model in
PyTorch (the hwact::logic_netlist op, and torch bool ops over the levels); samples/s and compile time of
each. Writes benchmarks/results/logic.md.

Two netlists:
  * end to end (issue 17): random layered nets as difflogic builds them (each gate reads two random nodes
    of the previous layer, uniform gate ids; default 256 inputs -> 4 x 4000 gates -> GroupSum(10), and a
    small 3 x 500 net), 262,144 samples of random bits. Every engine starts from the user's (N, inputs)
    array: hwact's LogicCKernel.class_counts takes it as uint8 (one C call: packing, 0/1 check, gates,
    GroupSum), the anchor as bool (difflogic packs it inside its C). hwact's pre-packed rate
    (class_counts_packed on bit planes) is measured in the same run.
  * trained: a LogicNet trained here on scikit-learn digits (8x8 pixels x 3 thermometer levels = 192 input
    bits, logic layers 8000 -> 8000, GroupSum over 10 classes, Gaussian init, 40 epochs of
    `hwact.train.logic.train_logic`), discretized with LogicNet.to_netlist(); one more hwact row runs the
    netlist after the lower-logic simplification (what `hwact convert` deploys). `--untrained` uses the
    seeded Gaussian init instead.
Every engine is checked bit-exact against Netlist.class_counts before it is timed. All C engines run one
thread, int32 class counts out; engines are timed interleaved (one call of each per round, best of
`--repeat` rounds), so load from other jobs hits them alike.

The anchor is the C that difflogic's CompiledLogicNet generates (difflogic/compiled_model.py,
get_c_code; github.com/Felix-Petersen/difflogic), rendered here from a hwact Netlist by our own code that
follows its structure: 64-bit `long long` words; `apply_logic_gate_net(bool const *inp, int *out, size_t
len)` packs 64 samples per word inside C (one `res <<= 1; res += !!inp[...]` step per bit), calls
`logic_gate_net` (one `const long long v<i> = <expr>;` per gate, the last layer written to `out[]`), adds each
class's outputs with a bit-sliced ripple-carry counter (MSB first) and unpacks the counts bit by bit;
compiled with gcc -O1 -shared -fPIC, as CompiledLogicNet.compile does by default. difflogic itself does not
install here (its setup.py builds a CUDA extension), so the anchor is timed on its C call from a bool array
(difflogic's forward() also copies the input with np.concatenate and the output into a torch tensor: not
counted, in the anchor's favour). A pre-packed anchor row runs the same generated gate function on
word-major 64-bit words (our harness entry point, the packing loop skipped).

    python benchmarks/bench_logic.py [--e2e-widths 4000 4000 4000 4000] [--e2e-inputs 256] [--e2e-samples 262144]
                                     [--widths 8000 8000] [--samples 1048576] [--style-widths 1000 1000]
"""

from __future__ import annotations

import argparse
import ctypes
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hwact.backends import logic_c
from hwact.ir import logic_ops  # noqa: F401 - registers hwact::logic_netlist
from hwact.ir.netlist import Netlist
from hwact.nn.logic import LogicNet
from hwact.passes.lower_logic import simplify
from hwact.train.logic import load_logic_data, split, train_logic

# difflogic's expression per gate id (compiled_model.py get_gate_code, 64-bit): ids as in hwact.ir.netlist
DIFFLOGIC_EXPR = {0: "0LL", 1: "{a} & {b}", 2: "{a} & ~{b}", 3: "{a}", 4: "{b} & ~{a}", 5: "{b}", 6: "{a} ^ {b}",
                  7: "{a} | {b}", 8: "~({a} | {b})", 9: "~({a} ^ {b})", 10: "~{b}", 11: "~{b} | {a}", 12: "~{a}",
                  13: "~{a} | {b}", 14: "~({a} & {b})", 15: "~0LL"}


def random_layered(seed: int, num_inputs: int, widths: tuple[int, ...], num_classes: int) -> Netlist:
    """A net as difflogic's LogicLayer(connections='random') wires it: each gate of a layer reads two random
    nodes of the previous layer (the inputs for the first); uniform random gate ids; the last layer's gates
    are the outputs, in order."""
    rng = np.random.default_rng(seed)
    ops, a, b = [], [], []
    first, count, next_node = 0, num_inputs, num_inputs
    for width in widths:
        ops.append(rng.integers(0, 16, width))
        a.append(first + rng.integers(0, count, width))
        b.append(first + rng.integers(0, count, width))
        first, count, next_node = next_node, width, next_node + width
    return Netlist(num_inputs, np.concatenate(ops), np.concatenate(a), np.concatenate(b),
                   np.arange(first, first + count), num_classes)


def difflogic_source(netlist: Netlist) -> str:
    """CompiledLogicNet's C for `netlist` (see the module docstring), plus the pre-packed entry point."""
    ni, no, nc = netlist.num_inputs, netlist.outputs.size, netlist.num_classes
    first_out = netlist.num_nodes - no
    last_layer_is_out = no > 0 and np.array_equal(netlist.outputs, np.arange(first_out, netlist.num_nodes))

    def operand(node: int) -> str:
        return f"inp[{node}]" if node < ni else f"v{node - ni}"

    lines = ["#include <stddef.h>", "#include <stdlib.h>", "#include <stdbool.h>", "",
             "void logic_gate_net(long long const *inp, long long *out) {"]
    for g, (op, a, b) in enumerate(zip(netlist.ops.tolist(), netlist.a.tolist(), netlist.b.tolist())):
        expr = DIFFLOGIC_EXPR[op].format(a=operand(a), b=operand(b))
        node = ni + g
        if last_layer_is_out and node >= first_out:
            lines.append(f"\tout[{node - first_out}] = {expr};")
        else:
            lines.append(f"\tconst long long v{g} = {expr};")
    if not last_layer_is_out:
        lines += [f"\tout[{o}] = {operand(node)};" for o, node in enumerate(netlist.outputs.tolist())]
    lines.append("}")
    k = no // nc
    bits = int(np.ceil(np.log2(k + 1)))
    group_sum = f"""
        logic_gate_net(inp_temp, out_temp);
        for (size_t c = 0; c < {nc}; ++c) {{
            for (size_t d = 0; d < {bits}; ++d) out_temp_o[d] = 0LL;
            for (size_t a = 0; a < {k}; ++a) {{
                long long carry = out_temp[c * {k} + a];
                long long out_temp_o_d;
                for (int d = {bits} - 1; d >= 0; --d) {{
                    out_temp_o_d = out_temp_o[d];
                    out_temp_o[d] = carry ^ out_temp_o_d;
                    carry = carry & out_temp_o_d;
                }}
            }}
            for (size_t b = 0; b < 64; ++b) {{
                const long long bit_mask = 1LL << b;
                int res = 0;
                for (size_t d = 0; d < {bits}; ++d) {{
                    res <<= 1;
                    res += !!(out_temp_o[d] & bit_mask);
                }}
                out[(i * 64 + b) * {nc} + c] = res;
            }}
        }}"""
    alloc = (f"    long long *out_temp = malloc({no}*sizeof(long long));\n"
             f"    long long *out_temp_o = malloc({bits}*sizeof(long long));\n")
    lines.append(f"""
void apply_logic_gate_net(bool const *inp, int *out, size_t len) {{
    long long *inp_temp = malloc({ni}*sizeof(long long));
{alloc}    for (size_t i = 0; i < len; ++i) {{
        for (size_t d = 0; d < {ni}; ++d) {{
            long long res = 0LL;
            for (size_t b = 0; b < 64; ++b) {{
                res <<= 1;
                res += !!(inp[i * {ni} * 64 + (64 - b - 1) * {ni} + d]);
            }}
            inp_temp[d] = res;
        }}{group_sum}
    }}
    free(inp_temp); free(out_temp); free(out_temp_o);
}}

/* harness entry point (not difflogic's): words[len][{ni}] already packed, sample b of word i in bit b */
void apply_logic_gate_net_packed(long long const *words, int *out, size_t len) {{
{alloc}    for (size_t i = 0; i < len; ++i) {{
        long long const *inp_temp = words + i * {ni};{group_sum}
    }}
    free(out_temp); free(out_temp_o);
}}
""")
    return "\n".join(lines) + "\n"


class Anchor:
    """The difflogic C compiled into a library (gcc -O1 -shared -fPIC, like CompiledLogicNet.compile)."""

    def __init__(self, netlist: Netlist, folder: Path):
        source, library = folder / "difflogic_net.c", folder / "difflogic_net.so"
        source.write_text(difflogic_source(netlist))
        start = time.perf_counter()
        subprocess.run(["gcc", "-shared", "-fPIC", "-O1", "-o", str(library), str(source)], check=True)
        self.compile_s = time.perf_counter() - start
        self.lib = ctypes.CDLL(str(library))
        for name in ("apply_logic_gate_net", "apply_logic_gate_net_packed"):
            getattr(self.lib, name).restype = None
            getattr(self.lib, name).argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
        self.num_inputs, self.num_classes = netlist.num_inputs, netlist.num_classes

    def class_counts(self, bits: np.ndarray) -> np.ndarray:
        """From a C-contiguous (N, inputs) bool array with N a multiple of 64 (as forward() pads it)."""
        assert bits.dtype == np.bool_ and bits.flags.c_contiguous and len(bits) % 64 == 0
        out = np.empty((len(bits), self.num_classes), dtype=np.int32)
        self.lib.apply_logic_gate_net(bits.ctypes.data, out.ctypes.data, len(bits) // 64)
        return out

    def class_counts_packed(self, words: np.ndarray, n: int) -> np.ndarray:
        """From word-major (ceil(n/64), inputs) 64-bit words."""
        out = np.empty((words.shape[0] * 64, self.num_classes), dtype=np.int32)
        self.lib.apply_logic_gate_net_packed(words.ctypes.data, out.ctypes.data, words.shape[0])
        return out[:n]


def padded_bool(bits: np.ndarray) -> np.ndarray:
    """(N, inputs) as bool, zero rows up to a multiple of 64 (difflogic's forward() pads the same way)."""
    out = np.zeros((-(-len(bits) // 64) * 64, bits.shape[1]), dtype=np.bool_)
    out[:len(bits)] = bits
    return out


def interleaved_best(engines: dict, repeat: int) -> tuple[dict, dict, list[dict]]:
    """({name: best CPU seconds of this thread}, {name: best wall seconds}, [{name: CPU seconds} per round]):
    one warm-up call of each, then `repeat` rounds calling each engine once. Every engine runs on the calling
    thread (one thread), so its thread CPU time leaves out the time the OS gives the core to other jobs: on
    a shared machine that is the steadier measure (the wall-clock figures are reported next to it)."""
    for run in engines.values():
        run()
    cpu = {name: float("inf") for name in engines}
    wall = dict(cpu)
    rounds = []
    for _ in range(repeat):
        rounds.append({})
        for name, run in engines.items():
            start_cpu, start = time.thread_time(), time.perf_counter()
            run()
            wall[name] = min(wall[name], time.perf_counter() - start)
            rounds[-1][name] = time.thread_time() - start_cpu
            cpu[name] = min(cpu[name], rounds[-1][name])
    return cpu, wall, rounds


def median_ratio(rounds: list[dict], slow: str, fast: str) -> float:
    """Median over the rounds of time(slow) / time(fast): engines timed back to back in one round share the
    machine's state (other jobs, a busy sibling hyperthread), so this ratio moves less than a ratio of bests."""
    return float(np.median([r[slow] / r[fast] for r in rounds]))


def torch_bool_counts(netlist: Netlist, bits: torch.Tensor) -> torch.Tensor:
    """The discretized model as torch bool ops, level by level: out = OR over the 4 minterms of (a, b) of
    minterm AND the gate's truth-table bit for it."""
    values = torch.zeros(netlist.num_nodes, bits.shape[0], dtype=torch.bool)
    values[:netlist.num_inputs] = bits.t().bool()
    levels = netlist.levels()[netlist.num_inputs:]
    ops = torch.as_tensor(netlist.ops.astype(np.int64))
    table = [((ops >> (3 - row)) & 1).bool()[:, None] for row in range(4)]     # rows (a,b) = 00, 01, 10, 11
    for level in range(1, int(levels.max()) + 1 if levels.size else 1):
        gates = torch.as_tensor(np.flatnonzero(levels == level))
        a = values[torch.as_tensor(netlist.a)[gates]]
        b = values[torch.as_tensor(netlist.b)[gates]]
        t = [row[gates] for row in table]
        both = a & b                                  # minterms: ab, a~b = a ^ ab, ~ab = b ^ ab, ~a~b
        values[netlist.num_inputs + gates] = ((both & t[3]) | ((a ^ both) & t[2]) | ((b ^ both) & t[1])
                                              | (~(a | b) & t[0]))
    out = values[torch.as_tensor(netlist.outputs)].view(torch.uint8)
    return out.reshape(netlist.num_classes, -1, out.shape[1]).sum(dim=1, dtype=torch.int32).t()


def machine() -> str:
    model = next((line.split(":", 1)[1].strip() for line in subprocess.run(["lscpu"], capture_output=True,
                  text=True).stdout.splitlines() if line.startswith("Model name")), platform.processor())
    return f"{model}, {os.cpu_count()} cores (1 thread used), Python {platform.python_version()}, torch {torch.__version__}"


def checked_engines(netlist: Netlist, folder: Path, check_bits: np.ndarray, expected: np.ndarray,
                    anchor: bool = True) -> dict:
    """Build hwact's kernel (and the anchor), check every entry point bit-exact on check_bits."""
    folder.mkdir()
    info = logic_c.build_c(netlist, folder, style="table")
    kernel = logic_c.LogicCKernel(folder / info["library"], netlist)
    n = len(check_bits)
    planes, _ = kernel.pack_bits(check_bits)
    assert np.array_equal(kernel.class_counts(check_bits), expected), "hwact end to end not bit-exact"
    assert np.array_equal(kernel.class_counts_packed(planes, n), expected), "hwact pre-packed not bit-exact"
    built = {"kernel": kernel, "compile_s": info["compile_s"]}
    if anchor:
        built["anchor"] = Anchor(netlist, folder)
        assert np.array_equal(built["anchor"].class_counts(padded_bool(check_bits))[:n], expected), "anchor"
        words = np.ascontiguousarray(planes.T).view(np.int64)
        assert np.array_equal(built["anchor"].class_counts_packed(words, n), expected), "anchor pre-packed"
    return built


def timed_rates(built: dict, bits: np.ndarray, repeat: int) -> tuple[dict, dict, list[dict]]:
    """samples/s of each engine on the same (N, inputs) uint8 bits (N a multiple of 64), interleaved:
    ({name: by thread CPU time}, {name: by wall clock}, per-round CPU seconds)."""
    n = len(bits)
    kernel = built["kernel"]
    planes, _ = kernel.pack_bits(bits)
    engines = {"hwact": lambda: kernel.class_counts(bits),
               "hwact packed": lambda: kernel.class_counts_packed(planes, n)}
    if "anchor" in built:
        anchor, flags = built["anchor"], bits.view(np.bool_)               # the same bytes, as bool
        words = np.ascontiguousarray(planes.T).view(np.int64)
        engines.update({"anchor": lambda: anchor.class_counts(flags),
                        "anchor packed": lambda: anchor.class_counts_packed(words, n)})
    cpu, wall, rounds = interleaved_best(engines, repeat)
    return ({name: n / seconds for name, seconds in cpu.items()}, {name: n / seconds for name, seconds in wall.items()},
            rounds)


def end_to_end_section(args, tmp: Path) -> tuple[list[str], list[tuple]]:
    """Issue 17: random layered nets, every engine from the user's (N, inputs) array."""
    lines = ["## End to end from (N, inputs) uint8 / bool bits vs difflogic's CompiledLogicNet C (hwact issue 17)", "",
             f"Random layered nets (each gate reads two random nodes of the previous layer, uniform gate ids, seed 0), "
             f"{args.e2e_inputs} input bits, GroupSum(10); {args.e2e_samples} samples of random bits (seed 1), best of "
             f"{args.repeat} interleaved rounds, one thread; samples/s by the thread's CPU time (ratios use it) and by "
             f"wall clock. Checked bit-exact against `Netlist.class_counts` on {args.check} samples (a batch that is "
             "not a multiple of 64) for every engine before timing.", "",
             "| net | gates | engine | input | samples/s (CPU time) | vs anchor (end to end) | samples/s (wall) | "
             "compile s |",
             "|---|---|---|---|---|---|---|---|"]
    summary = []
    rng = np.random.default_rng(1)
    for widths in (args.e2e_widths, args.e2e_small_widths):
        netlist = random_layered(0, args.e2e_inputs, tuple(widths), 10)
        name = " x ".join(map(str, widths))
        check_bits = rng.integers(0, 2, (args.check, netlist.num_inputs), dtype=np.uint8)
        built = checked_engines(netlist, tmp / f"e2e_{'_'.join(map(str, widths))}", check_bits,
                                netlist.class_counts(check_bits).astype(np.int32))
        bits = rng.integers(0, 2, (args.e2e_samples, netlist.num_inputs), dtype=np.uint8)
        rates, wall, rounds = timed_rates(built, bits, args.repeat)
        anchor = rates["anchor"]
        for engine, label, data, compile_s in (
                ("anchor", "difflogic CompiledLogicNet C, 64-bit, gcc -O1 (anchor)", "bool (N, inputs), packed in its C",
                 built["anchor"].compile_s),
                ("anchor packed", "same difflogic C, pre-packed (harness entry)", "64-bit words", built["anchor"].compile_s),
                ("hwact", f"hwact C, {built['kernel'].kernel}, gcc -O2", "uint8 (N, inputs), packed in its C",
                 built["compile_s"]),
                ("hwact packed", f"hwact C, {built['kernel'].kernel}, gcc -O2", "pre-packed bit planes", built["compile_s"])):
            lines.append(f"| {name} | {netlist.num_gates} | {label} | {data} | {rates[engine]:.4g} | "
                         f"{rates[engine] / anchor:.3g}x | {wall[engine]:.4g} | {compile_s:.2f} |")
        summary.append((name, netlist.num_gates, rates, rounds, built["anchor"].compile_s / built["compile_s"]))
        print(f"e2e {name}: " + ", ".join(f"{k} {v:.4g}" for k, v in rates.items()), flush=True)
    lines.append("")
    for name, gates, rates, rounds, compile_ratio in summary:
        lines.append(f"* {name} ({gates} gates): hwact end to end {rates['hwact'] / rates['anchor']:.2f}x the anchor "
                     f"end to end (median of the per-round ratios {median_ratio(rounds, 'anchor', 'hwact'):.2f}x; goal "
                     f">= 2x); end-to-end time / pre-packed time {rates['hwact packed'] / rates['hwact']:.2f} from the "
                     f"best times, median per round {median_ratio(rounds, 'hwact', 'hwact packed'):.2f} (goal <= 1.2); "
                     f"pre-packed vs pre-packed {rates['hwact packed'] / rates['anchor packed']:.2f}x; hwact compiles "
                     f"{compile_ratio:.1f}x faster.")
    return lines, summary


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--e2e-widths", type=int, nargs="+", default=[4000, 4000, 4000, 4000])
    parser.add_argument("--e2e-small-widths", type=int, nargs="+", default=[500, 500, 500])
    parser.add_argument("--e2e-inputs", type=int, default=256)
    parser.add_argument("--e2e-samples", type=int, default=1 << 18)
    parser.add_argument("--check", type=int, default=4099, help="samples of the bit-exact check of the random nets")
    parser.add_argument("--widths", type=int, nargs="+", default=[8000, 8000])
    parser.add_argument("--epochs", type=int, default=40, help="training epochs of the digits model")
    parser.add_argument("--untrained", action="store_true", help="seeded Gaussian init instead of a trained model")
    parser.add_argument("--samples", type=int, default=1 << 20)
    parser.add_argument("--torch-samples", type=int, default=8192)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--style-widths", type=int, nargs="+", default=[1000, 1000],
                        help="netlist on which hwact's two C styles (table, straight) are compared; the straight "
                             "style compiles too slowly (~5 ms per gate at -O2) to build it on the full net")
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "logic.md")
    args = parser.parse_args()
    if args.samples % 64 or args.e2e_samples % 64:
        parser.error("--samples and --e2e-samples must be multiples of 64 (the anchor takes whole words)")
    torch.set_num_threads(1)
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        e2e_lines, _ = end_to_end_section(args, tmp)
        trained_lines = trained_section(args, tmp)
    command = "python benchmarks/bench_logic.py " + " ".join(sys.argv[1:])
    lines = ["# Logic-gate netlists: bit-sliced C kernel throughput and compile time (hwact issues 5, 17)", "",
             f"Machine: {machine()}; shared with other jobs (load average {load_before:.1f} at the start, "
             f"{os.getloadavg()[0]:.1f} at the end of the run), so compare the ratios, which are measured in the same "
             f"run with the engines interleaved. Command: `{command.strip()}`.", "", *e2e_lines, "", *trained_lines]
    text = "\n".join(lines) + "\n"
    print(text)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(text)


def trained_section(args, tmp: Path) -> list[str]:
    """The digits-trained net (issue 5): the same engines plus PyTorch, and hwact's two C styles."""
    rng = np.random.default_rng(0)
    if args.untrained:
        model = LogicNet(192, tuple(args.widths), 10, init="gaussian", seed=0)
        check_bits = rng.integers(0, 2, (1000, model.num_bits)).astype(np.uint8)
        labels, origin = None, "seeded Gaussian init (seed 0), not trained"
    else:
        data = load_logic_data("digits")
        x_train, y_train, x_test, labels = split(data, 0.25, 0)
        result = train_logic(x_train, y_train, x_test, labels, data.num_classes, tuple(args.widths),
                             init="gaussian", encoding=data.encoding, epochs=args.epochs, progress=False,
                             log=print)
        model = result.model
        with torch.no_grad():
            check_bits = model.bits(torch.as_tensor(x_test)).numpy().astype(np.uint8)
        origin = (f"trained on digits ({len(y_train)} train images, {args.epochs} epochs, "
                  f"{result.seconds:.0f} s), held-out discrete accuracy {result.discrete_accuracy:.4f}")
    netlist = model.to_netlist()
    simplified, simplify_stats = simplify(netlist)
    expected = netlist.class_counts(check_bits).astype(np.int32)
    checked = len(check_bits)

    def accuracy_of(counts: np.ndarray) -> str:
        return "-" if labels is None else f"{float((counts.argmax(1) == labels).mean()):.4f}"
    print(f"netlist: {netlist.num_inputs} inputs, {netlist.num_gates} gates, {netlist.outputs.size} outputs, "
          f"{netlist.num_classes} classes, depth {netlist.depth()}", flush=True)
    bits = rng.integers(0, 2, (args.samples, netlist.num_inputs), dtype=np.uint8)
    full = checked_engines(netlist, tmp / "trained", check_bits, expected)
    reduced = checked_engines(simplified, tmp / "trained_simplified", check_bits, expected, anchor=False)
    rates, wall, rounds = timed_rates(full, bits, args.repeat)
    reduced_rates, reduced_wall, _ = timed_rates(reduced, bits, args.repeat)
    accuracy = accuracy_of(expected)
    anchor, anchor_packed, anchor_compile = rates["anchor"], rates["anchor packed"], full["anchor"].compile_s
    rows = [("difflogic CompiledLogicNet C, 64-bit, gcc -O1 (anchor)", "bool, packed in its C", rates["anchor"],
             wall["anchor"], anchor_compile),
            ("same difflogic C, pre-packed (harness entry)", "64-bit words", rates["anchor packed"],
             wall["anchor packed"], anchor_compile),
            (f"hwact C, table style, {full['kernel'].kernel}, gcc -O2", "uint8, packed in its C", rates["hwact"],
             wall["hwact"], full["compile_s"]),
            (f"hwact C, table style, {full['kernel'].kernel}, gcc -O2", "pre-packed planes", rates["hwact packed"],
             wall["hwact packed"], full["compile_s"]),
            (f"hwact C, table style, {reduced['kernel'].kernel}, gcc -O2, after lower-logic", "uint8, packed in its C",
             reduced_rates["hwact"], reduced_wall["hwact"], reduced["compile_s"]),
            (f"hwact C, table style, {reduced['kernel'].kernel}, gcc -O2, after lower-logic", "pre-packed planes",
             reduced_rates["hwact packed"], reduced_wall["hwact packed"], reduced["compile_s"])]
    print("trained: " + ", ".join(f"{k} {v:.4g}" for k, v in {**rates, **{'simplified ' + k: v for k, v in
                                                                          reduced_rates.items()}}.items()), flush=True)

    tensors = [torch.as_tensor(t) for t in (netlist.ops.astype(np.int64), netlist.a, netlist.b, netlist.outputs)]
    got = torch.ops.hwact.logic_netlist(torch.as_tensor(check_bits), *tensors, 10).numpy()
    assert np.array_equal(got, expected), "PyTorch op not bit-exact"
    assert np.array_equal(torch_bool_counts(netlist, torch.as_tensor(check_bits)).numpy(), expected)
    sample_bits = torch.as_tensor(bits[:args.torch_samples])
    torch_engines = {"PyTorch hwact::logic_netlist op (the graph's reference op), 1 thread":
                     lambda: torch.ops.hwact.logic_netlist(sample_bits, *tensors, 10),
                     "PyTorch bool ops over the levels (truth-table minterms), 1 thread":
                     lambda: torch_bool_counts(netlist, sample_bits)}
    cpu, wall_torch, _ = interleaved_best(torch_engines, max(1, args.repeat // 2))
    for name in torch_engines:
        rows.append((name, "uint8", args.torch_samples / cpu[name], args.torch_samples / wall_torch[name], 0.0))
        print(f"{name}: {args.torch_samples / cpu[name]:.4g} samples/s", flush=True)

    small = LogicNet(192, tuple(args.style_widths), 10, init="gaussian", seed=0).to_netlist()
    small_expected = small.class_counts(check_bits).astype(np.int32)
    styles = {}
    for style in logic_c.STYLES:
        folder = tmp / f"small_{style}"
        info = logic_c.build_c(small, folder, style=style)
        kernel = logic_c.LogicCKernel(folder / info["library"], small)
        assert np.array_equal(kernel.class_counts(check_bits), small_expected), f"hwact {style} not bit-exact"
        styles[style] = (kernel, info["compile_s"])
    planes, _ = styles["table"][0].pack_bits(bits)
    seconds, _, _ = interleaved_best({style: (lambda k=kernel: k.class_counts_packed(planes, args.samples))
                                   for style, (kernel, _) in styles.items()}, args.repeat)
    style_rows = [(style, kernel.kernel, args.samples / seconds[style], compile_s)
                  for style, (kernel, compile_s) in styles.items()]
    print(f"styles on {small.num_gates} gates: {style_rows}", flush=True)

    lines = ["## Trained digits net (hwact issue 5)", "",
             f"Netlist: digits-shaped LogicNet, 192 input bits -> logic layers {' -> '.join(map(str, args.widths))} "
             f"-> GroupSum(10), {origin}; discretized by `LogicNet.to_netlist()`: {netlist.num_gates} gates, depth "
             f"{netlist.depth()}; after lower-logic {simplified.num_gates} gates, depth {simplified.depth()} "
             f"({simplify_stats}). All engines checked bit-exact against `Netlist.class_counts` on {checked} "
             f"{'held-out digits' if labels is not None else 'random inputs'} before timing.",
             f"C engines: {args.samples} samples of random bits, int32 class counts out, best of {args.repeat} "
             f"interleaved rounds, one thread. PyTorch: the first {args.torch_samples} of those samples. samples/s "
             "by the thread's CPU time (ratios use it) and by wall clock.", "",
             "| engine | input | samples/s (CPU time) | vs anchor (end to end) | vs anchor pre-packed | samples/s (wall) "
             "| compile s | compile speedup vs anchor | held-out accuracy |",
             "|---|---|---|---|---|---|---|---|---|"]
    for name, data, rate, wall_rate, compile_s in rows:
        compile_cells = f"{compile_s:.2f} | {anchor_compile / compile_s:.1f}x" if compile_s > 0 else "- | -"
        lines.append(f"| {name} | {data} | {rate:.4g} | {rate / anchor:.3g}x | {rate / anchor_packed:.3g}x | "
                     f"{wall_rate:.4g} | {compile_cells} | {accuracy} |")
    programs = logic_c.compile_netlist(netlist)
    counts_ops = programs["counts"].ops
    three_input = int((counts_ops >= logic_c.XOR3).sum())
    lines += ["", f"hwact's counts program for this net: {counts_ops.size} instructions ({counts_ops.size - three_input} "
              f"two-input gates, net and half adders, + {three_input} XOR3/MAJ full-adder instructions of the "
              f"carry-save GroupSum tree; {programs['count_bits']} count bits per class), "
              f"{programs['counts'].num_slots} value slots after reuse ({netlist.num_nodes} nodes)."]
    lines += ["", f"Goal (issue 5): >= 2x the anchor's samples/s and >= 10x faster compile. Measured: hwact end to end "
              f"{rates['hwact'] / anchor:.2f}x the anchor end to end, pre-packed {rates['hwact packed'] / anchor_packed:.2f}x "
              f"the anchor pre-packed; end-to-end time / pre-packed time {rates['hwact packed'] / rates['hwact']:.2f} "
              f"(median per round {median_ratio(rounds, 'hwact', 'hwact packed'):.2f}); "
              f"{anchor_compile / full['compile_s']:.1f}x faster compile (table style, the default)."]
    lines += ["", f"## hwact C styles on a smaller net ({small.num_gates} gates, same shape otherwise; pre-packed input, "
              "timed interleaved, thread CPU time)", "",
              "| style | kernel | samples/s | compile s |", "|---|---|---|---|"]
    lines += [f"| {style} | {kernel_name} | {rate:.4g} | {compile_s:.2f} |"
              for style, kernel_name, rate, compile_s in style_rows]
    speeds = {style: rate for style, _, rate, _ in style_rows}
    lines += ["", "The table style (the default) keeps the net as data, so gcc compiles the same small loop "
              "for any net; the straight style emits one block-wide statement per gate, so its code and gcc's "
              f"time grow with the net (in this run it ran {speeds['straight'] / speeds['table']:.2f}x the table "
              "style's samples/s)."]
    return lines


if __name__ == "__main__":
    main()
