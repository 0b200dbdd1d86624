"""Integer CPU runtime, GEMM family (gemm.c, isa.c): hw_linear / hw_matmul / hw_im2col /
hw_depthwise_conv2d bit-exact (tolerance 0) with the Python references in hwact.ir.int_ops, on every ISA
path this machine has (scalar included), with 1, 2 and 3 threads (the worker pool); the aarch64 build compiles, and under
qemu-aarch64 its NEON and dot-product paths are bit-exact too."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch

from hwact.backends import int_cpu_lib
from hwact.errors import ToolMissingError
from hwact.ir import int_ops

I8, U8, I16, I32 = 0, 1, 2, 3
NP_TYPES = {I8: np.int8, U8: np.uint8, I16: np.int16, I32: np.int32}
BOUNDS = {I8: (-128, 127), U8: (0, 255), I16: (-32768, 32767), I32: (-(1 << 31), (1 << 31) - 1)}
OWN_SOURCES = ("isa.c", "gemm.c", "pool.c")


def _private_build(arch: str, folder: Path) -> Path:
    """isa.c + gemm.c + pool.c alone, with the library's flags (while another kernel file does not build)."""
    compiler = int_cpu_lib.COMPILERS[arch]
    if shutil.which(compiler) is None:
        pytest.skip(f"{compiler} not installed")
    target = folder / f"gemm-{arch}.so"
    sources = [str(int_cpu_lib.SOURCE_DIR / name) for name in OWN_SOURCES]
    subprocess.run([compiler, *int_cpu_lib.FLAGS[arch], *int_cpu_lib.COMMON, "-I", str(int_cpu_lib.SOURCE_DIR),
                    *sources, "-o", str(target), "-lm"], check=True, capture_output=True, text=True)
    return target


@pytest.fixture(scope="module")
def lib(tmp_path_factory):
    try:
        path = int_cpu_lib.build("x86_64")
    except ToolMissingError:  # another file of the library is mid-edit: test ours alone
        path = _private_build("x86_64", tmp_path_factory.mktemp("gemm"))
    library = int_cpu_lib.load(path)
    yield library
    library.hw_force_isa(-2)


@pytest.fixture(scope="module")
def isas(lib):
    found = [isa for isa in range(5) if lib.hw_isa_available(isa)]
    assert 0 in found
    return found


def _ptr(array):
    return None if array is None else array.ctypes.data


def run_linear(lib, isa, a, a_type, w, bias, m0, shift, qmin, qmax, out_type=I8, lut=None, lut_min=0,
               nchw=False, threads=1):
    assert lib.hw_force_isa(isa) == 0
    n, k = w.shape
    m = a.shape[0]
    packed = np.zeros(lib.hw_pack_size(n, k), dtype=np.uint8)
    lib.hw_pack(_ptr(np.ascontiguousarray(w)), n, k, _ptr(packed))
    out = np.zeros((n, m) if nchw else (m, n), dtype=NP_TYPES[out_type])
    strides = (1, m) if nchw else (n, 1)
    lib.hw_linear(_ptr(a), a_type, m, k, a.strides[0], _ptr(packed), n, _ptr(bias), _ptr(m0), _ptr(shift),
                  qmin, qmax, _ptr(lut), lut_min, _ptr(out), out_type, *strides, threads)
    return out.T if nchw else out


def ref_linear(a, w, bias, m0, shift, unsigned, qmin, qmax, lut=None, lut_min=0):
    t = lambda x: torch.from_numpy(np.asarray(x).astype(np.int64))  # noqa: E731
    out = int_ops.int_linear(t(a).to(torch.int32), t(w).to(torch.int8), t(bias).to(torch.int32), t(m0), t(shift),
                             unsigned, qmin, qmax).numpy().astype(np.int64)
    return out if lut is None else lut[out - lut_min]


def random_case(rng, m, k, n, unsigned, scale=None):
    a = rng.integers(0, 256, (m, k)) if unsigned else rng.integers(-128, 128, (m, k))
    a = a.astype(np.uint8 if unsigned else np.int8)
    w = rng.integers(-127, 128, (n, k)).astype(np.int8)
    bias = rng.integers(-50000, 50000, n).astype(np.int32)
    reals = rng.uniform(0.3, 3.0, n) * (scale if scale is not None else 1.0 / (40.0 * np.sqrt(k)))
    pairs = [int_ops.dyadic(float(r)) for r in reals]
    m0 = np.array([p[0] for p in pairs], dtype=np.int32)
    shift = np.array([p[1] for p in pairs], dtype=np.int32)
    return a, w, bias, m0, shift


def check_all(lib, isas, a, unsigned, w, bias, m0, shift, qmin, qmax, out_type=I8, lut=None, lut_min=0,
              nchw=False):
    expected = ref_linear(a, w, bias, m0, shift, unsigned, qmin, qmax, lut, lut_min)
    for isa in isas:
        for threads in (1, 2, 3):
            got = run_linear(lib, isa, a, U8 if unsigned else I8, w, bias, m0, shift, qmin, qmax, out_type, lut,
                             lut_min, nchw, threads)
            assert np.array_equal(got.astype(np.int64), expected), (lib.hw_isa_name(isa), threads, a.shape, w.shape)


# ----- ISA selection --------------------------------------------------------------------------------
def test_isa_selection(lib, isas):
    names = [lib.hw_isa_name(i).decode() for i in range(5)]
    assert names == ["scalar", "avx2", "avx512vnni", "neon", "neon-dotprod"]
    assert lib.hw_force_isa(-2) == 0 and lib.hw_isa() == max(isas)  # the best on x86: VNNI > AVX2 > scalar
    assert not lib.hw_isa_available(3) and not lib.hw_isa_available(4)  # no NEON on x86-64
    assert lib.hw_force_isa(3) == -1 and lib.hw_isa() == max(isas)
    for isa in isas:
        assert lib.hw_force_isa(isa) == 0 and lib.hw_isa() == isa
    assert lib.hw_force_isa(-2) == 0 and lib.hw_isa() == max(isas)


def test_this_machine_runs_its_simd_paths(isas):
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    if " avx2" in flags:
        assert 1 in isas
    if " avx512_vnni" in flags and " avx512bw" in flags and " avx512vl" in flags:
        assert 2 in isas


# ----- hw_linear ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 3, 17, 63, 64, 65, 385])
def test_linear_random_shapes(lib, isas, k):
    rng = np.random.default_rng(k)
    for m in (1, 5, 197):
        for n in (1, 7, 33):
            for unsigned in (False, True):
                case = random_case(rng, m, k, n, unsigned)
                check_all(lib, isas, case[0], unsigned, *case[1:], -128, 127)


@pytest.mark.parametrize("m,k,n,unsigned", [(197, 384, 1536, False), (197, 1536, 384, True)])
def test_linear_vit_shapes(lib, isas, m, k, n, unsigned):
    rng = np.random.default_rng(m + k + n)
    a, w, bias, m0, shift = random_case(rng, m, k, n, unsigned)
    check_all(lib, isas, a, unsigned, w, bias, m0, shift, 0 if unsigned else -128, 255 if unsigned else 127,
              U8 if unsigned else I8)


def test_linear_row_stride(lib, isas):
    rng = np.random.default_rng(7)
    a, w, bias, m0, shift = random_case(rng, 9, 40, 20, False)
    wide = np.zeros((9, 57), dtype=np.int8)
    wide[:, :40] = a
    view = wide[:, :40]  # lda = 57
    expected = ref_linear(a, w, bias, m0, shift, False, -128, 127)
    for isa in isas:
        got = run_linear(lib, isa, view, I8, w, bias, m0, shift, -128, 127)
        assert np.array_equal(got.astype(np.int64), expected)


@pytest.mark.parametrize("unsigned", [False, True])
def test_linear_worst_case_operands_exact(lib, isas, unsigned):
    """All -128 x -127 and all 255 x 127 (and mixed signs) at K = 1536 and 4099: the int32 sums are read back
    unscaled (m0 = 1, shift = 0, int32 out), so any saturation of a partial sum shows."""
    for k in (1536, 4099):
        value = 255 if unsigned else -128
        a = np.full((6, k), value, dtype=np.uint8 if unsigned else np.int8)
        w = np.full((35, k), 127 if unsigned else -127, dtype=np.int8)
        w[1::2] = -w[1::2]  # the most negative sums too
        w[3, ::3] = 0
        bias = np.zeros(35, dtype=np.int32)
        ones = np.ones(35, dtype=np.int32)
        zeros = np.zeros(35, dtype=np.int32)
        expected = a.astype(np.int64) @ w.astype(np.int64).T
        assert ref_linear(a, w, bias, ones, zeros, unsigned, *BOUNDS[I32]).tolist() == expected.tolist()
        check_all(lib, isas, a, unsigned, w, bias, ones, zeros, *BOUNDS[I32], I32)


def test_linear_requantization_extremes(lib, isas):
    """int32 extremes of the bias, so acc + bias leaves int32 (held in int64), m0 near 2^31, shifts 0..62,
    and outputs saturating at qmin/qmax of every output type."""
    rng = np.random.default_rng(11)
    m, k, n = 13, 70, 40
    for unsigned in (False, True):
        a = rng.integers(0, 256, (m, k)).astype(np.uint8) if unsigned else rng.integers(-128, 128, (m, k)).astype(np.int8)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        bias = rng.choice([(1 << 31) - 1, -(1 << 31), (1 << 30), -(1 << 30), 0, 12345], n).astype(np.int32)
        m0 = rng.choice([(1 << 31) - 1, 1 << 30, 1, 1717986918], n).astype(np.int32)
        shift = rng.choice([0, 1, 7, 31, 32, 40, 62], n).astype(np.int32)
        for out_type in (I8, U8, I16, I32):
            qmin, qmax = BOUNDS[out_type]
            check_all(lib, isas, a, unsigned, w, bias, m0, shift, qmin, qmax, out_type)
        check_all(lib, isas, a, unsigned, w, bias, m0, shift, -5, 9, I8)  # a narrow clamp (hardtanh-like)
        check_all(lib, isas, a, unsigned, w, None if False else np.zeros(n, np.int32), m0, shift, 0, 127, U8)


def test_linear_null_bias(lib, isas):
    rng = np.random.default_rng(5)
    a, w, _, m0, shift = random_case(rng, 7, 33, 18, True)
    expected = ref_linear(a, w, np.zeros(18, np.int32), m0, shift, True, -128, 127)
    for isa in isas:
        got = run_linear(lib, isa, a, U8, w, None, m0, shift, -128, 127)
        assert np.array_equal(got.astype(np.int64), expected)


@pytest.mark.parametrize("out_type", [I8, U8, I16, I32])
def test_linear_nchw_strides_and_lut(lib, isas, out_type):
    rng = np.random.default_rng(20 + out_type)
    a, w, bias, m0, shift = random_case(rng, 37, 50, 21, False)
    qmin, qmax = (-128, 127) if out_type != U8 else (0, 255)
    check_all(lib, isas, a, False, w, bias, m0, shift, qmin, qmax, out_type, nchw=True)
    lo, hi = BOUNDS[out_type]
    lut = rng.integers(max(lo, -30000), min(hi, 30000) + 1, qmax - qmin + 1).astype(np.int32)
    check_all(lib, isas, a, False, w, bias, m0, shift, qmin, qmax, out_type, lut=lut, lut_min=qmin)
    check_all(lib, isas, a, False, w, bias, m0, shift, qmin, qmax, out_type, lut=lut, lut_min=qmin, nchw=True)


def test_pack_follows_the_forced_isa(lib, isas):
    sizes = set()
    for isa in isas:
        lib.hw_force_isa(isa)
        sizes.add(lib.hw_pack_size(33, 65))
    assert len(sizes) == len(isas)  # each ISA has its own layout; pack after forcing
    lib.hw_force_isa(-2)


# ----- hw_matmul -----------------------------------------------------------------------------------------
def _8bit(rng, shape, unsigned):
    return (rng.integers(0, 256, shape) if unsigned else rng.integers(-128, 128, shape)).astype(
        np.uint8 if unsigned else np.int8)


@pytest.mark.parametrize("a_unsigned,b_unsigned", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_strided(lib, isas, a_unsigned, b_unsigned):
    rng = np.random.default_rng(3 + 2 * a_unsigned + b_unsigned)
    for batch, m, k, n in [(3, 17, 64, 17), (2, 1, 1, 5), (1, 197, 65, 33), (6, 9, 3, 1)]:
        a = _8bit(rng, (batch, m, k), a_unsigned)
        key = _8bit(rng, (batch, n, k), b_unsigned)  # B = key^T: a transposed view
        b = key.transpose(0, 2, 1)
        multiplier = float(rng.uniform(0.5, 2.0) / (30 * np.sqrt(k)))
        m0, shift = int_ops.dyadic(multiplier)
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x).astype(np.int32))  # noqa: E731
        for out_type, (qmin, qmax) in [(I8, (-128, 127)), (U8, (0, 255)), (I32, BOUNDS[I32])]:
            expected = int_ops.int_matmul(t(a), t(b), a_unsigned, b_unsigned, multiplier, qmin, qmax).numpy()
            for isa in isas:
                assert lib.hw_force_isa(isa) == 0
                for threads in (1, 2, 3):
                    out = np.zeros((batch, m, n), dtype=NP_TYPES[out_type])
                    lib.hw_matmul(_ptr(a), U8 if a_unsigned else I8, m * k, k, 1,
                                  _ptr(key), U8 if b_unsigned else I8, n * k, 1, k,
                                  batch, m, k, n, m0, shift, qmin, qmax, _ptr(out), out_type, threads)
                    assert np.array_equal(out.astype(np.int64), expected.astype(np.int64)), (
                        lib.hw_isa_name(isa), threads, batch, m, k, n, out_type)


def test_matmul_contiguous_b(lib, isas):
    rng = np.random.default_rng(99)
    batch, m, k, n = 2, 11, 40, 70
    a, b = _8bit(rng, (batch, m, k), True), _8bit(rng, (batch, k, n), False)
    multiplier = 1.0 / 600
    m0, shift = int_ops.dyadic(multiplier)
    expected = int_ops.int_matmul(torch.from_numpy(a.astype(np.int32)), torch.from_numpy(b.astype(np.int32)),
                                  True, False, multiplier, -128, 127).numpy()
    for isa in isas:
        lib.hw_force_isa(isa)
        out = np.zeros((batch, m, n), dtype=np.int8)
        lib.hw_matmul(_ptr(a), U8, m * k, k, 1, _ptr(b), I8, k * n, n, 1, batch, m, k, n, m0, shift, -128, 127,
                      _ptr(out), I8, 2)
        assert np.array_equal(out.astype(np.int64), expected.astype(np.int64))


def _matmul_layout(rng, layout, batch, m, k, n, a_unsigned, b_unsigned):
    """(a array, a strides, b array, b strides, A values, B values): strides in elements as hw_matmul reads them.
    qk: B = key^T (contiguous along K); pv: B contiguous along N; strided: neither operand has a unit stride."""
    if layout == "strided":
        a_big = _8bit(rng, (batch, k, 2 * m + 1), a_unsigned)          # A[b, i, j] = a_big[b, j, 2i]
        b_big = _8bit(rng, (batch, 2 * k, 3 * n), b_unsigned)          # B[b, c, j] = b_big[b, 2c, 3j]
        a_vals = a_big[:, :, : 2 * m : 2].transpose(0, 2, 1)
        b_vals = b_big[:, ::2, ::3]
        a_str = (k * (2 * m + 1), 2, 2 * m + 1)
        b_str = (2 * k * 3 * n, 6 * n, 3)
        return a_big, a_str, b_big, b_str, a_vals, b_vals
    a = _8bit(rng, (batch, m, k), a_unsigned)
    if layout == "qk":
        key = _8bit(rng, (batch, n, k), b_unsigned)
        return a, (m * k, k, 1), key, (n * k, 1, k), a, key.transpose(0, 2, 1)
    b = _8bit(rng, (batch, k, n), b_unsigned)
    return a, (m * k, k, 1), b, (k * n, n, 1), a, b


@pytest.mark.parametrize("layout", ["qk", "pv", "strided"])
def test_matmul_attention_layouts(lib, isas, layout):
    """Attention-like shapes and layouts, every output type, multipliers whose shifts fall on both sides of 32
    (the VNNI epilogue's two forms), 1 to 3 threads (uneven splits of batch x row blocks)."""
    rng = np.random.default_rng({"qk": 11, "pv": 12, "strided": 13}[layout])
    shapes = [(3, 37, 64, 45), (2, 20, 197, 64), (5, 8, 7, 33), (1, 9, 130, 16), (4, 3, 5, 100)]
    for (batch, m, k, n), a_unsigned in zip(shapes, [False, True, False, True, True]):
        a, a_str, b, b_str, a_vals, b_vals = _matmul_layout(rng, layout, batch, m, k, n, a_unsigned, False)
        t = lambda x: torch.from_numpy(np.ascontiguousarray(x).astype(np.int32))  # noqa: E731
        for multiplier in (1.0 / (40 * np.sqrt(k)), 0.75, 3.0):
            m0, shift = int_ops.dyadic(multiplier)
            for out_type in (I8, U8, I16, I32):
                qmin, qmax = BOUNDS[out_type]
                expected = int_ops.int_matmul(t(a_vals), t(b_vals), a_unsigned, False, multiplier, qmin, qmax).numpy()
                for isa in isas:
                    assert lib.hw_force_isa(isa) == 0
                    for threads in (1, 2, 3):
                        out = np.zeros((batch, m, n), dtype=NP_TYPES[out_type])
                        lib.hw_matmul(_ptr(a), U8 if a_unsigned else I8, *a_str, _ptr(b), I8, *b_str, batch, m, k, n,
                                      m0, shift, qmin, qmax, _ptr(out), out_type, threads)
                        assert np.array_equal(out.astype(np.int64), expected.astype(np.int64)), (
                            lib.hw_isa_name(isa), layout, threads, batch, m, k, n, out_type, multiplier)


# ----- conv: im2col + hw_linear (NCHW strides), depthwise ------------------------------------------
CONVS = [  # C, H, W, O, kh, kw, stride, padding, dilation
    (3, 11, 9, 8, 3, 3, (1, 1), (1, 1), (1, 1)),
    (4, 16, 16, 6, 3, 3, (2, 2), (1, 1), (1, 1)),
    (5, 10, 13, 7, 3, 2, (2, 1), (2, 0), (2, 1)),
    (3, 32, 32, 16, 16, 16, (16, 16), (0, 0), (1, 1)),  # a ViT patch embedding, scaled down
    (2, 7, 7, 3, 1, 1, (1, 1), (0, 0), (1, 1)),
]


def _conv_ref(x, w, bias, m0, shift, stride, padding, dilation, groups, unsigned, qmin, qmax):
    t = lambda v: torch.from_numpy(np.asarray(v).astype(np.int64))  # noqa: E731
    return int_ops.int_conv2d(t(x)[None].to(torch.int32), t(w).to(torch.int8), t(bias).to(torch.int32), t(m0),
                              t(shift), list(stride), list(padding), list(dilation), groups, unsigned, qmin,
                              qmax).numpy()[0]


@pytest.mark.parametrize("conv", CONVS)
@pytest.mark.parametrize("unsigned", [False, True])
def test_conv_im2col_linear(lib, isas, conv, unsigned):
    c, h, wd, o, kh, kw, stride, padding, dilation = conv
    rng = np.random.default_rng(c * h + o)
    x = _8bit(rng, (c, h, wd), unsigned)
    w = rng.integers(-127, 128, (o, c, kh, kw)).astype(np.int8)
    bias = rng.integers(-3000, 3000, o).astype(np.int32)
    pairs = [int_ops.dyadic(float(r)) for r in rng.uniform(0.001, 0.01, o)]
    m0 = np.array([p[0] for p in pairs], np.int32)
    shift = np.array([p[1] for p in pairs], np.int32)
    expected = _conv_ref(x, w, bias, m0, shift, stride, padding, dilation, 1, unsigned, -128, 127)
    oh, ow = expected.shape[1:]
    ckk = c * kh * kw
    cols = np.full((oh * ow, ckk), 77, dtype=x.dtype)
    lib.hw_im2col(_ptr(x), U8 if unsigned else I8, c, h, wd, kh, kw, *stride, *padding, *dilation, _ptr(cols))
    for isa in isas:
        for threads in (1, 2, 3):
            got = run_linear(lib, isa, cols, U8 if unsigned else I8, w.reshape(o, ckk), bias, m0, shift, -128,
                             127, I8, nchw=True, threads=threads)  # (OH·OW, O) view of an (O, OH·OW) array
            assert np.array_equal(got.T.reshape(o, oh, ow).astype(np.int64), expected.astype(np.int64))


GEOMETRIES = [  # C, H, W, kh, kw, stride, padding, dilation: odd sizes, stride 2, padding, dilation, kw > 8
    (3, 11, 9, 3, 3, (1, 1), (1, 1), (1, 1)),
    (5, 17, 23, 3, 3, (2, 2), (1, 1), (1, 1)),
    (3, 30, 29, 7, 7, (2, 2), (3, 3), (1, 1)),     # a ResNet stem, scaled down
    (7, 13, 12, 1, 1, (2, 2), (0, 0), (1, 1)),     # a strided 1x1 (downsample)
    (4, 10, 13, 3, 2, (2, 1), (2, 0), (2, 1)),
    (2, 9, 21, 2, 9, (1, 3), (0, 4), (1, 2)),      # kw > 8, dilated along W
    (6, 12, 12, 5, 8, (1, 1), (2, 3), (1, 1)),     # kw = 8 (the widest 8-byte run)
    (33, 8, 8, 3, 3, (1, 1), (1, 1), (1, 1)),
    (2, 5, 4, 5, 4, (1, 1), (0, 0), (1, 1)),       # one output pixel
]


@pytest.mark.parametrize("geometry", GEOMETRIES)
@pytest.mark.parametrize("unsigned", [False, True])
def test_im2col_matches_unfold(lib, geometry, unsigned):
    """hw_im2col equals torch's unfold (columns in (c, ky, kx) order, zeros in the padding), and writes
    nothing past the OH·OW x C·kh·kw result."""
    c, h, wd, kh, kw, stride, padding, dilation = geometry
    rng = np.random.default_rng(c * h * wd + kh)
    x = _8bit(rng, (c, h, wd), unsigned)
    want = torch.nn.functional.unfold(torch.from_numpy(x.astype(np.float64))[None], (kh, kw), dilation, padding,
                                      stride)[0].T.numpy().astype(np.int64)
    guard = 64
    buffer = np.full(want.size + guard, 77, dtype=x.dtype)
    lib.hw_im2col(_ptr(x), U8 if unsigned else I8, c, h, wd, kh, kw, *stride, *padding, *dilation, _ptr(buffer))
    assert np.array_equal(buffer[: want.size].reshape(want.shape).astype(np.int64), want)
    assert (buffer[want.size:] == 77).all()


@pytest.mark.parametrize("geometry", GEOMETRIES + [(4, 20, 37, 3, 3, (1, 1), (1, 1), (1, 1)),
                                                   (3, 19, 40, 5, 5, (2, 2), (2, 2), (1, 1))])
@pytest.mark.parametrize("unsigned", [False, True])
def test_depthwise_conv(lib, isas, geometry, unsigned):
    """Every ISA path (AVX2 vectors of output columns: widths below, at and past multiples of 8, strides
    1-3 through loads and gathers) equals int_conv2d with groups = C, for every output type and a saturating
    requantization; a NULL bias is 0."""
    c, h, wd, kh, kw, stride, padding, dilation = geometry
    rng = np.random.default_rng(c + h + kh + wd)
    x = _8bit(rng, (c, h, wd), unsigned)
    x[0, 0, :] = 255 if unsigned else -128   # extremes: the largest products
    w = rng.integers(-127, 128, (c, 1, kh, kw)).astype(np.int8)
    w[0] = -127
    bias = rng.integers(-3000, 3000, c).astype(np.int32)
    pairs = [int_ops.dyadic(float(r)) for r in rng.uniform(0.005, 0.05, c)]
    m0 = np.array([p[0] for p in pairs], np.int32)
    shift = np.array([p[1] for p in pairs], np.int32)
    shift[-1], m0[-1] = 0, 3                  # shift 0: x·m0
    cases = [(out_type, BOUNDS[out_type], bias)
             for out_type in (I8, U8, I16, I32)] + [(I8, (-5, 9), None)]
    for out_type, (qmin, qmax), b in cases:
        expected = _conv_ref(x, w, np.zeros(c, np.int32) if b is None else b, m0, shift, stride, padding, dilation, c,
                             unsigned, qmin, qmax)
        for isa in isas:
            assert lib.hw_force_isa(isa) == 0
            out = np.zeros(expected.size + 16, dtype=NP_TYPES[out_type])
            lib.hw_depthwise_conv2d(_ptr(x), U8 if unsigned else I8, c, h, wd, _ptr(w), kh, kw, *stride, *padding,
                                    *dilation, _ptr(b), _ptr(m0), _ptr(shift), qmin, qmax, _ptr(out), out_type)
            got = out[: expected.size].reshape(expected.shape)
            assert np.array_equal(got.astype(np.int64), expected.astype(np.int64)), (lib.hw_isa_name(isa), out_type)
            assert not out[expected.size:].any()
    lib.hw_force_isa(-2)


# ----- aarch64 ---------------------------------------------------------------------------------------------
def test_aarch64_build_compiles(tmp_path):
    if shutil.which(int_cpu_lib.COMPILERS["aarch64"]) is None:
        pytest.skip("aarch64-linux-gnu-gcc not installed")
    try:
        path = int_cpu_lib.build("aarch64", dest=tmp_path)
    except ToolMissingError:  # another file of the library is mid-edit: ours must still compile
        path = _private_build("aarch64", tmp_path)
    assert path.is_file() and path.read_bytes()[:4] == b"\x7fELF"


@pytest.fixture(scope="module")
def aarch64_driver(tmp_path_factory):
    compiler = int_cpu_lib.COMPILERS["aarch64"]
    if shutil.which(compiler) is None or shutil.which("qemu-aarch64") is None:
        pytest.skip("aarch64-linux-gnu-gcc or qemu-aarch64 not installed")
    folder = tmp_path_factory.mktemp("aarch64")
    target = folder / "gemm_driver"
    src = int_cpu_lib.SOURCE_DIR
    subprocess.run([compiler, "-static", *int_cpu_lib.FLAGS["aarch64"], "-std=c11", "-pthread", "-I", str(src),
                    str(src / "isa.c"), str(src / "gemm.c"), str(src / "pool.c"), str(src / "tests" / "gemm_driver.c"), "-o",
                    str(target)], check=True, capture_output=True, text=True)
    return target


def _qemu_linear(driver, folder, cpu, isa, a, unsigned, w, bias, m0, shift, qmin, qmax, threads):
    (m, k), n = a.shape, w.shape[0]
    header = np.array([isa, U8 if unsigned else I8, m, k, n, qmin, qmax, threads], dtype="<i8")
    blob = b"".join(v.tobytes() for v in (header, a, w, bias.astype("<i4"), m0.astype("<i4"), shift.astype("<i4")))
    (folder / "in.bin").write_bytes(blob)
    done = subprocess.run(["qemu-aarch64", "-cpu", cpu, str(driver), str(folder / "in.bin"), str(folder / "out.bin")],
                          capture_output=True, text=True, timeout=60)
    if done.returncode:
        return done.returncode, None
    return 0, np.fromfile(folder / "out.bin", dtype="<i4").reshape(m, n)


def test_aarch64_neon_paths_under_qemu(aarch64_driver, tmp_path):
    rng = np.random.default_rng(64)
    cases = [(5, 65, 33, False), (9, 385, 17, True), (197, 64, 40, False)]
    worst = [(np.full((4, 1536), -128, np.int8), False, -127), (np.full((4, 1536), 255, np.uint8), True, 127)]
    for cpu, isa, available in [("max", 4, True), ("max", 3, True), ("max", 0, True), ("cortex-a53", 3, True),
                                ("cortex-a53", 4, False)]:
        for m, k, n, unsigned in cases:
            a, w, bias, m0, shift = random_case(rng, m, k, n, unsigned)
            qmin, qmax = (0, 255) if unsigned else (-128, 127)
            rc, got = _qemu_linear(aarch64_driver, tmp_path, cpu, isa, a, unsigned, w, bias, m0, shift, qmin, qmax, 2)
            if not available:
                assert rc == 3  # the dot-product path refuses a CPU without it
                break
            assert rc == 0 and np.array_equal(got, ref_linear(a, w, bias, m0, shift, unsigned, qmin, qmax)), (cpu, isa)
        if available:  # requantization extremes: int32 bias ends, m0 near 2^31, shifts 0..62, int32 clamp
            a, w, _, _, _ = random_case(rng, 6, 70, 24, cpu == "max")
            bias = rng.choice([(1 << 31) - 1, -(1 << 31), 1 << 30, -5], 24).astype(np.int32)
            m0 = rng.choice([(1 << 31) - 1, 1 << 30, 1, 1717986918], 24).astype(np.int32)
            shift = rng.choice([0, 1, 31, 40, 62], 24).astype(np.int32)
            rc, got = _qemu_linear(aarch64_driver, tmp_path, cpu, isa, a, cpu == "max", w, bias, m0, shift,
                                   *BOUNDS[I32], 1)
            assert rc == 0 and np.array_equal(got, ref_linear(a, w, bias, m0, shift, cpu == "max", *BOUNDS[I32]))
            for a, unsigned, wv in worst:
                w = np.full((20, a.shape[1]), wv, np.int8)
                w[1::2] = -w[1::2]
                ones, zeros = np.ones(20, np.int32), np.zeros(20, np.int32)
                rc, got = _qemu_linear(aarch64_driver, tmp_path, cpu, isa, a, unsigned, w, zeros, ones, zeros,
                                       *BOUNDS[I32], 1)
                assert rc == 0 and np.array_equal(got, a.astype(np.int64) @ w.astype(np.int64).T), (cpu, isa)
