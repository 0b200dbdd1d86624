"""Row and element kernels of the integer CPU runtime (hwact/backends/int_cpu_src/rows.c, issue 15):
bit-exact (tolerance 0) with the hwact op references, on the scalar path and on every SIMD path this CPU has (AVX2, AVX-512)."""

import ctypes
import math
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings

import numpy as np
import pytest
import torch

import hwact.ir.int_elementwise_ops  # noqa: F401  (registers torch.ops.hwact.*)
import hwact.ir.int_nonlinear_ops as nl
import hwact.ir.int_ops as io
from hwact.backends import int_cpu_lib
from hwact.errors import ToolMissingError

HW_I8, HW_U8, HW_I16, HW_I32 = 0, 1, 2, 3
TYPES = {np.int8: HW_I8, np.uint8: HW_U8, np.int16: HW_I16, np.int32: HW_I32}
BOUNDS = {np.int8: (-128, 127), np.uint8: (0, 255), np.int16: (-32768, 32767), np.int32: (-(1 << 31), (1 << 31) - 1)}
ALL = (np.int8, np.uint8, np.int16, np.int32)
LENGTHS = (1, 3, 17, 197, 384, 1536)
ISA_SCALAR, ISA_AVX2, ISA_AVX512VNNI = 0, 1, 2

STUB = """#include "hwact_int.h"
static int g_isa = 1;
int hw_isa(void) { return g_isa; }
int hw_isa_available(int isa) { return isa == 0 || (isa == 1 && __builtin_cpu_supports("avx2")); }
int hw_force_isa(int isa) { if (isa == -2) isa = hw_isa_available(1); if (!hw_isa_available(isa)) return -1;
                            g_isa = isa; return 0; }
const char *hw_isa_name(int isa) { return isa ? "avx2" : "scalar"; }
"""


def _private_build(folder):
    """rows.c + pool.c (+ isa.c, or a stub ISA selector while isa.c is absent) with int_cpu_lib's flags."""
    src = int_cpu_lib.SOURCE_DIR
    files = [src / "rows.c", src / "pool.c"]
    if (src / "isa.c").is_file():
        files.append(src / "isa.c")
    else:
        (folder / "stub_isa.c").write_text(STUB)
        files.append(folder / "stub_isa.c")
    target = folder / "librows.so"
    command = [int_cpu_lib.COMPILERS["x86_64"], *int_cpu_lib.FLAGS["x86_64"], *int_cpu_lib.COMMON, "-I", str(src),
               *map(str, files), "-o", str(target), "-lm"]
    subprocess.run(command, check=True, capture_output=True, text=True)
    return target


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    src = int_cpu_lib.SOURCE_DIR
    path = None
    if (src / "isa.c").is_file() and (src / "gemm.c").is_file():
        try:
            path = int_cpu_lib.build("x86_64")
        except ToolMissingError as error:  # the other kernels are mid-edit: test rows.c on its own
            warnings.warn(f"int_cpu_lib.build failed, testing rows.c alone: {error}")
    if path is None:
        path = _private_build(tmp_path_factory.mktemp("rows"))
    library = int_cpu_lib.load(path)
    yield library
    library.hw_force_isa(-2)


ISAS = [ISA_SCALAR, ISA_AVX2, ISA_AVX512VNNI]


@pytest.fixture(params=ISAS, ids=["scalar", "avx2", "avx512vnni"])
def k(request, lib):
    if lib.hw_force_isa(request.param) != 0:
        pytest.skip(f"this CPU (or build) has no {['scalar', 'AVX2', 'AVX-512 VNNI'][request.param]} path")
    yield lib
    lib.hw_force_isa(-2)


def ptr(a):
    return a.ctypes.data_as(ctypes.c_void_p)


def out_like(shape, dtype):
    return np.zeros(shape, dtype=dtype)


def ref(t):
    return t.numpy().astype(np.int64)


def codes(rng, shape, dtype, lo=None, hi=None):
    blo, bhi = BOUNDS[dtype]
    lo = blo if lo is None else lo
    hi = bhi if hi is None else hi
    return rng.integers(lo, hi + 1, size=shape, dtype=np.int64).astype(dtype)


def rows_inputs(rng, dtype, C):
    """(rows, C) inputs: random rows, rows with random maxima (many distinct row maxima), extremes."""
    lo, hi = BOUNDS[dtype]
    parts = [codes(rng, (6, C), dtype)]
    tops = rng.integers(lo, hi + 1, size=12)
    parts.append(np.stack([codes(rng, C, dtype, lo, int(t)) for t in tops]))
    parts.append(np.stack([np.full(C, lo, dtype), np.full(C, hi, dtype)]))
    if dtype == np.int32:   # saturation to int16 and beyond
        parts.append(codes(rng, (2, C), dtype, -40000, 40000))
    return np.concatenate(parts)


def every_code_rows(dtype):
    """Rows covering every 8-bit code: length-1 rows of each code, and each code inside full rows."""
    lo, hi = BOUNDS[dtype]
    every = np.arange(lo, hi + 1)
    return [every.astype(dtype).reshape(-1, 1), np.tile(every, 6).astype(dtype).reshape(-1, 256)[:, :256],
            np.stack([np.minimum(every, t) for t in range(lo, hi + 1, 7)]).astype(dtype)]


# ----- ShiftGELU ------------------------------------------------------------------------------------
GELU_CASES = [  # in_scale, out_scale, n (None: the largest valid n), lam
    (0.05, 0.02, 15, nl.SHIFT_GELU_LAMBDA),
    (0.02, 0.01, None, nl.SHIFT_GELU_LAMBDA),       # drop > 0
    (0.3, 0.2, 23, nl.SHIFT_GELU_LAMBDA),
    (0.003, 0.002, 20, 1.3),
    (1e-4, 3e-5, None, nl.SHIFT_GELU_LAMBDA),        # int16 scales, large |x0|
]


def run_gelu(lib, x, case, out_type):
    in_scale, out_scale, n, lam = case
    n = nl.gelu_max_n(in_scale, lam) if n is None else n
    x0, drop, m0, shift = nl.gelu_constants(in_scale, out_scale, n, lam)
    qmin, qmax = BOUNDS[out_type]
    out = out_like(x.shape, out_type)
    lib.hw_shift_gelu(ptr(x), TYPES[x.dtype.type], x.shape[0], x.shape[1], x0, n, drop, m0, shift, qmin, qmax,
                      ptr(out), TYPES[out_type])
    expected = torch.ops.hwact.lambda_shift_gelu(torch.from_numpy(x.astype(np.int32)), in_scale, out_scale,
                                                 qmin, qmax, n, lam)
    return out.astype(np.int64), ref(expected)


@pytest.mark.parametrize("case", GELU_CASES)
@pytest.mark.parametrize("in_type", ALL)
def test_shift_gelu(k, case, in_type):
    rng = np.random.default_rng(1)
    for C in LENGTHS:
        x = rows_inputs(rng, in_type, C)
        for out_type in ALL:
            got, want = run_gelu(k, x, case, out_type)
            np.testing.assert_array_equal(got, want, err_msg=f"C={C} out={out_type.__name__}")
    if in_type in (np.int8, np.uint8):
        for x in every_code_rows(in_type):
            for out_type in (np.int8, np.int16, np.int32):
                got, want = run_gelu(k, x, case, out_type)
                np.testing.assert_array_equal(got, want)


# ----- Shiftmax -------------------------------------------------------------------------------------
SOFTMAX_CASES = [(0.1, 1 / 255, 12), (0.05, 1 / 127, None), (0.6, 1 / 255, 5), (0.002, 1e-3, None)]


def run_softmax(lib, x, case, out_type):
    in_scale, out_scale, n = case
    C = x.shape[1]
    n = nl.softmax_max_n(in_scale, C) if n is None else min(n, nl.softmax_max_n(in_scale, C))
    x0, m0, shift = nl.softmax_constants(in_scale, out_scale, n, C)
    qmin, qmax = BOUNDS[out_type]
    out = out_like(x.shape, out_type)
    lib.hw_shiftmax(ptr(x), TYPES[x.dtype.type], x.shape[0], C, x0, n, m0, shift, qmin, qmax, ptr(out),
                    TYPES[out_type])
    expected = torch.ops.hwact.shiftmax(torch.from_numpy(x.astype(np.int32)), in_scale, out_scale, -1, qmin, qmax, n)
    return out.astype(np.int64), ref(expected)


@pytest.mark.parametrize("case", SOFTMAX_CASES)
@pytest.mark.parametrize("in_type", ALL)
def test_shiftmax(k, case, in_type):
    rng = np.random.default_rng(2)
    for C in LENGTHS:
        x = rows_inputs(rng, in_type, C)
        for out_type in ALL:
            got, want = run_softmax(k, x, case, out_type)
            np.testing.assert_array_equal(got, want, err_msg=f"C={C} out={out_type.__name__}")
    if in_type in (np.int8, np.uint8):
        for x in every_code_rows(in_type):
            got, want = run_softmax(k, x, case, np.uint8)
            np.testing.assert_array_equal(got, want)


# ----- I-LayerNorm ----------------------------------------------------------------------------------
LN_CASES = [(0.05, 0.02, 1e-5), (0.002, 0.05, 1e-6), (1.0, 0.1, 1e-5), (0.01, 0.03, 10.0)]


def run_layernorm(lib, x, case, out_type, rng):
    in_scale, out_scale, eps = case
    C = x.shape[1]
    gamma = torch.from_numpy(rng.normal(1.0, 0.5, C))
    beta = torch.from_numpy(rng.normal(0.0, 0.3, C))
    gamma_int, beta_int, gamma_scale = nl.layernorm_parameters(gamma, beta, C)
    kk, eps_int, precision, m0, shift = nl.layernorm_constants(C, in_scale, out_scale, gamma_scale, eps)
    qmin, qmax = BOUNDS[out_type]
    out = out_like(x.shape, out_type)
    g = gamma_int.numpy().astype(np.int32)
    b = beta_int.numpy().astype(np.int32)
    lib.hw_i_layernorm(ptr(x), TYPES[x.dtype.type], x.shape[0], C, ptr(g), ptr(b), kk, eps_int, precision, m0,
                       shift, qmin, qmax, ptr(out), TYPES[out_type])
    expected = torch.ops.hwact.i_layernorm(torch.from_numpy(x.astype(np.int32)), gamma_int, beta_int, in_scale,
                                           out_scale, gamma_scale, eps, qmin, qmax)
    return out.astype(np.int64), ref(expected)


@pytest.mark.parametrize("case", LN_CASES)
@pytest.mark.parametrize("in_type", ALL)
def test_i_layernorm(k, case, in_type):
    rng = np.random.default_rng(3)
    for C in LENGTHS:
        x = rows_inputs(rng, in_type, C)
        for out_type in ALL:
            got, want = run_layernorm(k, x, case, out_type, rng)
            np.testing.assert_array_equal(got, want, err_msg=f"C={C} out={out_type.__name__}")


# ----- element kernels ------------------------------------------------------------------------------
MULTIPLIERS = [0.37, 1.0, 3.3e-3, 2.5e-7, 17.0, 0.5]   # 0.5: exact halves (negative rounding ties)


def elements(rng, dtype, count):
    lo, hi = BOUNDS[dtype]
    x = codes(rng, count, dtype)
    x[: min(count, 4)] = np.array([lo, hi, 0, -1 if lo < 0 else 1])[: min(count, 4)]
    return x


@pytest.mark.parametrize("in_type", ALL)
def test_requantize(k, in_type):
    rng = np.random.default_rng(4)
    for count in (1, 7, 8, 9, 33, 1000):
        x = elements(rng, in_type, count)
        for mult in MULTIPLIERS:
            m0, shift = io.dyadic(mult)
            for out_type in ALL:
                qmin, qmax = BOUNDS[out_type]
                out = out_like(count, out_type)
                k.hw_requantize(ptr(x), TYPES[in_type], count, m0, shift, qmin, qmax, ptr(out), TYPES[out_type])
                want = io.requantize_values(torch.from_numpy(x.astype(np.int64)), mult, qmin, qmax)
                np.testing.assert_array_equal(out.astype(np.int64), ref(want), err_msg=f"{mult} {out_type}")


def test_requantize_shift_zero_and_small_m0(k):
    x = np.array([-5, -3, -1, 0, 1, 3, 5, 1000, -1000], dtype=np.int32)
    for m0, shift in ((3, 0), (1, 1), (5, 3), ((1 << 31) - 1, 62), (12345, 5)):
        out = out_like(x.size, np.int32)
        k.hw_requantize(ptr(x), HW_I32, x.size, m0, shift, -(1 << 31), (1 << 31) - 1, ptr(out), HW_I32)
        want = torch.clamp(io.rounding_shift(torch.from_numpy(x), m0, shift), -(1 << 31), (1 << 31) - 1)
        np.testing.assert_array_equal(out, want.numpy())


BROADCASTS = [  # shape of a, shape of b  ->  (b_div, b_mod)
    ((5, 37), (5, 37)), ((4, 7, 9), (1, 7, 9)), ((2, 3, 4, 5), (2, 3, 1, 1)), ((6, 10), (1, 1)), ((3, 50), (1, 50)),
]


def broadcast_index(a_shape, b_shape):
    """(b_div, b_mod) of a b that broadcasts against a: leading/trailing broadcast forms of the header."""
    count = math.prod(a_shape)
    if tuple(b_shape) == tuple(a_shape):
        return 1, count
    inner = 1                       # trailing dims of size 1 in b
    dims = list(b_shape)
    while dims and dims[-1] == 1 and len(dims) > 0:
        inner *= a_shape[len(dims) - 1]
        dims.pop()
    return inner, max(1, math.prod(dims))


@pytest.mark.parametrize("a_type", ALL)
@pytest.mark.parametrize("b_type", (np.int8, np.int16, np.int32))
def test_add(k, a_type, b_type):
    rng = np.random.default_rng(5)
    for a_shape, b_shape in BROADCASTS:
        a = codes(rng, a_shape, a_type)
        b = codes(rng, b_shape, b_type)
        b_div, b_mod = broadcast_index(a_shape, b_shape)
        for ma, mb in ((0.5, 0.37), (1.0, 1.0), (3.3e-3, 0.5)):
            (m0a, sa), (m0b, sb) = io.dyadic(ma), io.dyadic(mb)
            for out_type in ALL:
                qmin, qmax = BOUNDS[out_type]
                out = out_like(a_shape, out_type)
                k.hw_add(ptr(a), TYPES[a_type], ptr(b), TYPES[b_type], a.size, b_div, b_mod, m0a, sa, m0b, sb,
                         qmin, qmax, ptr(out), TYPES[out_type])
                want = torch.ops.hwact.int_add(torch.from_numpy(a.astype(np.int32)),
                                               torch.from_numpy(b.astype(np.int32)), ma, mb, qmin, qmax)
                np.testing.assert_array_equal(out.astype(np.int64), ref(want), err_msg=f"{a_shape} {b_shape}")


@pytest.mark.parametrize("a_type", (np.int8, np.uint8, np.int16))
@pytest.mark.parametrize("b_type", (np.int8, np.uint8, np.int16))
def test_mul(k, a_type, b_type):
    rng = np.random.default_rng(6)
    for a_shape, b_shape in BROADCASTS:
        a = codes(rng, a_shape, a_type)
        b = codes(rng, b_shape, b_type)
        b_div, b_mod = broadcast_index(a_shape, b_shape)
        for mult in (0.5, 2.1e-4, 1.7e-9, 1.0):
            m0, shift = io.dyadic(mult)
            for out_type in ALL:
                qmin, qmax = BOUNDS[out_type]
                out = out_like(a_shape, out_type)
                k.hw_mul(ptr(a), TYPES[a_type], ptr(b), TYPES[b_type], a.size, b_div, b_mod, m0, shift, qmin, qmax,
                         ptr(out), TYPES[out_type])
                want = torch.ops.hwact.int_mul(torch.from_numpy(a.astype(np.int32)),
                                               torch.from_numpy(b.astype(np.int32)), mult, qmin, qmax)
                np.testing.assert_array_equal(out.astype(np.int64), ref(want))


@pytest.mark.parametrize("in_type", ALL)
def test_lut(k, in_type):
    rng = np.random.default_rng(7)
    lo, hi = BOUNDS[in_type]
    for size, in_qmin in ((256, -128), (256, 0), (65536, -32768), (1, 5), (100, -20)):
        table = rng.integers(-70000, 70000, size=size).astype(np.int32)
        x = elements(rng, in_type, 999)
        if in_type in (np.int8, np.uint8):
            x = np.concatenate([x, np.arange(lo, hi + 1).astype(in_type)])
        for out_type in ALL:
            qmin, qmax = BOUNDS[out_type]
            out = out_like(x.size, out_type)
            k.hw_lut(ptr(x), TYPES[in_type], x.size, ptr(table), in_qmin, size, qmin, qmax, ptr(out), TYPES[out_type])
            want = torch.ops.hwact.int_lut(torch.from_numpy(x.astype(np.int32)), torch.from_numpy(table), in_qmin,
                                           qmin, qmax)
            np.testing.assert_array_equal(out.astype(np.int64), ref(want))


@pytest.mark.parametrize("in_type", ALL)
def test_clamp(k, in_type):
    rng = np.random.default_rng(8)
    x = elements(rng, in_type, 1001)
    for out_type in ALL:
        olo, ohi = BOUNDS[out_type]
        for lo, hi in ((0, 127), (-6, 6), (olo, ohi), (0, 0)):
            lo, hi = max(lo, olo), min(hi, ohi)
            out = out_like(x.size, out_type)
            k.hw_clamp(ptr(x), TYPES[in_type], x.size, lo, hi, ptr(out), TYPES[out_type])
            np.testing.assert_array_equal(out.astype(np.int64), np.clip(x.astype(np.int64), lo, hi))


@pytest.mark.parametrize("in_type", ALL)
def test_mask(k, in_type):
    rng = np.random.default_rng(9)
    for x_shape, keep_shape in (((2, 3, 5, 5), (2, 3, 5, 5)), ((2, 3, 5, 5), (1, 1, 5, 5)),
                                ((2, 3, 5, 5), (2, 3, 1, 1)), ((4, 6), (4, 1))):
        x = codes(rng, x_shape, in_type)
        keep = rng.integers(0, 2, size=keep_shape).astype(np.uint8)
        k_div, k_mod = broadcast_index(x_shape, keep_shape)
        for out_type, fill in ((in_type, BOUNDS[in_type][0]), (np.int16, -32768), (np.int32, -99)):
            if out_type == np.int16 and in_type == np.int32:
                continue
            out = out_like(x_shape, out_type)
            k.hw_mask(ptr(x), TYPES[in_type], ptr(keep), x.size, k_div, k_mod, fill, ptr(out), TYPES[out_type])
            # hwact::int_mask is where(keep, q, fill) (its signature is changing: compare with that directly)
            want = torch.where(torch.from_numpy(keep.astype(bool)), torch.from_numpy(x.astype(np.int32)),
                               torch.tensor(fill, dtype=torch.int32))
            np.testing.assert_array_equal(out.astype(np.int64), ref(want))


@pytest.mark.parametrize("in_type", ALL)
def test_max_pool2d(k, in_type):
    rng = np.random.default_rng(10)
    for (H, W), kernel, stride, padding in (((8, 8), (2, 2), (2, 2), (0, 0)), ((7, 9), (3, 3), (2, 2), (1, 1)),
                                            ((5, 5), (3, 2), (1, 2), (1, 0)), ((1, 1), (1, 1), (1, 1), (0, 0)),
                                            ((15, 17), (3, 3), (2, 2), (1, 1)), ((6, 11), (3, 3), (1, 1), (1, 1)),
                                            ((9, 4), (4, 2), (3, 1), (2, 1))):
        x = codes(rng, (2, 3, H, W), in_type)
        want = torch.ops.hwact.int_max_pool2d(torch.from_numpy(x.astype(np.int32)), list(kernel), list(stride),
                                              list(padding), in_type == np.uint8)
        out = out_like(tuple(want.shape), in_type)
        k.hw_max_pool2d(ptr(x), TYPES[in_type], 6, H, W, *kernel, *stride, *padding, ptr(out), TYPES[in_type])
        np.testing.assert_array_equal(out.astype(np.int64), ref(want))


@pytest.mark.parametrize("in_type", ALL)
def test_sum_requantize(k, in_type):
    rng = np.random.default_rng(11)
    for outer, reduce, inner in ((2, 49, 8), (1, 197, 1), (3, 1, 5), (4, 5, 1)):
        x = codes(rng, (outer, reduce, inner), in_type if in_type != np.int32 else np.int16)
        x = x.astype(in_type)
        for mult in (1 / reduce, 0.5, 3e-3):
            m0, shift = io.dyadic(mult)
            for out_type in ALL:
                qmin, qmax = BOUNDS[out_type]
                out = out_like((outer, inner), out_type)
                k.hw_sum_requantize(ptr(x), TYPES[in_type], outer, reduce, inner, m0, shift, qmin, qmax, ptr(out),
                                    TYPES[out_type])
                total = torch.from_numpy(x.astype(np.int64)).sum(dim=1)
                want = torch.clamp(io.rounding_shift(total, m0, shift), qmin, qmax)
                np.testing.assert_array_equal(out.astype(np.int64), want.numpy())


def test_embedding(k):
    rng = np.random.default_rng(12)
    table = codes(rng, (50, 24), np.int8, -127, 127)
    ids = rng.integers(0, 50, size=(3, 7)).astype(np.int64)
    want = ref(torch.ops.hwact.int_embedding(torch.from_numpy(table), torch.from_numpy(ids)))
    for out_type in (np.int8, np.int16, np.int32):
        out = out_like((3, 7, 24), out_type)
        k.hw_embedding(ptr(table), 50, 24, ptr(ids), ids.size, ptr(out), TYPES[out_type])
        np.testing.assert_array_equal(out.astype(np.int64), want)


def test_quantize_dequantize(k):
    rng = np.random.default_rng(13)
    scale = 0.0371
    x = (rng.normal(0, 3, 5000)).astype(np.float32)
    halves = (np.arange(-300, 300) + 0.5).astype(np.float32) * np.float32(0.25)
    x = np.concatenate([x, halves, np.array([0.0, -0.0, 1e30, -1e30, np.inf, -np.inf], dtype=np.float32)])
    for s in (scale, 0.25, 1.0, 3.7e-5):
        for out_type in ALL:
            qmin, qmax = BOUNDS[out_type]
            qmin, qmax = max(qmin, -(1 << 24)), min(qmax, 1 << 24)
            out = out_like(x.size, out_type)
            k.hw_quantize(ptr(x), x.size, s, qmin, qmax, ptr(out), TYPES[out_type])
            want = ref(torch.ops.hwact.quantize(torch.from_numpy(x), s, qmin, qmax))
            np.testing.assert_array_equal(out.astype(np.int64), want, err_msg=f"{s} {out_type}")
    for in_type in ALL:
        q = elements(rng, in_type, 777)
        out = np.zeros(q.size, dtype=np.float32)
        k.hw_dequantize(ptr(q), TYPES[in_type], q.size, scale, ptr(out))
        want = torch.ops.hwact.dequantize(torch.from_numpy(q.astype(np.int32)), scale).numpy()
        np.testing.assert_array_equal(out.view(np.int32), want.view(np.int32))


# ----- threads: the row and element kernels split their rows over the worker pool (pool.c) ----------
THREAD_ROWS = 601   # x 384 = 230,784 elements: 3 threads each get more than POOL_MIN_WORK (65,536), 601 % 2, 3 != 0
THREAD_ADDS = [((3, 197, 385), (1, 197, 385)), ((8, 96, 17, 19), (8, 96, 1, 1)), ((200_003,), (200_003,))]


@pytest.fixture
def threaded(k):
    yield k
    k.hw_set_threads(1)


def test_set_threads(lib):
    for asked, kept in ((0, 1), (-3, 1), (3, 3), (1000, 64), (1, 1)):
        lib.hw_set_threads(asked)
        assert lib.hw_threads() == kept


def test_row_kernels_threads(threaded):
    """Every threaded row/element kernel at 1, 2 and 3 threads (row counts that do not divide evenly, element
    counts not a multiple of the split alignment) equals the reference."""
    k = threaded
    rng = np.random.default_rng(21)
    x8 = codes(rng, (THREAD_ROWS, 384), np.int8)
    x16 = codes(rng, (THREAD_ROWS, 384), np.int16)
    x32 = elements(rng, np.int32, 200_003)
    m0, shift = io.dyadic(3.3e-3)
    adds = [(codes(rng, a_shape, np.int8), codes(rng, b_shape, np.int16), *broadcast_index(a_shape, b_shape))
            for a_shape, b_shape in THREAD_ADDS]
    for threads in (1, 2, 3):
        k.hw_set_threads(threads)
        before = k.hw_pool_dispatches()
        for got, want in (run_gelu(k, x8, GELU_CASES[1], np.int8), run_softmax(k, x8, SOFTMAX_CASES[1], np.uint8),
                          run_softmax(k, x16, SOFTMAX_CASES[3], np.int16),
                          run_layernorm(k, x16, LN_CASES[0], np.int8, np.random.default_rng(5))):
            np.testing.assert_array_equal(got, want, err_msg=f"threads={threads}")
        out = out_like(x32.size, np.int8)
        k.hw_requantize(ptr(x32), HW_I32, x32.size, m0, shift, -128, 127, ptr(out), HW_I8)
        want = io.requantize_values(torch.from_numpy(x32.astype(np.int64)), 3.3e-3, -128, 127)
        np.testing.assert_array_equal(out.astype(np.int64), ref(want), err_msg=f"threads={threads}")
        for a, b, b_div, b_mod in adds:
            out = out_like(a.shape, np.int8)
            k.hw_add(ptr(a), HW_I8, ptr(b), HW_I16, a.size, b_div, b_mod, *io.dyadic(0.5), *io.dyadic(0.37), -128, 127,
                     ptr(out), HW_I8)
            want = torch.ops.hwact.int_add(torch.from_numpy(a.astype(np.int32)), torch.from_numpy(b.astype(np.int32)),
                                           0.5, 0.37, -128, 127)
            np.testing.assert_array_equal(out.astype(np.int64), ref(want), err_msg=f"{a.shape} threads={threads}")
        dispatched = k.hw_pool_dispatches() - before
        assert dispatched == (0 if threads == 1 else 4 + 1 + len(adds)), dispatched   # every call split
    assert k.hw_pool_workers() >= 2


def test_small_calls_stay_on_the_calling_thread(lib):
    """Below POOL_MIN_WORK elements per thread a row kernel does not wake the pool."""
    x = elements(np.random.default_rng(26), np.int32, 100_000)   # 3 threads would get 33,333 each
    lib.hw_set_threads(3)
    try:
        before = lib.hw_pool_dispatches()
        small = _requantize_big(lib, x)
        assert lib.hw_pool_dispatches() == before
        lib.hw_set_threads(1)
        np.testing.assert_array_equal(_requantize_big(lib, x), small)
    finally:
        lib.hw_set_threads(1)


def _requantize_big(lib, x):
    out = out_like(x.size, np.int8)
    lib.hw_requantize(ptr(x), HW_I32, x.size, 1 << 30, 40, -128, 127, ptr(out), HW_I8)
    return out


def test_pool_reuses_its_workers(lib):
    x = elements(np.random.default_rng(22), np.int32, 200_000)
    lib.hw_set_threads(3)
    try:
        first = _requantize_big(lib, x)
        started = lib.hw_pool_workers()
        assert 2 <= started < 64
        for _ in range(50):
            np.testing.assert_array_equal(_requantize_big(lib, x), first)
        assert lib.hw_pool_workers() == started   # no thread per call
    finally:
        lib.hw_set_threads(1)


def test_pool_after_fork(lib):
    """A forked child (pytest-xdist, multiprocessing) has none of the parent's workers: its first threaded
    call starts its own pool and gives the same result."""
    x = elements(np.random.default_rng(23), np.int32, 200_000)
    lib.hw_set_threads(3)
    try:
        expected = _requantize_big(lib, x)   # the parent's pool is running
        pid = os.fork()
        if pid == 0:  # child: never return into pytest
            code = 1
            try:
                same = np.array_equal(_requantize_big(lib, x), expected) and lib.hw_pool_workers() >= 2
                code = 0 if same else 1
            finally:
                os._exit(code)
        deadline = time.monotonic() + 60
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung in a threaded kernel call")
            time.sleep(0.05)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
    finally:
        lib.hw_set_threads(1)


def test_interpreter_exits_with_a_running_pool(lib):
    """The workers are never joined: a process whose pool is started exits promptly (a worker left waiting
    for work must not hold up interpreter shutdown)."""
    script = ("import sys, numpy as np; from hwact.backends import int_cpu_lib\n"
              "lib = int_cpu_lib.load(sys.argv[1]); lib.hw_set_threads(3)\n"
              "x = np.arange(300000, dtype=np.int32); out = np.zeros(x.size, np.int8)\n"
              "for _ in range(20): lib.hw_requantize(x.ctypes.data, 3, x.size, 1 << 30, 40, -128, 127, out.ctypes.data, 0)\n"
              "print(lib.hw_pool_workers())\n")
    done = subprocess.run([sys.executable, "-c", script, lib._name], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout.strip()) == 2


def test_isqrt_fast_equals_the_reference(lib):
    """hw_isqrt (double square root + integer fix-ups, the SIMD LayerNorm paths) equals the reference's
    8-step Newton isqrt on perfect squares and their neighbours up to 2^62, powers of 4 and random values."""
    roots = np.unique(np.concatenate([np.arange(1, 3000), np.int64(1) << np.arange(0, 31),
                                      np.random.default_rng(24).integers(1, (1 << 31) - 1, 3000)]))
    values = np.concatenate([roots * roots - 1, roots * roots, roots * roots + 1,
                             np.random.default_rng(25).integers(1, (1 << 62) - 1, 20000), [(1 << 62) - 1]])
    values = np.unique(values[(values >= 1) & (values < (1 << 62))])
    want = nl.isqrt_newton(torch.from_numpy(values)).numpy()
    got = np.array([lib.hw_isqrt(int(v)) for v in values])
    np.testing.assert_array_equal(got, want)


def test_isqrt_matches_math_isqrt_through_layernorm_constants():
    """The C isqrt is only reachable through hw_i_layernorm; the reference isqrt itself equals math.isqrt."""
    v = torch.tensor([1, 2, 3, 4, 15, 16, 17, (1 << 61) - 1, (1 << 62) - 1, 123456789012345], dtype=torch.int64)
    assert nl.isqrt_newton(v).tolist() == [math.isqrt(int(a)) for a in v]


def test_aarch64_build_compiles(tmp_path):
    compiler = shutil.which(int_cpu_lib.COMPILERS["aarch64"])
    if compiler is None:
        pytest.skip("no aarch64 cross compiler")
    src = int_cpu_lib.SOURCE_DIR
    command = [compiler, *int_cpu_lib.FLAGS["aarch64"], *int_cpu_lib.COMMON, "-c", "-I", str(src), str(src / "rows.c"),
               "-o", str(tmp_path / "rows.o")]
    command.remove("-shared")
    done = subprocess.run(command, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
