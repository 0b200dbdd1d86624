"""`hwact bench OUT` for an int-cpu convert folder: hwact's integer runtime against onnxruntime, interleaved.

Runs, on the same random inputs (batch and threads as asked), the folder's plan with hwact's kernels
(rebuilt from hwact's sources: the folder's library is never loaded) and the folder's integer
model.onnx in onnxruntime, plus `--compare X.onnx` (e.g. the fp32 model before the int8 recipe) when
given; reports each one's latency statistics and the ratios of medians to the runtime's. The runtime's
outputs are first checked equal to onnxruntime's integer model (bit-exact).
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import torch

from hwact.backends.base import BenchRequest
from hwact.bench.ort_runner import make_runner, measure
from hwact.errors import InputError, VerificationError


class ProgramRunner:
    def __init__(self, program, feeds: dict):
        self.program = program
        self.inputs = [torch.from_numpy(np.ascontiguousarray(feeds[name])) for name in program.plan.inputs]
        self.path = "hwact int-cpu runtime"

    def __call__(self) -> float:
        start = time.perf_counter()
        self.program(*self.inputs)
        return time.perf_counter() - start


def bench(outdir: Path, request: BenchRequest) -> dict:
    from hwact.backends.int_cpu import open_program

    onnx_path = Path(outdir) / "model.onnx"
    if not onnx_path.is_file():
        raise InputError(f"{outdir}: no model.onnx next to the integer runtime's plan")
    threads = max(1, request.threads or 1)
    integer_onnx = make_runner(onnx_path, request.batch, request.threads)
    program = open_program(Path(outdir), threads)
    missing = [name for name in program.plan.inputs if name not in integer_onnx.feeds]
    if missing:
        raise InputError(f"{outdir}: the plan's inputs {missing} are not model.onnx's inputs")
    runtime = ProgramRunner(program, integer_onnx.feeds)
    produced = program(*runtime.inputs)
    expected = integer_onnx.session.run(None, integer_onnx.feeds)
    for index, (got, want) in enumerate(zip(produced, expected)):
        if not np.array_equal(got.numpy(), want):
            raise VerificationError(f"{outdir}: the runtime's output {index} differs from model.onnx in onnxruntime")
    runners = [runtime, integer_onnx]
    if request.compare:
        runners.append(make_runner(Path(request.compare), request.batch, request.threads))
    results = measure(runners, 3, request.iterations, None if request.iterations else request.duration,
                      request.batch)
    isa = program.lib.hw_isa_name(program.lib.hw_isa()).decode()
    rows = [{"artifact": str(runner.path), **result} for runner, result in zip(runners, results)]
    return {"backend": "int-cpu", "isa": isa, "batch": request.batch, "threads": threads,
            "outputs_equal_integer_onnx": True, "results": rows,
            "speedup_vs": {str(row["artifact"]): row["p50_ms"] / rows[0]["p50_ms"] for row in rows[1:]}}
