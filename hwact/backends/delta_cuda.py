"""CUDA backend for lowered delta networks (delta_c_src/delta_cuda.cu).

One thread block per stream runs all layers of each frame: inputs whose code changed by at least the
threshold are compacted into a shared (index, delta) list, then each thread updates its outputs'
int32 accumulators with only those weight columns. Compiled with nvcc --fmad=false; bit-exact with
the reference (integer accumulation is order-independent). The runner reads the same net/input files
as the aarch64 runner (delta_c.run_under_qemu) and writes the same output layout.

`build_cuda(outdir)` needs nvcc (no GPU); `run_cuda(...)` needs a GPU and is checked whenever one is
available (tests skip it otherwise).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from hwact.backends.delta_c import runner_output, source_dir, stream_input
from hwact.backends.toolchain import compile_to, nvcc, require_gpu, run_runner

ARCHS = ("75", "80", "90")


def build_cuda(outdir: Path, archs: tuple[str, ...] = ARCHS) -> Path:
    """nvcc the runner outdir/delta_cuda_main: SASS for every arch in `archs`, PTX for the last."""
    outdir.mkdir(parents=True, exist_ok=True)
    exe = outdir / "delta_cuda_main"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    compile_to(exe, [nvcc(), "-O3", "--fmad=false", *gencode, f"-I{source_dir()}", str(source_dir() / "delta_cuda.cu"),
                     str(source_dir() / "delta.c")], "nvcc")
    return exe


def run_cuda(exe: Path, blob: bytes, x: np.ndarray, workdir: Path, dense: bool = False, repeats: int = 0) -> dict:
    """Run the runner on a GPU on x (batch, steps, n_in) from fresh streams: y, fired, state (and
    us_per_frame, the best of `repeats` timed runs of the whole sequence, when repeats > 0)."""
    require_gpu()
    what = "CUDA delta runner"
    raw, printed = run_runner(exe, {"net.bin": blob, "in.bin": stream_input(x)}, workdir, what,
                              args=("1" if dense else "0", str(repeats)))
    result = runner_output(raw, blob, x.shape[0], x.shape[1], what)
    for line in printed.splitlines():
        if line.startswith("us_per_frame"):
            result["us_per_frame"] = float(line.split()[1])
    return result
