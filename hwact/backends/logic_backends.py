"""Backends for logic-gate models: `logic-c` (cpu), `logic-cuda` (cuda-sm80) and `verilog` (FPGA targets).

The target's recipe for logic models (`logic` = lower-logic, verified exact by the pass manager) leaves
one simplified hwact::logic_netlist node. Every logic backend writes
    netlist.npz            the simplified Netlist (Netlist.read), the one thing every backend reads
    thermometer.npz        the input thresholds (F, T) when the model encodes real features
and the report's "logic" section (gates before/after simplification, depth, trained accuracy), then:
    logic-c     logic_net.c + logic_net.so (hwact/backends/logic_c.py); bit-exact check of the compiled
                kernel against Netlist.class_counts on 4096 random samples; samples/s of the kernel
    logic-cuda  logic_net.cu, logic_net.cubin and the host runner (nvcc for the `arch` option, compile
                only; run and checked bit-exact when a GPU is present)
    verilog     logic_net.v (+ testbench, verilator harness; a register stage every `pipeline_every`
                gate levels), yosys synthesis (`synthesis` = lut6 | xilinx: LUTs, FFs, LUT depth; log),
                verilator simulation of 10,000 samples against Netlist.evaluate/class_counts (zero
                mismatches or it fails), and the `lut_budget` (UnsupportedError when over it).

`hwact bench OUT` on a logic-c folder measures the C kernel's samples/s (end to end from uint8 bits, and on
pre-packed bit planes) next to the PyTorch reference op.
It builds the kernel from netlist.npz in a private temp folder: a folder someone sent you is data, its
logic_net.so (an artifact for users) is never loaded.
"""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from hwact.bench.timing import best_seconds
from hwact.backends.base import Backend, BenchRequest, EmitContext, register
from hwact.errors import InputError, VerificationError
from hwact.ir.graph import Graph
from hwact.ir.logic_ops import LOGIC_NETLIST, netlist_of_node
from hwact.ir.ops import op_args

TOP = "logic_net"
CHECK_SAMPLES = 4096
SIM_SAMPLES = 10000
BENCH_BYTES = 1 << 28    # memory of one batch in bench: wide or deep nets are measured on fewer samples


class LogicBackend(Backend):
    """What every logic backend shares: the netlist files and the report's "logic" section."""
    section = "logic"
    reads_original = True   # the trained accuracy train-logic stored on the module

    def check(self, graph: Graph) -> list[str]:
        nodes = [node for node in graph.call_nodes() if node.target is LOGIC_NETLIST]
        if len(nodes) != 1:
            return [f"a logic model holds exactly one hwact::logic_netlist node, this one has {len(nodes)}"]
        bits = op_args(nodes[0]).bits
        val = bits.meta.get("val") if isinstance(bits, torch.fx.Node) else None
        return [] if val is not None and val.ndim == 2 else [f"node {nodes[0].name}: unknown input bit shape"]

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        start = time.perf_counter()
        node = _logic_node(graph)
        netlist = netlist_of_node(graph.module, node, int(op_args(node).bits.meta["val"].shape[1]))
        (outdir / "netlist.npz").write_bytes(netlist.to_bytes())
        artifacts = ["netlist.npz"]
        thresholds = thermometer_thresholds(graph, node)
        if thresholds is not None:
            np.savez(outdir / "thermometer.npz", thresholds=thresholds)
            artifacts.append("thermometer.npz")
        stats = context.passes.get("lower-logic", {}).get("details", {}).get("lower_logic", [{}])[0]
        logic = {"inputs": netlist.num_inputs, "outputs": int(netlist.outputs.size), "classes": netlist.num_classes,
                 **{k: stats[k] for k in ("gates_before", "gates_after", "depth_before", "depth_after") if k in stats},
                 "simplification": {k: stats[k] for k in ("constant", "pass_through", "merged", "dead") if k in stats}}
        accuracy = trained_accuracy(context.original)
        if accuracy:
            logic["accuracy"] = accuracy
        artifacts += self.build(netlist, outdir, context, logic)
        logic["seconds"] = time.perf_counter() - start
        return {**logic, "artifacts": artifacts}

    def build(self, netlist, outdir: Path, context: EmitContext, logic: dict) -> list[str]:  # pragma: no cover
        raise NotImplementedError


@register
class LogicCBackend(LogicBackend):
    """Bit-sliced C kernel for the host CPU (AVX2 / NEON / 64-bit words), checked bit-exact."""
    name = "logic-c"

    def build(self, netlist, outdir: Path, context: EmitContext, logic: dict) -> list[str]:
        return _cpu(netlist, outdir, logic)

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        return bench(outdir, request)


@register
class LogicCudaBackend(LogicBackend):
    """Bit-sliced CUDA kernel compiled with nvcc for the target's `arch`."""
    name = "logic-cuda"
    options = {"arch": "sm_80"}

    def build(self, netlist, outdir: Path, context: EmitContext, logic: dict) -> list[str]:
        return _cuda(netlist, outdir, logic, context.options["arch"])


@register
class VerilogBackend(LogicBackend):
    """Verilog for an FPGA fabric, synthesized with yosys and simulated against the netlist."""
    name = "verilog"
    options = {"synthesis": "lut6", "lut_budget": None, "pipeline_every": 0}

    def build(self, netlist, outdir: Path, context: EmitContext, logic: dict) -> list[str]:
        pipeline_every = int(context.options["pipeline_every"] or 0)
        if pipeline_every < 0:
            raise InputError(f"--pipeline-every must be >= 0, got {pipeline_every}")
        return _fpga(netlist, context, outdir, logic, pipeline_every)


def _logic_node(graph: Graph):
    nodes = [node for node in graph.call_nodes() if node.target is LOGIC_NETLIST]
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
    current = op_args(node).bits
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
                     "samples_per_s": logic_c.throughput(kernel, samples=1 << 18, repeat=3),
                     "end_to_end_samples_per_s": logic_c.throughput(kernel, samples=1 << 18, repeat=3, packed=False)}
    return list(built["files"])


def _cuda(netlist, outdir: Path, report: dict, arch: str) -> list[str]:
    from hwact.backends import logic_cuda
    from hwact.backends.toolchain import gpu_available

    emitted = logic_cuda.emit_cuda(netlist, outdir, TOP)
    compiled = logic_cuda.compile_cuda(outdir, TOP, arch=arch)
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


def _fpga(netlist, context: EmitContext, outdir: Path, report: dict, pipeline_every: int) -> list[str]:
    from hwact.backends import verilog

    flavor = context.options["synthesis"]
    emitted = verilog.emit_verilog(netlist, outdir, TOP, pipeline_every=pipeline_every)
    synthesis = verilog.synthesize(outdir, TOP, flavor)
    budget = context.options["lut_budget"]
    if budget is not None:
        verilog.check_lut_budget(synthesis["luts"], int(budget), context.target.name)
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
                      "throughput_estimate": fabric_throughput(context.target, emitted["latency_cycles"], pipeline_every)}
    return [*emitted["files"], synthesis["log"]]


def fabric_throughput(target, latency_cycles: int, pipeline_every: int) -> dict:
    """One sample per clock at the target's nominal clock (an estimate: yosys does no timing analysis,
    so whether the LUT path between registers meets that clock is not checked)."""
    clock_hz = float(target.clock_mhz or 0) * 1e6
    return {"clock_mhz": target.clock_mhz, "samples_per_s": clock_hz,
            "latency_ns": latency_cycles * 1e9 / clock_hz if clock_hz else None,
            "assumes": ("the registered stages meet the nominal clock" if pipeline_every
                        else "the whole combinational path meets the nominal clock (use --pipeline-every k)")}


def _bench_samples(most: int, bytes_per_sample: int) -> int:
    """`most` samples, or fewer (a multiple of 64, at least 64) when they would need over BENCH_BYTES."""
    return max(64, min(most, BENCH_BYTES // max(bytes_per_sample, 1) // 64 * 64))


def bench(outdir, request: BenchRequest) -> dict:
    """`hwact bench OUT`: samples/s of the C kernel (one thread) end to end from (N, inputs) uint8 bits
    (packing, validation, gates, GroupSum: one C call) and on pre-packed bit planes, and of the PyTorch
    reference op, on the folder's netlist.npz.

    The folder is untrusted: the kernel is generated from netlist.npz and compiled into a private temp
    folder (removed afterwards), never loaded from the folder's logic_net.so nor compiled from its .c,
    and checked bit-exact against the netlist's class counts before it is timed."""
    from hwact.backends import logic_c
    from hwact.ir.netlist import Netlist

    outdir = Path(outdir)
    path = outdir / "netlist.npz"
    if not path.is_file():
        raise InputError(f"{outdir}: not a logic convert folder (no netlist.npz)")
    netlist = Netlist.read(path)
    repeat = max(1, min(int(request.iterations or 5), 50))
    inputs, nodes, classes = netlist.num_inputs, netlist.num_nodes, netlist.num_classes
    samples = _bench_samples(1 << 20, inputs + inputs // 8 + 4 * classes + 1)  # bytes, packed bits, int32 counts
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
        c_bytes_rate = logic_c.throughput(kernel, samples=samples, repeat=repeat, packed=False)
        kernel_name = kernel.kernel
    torch_samples = _bench_samples(1 << 14, 9 * inputs + nodes // 8 + 4 * classes)  # int64 packing, words
    tensors = [torch.as_tensor(t) for t in (netlist.ops.astype(np.int64), netlist.a, netlist.b, netlist.outputs)]
    torch_bits = torch.as_tensor(random_bits(netlist.num_inputs, torch_samples, seed=8))
    best = best_seconds(lambda: LOGIC_NETLIST(torch_bits, *tensors, netlist.num_classes), min(repeat, 3))
    torch_rate = torch_samples / best
    return {"backend": LogicCBackend.name, "gates": netlist.num_gates, "depth": netlist.depth(), "kernel": kernel_name,
            "c_samples_per_s": c_rate, "c_end_to_end_samples_per_s": c_bytes_rate,
            "c_end_to_end_vs_packed": c_bytes_rate / c_rate, "c_samples": samples, "c_compile_s": built["compile_s"],
            "torch_reference_samples_per_s": torch_rate, "torch_samples": torch_samples,
            "c_vs_torch_reference": c_rate / torch_rate,
            "note": "C, best of repeats, one thread: c_samples_per_s on pre-packed bit-sliced input (packing "
                    "excluded), c_end_to_end_samples_per_s from (N, inputs) uint8 bits (packing and 0/1 check "
                    "included); PyTorch: hwact::logic_netlist reference op on unpacked uint8 bits"}
