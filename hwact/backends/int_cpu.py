"""int-cpu backend: the integer graph an int8 recipe made, run by hwact's integer CPU kernels (issue 15).

    emit    plan.json + constants.npz (hwact/backends/int_cpu_plan.py: the graph as data) and
            libhwact_int.so, built from hwact/backends/int_cpu_src/ for the target's `arch` (host by default)
            (x86_64: scalar, AVX2 and AVX-512 VNNI paths; aarch64: NEON and NEON dot-product paths; the
            best one the CPU has is chosen when the library is loaded)
    verify  the plan run by the kernels (hwact/backends/int_cpu_runtime.py) equals the integer reference
            (the graph itself) bit for bit on every calibration batch, or the convert fails; an aarch64
            build on another host is compiled, not run (said in the report)
    bench   `hwact bench OUT` (hwact/bench/int_cpu_bench.py) times it against onnxruntime

The runtime never loads the library in the output folder: `hwact bench` rebuilds it from hwact's own
sources (cached by their hash) and reads plan.json / constants.npz as hostile input.
"""

from __future__ import annotations

import collections
import platform
import shutil
from pathlib import Path

import torch

from hwact.backends import int_cpu_lib
from hwact.backends.base import Backend, BenchRequest, EmitContext, register
from hwact.backends.int_cpu_plan import make_plan, read_plan, unsupported, write_plan
from hwact.backends.int_cpu_runtime import IntCpuProgram
from hwact.backends.int_cpu_static import StaticProgram
from hwact.backends.toolchain import aarch64_emulator
from hwact.errors import InputError, VerificationError
from hwact.ir.graph import Graph
from hwact.ir.summary import float_compute_nodes

ISA_NAMES = {0: "scalar", 1: "avx2", 2: "avx512-vnni", 3: "neon", 4: "neon-dotprod"}


def host_arch() -> str:
    machine = platform.machine().lower()
    return "aarch64" if machine in ("aarch64", "arm64") else "x86_64"


def _arch(context: EmitContext) -> str:
    arch = str(context.options["arch"] or "host")
    return host_arch() if arch == "host" else arch


def _expected(graph: Graph, context: EmitContext, index: int) -> list:
    """The integer graph's outputs on calibration batch `index`: the pass manager's (context.reference)
    when the pipeline has them, else a run of the graph."""
    if context.reference is not None:
        return list(context.reference[index])
    expected = graph(*context.batches[index])
    return list(expected) if isinstance(expected, (tuple, list)) else [expected]


def _compare(expected: list, produced: list, where: str) -> None:
    """VerificationError unless `produced` equals `expected` bit for bit."""
    for which, (want, got) in enumerate(zip(expected, produced)):
        if want.shape != got.shape or not torch.equal(want.to(got.dtype), got):
            error = float((want.double() - got.double()).abs().max()) if want.shape == got.shape else None
            raise VerificationError(f"int-cpu: output {which} differs from the integer reference on {where} "
                                    f"(max |err| {error})")


def open_program(outdir: Path, threads: int = 1) -> IntCpuProgram:
    """The plan in `outdir` with hwact's own build of the library for this machine."""
    library = int_cpu_lib.load(int_cpu_lib.build(host_arch()))
    return IntCpuProgram(read_plan(outdir), library, threads)


@register
class IntCpuBackend(Backend):
    """Integer graphs on the host CPU with hwact's fused int8 kernels, checked bit-exact."""

    name = "int-cpu"
    section = "int_cpu"
    options = {"arch": "host", "threads": 1}

    def applies(self, graph: Graph) -> bool:
        return "hwact_integer" in graph.meta      # set by fold-quant-scales: an int8 recipe ran

    def check(self, graph: Graph) -> list[str]:
        floats = [f"{node.name} ({node.target}) computes in float: the integer runtime runs integer graphs only"
                  for node in float_compute_nodes(graph)]
        return floats + unsupported(graph)

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        arch = _arch(context)
        if arch not in int_cpu_lib.COMPILERS:
            raise InputError(f"int-cpu: unknown arch '{arch}'", hint="x86_64 or aarch64")
        plan = make_plan(graph)
        artifacts = write_plan(plan, outdir)
        shutil.copyfile(int_cpu_lib.build(arch), outdir / int_cpu_lib.LIBRARY_NAME)   # built once per source hash
        artifacts.append(int_cpu_lib.LIBRARY_NAME)
        # the plan as read back, run on the host: its first run compiles the static program of the first
        # calibration batch's shapes, which hwact_run (built for the target) runs without Python
        self.program = open_program(outdir, int(context.options["threads"] or 1))
        first = context.batches[0]
        with torch.no_grad():
            self.program(*first)
        self.static = self.program.static.get(self.program.signature(*first))
        if isinstance(self.static, StaticProgram):
            artifacts += self.static.save(outdir)
            shutil.copyfile(int_cpu_lib.build(arch, runner=True), outdir / int_cpu_lib.RUNNER_NAME)
            (outdir / int_cpu_lib.RUNNER_NAME).chmod(0o755)
            artifacts.append(int_cpu_lib.RUNNER_NAME)
        kernels = collections.Counter(step.op_name for step in plan.steps if step.op_name.startswith("hwact."))
        return {"arch": arch, "library": int_cpu_lib.LIBRARY_NAME, "steps": len(plan.steps),
                "kernels": dict(sorted(kernels.items())),
                "constant_bytes": int(sum(value.nbytes for value in plan.constants.values())),
                "artifacts": artifacts}

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        """The plan on the host on every calibration batch (the first again at the end: its first run laid
        out the arena and compiled the static program, the second uses it), then hwact_run, the target's
        executable, on the batches of the program's shapes (natively, or under qemu-aarch64)."""
        program, isa = self.program, ISA_NAMES.get(int(self.program.lib.hw_isa()), "unknown")
        batches = list(context.batches)
        with torch.no_grad():
            for index, batch in [*enumerate(batches), (0, batches[0])]:
                produced = program(*batch)
                _compare(_expected(graph, context, index), produced, f"calibration batch {index} ({isa} path)")
        shapes = [tuple(value.shape) for value in batches[0]]
        layout, executor = program.layout(*shapes), program.executor(*shapes)
        memory = executor.get("workspace_bytes", layout.arena_bytes)
        context.log(f"  int-cpu ({isa}, {executor['executor']}) vs integer reference: bit-exact on {len(batches)} "
                    f"batches; activations {memory / 2**20:.2f} MiB at input shapes {shapes}")
        section = {"bit_exact": True, "isa": isa, "batches": len(batches), **executor,
                   "arena": {"input_shapes": [list(shape) for shape in shapes], "bytes": layout.arena_bytes,
                             "activation_bytes_without_reuse": layout.activation_bytes,
                             "buffers": len(layout.offsets)}}
        return {**section, **self._verify_runner(graph, outdir, context, batches)}

    def _verify_runner(self, graph: Graph, outdir: Path, context: EmitContext, batches: list) -> dict:
        arch = _arch(context)
        if not isinstance(self.static, StaticProgram):
            if arch != host_arch():
                return {"verified": False, "reason": f"built for {arch}; no static program ({self.static}), so "
                                                     f"nothing runs it on this {host_arch()} host"}
            return {"verified": True}
        prefix = ()
        if arch != host_arch():
            if arch != "aarch64" or shutil.which("qemu-aarch64") is None:
                return {"verified": False, "reason": f"built for {arch} on a {host_arch()} host: compiled, not run"}
            prefix = (*aarch64_emulator(), "-cpu", "max")
        same = [(index, batch) for index, batch in enumerate(batches)
                if [tuple(value.shape) for value in batch] == [shape for shape, _ in self.static.inputs]]
        for index, batch in same:
            produced, path = self.static.run_driver(outdir / int_cpu_lib.RUNNER_NAME, outdir, batch, prefix)
            _compare(_expected(graph, context, index), produced, f"calibration batch {index} (hwact_run, {path} path)")
        ran = "qemu-aarch64 -cpu max" if prefix else "natively"
        context.log(f"  hwact_run ({arch}, {ran}): bit-exact on {len(same)} batches")
        return {"verified": True, "runner": {"arch": arch, "ran": ran, "isa": path, "batches": len(same)}}

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        from hwact.bench.int_cpu_bench import bench
        return bench(outdir, request)
