"""Running an aarch64 TVM library on this x86 host: tvm_run (tvm_run_src/) under qemu-aarch64 with TVM's
own aarch64 runtime.

The runtime is libtvm_runtime.so + libtvm_ffi.so from the aarch64 wheels of the installed apache-tvm and
apache-tvm-ffi versions (`pip download`, then the two libraries are taken out of the wheels into the cache,
$HWACT_CACHE/tvm/aarch64-runtime-VERSIONS/). tvm_run is cross-compiled next to them (rpath $ORIGIN)
against the tvm-ffi headers of the installed package. `available()` says why not when any of it is
missing (no cross compiler, no qemu-aarch64, no wheel to be had); the backend then reports the library
as compiled, not run.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from importlib import resources
from pathlib import Path

import numpy as np

from hwact.backends import tvm_build
from hwact.backends.toolchain import AARCH64_SYSROOT
from hwact.errors import VerificationError

COMPILER = "aarch64-linux-gnu-g++"
PLATFORM = "manylinux_2_28_aarch64"
LIBRARIES = {"apache-tvm": "tvm/lib/libtvm_runtime.so", "apache-tvm-ffi": "tvm_ffi/lib/libtvm_ffi.so"}
RUN_TIMEOUT_S = 600


def _versions() -> dict[str, str]:
    import tvm_ffi

    return {"apache-tvm": tvm_build.tvm().__version__, "apache-tvm-ffi": tvm_ffi.__version__}


def _runtime_dir() -> Path:
    versions = _versions()
    return tvm_build.cache_dir() / f"aarch64-runtime-{versions['apache-tvm']}-{versions['apache-tvm-ffi']}"


def _fetch_runtime(folder: Path) -> str | None:
    """The two aarch64 runtime libraries into `folder`; the reason when they cannot be had."""
    with tempfile.TemporaryDirectory() as tmp:
        for package, version in _versions().items():
            done = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                                   "--platform", PLATFORM, "-d", tmp, f"{package}=={version}"],
                                  capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
            wheels = sorted(Path(tmp).glob(f"{package.replace('-', '_')}-{version}-*.whl"))
            if done.returncode != 0 or not wheels:
                return f"no aarch64 wheel of {package}=={version} to be had (pip download failed)"
            with zipfile.ZipFile(wheels[0]) as wheel:
                staged = folder / (Path(LIBRARIES[package]).name + ".part")
                staged.write_bytes(wheel.read(LIBRARIES[package]))
                staged.replace(folder / Path(LIBRARIES[package]).name)
    return None


def _build_runner(folder: Path) -> Path:
    import tvm_ffi

    source = resources.files("hwact.backends") / "tvm_run_src" / "tvm_run.cc"
    digest = hashlib.sha256(source.read_bytes()).hexdigest()[:16]
    runner = folder / f"tvm_run-{digest}"
    if not runner.is_file():
        include = Path(tvm_ffi.__file__).parent / "include"
        staged = runner.with_suffix(".part")
        done = subprocess.run([COMPILER, "-std=c++17", "-O2", f"-I{include}", str(source), "-o", str(staged),
                               f"-L{folder}", "-Wl,--no-as-needed", "-ltvm_runtime", "-ltvm_ffi", "-Wl,-rpath,$ORIGIN"],
                              capture_output=True, text=True)
        if done.returncode != 0:
            raise VerificationError(f"tvm_run does not compile for aarch64: {done.stderr.strip().splitlines()[-1:]}")
        staged.replace(runner)
    return runner


def available() -> tuple[Path | None, str | None]:
    """(tvm_run for aarch64, None), or (None, why it cannot be had here)."""
    for tool in (COMPILER, "qemu-aarch64"):
        if shutil.which(tool) is None:
            return None, f"{tool} is not installed"
    folder = _runtime_dir()
    folder.mkdir(parents=True, exist_ok=True)
    if not all((folder / Path(path).name).is_file() for path in LIBRARIES.values()):
        reason = _fetch_runtime(folder)
        if reason:
            return None, reason
    return _build_runner(folder), None


def run(runner: Path, library: Path, inputs: list[np.ndarray]) -> list[np.ndarray]:
    """The library's `main` on `inputs`, run by tvm_run under qemu-aarch64; its outputs."""
    with tempfile.TemporaryDirectory() as tmp:
        specs = []
        for index, array in enumerate(inputs):
            path = Path(tmp) / f"in{index}.bin"
            np.ascontiguousarray(array).astype(array.dtype.newbyteorder("<"), copy=False).tofile(path)
            specs.append(f"{path}:{array.dtype.name}:{'x'.join(str(d) for d in array.shape)}")
        out = Path(tmp) / "out.bin"
        done = subprocess.run(["qemu-aarch64", "-L", AARCH64_SYSROOT, str(runner), str(library), str(out), *specs],
                              capture_output=True, text=True, timeout=RUN_TIMEOUT_S)
        if done.returncode != 0:
            raise VerificationError(f"tvm_run under qemu-aarch64 failed: {(done.stderr or done.stdout).strip()[-200:]}")
        data, offset, outputs = out.read_bytes(), 0, []
        for line in done.stdout.split("\n"):
            if not line.strip():
                continue
            dtype, shape = line.split()
            dims = [int(d) for d in shape.split("x")] if shape else []
            count = int(np.prod(dims, dtype=np.int64))
            outputs.append(np.frombuffer(data, dtype=np.dtype(dtype).newbyteorder("<"), count=count,
                                         offset=offset).reshape(dims))
            offset += count * np.dtype(dtype).itemsize
        return outputs
