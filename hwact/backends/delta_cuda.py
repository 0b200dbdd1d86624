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

import shutil
import struct
import subprocess
from pathlib import Path

import numpy as np

from hwact.backends.delta_c import DeltaRuntime, source_dir
from hwact.errors import ToolMissingError, VerificationError

ARCHS = ("75", "80", "90")


def nvcc() -> str:
    path = shutil.which("nvcc")
    if path is None:
        raise ToolMissingError("nvcc is not installed", hint="install the CUDA toolkit (compile only; no GPU needed)")
    return path


def build_cuda(outdir: Path, archs: tuple[str, ...] = ARCHS) -> Path:
    outdir.mkdir(parents=True, exist_ok=True)
    exe = outdir / "delta_cuda_main"
    gencode = [f"-gencode=arch=compute_{a},code=sm_{a}" for a in archs]
    gencode.append(f"-gencode=arch=compute_{archs[-1]},code=compute_{archs[-1]}")
    command = [nvcc(), "-O3", "--fmad=false", *gencode, f"-I{source_dir()}", str(source_dir() / "delta_cuda.cu"),
               str(source_dir() / "delta.c"), "-o", str(exe)]
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise VerificationError(f"nvcc failed: {done.stderr.strip()[:300]}")
    return exe


def gpu_available() -> bool:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return False
    return subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def write_case(folder: Path, blob: bytes, x: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "net.bin").write_bytes(blob)
    batch, steps, n_in = x.shape
    (folder / "in.bin").write_bytes(struct.pack("<iii", batch, steps, n_in) + np.ascontiguousarray(x, "<f4").tobytes())


def read_output(path: Path, blob: bytes, batch: int, steps: int) -> dict:
    runtime = DeltaRuntime.from_blob(blob, library=None)
    raw = path.read_bytes()
    y_bytes = batch * steps * runtime.n_out * 4
    layers = runtime.n_layers
    return {"y": np.frombuffer(raw[:y_bytes], "<f4").reshape(batch, steps, runtime.n_out),
            "fired": np.frombuffer(raw[y_bytes:y_bytes + 8 * layers], "<i8"),
            "state": np.frombuffer(raw[y_bytes + 8 * layers:], "<i4").reshape(batch, runtime.state_len)}


def run_cuda(exe: Path, blob: bytes, x: np.ndarray, workdir: Path, dense: bool = False, repeats: int = 0) -> dict:
    write_case(workdir, blob, x)
    done = subprocess.run([str(exe), str(workdir / "net.bin"), str(workdir / "in.bin"), str(workdir / "out.bin"),
                           "1" if dense else "0", str(repeats)], capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise VerificationError(f"CUDA delta runner failed: {done.stderr.strip()}")
    result = read_output(workdir / "out.bin", blob, x.shape[0], x.shape[1])
    for line in done.stdout.splitlines():
        if line.startswith("us_per_frame"):
            result["us_per_frame"] = float(line.split()[1])
    return result
