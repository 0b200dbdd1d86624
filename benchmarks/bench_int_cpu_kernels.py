"""GOPS of the integer CPU runtime's hw_linear / hw_matmul per ISA path (issue 15), ops = 2·M·N·K.

ViT-S/16 shapes: the MLP (M=197, K=384, N=1536 and K=1536, N=384), the QKV projection (N=1152) and
the two attention matmuls (6 heads: Q·Kᵀ 197x64 @ 64x197 with K a transposed view, and
P·V 197x197 @ 197x64 with uint8 P). The fp32 anchor is onnxruntime's float32 MatMul of the
same shape with the same thread count (what the float model's GEMMs do here), when onnxruntime is installed.

    .venv/bin/python benchmarks/bench_int_cpu_kernels.py [--threads 1 2] [--seconds 0.5]
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from hwact.backends import int_cpu_lib

SHAPES = [(197, 384, 1536), (197, 1536, 384), (197, 384, 1152)]


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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--seconds", type=float, default=0.5)
    args = parser.parse_args()
    lib = int_cpu_lib.load(int_cpu_lib.build("x86_64"))
    isas = [i for i in range(5) if lib.hw_isa_available(i)]
    rng = np.random.default_rng(0)
    rows = []
    for m, k, n in SHAPES:
        a = rng.integers(-128, 128, (m, k)).astype(np.int8)
        w = rng.integers(-127, 128, (n, k)).astype(np.int8)
        bias = rng.integers(-1000, 1000, n).astype(np.int32)
        m0 = np.full(n, 1 << 30, np.int32)
        shift = np.full(n, 40, np.int32)
        out = np.zeros((m, n), np.int8)
        ops = 2.0 * m * n * k
        af, wf = a.astype(np.float32), w.astype(np.float32).T.copy()
        for threads in args.threads:
            ort_call = _ort_matmul(af, wf, threads)
            if ort_call is not None:
                rows.append((f"linear {m}x{k}x{n}", "ort fp32", threads, ops / _timeit(ort_call, args.seconds) / 1e9))
        for isa in isas:
            lib.hw_force_isa(isa)
            packed = np.zeros(lib.hw_pack_size(n, k), np.uint8)
            lib.hw_pack(w.ctypes.data, n, k, packed.ctypes.data)
            for threads in args.threads:
                call = lambda: lib.hw_linear(a.ctypes.data, 0, m, k, k, packed.ctypes.data, n, bias.ctypes.data,  # noqa: E731
                                             m0.ctypes.data, shift.ctypes.data, -128, 127, None, 0, out.ctypes.data,
                                             0, n, 1, threads)
                rows.append((f"linear {m}x{k}x{n}", lib.hw_isa_name(isa).decode(), threads,
                             ops / _timeit(call, args.seconds) / 1e9))
    heads, m, k, n = 6, 197, 64, 197
    q = rng.integers(-128, 128, (heads, m, k)).astype(np.int8)
    key = rng.integers(-128, 128, (heads, n, k)).astype(np.int8)
    out = np.zeros((heads, m, n), np.int8)
    ops = 2.0 * heads * m * n * k
    qf, kf = q.astype(np.float32), np.ascontiguousarray(key.astype(np.float32).transpose(0, 2, 1))
    for threads in args.threads:
        ort_call = _ort_matmul(qf, kf, threads)
        if ort_call is not None:
            rows.append((f"matmul {heads}x{m}x{k}x{n}", "ort fp32", threads, ops / _timeit(ort_call, args.seconds) / 1e9))
    for isa in isas:
        lib.hw_force_isa(isa)
        for threads in args.threads:
            call = lambda: lib.hw_matmul(q.ctypes.data, 0, m * k, k, 1, key.ctypes.data, 0, n * k, 1, k, heads, m, k,  # noqa: E731
                                         n, 1 << 30, 40, -128, 127, out.ctypes.data, 0, threads)
            rows.append((f"matmul {heads}x{m}x{k}x{n}", lib.hw_isa_name(isa).decode(), threads,
                         ops / _timeit(call, args.seconds) / 1e9))
    # P·V: uint8 probabilities (6, 197, 197) times V (6, 197, 64), V contiguous along N
    probs = rng.integers(0, 256, (heads, m, n)).astype(np.uint8)
    value = rng.integers(-128, 128, (heads, n, k)).astype(np.int8)
    out_pv = np.zeros((heads, m, k), np.int8)
    pf, vf = probs.astype(np.float32), value.astype(np.float32)
    for threads in args.threads:
        ort_call = _ort_matmul(pf, vf, threads)
        if ort_call is not None:
            rows.append((f"matmul {heads}x{m}x{n}x{k}", "ort fp32", threads, ops / _timeit(ort_call, args.seconds) / 1e9))
    for isa in isas:
        lib.hw_force_isa(isa)
        for threads in args.threads:
            call = lambda: lib.hw_matmul(probs.ctypes.data, 1, m * n, n, 1, value.ctypes.data, 0, n * k, k, 1, heads,  # noqa: E731
                                         m, n, k, 1 << 30, 40, -128, 127, out_pv.ctypes.data, 0, threads)
            rows.append((f"matmul {heads}x{m}x{n}x{k}", lib.hw_isa_name(isa).decode(), threads,
                         ops / _timeit(call, args.seconds) / 1e9))
    lib.hw_force_isa(-2)
    print(f"{'problem':<26}{'path':<14}{'threads':>8}{'GOPS':>10}")
    for problem, path, threads, gops in rows:
        print(f"{problem:<26}{path:<14}{threads!s:>8}{gops:>10.1f}")


if __name__ == "__main__":
    main()
