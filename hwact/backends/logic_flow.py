"""Conversion flow for logic-gate models (the contract is in hwact/flows.py).

`hwact convert logic_model.pt2 --target T -o OUT` reaches `convert` when the graph holds a
hwact::logic_netlist node (what `hwact train-logic` writes). It checks that the netlist reads binary bits,
runs lower-logic (simplify: the lowered graph must give the same class counts as the input graph on
random inputs), writes
    netlist.npz            the simplified Netlist (Netlist.from_bytes), the one thing every backend reads
    thermometer.npz        the input thresholds (F, T) when the model encodes real features
and per target
    cpu        logic_net.c + logic_net.so (hwact/backends/logic_c.py); bit-exact check of the compiled
               kernel against Netlist.class_counts on 4096 random samples; samples/s of the kernel
    cuda-sm80  logic_net.cu, logic_net.cubin and the host runner (nvcc, compile only; run and checked
               bit-exact when a GPU is present)
    fpga-lut6, xc7
               logic_net.v (+ testbench, verilator harness; a register stage every --pipeline-every
               gate levels), yosys synthesis (LUTs, FFs, LUT depth; log), verilator simulation of
               10,000 samples against Netlist.evaluate/class_counts (zero mismatches or it fails), and
               the target's lut_budget (UnsupportedError when over it).
report.json["logic"] holds gates before/after simplification, depth, accuracy soft vs discrete (as
recorded by train-logic), and the per-target results.

`hwact bench OUT` on such a folder measures the C kernel's samples/s next to the PyTorch reference op. It
builds the kernel from netlist.npz in a private temp folder: a folder someone sent you is data, its
logic_net.so (an artifact for users) is never loaded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hwact.errors import InputError, PreconditionError, VerificationError
from hwact.ir.graph import Graph

NAME = "logic"
TARGETS: tuple[str, ...] = ("cpu", "cuda-sm80", "fpga-lut6", "xc7")
TOP = "logic_net"
CHECK_SAMPLES = 4096
SIM_SAMPLES = 10000
BENCH_BYTES = 1 << 28    # memory of one batch in bench: wide or deep nets are measured on fewer samples


def _op():
    from hwact.ir.logic_ops import LOGIC_NETLIST

    return LOGIC_NETLIST


def matches(graph) -> bool:
    op = _op()
    return any(node.target is op for node in graph.call_nodes())


def _logic_node(graph: Graph):
    op = _op()
    nodes = [node for node in graph.call_nodes() if node.target is op]
    if len(nodes) != 1:
        raise InputError(f"a logic model holds exactly one hwact::logic_netlist node, this one has {len(nodes)}")
    return nodes[0]


def _attr(graph: Graph, node) -> torch.Tensor | None:
    if not isinstance(node, torch.fx.Node) or node.op != "get_attr":
        return None
    value = graph.module
    for part in node.target.split("."):
        value = getattr(value, part, None)
    return value


def thermometer_thresholds(graph: Graph, node) -> np.ndarray | None:
    """The (F, T) thresholds when the bits are `x[..., None] > thresholds` (train-logic's encoding)."""
    current = node.args[0]
    while isinstance(current, torch.fx.Node) and current.op == "call_function" and "gt" not in str(current.target):
        current = current.args[0] if current.args else None
    if isinstance(current, torch.fx.Node) and current.op == "call_function" and len(current.args) > 1:
        value = _attr(graph, current.args[1])
        if value is not None and value.ndim == 2:
            return value.detach().cpu().numpy()
    return None


def trained_accuracy(graph: Graph) -> dict:
    value = getattr(graph.module, "logic_accuracy", None)
    if value is None or value.numel() != 2:
        return {}
    soft, discrete = (float(v) for v in value.tolist())
    return {"soft": soft, "discrete": discrete}


def lower(graph: Graph):
    """(lowered graph, unsimplified netlist, simplified netlist, stats); lowered graph checked exact."""
    from hwact.ir.logic_ops import netlist_of_node
    from hwact.passes.lower_logic import LowerLogic

    lowering = LowerLogic()
    problems = lowering.check(graph)
    if problems:
        raise PreconditionError(problems[0], hint="a logic netlist reads 0/1 bits: threshold real inputs first")
    node = _logic_node(graph)
    val = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    if val is None or val.ndim != 2:
        raise InputError(f"node {node.name}: unknown input bit shape")
    original = netlist_of_node(graph.module, node, int(val.shape[1]))
    lowered, _ = lowering(graph.copy())
    stats = lowering.stats[0]
    simplified = netlist_of_node(lowered.module, _logic_node(lowered), int(val.shape[1]))
    args = graph.example_inputs(batch=256, seed=1)
    if not torch.equal(graph(*args), lowered(*args)):
        raise VerificationError("lower-logic changed the class counts on random inputs")
    return lowered, original, simplified, stats


def random_bits(num_inputs: int, samples: int, seed: int = 0) -> np.ndarray:
    """Random 0/1 vectors plus the all-zeros and all-ones edge vectors first."""
    rng = np.random.default_rng(seed)
    bits = rng.integers(0, 2, (samples, num_inputs), dtype=np.uint8)
    bits[0] = 0
    if samples > 1:
        bits[1] = 1
    return bits


def _cpu(netlist, outdir: Path, report: dict) -> list[str]:
    from hwact.backends import logic_c

    built = logic_c.build_c(netlist, outdir, TOP)
    kernel = logic_c.LogicCKernel(outdir / built["library"], netlist)
    bits = random_bits(netlist.num_inputs, CHECK_SAMPLES)
    got = kernel.class_counts(bits)
    expected = netlist.class_counts(bits)
    mismatches = int((got != expected).any(axis=1).sum())
    if mismatches:
        raise VerificationError(f"C logic kernel differs from the netlist reference on {mismatches} of "
                                f"{CHECK_SAMPLES} samples")
    report["cpu"] = {"kernel": kernel.kernel, "style": built.get("style"), "compile_s": built["compile_s"],
                     "checked_samples": CHECK_SAMPLES, "mismatches": 0,
                     "samples_per_s": logic_c.throughput(kernel, samples=1 << 18, repeat=3)}
    return list(built["files"])


def _cuda(netlist, outdir: Path, report: dict) -> list[str]:
    from hwact.backends import logic_cuda
    from hwact.backends.toolchain import gpu_available

    emitted = logic_cuda.emit_cuda(netlist, outdir, TOP)
    compiled = logic_cuda.compile_cuda(outdir, TOP, arch="sm_80")
    entry = {"arch": compiled["arch"], "compile_s": compiled["compile_s"], "ran_on_gpu": False}
    if gpu_available() and compiled.get("runner"):
        bits = random_bits(netlist.num_inputs, CHECK_SAMPLES)
        with tempfile.TemporaryDirectory(prefix="hwact_cuda_") as work:
            result = logic_cuda.run_cuda(outdir / compiled["runner"], bits, netlist, Path(work), repeat=5)
        if not np.array_equal(np.asarray(result["counts"]), netlist.class_counts(bits)):
            raise VerificationError("CUDA logic kernel differs from the netlist reference")
        entry.update(ran_on_gpu=True, checked_samples=CHECK_SAMPLES, mismatches=0,
                     samples_per_s=result.get("samples_per_s"))
    report["cuda"] = entry
    return [*emitted["files"], *compiled["files"]]


def _fpga(netlist, target, outdir: Path, report: dict, pipeline_every: int) -> list[str]:
    from hwact.backends import verilog

    flavor = "xc7" if target.name == "xc7" else "lut6"
    emitted = verilog.emit_verilog(netlist, outdir, TOP, pipeline_every=pipeline_every)
    synthesis = verilog.synthesize(outdir, TOP, flavor)
    budget = target.raw.get("lut_budget")
    if budget is not None:
        verilog.check_lut_budget(synthesis["luts"], int(budget), target.name)
    # verilator is the faster simulator; Icarus runs the same testbench when only it is installed
    simulator = "iverilog" if shutil.which("verilator") is None and shutil.which("iverilog") else "verilator"
    simulation = verilog.simulate(netlist, outdir, TOP, samples=SIM_SAMPLES, seed=0, simulator=simulator)
    if simulation["mismatches"]:
        raise VerificationError(f"RTL simulation ({simulation['simulator']}) differs from the netlist reference "
                                f"on {simulation['mismatches']} of {simulation['samples']} samples")
    report["fpga"] = {"flavor": flavor, "pipeline_every": pipeline_every, "latency_cycles": emitted["latency_cycles"],
                      "luts": synthesis["luts"], "ffs": synthesis["ffs"], "srls": synthesis.get("srls", 0),
                      "lut_depth": synthesis["lut_depth"], "lut_budget": budget,
                      "luts_per_gate": synthesis["luts"] / max(netlist.num_gates, 1),
                      "synthesis_s": synthesis.get("seconds"), "simulation": simulation,
                      "throughput_estimate": fabric_throughput(target, emitted["latency_cycles"], pipeline_every)}
    return [*emitted["files"], synthesis["log"]]


def fabric_throughput(target, latency_cycles: int, pipeline_every: int) -> dict:
    """One sample per clock at the target's nominal clock (an estimate: yosys does no timing analysis,
    so whether the LUT path between registers meets that clock is not checked)."""
    clock_hz = float(target.clock_mhz or 0) * 1e6
    return {"clock_mhz": target.clock_mhz, "samples_per_s": clock_hz,
            "latency_ns": latency_cycles * 1e9 / clock_hz if clock_hz else None,
            "assumes": ("the registered stages meet the nominal clock" if pipeline_every
                        else "the whole combinational path meets the nominal clock (use --pipeline-every k)")}


def convert(graph: Graph, target, outdir: Path, options: dict) -> dict:
    outdir = Path(outdir)
    start = time.perf_counter()
    _lowered, original, simplified, stats = lower(graph)
    (outdir / "netlist.npz").write_bytes(simplified.to_bytes())
    artifacts = ["netlist.npz"]
    thresholds = thermometer_thresholds(graph, _logic_node(graph))
    if thresholds is not None:
        np.savez(outdir / "thermometer.npz", thresholds=thresholds)
        artifacts.append("thermometer.npz")
    logic = {"inputs": simplified.num_inputs, "outputs": int(simplified.outputs.size),
             "classes": simplified.num_classes,
             "gates_before": stats["gates_before"], "gates_after": stats["gates_after"],
             "depth_before": stats["depth_before"], "depth_after": stats["depth_after"],
             "simplification": {k: stats[k] for k in ("constant", "pass_through", "merged", "dead")}}
    accuracy = trained_accuracy(graph)
    if accuracy:
        logic["accuracy"] = accuracy
    if target.name == "cpu":
        artifacts += _cpu(simplified, outdir, logic)
    elif target.name == "cuda-sm80":
        artifacts += _cuda(simplified, outdir, logic)
    else:
        pipeline_every = int(options.get("pipeline_every") or 0)
        if pipeline_every < 0:
            raise InputError(f"--pipeline-every must be >= 0, got {pipeline_every}")
        artifacts += _fpga(simplified, target, outdir, logic, pipeline_every)
    logic["seconds"] = time.perf_counter() - start
    return {"logic": logic, "artifacts": artifacts}


def _bench_samples(most: int, bytes_per_sample: int) -> int:
    """`most` samples, or fewer (a multiple of 64, at least 64) when they would need over BENCH_BYTES."""
    return max(64, min(most, BENCH_BYTES // max(bytes_per_sample, 1) // 64 * 64))


def bench(outdir, options: dict) -> dict:
    """`hwact bench OUT`: samples/s of the C kernel (packed input, one thread) and of the PyTorch
    reference op, on the folder's netlist.npz.

    The folder is untrusted: the kernel is generated from netlist.npz and compiled into a private temp
    folder (removed afterwards), never loaded from the folder's logic_net.so nor compiled from its .c,
    and checked bit-exact against the netlist's class counts before it is timed."""
    from hwact.backends import logic_c
    from hwact.ir.logic_ops import LOGIC_NETLIST
    from hwact.ir.netlist import Netlist

    outdir = Path(outdir)
    path = outdir / "netlist.npz"
    if not path.is_file():
        raise InputError(f"{outdir}: not a logic convert folder (no netlist.npz)")
    netlist = Netlist.read(path)
    repeat = max(1, min(int(options.get("iterations") or 5), 50))
    inputs, nodes, classes = netlist.num_inputs, netlist.num_nodes, netlist.num_classes
    samples = _bench_samples(1 << 20, inputs // 8 + 4 * classes + 1)           # packed bits, int32 counts
    check = _bench_samples(CHECK_SAMPLES, inputs + nodes + 8 * classes)       # Netlist.evaluate's bool values
    with tempfile.TemporaryDirectory(prefix="hwact_logic_bench_") as tmp:
        built = logic_c.build_c(netlist, Path(tmp), TOP)
        kernel = logic_c.LogicCKernel(Path(tmp) / built["library"], netlist)
        bits = random_bits(inputs, CHECK_SAMPLES, seed=7)
        for start in range(0, CHECK_SAMPLES, check):
            part = bits[start:start + check]
            if not np.array_equal(kernel.class_counts(part), netlist.class_counts(part)):
                raise VerificationError(f"{path}: the C kernel built from it differs from its reference",
                                        hint="report this as a hwact bug")
        c_rate = logic_c.throughput(kernel, samples=samples, repeat=repeat)
        kernel_name = kernel.kernel
    torch_samples = _bench_samples(1 << 14, 9 * inputs + nodes // 8 + 4 * classes)  # int64 packing, words
    tensors = [torch.as_tensor(t) for t in (netlist.ops.astype(np.int64), netlist.a, netlist.b, netlist.outputs)]
    torch_bits = torch.as_tensor(random_bits(netlist.num_inputs, torch_samples, seed=8))
    best = float("inf")
    for _ in range(max(1, min(repeat, 3))):
        begin = time.perf_counter()
        LOGIC_NETLIST(torch_bits, *tensors, netlist.num_classes)
        best = min(best, time.perf_counter() - begin)
    torch_rate = torch_samples / best
    return {"flow": NAME, "gates": netlist.num_gates, "depth": netlist.depth(), "kernel": kernel_name,
            "c_samples_per_s": c_rate, "c_samples": samples, "c_compile_s": built["compile_s"],
            "torch_reference_samples_per_s": torch_rate, "torch_samples": torch_samples,
            "c_vs_torch_reference": c_rate / torch_rate,
            "note": "C: best of repeats on pre-packed bit-sliced input (packing excluded), one thread; "
                    "PyTorch: hwact::logic_netlist reference op on unpacked uint8 bits"}
