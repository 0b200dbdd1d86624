"""The `tvm` backend: the exported model.onnx compiled by Apache TVM (Relax) for an x86, Arm or CUDA target.

    emit    model.onnx (the onnx backend runs first in the chain) imported by Relax's ONNX frontend with
            its inputs fixed at batch 1 (hwact/backends/tvm_build.py), optionally MetaSchedule-tuned
            (`tune_trials`), compiled for the target's `[backend.tvm] target` table and exported as
            model_tvm.so (weights inside) with tvm.json: the target, the input signature, the tuning
    verify  the exported library, loaded back, on every calibration sample (at most MAX_SAMPLES) against
            the graph: within FLOAT_TOLERANCE x max(1, max|reference|) for a float graph, bit for bit for
            an integer graph. An aarch64 library runs under qemu-aarch64 with TVM's aarch64 runtime
            (hwact/backends/tvm_qemu.py); a CUDA one, or an aarch64 one when that runtime cannot be had,
            is compiled, not run here: the report says so, and `hwact bench --rpc` runs it on the device
    bench   `hwact bench OUT [--rpc HOST:PORT --key KEY]` (hwact/bench/tvm_bench.py)

Integer graphs (an int8 recipe) import with hwact's additions to the Relax ONNX frontend (ConvInteger,
scalar integer operands: tvm_onnx.py) and are verified bit for bit; a graph holding an op without a
converter is refused with the list of those ops before anything is written.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path

import numpy as np
import torch

from hwact.backends import tvm_build
from hwact.backends.base import Backend, BenchRequest, EmitContext, register
from hwact.backends.onnx_backend import MODEL, is_integer
from hwact.errors import InputError, VerificationError
from hwact.ir.graph import Graph

LIBRARY = "model_tvm.so"
METADATA = "tvm.json"
FLOAT_TOLERANCE = 1e-4
MAX_SAMPLES = 8
_ONNX_DTYPES = {1: "float32", 2: "uint8", 3: "int8", 5: "int16", 6: "int32", 7: "int64", 9: "bool", 10: "float16",
                11: "float64"}


def signature_of(onnx_path: Path, graph: Graph, batches: list[tuple]) -> tvm_build.Signature:
    """model.onnx's inputs with the first calibration batch's shapes at batch 1 (or the graph's fixed batch)."""
    import onnx

    model = onnx.load(str(onnx_path), load_external_data=False)
    batch = graph.fixed_batch or 1
    inputs = []
    for value, example in zip(model.graph.input, batches[0]):
        elem = value.type.tensor_type.elem_type
        if elem not in _ONNX_DTYPES:
            raise InputError(f"{onnx_path}: input '{value.name}' has ONNX type {elem}, which the tvm backend "
                             f"does not feed")
        inputs.append((value.name, [batch, *example.shape[1:]], _ONNX_DTYPES[elem]))
    return tvm_build.Signature(inputs)


def runs_here(spec: dict) -> bool:
    """Whether a library for this target table runs on this machine (an llvm target of the host's ISA)."""
    if spec["kind"] != "llvm":
        return False
    triple = str(spec.get("mtriple", "")) or platform.machine()
    return triple.split("-")[0].replace("arm64", "aarch64") == platform.machine().replace("arm64", "aarch64")


def as_list(result) -> list[np.ndarray]:
    """A VM result (one tensor or a tuple of them) as numpy arrays."""
    tvm = tvm_build.tvm()
    if isinstance(result, tvm.runtime.Tensor):
        return [result.numpy()]
    return [item.numpy() for item in result]


def compare(expected: list[np.ndarray], produced: list[np.ndarray], integer: bool, where: str) -> float:
    """The largest |difference| over the outputs; VerificationError beyond the tolerance (0 when integer)."""
    worst = 0.0
    for index, (want, got) in enumerate(zip(expected, produced)):
        if want.shape != got.shape:
            raise VerificationError(f"{where}: output {index} has shape {got.shape}, expected {want.shape}")
        error = float(np.abs(want.astype(np.float64) - got.astype(np.float64)).max()) if want.size else 0.0
        limit = 0.0 if integer else FLOAT_TOLERANCE * max(1.0, float(np.abs(want).max()) if want.size else 1.0)
        if error > limit:
            raise VerificationError(f"{where}: output {index} differs from the reference by {error:.3g} "
                                    f"(limit {limit:.3g}{', integer graph: bit-exact' if integer else ''})")
        worst = max(worst, error)
    return worst


@register
class TvmBackend(Backend):
    """model.onnx compiled by Apache TVM for the target's `[backend.tvm] target`, checked before it is kept."""

    name = "tvm"
    options = {"target": {"kind": "llvm", "mcpu": "host"}, "cross_compiler": "", "tune_trials": 0}

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        tvm_build.tvm()
        onnx_path = Path(outdir) / MODEL
        if not onnx_path.is_file():
            raise InputError(f"target {context.target.name}: the tvm backend compiles {MODEL}; put the onnx "
                             f"backend before it in the chain")
        where = f"target {context.target.name}"
        spec = tvm_build.resolve_target(context.options["target"], where)
        target = tvm_build.make_target(spec, where)
        trials = int(context.options["tune_trials"] or 0)
        if trials < 0:
            raise InputError(f"--tune-trials {trials}: must be >= 0")
        if trials and not runs_here(spec):
            raise InputError(f"{where}: tuning measures candidates on this machine, which cannot run "
                             f"{spec.get('mtriple', spec['kind'])} code", hint="tune_trials = 0 for this target")
        signature = signature_of(onnx_path, graph, context.batches)
        mod = tvm_build.import_onnx(onnx_path, signature, f"{context.target.name}")
        key = tvm_build.tuning_key(onnx_path, signature, spec)
        tuning = tvm_build.tune(onnx_path, signature, spec, key, trials, context.log) if trials else {"trials": 0}
        executable = tvm_build.compile_module(mod, target, key if trials else None)
        tvm_build.export(executable, Path(outdir) / LIBRARY, context.options["cross_compiler"] or None)
        self.spec, self.signature = spec, signature
        metadata = {"library": LIBRARY, "onnx": MODEL, "target": spec, "inputs": signature.as_json(),
                    "cross_compiler": context.options["cross_compiler"] or None, "tuning_key": key,
                    "tune_trials": trials, "integer": is_integer(graph), "tvm": tvm_build.tvm().__version__}
        (Path(outdir) / METADATA).write_text(json.dumps(metadata, indent=2))
        return {"library": LIBRARY, "target": spec, "batch": signature.inputs[0][1][0], "tuning": tuning,
                "bytes": (Path(outdir) / LIBRARY).stat().st_size, "artifacts": [LIBRARY, METADATA]}

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        execute, ran = self._executor(Path(outdir) / LIBRARY)
        if execute is None:
            context.log(f"  tvm: {ran}")
            return {"verified": False, "reason": ran}
        integer, worst, samples = is_integer(graph), 0.0, 0
        batch = self.signature.inputs[0][1][0]
        with torch.no_grad():
            for number, inputs in enumerate(context.batches):
                expected = graph(*inputs)
                expected = [t.numpy() for t in (expected if isinstance(expected, (tuple, list)) else [expected])]
                for start in range(0, inputs[0].shape[0] - batch + 1, batch):
                    if samples >= MAX_SAMPLES:
                        break
                    produced = execute([np.ascontiguousarray(t[start:start + batch].numpy()) for t in inputs])
                    worst = max(worst, compare([e[start:start + batch] for e in expected], produced, integer,
                                               f"tvm: calibration batch {number}, sample {start}"))
                    samples += 1
        exact = "bit-exact" if integer else f"max|err| {worst:.3g}"
        context.log(f"  tvm ({self.spec.get('mcpu', self.spec['kind'])}, {ran}) vs graph: {exact} on {samples} samples")
        section = {"verified": True, "ran": ran, "samples": samples, "max_abs_err": worst}
        if integer:
            section["bit_exact"] = True
        return section

    def _executor(self, library: Path):
        """(run(inputs) -> outputs, how it runs), or (None, why the library is not run here)."""
        if runs_here(self.spec):
            tvm = tvm_build.tvm()
            vm = tvm.relax.VirtualMachine(tvm.runtime.load_module(str(library)), tvm.cpu())
            return (lambda arrays: as_list(vm["main"](*[tvm.runtime.tensor(a) for a in arrays]))), "natively"
        triple = str(self.spec.get("mtriple", ""))
        what = "CUDA" if self.spec["kind"] == "cuda" else triple or self.spec["kind"]
        not_run = f"built for {what} on a {platform.machine()} host: compiled, not run (hwact bench --rpc runs it)"
        if self.spec["kind"] == "llvm" and triple.startswith("aarch64") and platform.machine() == "x86_64":
            from hwact.backends import tvm_qemu

            runner, why = tvm_qemu.available()
            if runner is None:
                return None, f"{not_run}; {why}"
            return (lambda arrays: tvm_qemu.run(runner, library, arrays)), "qemu-aarch64 with TVM's aarch64 runtime"
        return None, not_run

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        from hwact.bench.tvm_bench import bench
        return bench(outdir, request)
