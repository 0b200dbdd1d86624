"""GOPS of the integer CPU runtime's hw_linear / hw_matmul per ISA path (issue 15), ops = 2·M·N·K, at 1 and 2
threads, and each as a fraction of this machine's int8 peak.

ViT-S/16 shapes: the MLP (M=197, K=384, N=1536 and K=1536, N=384), the QKV projection (N=1152) and
the two attention matmuls (6 heads: Q·Kᵀ 197x64 @ 64x197 with K a transposed view, and
P·V 197x197 @ 197x64 with uint8 P); a ResNet conv as its GEMM (3136 patches x 576 x 64). The fp32 anchor is
onnxruntime's float32 MatMul of the same shape with the same thread count, when onnxruntime is installed.

The peak is measured, not looked up: a small C program (compiled here with gcc) times a chain of
dependent 64-bit adds (one per cycle: the core's clock in GHz while it runs vector code) and 12
independent chains of the multiply-add instruction each ISA path is built on (vpdpbusd zmm, AVX-512 VNNI:
64 int8 MACs; vpmaddwd ymm + vpaddd, AVX2: 16 int16 MACs), both in thread CPU time, best of 5. Peak per core =
2 ops x MACs per instruction x instructions per cycle x GHz; the "% peak" columns divide by the int8 peak
of the best path (per core at 1 thread, x 2 at 2 threads), and "% path peak" by that path's own peak.

    .venv/bin/python benchmarks/bench_int_cpu_kernels.py [--threads 1 2] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np

from hwact.backends import int_cpu_lib
from hwact.report import machine

SHAPES = [(197, 384, 1536), (197, 1536, 384), (197, 384, 1152), (3136, 576, 64)]

PEAK_PROGRAM = r"""
#include <immintrin.h>
#include <stdio.h>
#include <time.h>
static double now(void) { struct timespec t; clock_gettime(CLOCK_THREAD_CPUTIME_ID, &t); return t.tv_sec + t.tv_nsec * 1e-9; }
static double adds(long n) {
    long x = 0; double t = now();
    for (long i = 0; i < n; i++) __asm__ volatile("add $1, %0\n\tadd $1, %0\n\tadd $1, %0\n\tadd $1, %0" : "+r"(x));
    return (now() - t) / (4.0 * n);
}
#define CHAINS(OP, T, a, b) \
    T c0 = a, c1 = a, c2 = a, c3 = a, c4 = a, c5 = a, c6 = a, c7 = a, c8 = a, c9 = a, c10 = a, c11 = a; \
    double t = now(); \
    for (long i = 0; i < n; i++) { \
        c0 = OP(c0, a, b); c1 = OP(c1, a, b); c2 = OP(c2, a, b); c3 = OP(c3, a, b); c4 = OP(c4, a, b); \
        c5 = OP(c5, a, b); c6 = OP(c6, a, b); c7 = OP(c7, a, b); c8 = OP(c8, a, b); c9 = OP(c9, a, b); \
        c10 = OP(c10, a, b); c11 = OP(c11, a, b); \
        __asm__ volatile("" : "+x"(c0), "+x"(c1), "+x"(c2), "+x"(c3), "+x"(c4), "+x"(c5), "+x"(c6), "+x"(c7), \
                         "+x"(c8), "+x"(c9), "+x"(c10), "+x"(c11)); \
    } \
    return (now() - t) / (12.0 * n);
__attribute__((target("avx512f,avx512bw,avx512vnni"))) static double vnni(long n) {
    __m512i a = _mm512_set1_epi8(1), b = _mm512_set1_epi8(2);
    CHAINS(_mm512_dpbusd_epi32, __m512i, a, b)
}
#define MADD(c, a, b) _mm256_add_epi32(c, _mm256_madd_epi16(c, b)) /* reads c: nothing to hoist out of the loop */
__attribute__((target("avx2"))) static double madd(long n) {
    __m256i a = _mm256_set1_epi16(1), b = _mm256_set1_epi16(2);
    CHAINS(MADD, __m256i, a, b)
}
int main(int argc, char **argv) {
    (void)argv;
    double best_add = 1, best_vnni = 1, best_madd = 1;
    for (int r = 0; r < 5; r++) {
        double t = adds(20000000); if (t < best_add) best_add = t;
        t = madd(4000000); if (t < best_madd) best_madd = t;
        if (argc > 1) { t = vnni(4000000); if (t < best_vnni) best_vnni = t; }
    }
    printf("%.6f %.6f %.6f\n", 1e-9 / best_add, best_add / best_madd, argc > 1 ? best_add / best_vnni : 0.0);
    return 0;
}
"""


def measure_peak(vnni: bool) -> dict:
    """GHz (dependent adds) and instructions per cycle of vpmaddwd ymm / vpdpbusd zmm (see the module doc)."""
    folder = Path(tempfile.mkdtemp())
    (folder / "peak.c").write_text(PEAK_PROGRAM)
    subprocess.run(["gcc", "-O2", str(folder / "peak.c"), "-o", str(folder / "peak")], check=True)
    ghz, madd_ipc, vnni_ipc = map(float, subprocess.run([str(folder / "peak"), *(["vnni"] if vnni else [])],
                                                        check=True, capture_output=True, text=True).stdout.split())
    peaks = {"avx2": 2 * 16 * madd_ipc * ghz}
    if vnni:
        peaks["avx512vnni"] = 2 * 64 * vnni_ipc * ghz
    return {"ghz": ghz, "madd_ipc": madd_ipc, "vnni_ipc": vnni_ipc, "peaks": peaks}


def _timeit(fn, seconds):
    fn()
    runs, start = 0, time.perf_counter()
    best = float("inf")
    while time.perf_counter() - start < seconds or runs < 3:
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
        runs += 1
    return best


def _ort_matmul(a, b, threads):
    """A timed callable: onnxruntime float32 MatMul(a, B) with B a constant initializer, `threads` intra-op threads."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper, numpy_helper
    except ImportError:
        return None
    graph = helper.make_graph([helper.make_node("MatMul", ["a", "b"], ["y"])], "mm",
                              [helper.make_tensor_value_info("a", TensorProto.FLOAT, list(a.shape))],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    del onnx
    return lambda: session.run(None, {"a": a})


def write_results(area: str, title: str, doc: str, command: str, lines: list[str]) -> None:
    """Print the table and write it as benchmarks/results/<area>.md with the machine and the command."""
    info = machine()
    text = "\n".join([f"# {title}", "", f"Machine: {info['cpu']}, {info['cores']} cores. Command: `{command}`.", "",
                      *[part.replace("\n", " ") for part in doc.strip().split("\n\n")[1:-1]], "", *lines]) + "\n"
    print(text)
    (Path(__file__).parent / "results" / f"{area}.md").write_text(text)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    lib = int_cpu_lib.load(int_cpu_lib.build("x86_64"))
    isas = [i for i in range(5) if lib.hw_isa_available(i)]
    rng = np.random.default_rng(0)
    rows = []

    def measure(label: str, ops: float, float_operands: tuple, kernel_for_isa) -> None:
        """Rows (label, path, threads, GOPS): onnxruntime's fp32 MatMul of `float_operands`, then on every ISA
        path the call kernel_for_isa() returns (it runs after hw_force_isa: weights pack for that path)."""
        for threads in args.threads:
            ort_call = _ort_matmul(*float_operands, threads)
            if ort_call is not None:
                rows.append((label, "ort fp32", threads, ops / _timeit(ort_call, args.seconds) / 1e9))
        for isa in isas:
            lib.hw_force_isa(isa)
            kernel = kernel_for_isa()
            for threads in args.threads:
                rows.append((label, lib.hw_isa_name(isa).decode(), threads,
                             ops / _timeit(lambda: kernel(threads), args.seconds) / 1e9))

    for m, k, n in SHAPES:
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        bias = rng.integers(-1000, 1000, n).astype(np.int32)
        m0 = np.full(n, 1 << 30, np.int32)
        shift = np.full(n, 40, np.int32)
        out = np.zeros((m, n), np.int8)

        def linear(a=a, w=w, bias=bias, m0=m0, shift=shift, out=out, m=m, k=k, n=n):
            packed = np.zeros(lib.hw_pack_size(n, k), np.uint8)
            lib.hw_pack(w.ctypes.data, n, k, packed.ctypes.data)
            return lambda threads: lib.hw_linear(a.ctypes.data, 0, m, k, k, packed.ctypes.data, n, bias.ctypes.data,
                                                 m0.ctypes.data, shift.ctypes.data, -128, 127, None, 0,
                                                 out.ctypes.data, 0, n, 1, threads)
        measure(f"linear {m}x{k}x{n}", 2.0 * m * n * k, (a.astype(np.float32), w.astype(np.float32).T.copy()), linear)
    heads, m, k, n = 6, 197, 64, 197
    ops = 2.0 * heads * m * n * k
    # Q·Kᵀ: the key (6, 197, 64) read transposed through its strides
    q = rng.integers(-128, 128, (heads, m, k)).astype(np.int8)
    key = rng.integers(-128, 128, (heads, n, k)).astype(np.int8)
    out = np.zeros((heads, m, n), np.int8)
    measure(f"matmul {heads}x{m}x{k}x{n}", ops,
            (q.astype(np.float32), np.ascontiguousarray(key.astype(np.float32).transpose(0, 2, 1))),
            lambda: lambda threads: lib.hw_matmul(q.ctypes.data, 0, m * k, k, 1, key.ctypes.data, 0, n * k, 1, k,
                                                  heads, m, k, n, 1 << 30, 40, -128, 127, out.ctypes.data, 0, threads))
    # P·V: uint8 probabilities (6, 197, 197) times V (6, 197, 64), V contiguous along N
    probs = rng.integers(0, 256, (heads, m, n)).astype(np.uint8)
    value = rng.integers(-128, 128, (heads, n, k)).astype(np.int8)
    out_pv = np.zeros((heads, m, k), np.int8)
    measure(f"matmul {heads}x{m}x{n}x{k}", ops, (probs.astype(np.float32), value.astype(np.float32)),
            lambda: lambda threads: lib.hw_matmul(probs.ctypes.data, 1, m * n, n, 1, value.ctypes.data, 0, n * k, k,
                                                  1, heads, m, n, k, 1 << 30, 40, -128, 127, out_pv.ctypes.data, 0,
                                                  threads))
    lib.hw_force_isa(-2)
    peak = measure_peak(2 in isas)
    machine_peak = max(peak["peaks"].values())
    lines = [f"clock {peak['ghz']:.2f} GHz (dependent adds, thread CPU time); vpmaddwd ymm {peak['madd_ipc']:.2f}/cycle "
          f"-> AVX2 peak {peak['peaks']['avx2']:.0f} GOPS/core"
          + (f"; vpdpbusd zmm {peak['vnni_ipc']:.2f}/cycle -> VNNI peak {peak['peaks']['avx512vnni']:.0f} GOPS/core"
             if 2 in isas else "") + f"; machine int8 peak {machine_peak:.0f} GOPS/core; cpus {os.cpu_count()}", ""]
    table = {}
    for problem, path, threads, gops in rows:
        table.setdefault((problem, path), {})[threads] = gops
    counts = sorted({t for _, _, t, _ in rows})
    header = "| problem | path | " + " | ".join(f"GOPS {t}t" for t in counts) + " | " + \
        " | ".join(f"% peak {t}t" for t in counts) + " | % path peak 1t |"
    lines += [header, "|" + "---|" * (3 + 2 * len(counts))]
    for (problem, path), by in table.items():
        gops = " | ".join(f"{by[t]:.1f}" if t in by else "" for t in counts)
        share = " | ".join(f"{100 * by[t] / (machine_peak * t):.1f}" if t in by else "" for t in counts)
        own = peak["peaks"].get(path)
        own_share = f"{100 * by[counts[0]] / (own * counts[0]):.1f}" if own and counts[0] in by else ""
        lines.append(f"| {problem} | {path} | {gops} | {share} | {own_share} |")
    write_results("int_cpu_kernels", "Integer CPU runtime: GEMM kernels against the machine's int8 peak", __doc__,
                  "python benchmarks/bench_int_cpu_kernels.py", lines)

if __name__ == "__main__":
    main()
