"""The external tools the native backends use: compilers, nvcc, the GPU check, qemu-user, and the
stand-alone runners they build.

A runner is a program built from a backend's C or CUDA sources that reads its input files and writes
one output file: `RUNNER IN... OUT [ARGS...]`, prints what it reports (its kernel's name, timings) on
stdout, and exits non-zero on a failure. `run_runner` writes the inputs into a work folder, runs it
(under qemu-aarch64 for an aarch64 build on another host) and hands back the output's bytes and
stdout; `read_arrays` cuts those bytes into the little-endian arrays they are made of.
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from hwact.errors import ToolMissingError, VerificationError

PACKAGES = {"gcc": "gcc", "aarch64-linux-gnu-gcc": "gcc-aarch64-linux-gnu", "qemu-aarch64": "qemu-user"}
NVCC_FALLBACK = Path("/usr/local/cuda/bin/nvcc")
AARCH64_SYSROOT = "/usr/aarch64-linux-gnu"
RUNNER_TIMEOUT_S = 600


def require_tool(name: str, package: str | None = None) -> str:
    """The path of the program `name`; ToolMissingError naming the package that installs it when absent."""
    path = shutil.which(name)
    if path is None:
        package = package or PACKAGES.get(name, name)
        raise ToolMissingError(f"{name} is not installed", hint=f"apt-get install {package}")
    return path


def nvcc() -> str:
    """The CUDA compiler (on PATH, else the toolkit's default place); compiling needs no GPU."""
    path = shutil.which("nvcc")
    if path is None and NVCC_FALLBACK.is_file() and os.environ.get("PATH", "") != "":
        path = str(NVCC_FALLBACK)
    if path is None:
        raise ToolMissingError("nvcc is not installed", hint="install the CUDA toolkit (apt-get install "
                                                             "nvidia-cuda-toolkit); compile needs no GPU")
    return path


def gpu_available() -> bool:
    """Whether a CUDA GPU can run the CUDA runners here (torch sees one, or nvidia-smi lists one)."""
    try:
        import torch
        if torch.cuda.is_available():
            return True
    except Exception:  # noqa: BLE001 - any torch import problem means "no usable GPU"
        pass
    smi = shutil.which("nvidia-smi")
    return smi is not None and subprocess.run([smi, "-L"], capture_output=True).returncode == 0


def require_gpu() -> None:
    """ToolMissingError unless a CUDA GPU is here to run a CUDA runner."""
    if not gpu_available():
        raise ToolMissingError("no CUDA GPU on this machine", hint="run the CUDA kernel on a GPU host")


def host_arch_flags() -> list[str]:
    """-mavx2 when this x86-64 host's CPU has AVX2 (a library is built for the machine that runs it)."""
    if platform.machine() in ("x86_64", "AMD64"):
        info = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return ["-mavx2"] if " avx2" in info else []
    return []


def aarch64_emulator() -> list[str]:
    """The command prefix that runs a static aarch64 program here: none on an aarch64 host, else qemu."""
    if platform.machine() in ("aarch64", "arm64"):
        return []
    return [require_tool("qemu-aarch64"), "-L", AARCH64_SYSROOT]


def run_tool(command: list[str], what: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """Run a compiler or simulator; VerificationError quoting its error lines (or its last two) when it fails."""
    done = subprocess.run(command, cwd=cwd, capture_output=True, text=True)
    if done.returncode != 0:
        text = (done.stderr + done.stdout).splitlines()
        tail = [line for line in text if "error" in line.lower()][:2] or text[-2:] or ["no message"]
        quoted = " | ".join(line.strip() for line in tail)
        raise VerificationError(f"{what} failed (exit {done.returncode}): {quoted}")
    return done


def compile_to(target: Path, command: list[str], what: str) -> float:
    """Run `command` + ["-o", partial] and rename the partial file to `target` when it is complete;
    returns the seconds it took."""
    partial = target.with_name(f".{target.name}.partial")
    start = time.perf_counter()
    try:
        run_tool([*command, "-o", str(partial)], what)
        os.replace(partial, target)
    finally:
        partial.unlink(missing_ok=True)
    return time.perf_counter() - start


def write_atomic(path: Path, text: str) -> None:
    """Write a generated source file whole or not at all (a temp file beside it, renamed)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False, suffix=".tmp") as handle:
        handle.write(text)
    os.replace(handle.name, path)


def run_runner(runner: Path, inputs: dict[str, bytes], workdir: Path, what: str,
               emulator: list[str] | tuple[str, ...] = (), args: tuple[str, ...] = ()) -> tuple[bytes, str]:
    """Write `inputs` (file name -> bytes, in the runner's argument order) into workdir, run
    `emulator... RUNNER INPUTS... out.bin ARGS...` and return the bytes of out.bin and what it printed."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    for name, data in inputs.items():
        (workdir / name).write_bytes(data)
    out = workdir / "out.bin"
    done = subprocess.run([*emulator, str(runner), *(str(workdir / name) for name in inputs), str(out), *args],
                          capture_output=True, text=True, timeout=RUNNER_TIMEOUT_S)
    if done.returncode != 0:
        raise VerificationError(f"{what} failed: {done.stderr.strip()[:300]}")
    return out.read_bytes(), done.stdout.strip()


def read_arrays(raw: bytes, parts: list[tuple[str, tuple[int, ...]]], what: str) -> list[np.ndarray]:
    """`raw` cut into consecutive arrays of (numpy dtype, shape), which must fill it exactly."""
    counts = [int(np.prod(shape, dtype=np.int64)) for _, shape in parts]
    offsets = np.cumsum([0] + [count * np.dtype(dtype).itemsize for count, (dtype, _) in zip(counts, parts)])
    if offsets[-1] != len(raw):
        raise VerificationError(f"{what} wrote {len(raw)} bytes, {offsets[-1]} were expected")
    return [np.frombuffer(raw, dtype, count, int(offset)).reshape(shape)
            for (dtype, shape), count, offset in zip(parts, counts, offsets)]
