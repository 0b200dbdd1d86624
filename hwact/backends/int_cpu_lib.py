"""Build and load the integer CPU runtime library (hwact/backends/int_cpu_src/, issue 15).

One shared library per architecture holds every ISA path: the x86-64 build compiles its AVX2 and
AVX-512 VNNI functions with per-function target attributes and picks one at run time (isa.c); the aarch64
build likewise holds NEON and NEON dot-product paths. `build(arch)` compiles it (cached by the hash of
the sources and flags, so tests and converts compile once); `load(path)` opens it with ctypes, every
function's argument types read from the prototypes in hwact_int.h (the header is the one declaration).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import re
import subprocess
from pathlib import Path

from hwact.backends.toolchain import require_tool
from hwact.errors import ToolMissingError

SOURCE_DIR = Path(__file__).with_name("int_cpu_src")
RUNNER_DIR = Path(__file__).with_name("int_cpu_runner")      # the static program runner (int_cpu_static.py)
HEADERS = [SOURCE_DIR / "hwact_int.h", RUNNER_DIR / "hwact_runner.h"]
LIBRARY_NAME = "libhwact_int.so"
RUNNER_NAME = "hwact_run"
DRIVER = RUNNER_DIR / "driver" / "hwact_run.c"
COMPILERS = {"x86_64": "gcc", "aarch64": "aarch64-linux-gnu-gcc"}
FLAGS = {"x86_64": ["-O3", "-march=x86-64", "-mtune=generic"], "aarch64": ["-O3", "-march=armv8-a"]}
COMMON = ["-std=c11", "-fPIC", "-shared", "-pthread", "-fno-fast-math", "-Wall", "-Werror=implicit-function-declaration"]
EXECUTABLE = ["-std=c11", "-static", "-pthread", "-fno-fast-math", "-Wall", "-Werror=implicit-function-declaration"]

_C_TYPES = {"void": None, "int": ctypes.c_int, "int32_t": ctypes.c_int32, "int64_t": ctypes.c_int64,
            "uint64_t": ctypes.c_uint64, "size_t": ctypes.c_size_t, "float": ctypes.c_float, "char*": ctypes.c_char_p}


def sources() -> list[Path]:
    return sorted(SOURCE_DIR.glob("*.c")) + sorted(RUNNER_DIR.glob("*.c"))


def include_flags() -> list[str]:
    return ["-I", str(SOURCE_DIR), "-I", str(RUNNER_DIR)]


def cache_dir() -> Path:
    return Path(os.environ.get("HWACT_CACHE", Path.home() / ".cache" / "hwact")) / "int_cpu"


def build(arch: str = "x86_64", dest: Path | None = None, runner: bool = False) -> Path:
    """Compile the library for `arch` (x86_64 | aarch64) into `dest` (a folder), or into the cache; with
    `runner`, the static executable hwact_run instead (int_cpu_runner/driver: a program without Python)."""
    compiler = require_tool(COMPILERS[arch])
    name, flags, extra = ((RUNNER_NAME, EXECUTABLE, [DRIVER]) if runner else (LIBRARY_NAME, COMMON, []))
    command = [compiler, *FLAGS[arch], *flags]
    digest = hashlib.sha256(" ".join(command).encode())
    for path in [*HEADERS, *sources(), *extra]:
        digest.update(path.read_bytes())
    folder = Path(dest) if dest is not None else cache_dir() / f"{arch}-{digest.hexdigest()[:16]}"
    target = folder / name
    if dest is None and target.is_file():
        return target
    folder.mkdir(parents=True, exist_ok=True)
    partial = folder / f".{name}.{os.getpid()}"
    done = subprocess.run([*command, *include_flags(), *map(str, sources() + extra), "-o", str(partial), "-lm"],
                          capture_output=True, text=True)
    if done.returncode:
        partial.unlink(missing_ok=True)
        raise ToolMissingError(f"{compiler} failed to build the integer runtime: {done.stderr.strip()[-2000:]}")
    partial.replace(target)
    return target


def prototypes() -> dict[str, tuple[object, list[object]]]:
    """name -> (restype, argtypes) of every function declared in hwact_int.h and hwact_runner.h."""
    text = re.sub(r"/\*.*?\*/", "", "\n".join(path.read_text() for path in HEADERS), flags=re.S)
    found = {}
    for match in re.finditer(r"^\s*(const\s+)?(\w+)\s*(\*?)\s*(hw_\w+)\s*\(([^)]*)\)\s*;", text, flags=re.M):
        _, rtype, rpointer, name, params = match.groups()
        argtypes = []
        for param in params.split(","):
            param = param.replace("const", " ").strip()
            if not param or param == "void":
                continue
            ctype = param.rsplit(None, 1)[0].replace(" ", "") if "*" not in param else None
            if "*" in param:
                argtypes.append(ctypes.c_char_p if param.startswith("char") else ctypes.c_void_p)
            else:
                argtypes.append(_C_TYPES[ctype])
        restype = ctypes.c_char_p if rpointer and rtype == "char" else (ctypes.c_void_p if rpointer else _C_TYPES[rtype])
        found[name] = (restype, argtypes)
    return found


def written_pointers() -> dict[str, list[int]]:
    """name -> the indices of its pointer parameters that are not const (the arrays the function writes)."""
    text = re.sub(r"/\*.*?\*/", "", "\n".join(path.read_text() for path in HEADERS), flags=re.S)
    found = {}
    for match in re.finditer(r"(hw_\w+)\s*\(([^)]*)\)\s*;", text):
        params = [param.strip() for param in match.group(2).split(",")]
        found[match.group(1)] = [i for i, param in enumerate(params) if "*" in param and "const" not in param]
    return found


def load(path: Path) -> ctypes.CDLL:
    """The library at `path` (built by `build` for this machine), every declared function typed."""
    library = ctypes.CDLL(str(path))
    for name, (restype, argtypes) in prototypes().items():
        function = getattr(library, name, None)
        if function is not None:
            function.restype, function.argtypes = restype, argtypes
    return library
