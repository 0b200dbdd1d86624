"""Row kernels of the integer CPU runtime (rows.c, issue 15) against torch's float kernels, one thread.

Gelem/s (10^9 elements per second, one core) of hw_shift_gelu (int8 rows of 1536), hw_shiftmax (int8 rows of
197) and hw_i_layernorm (int16 rows of 384), on the scalar path and the best SIMD path, next to
torch.nn.functional.gelu / softmax / layer_norm in float32 with torch.set_num_threads(1), timed in thread CPU time (the machine may be shared);
and the best SIMD path at 1 and 2 threads (hw_set_threads(2): rows split over the worker pool) in wall time,
best of 5 (with 2 threads the calling thread's CPU time is no longer the kernel's time; on a shared machine
wall time also counts the time other processes held the cores). Inputs: 197 rows
(ViT-B tokens; shiftmax: 12 heads x 197 query rows) of gaussian codes, so the row maxima vary as in a model.

Run:  python benchmarks/bench_int_cpu_rows.py
"""

from __future__ import annotations

import ctypes
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import hwact.ir.int_nonlinear_ops as nl
from hwact.backends import int_cpu_lib
from hwact.errors import ToolMissingError
sys.path.insert(0, str(Path(__file__).parent))
from bench_int_cpu_kernels import write_results  # noqa: E402

HW_I8, HW_I16 = 0, 2


def library():
    try:
        return int_cpu_lib.load(int_cpu_lib.build("x86_64"))
    except ToolMissingError:   # another kernel file mid-edit: rows.c + isa.c alone
        folder = Path(tempfile.mkdtemp())
        src = int_cpu_lib.SOURCE_DIR
        target = folder / "librows.so"
        subprocess.run([int_cpu_lib.COMPILERS["x86_64"], *int_cpu_lib.FLAGS["x86_64"], *int_cpu_lib.COMMON, "-I",
                        str(src), str(src / "rows.c"), str(src / "isa.c"), str(src / "pool.c"), "-o", str(target),
                        "-lm"], check=True)
        return int_cpu_lib.load(target)


def rate(fn, elements, seconds=0.3):
    """Elements per second of this thread's CPU time (time.thread_time: the time the kernel ran, not the
    time other processes held the core), best of 5."""
    fn()
    best = float("inf")
    for _ in range(5):
        reps, start = 0, time.thread_time()
        while time.thread_time() - start < seconds / 5:
            fn()
            reps += 1
        best = min(best, (time.thread_time() - start) / reps)
    return elements / best / 1e9


def wall_rate(fn, elements, seconds=0.3):
    """Elements per second of wall time, best of 5 (for runs on more than one thread)."""
    fn()
    best = float("inf")
    for _ in range(5):
        reps, start = 0, time.perf_counter()
        while time.perf_counter() - start < seconds / 5:
            fn()
            reps += 1
        best = min(best, (time.perf_counter() - start) / reps)
    return elements / best / 1e9


def p(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def main() -> int:
    torch.set_num_threads(1)
    lib = library()
    rng = np.random.default_rng(0)
    rows = []

    gx = np.clip(np.round(rng.normal(0, 25, (197, 1536))), -128, 127).astype(np.int8)
    gy = np.zeros_like(gx)
    x0, drop, m0, shift = nl.gelu_constants(0.05, 0.03, 20, nl.SHIFT_GELU_LAMBDA)
    gelu = lambda: lib.hw_shift_gelu(p(gx), HW_I8, 197, 1536, x0, 20, drop, m0, shift, -128, 127, p(gy), HW_I8)  # noqa
    gf = torch.from_numpy(gx.astype(np.float32))
    rows.append(("shift_gelu int8, 197 x 1536", gelu, gx.size, lambda: F.gelu(gf)))

    sx = np.clip(np.round(rng.normal(0, 30, (12 * 197, 197))), -128, 127).astype(np.int8)
    sy = np.zeros(sx.shape, np.uint8)
    n = min(15, nl.softmax_max_n(0.1, 197))
    sx0, sm0, sshift = nl.softmax_constants(0.1, 1 / 255, n, 197)
    smax = lambda: lib.hw_shiftmax(p(sx), HW_I8, sx.shape[0], 197, sx0, n, sm0, sshift, 0, 255, p(sy), 1)  # noqa
    sf = torch.from_numpy(sx.astype(np.float32))
    rows.append(("shiftmax int8, 2364 x 197", smax, sx.size, lambda: F.softmax(sf, dim=-1)))

    lx = np.round(rng.normal(0, 3000, (197, 384))).astype(np.int16)
    ly = np.zeros(lx.shape, np.int8)
    g, b, gs = nl.layernorm_parameters(torch.rand(384) + 0.5, torch.randn(384) * 0.1, 384)
    g, b = g.numpy().astype(np.int32), b.numpy().astype(np.int32)
    k, eps_int, prec, lm0, lshift = nl.layernorm_constants(384, 0.002, 0.03, gs, 1e-6)
    lnorm = lambda: lib.hw_i_layernorm(p(lx), HW_I16, 197, 384, p(g), p(b), k, eps_int, prec, lm0, lshift, -128,  # noqa
                                       127, p(ly), HW_I8)
    lf = torch.from_numpy(lx.astype(np.float32))
    wf, bf = torch.ones(384), torch.zeros(384)
    rows.append(("i_layernorm int16, 197 x 384", lnorm, lx.size, lambda: F.layer_norm(lf, (384,), wf, bf)))

    best = lib.hw_isa()
    name = lib.hw_isa_name(best).decode()
    lines = [f"Best ISA here: {name}. Gelem/s in thread CPU time at one thread (scalar and {name}), and wall time "
             f"at 1 and 2 threads (hw_set_threads); torch's float32 GELU / softmax / LayerNorm on one thread.", "",
             f"| kernel | scalar Gelem/s | {name} Gelem/s | {name} wall, 1 thread | {name} wall, 2 threads "
             "| torch float32 Gelem/s |", "|---|---:|---:|---:|---:|---:|"]
    for label, fn, count, torch_fn in rows:
        lib.hw_force_isa(0)
        scalar = rate(fn, count)
        lib.hw_force_isa(-2)
        simd = rate(fn, count)
        one = wall_rate(fn, count)
        lib.hw_set_threads(2)
        two = wall_rate(fn, count)
        lib.hw_set_threads(1)
        lines.append(f"| {label} | {scalar:.3f} | {simd:.3f} | {one:.3f} | {two:.3f} | {rate(torch_fn, count):.3f} |")
    write_results("int_cpu_rows", "Integer CPU runtime: row kernels (ShiftGELU, Shiftmax, I-LayerNorm) vs torch float",
                  __doc__, "python benchmarks/bench_int_cpu_rows.py", lines)
    return 0


if __name__ == "__main__":
    sys.exit(main())
