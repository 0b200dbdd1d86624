"""The `delta-c` and `delta-cuda` backends, for delta-activation models on CPUs and NVIDIA GPUs.

The target's recipe for delta models (`delta` = lower-delta, with --delta-threshold and --key-interval)
leaves delta_linear, delta_conv2d or delta_gru layers. For a chain of delta_linear layers it writes
    delta_net.bin                  the net for the C runtime (format: hwact/backends/delta_c.py)
    delta.c delta.h delta_main.c   the runtime sources, and libhwact_delta.so built for this machine
    delta_step.onnx                streaming step model with state inputs/outputs (hwact/backends/delta_onnx.py)
    dense.onnx                     the same weights as a dense float MLP (onnxruntime baseline)
and checks the C runtime and the ONNX step model bit-exact against the PyTorch reference over
random-walk sequences (and reports the int8 lowering error against the trained model). A per-frame CNN
(delta_conv2d) or a DeltaGRU chain goes to hwact/backends/delta_conv_c.py / delta_gru_c.py, which write
and check their own kernels and step models.

`delta-cuda` (cuda-sm80) writes delta_net.bin and the nvcc-built runner delta_cuda_main for the target's
`arch`, and runs it bit-exact against the reference when a GPU is present (compile only otherwise).

`hwact bench OUT --stream DATA.npz` -> `bench_stream(OUT, DATA.npz, ...)`. The folder is untrusted
data: bench compiles the runtime from hwact's own sources (its libhwact_delta.so is an artifact for
users and is never loaded) and checks it against the reference.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from hwact.bench.timing import best_seconds
from hwact.backends.base import Backend, BenchRequest, EmitContext, register
from hwact.errors import InputError, VerificationError
from hwact.ir import delta_conv_ops, delta_gru_ops, delta_ops  # noqa: F401  (register the delta ops)
from hwact.ir.graph import Graph
from hwact.npz import INTEGER, open_npz

CHECK_SEQUENCES, CHECK_FRAMES = 4, 16     # bench checks the runtime against the reference on these first
ARTIFACTS = ["delta_net.bin", "delta.c", "delta.h", "delta_main.c", "libhwact_delta.so", "delta_step.onnx", "dense.onnx"]
DELTA_ACT = torch.ops.hwact.delta_act.default
DELTA_CONV2D = torch.ops.hwact.delta_conv2d.default
DELTA_GRU = torch.ops.hwact.delta_gru.default


@register
class DeltaCBackend(Backend):
    """Delta C runtime (AVX2 / NEON), ONNX step model and a dense baseline, checked bit-exact.

    Each is checked against the lowered graph's reference over random-walk sequences."""
    name = "delta-c"
    section = "delta"
    reads_original = True   # the int8 lowering error against the trained model
    options = {"delta_threshold": 0.0, "key_interval": 0}

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        threshold = float(context.options["delta_threshold"] or 0.0)
        key_interval = int(context.options["key_interval"] or 0)
        lowering = {"lowered_layers": context.passes.get("lower-delta", {}).get("changed", 0)}
        if any(n.target is DELTA_CONV2D for n in graph.call_nodes()):
            return _convert_stateful("conv", graph, outdir, threshold, key_interval, lowering)
        if any(n.target is DELTA_GRU for n in graph.call_nodes()):
            return _convert_stateful("gru", graph, outdir, threshold, key_interval, lowering)
        return _convert_linear(graph, context.original, outdir, threshold, key_interval, lowering)

    @classmethod
    def bench(cls, outdir: Path, request: BenchRequest) -> dict:
        return bench(outdir, request)


@register
class DeltaCudaBackend(Backend):
    """Delta CUDA kernel (one thread block per stream) built with nvcc, bit-exact on a GPU when present."""
    name = "delta-cuda"
    section = "delta"
    options = {"delta_threshold": 0.0, "key_interval": 0, "arch": "sm_80"}

    def check(self, graph: Graph) -> list[str]:
        stateful = [n.name for n in graph.call_nodes() if n.target in (DELTA_CONV2D, DELTA_GRU)]
        return [f"{name}: the CUDA kernel runs chains of delta_linear layers, not conv/GRU layers (use --target cpu)"
                for name in stateful]

    def emit(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        from hwact.backends import delta_c, delta_cuda

        blob = delta_c.net_blob(graph)
        (outdir / "delta_net.bin").write_bytes(blob)
        arch = str(context.options["arch"]).removeprefix("sm_")
        exe = delta_cuda.build_cuda(outdir, archs=(arch,))
        return {"arch": f"sm_{arch}", "threshold": float(context.options["delta_threshold"] or 0.0),
                "key_interval": int(context.options["key_interval"] or 0), "ran_on_gpu": False,
                "artifacts": ["delta_net.bin", exe.name]}

    def verify(self, graph: Graph, outdir: Path, context: EmitContext) -> dict:
        """On a GPU: the kernel's outputs and fired columns equal the reference's on random walks."""
        import tempfile

        from hwact.backends import delta_c, delta_cuda
        from hwact.backends.toolchain import gpu_available

        if not gpu_available():
            return {"ran_on_gpu": False, "note": "compiled only: no GPU on this machine"}
        layers = delta_c.chain(graph)
        x = delta_c.random_walk(2, 32, int(layers[0]["weight"].shape[1]))
        reference, fired = delta_c.reference_stream(graph, x)
        with tempfile.TemporaryDirectory(prefix="hwact_delta_cuda_") as work:
            result = delta_cuda.run_cuda(outdir / "delta_cuda_main", (outdir / "delta_net.bin").read_bytes(),
                                         x.numpy(), Path(work))
        if not np.array_equal(result["y"], reference.numpy()) or result["fired"].tolist() != fired:
            raise VerificationError("the CUDA delta kernel differs from the reference on random-walk sequences")
        return {"ran_on_gpu": True, "bit_exact": True}


def _convert_linear(lowered: Graph, original: Graph, outdir: Path, threshold: float, key_interval: int,
                    lowering: dict) -> dict:
    """A chain of delta_linear layers: C runtime, ONNX step model and dense model, checked bit-exact."""
    from hwact.backends import delta_c, delta_onnx

    layers = delta_c.chain(lowered)
    n_in = int(layers[0]["weight"].shape[1])
    blob = delta_c.net_blob(lowered)
    (outdir / "delta_net.bin").write_bytes(blob)
    library = delta_c.build_library(outdir)
    runtime = delta_c.DeltaRuntime(blob, library)

    steps = int(original.inputs[0].shape[1]) if len(original.inputs[0].shape) == 3 else 32
    x = delta_c.random_walk(2, steps, n_in)
    reference, fired = delta_c.reference_stream(lowered, x)
    y, c_fired = runtime.run(x.numpy())
    if not np.array_equal(y, reference.numpy()) or list(c_fired) != fired:
        raise VerificationError(f"C delta runtime differs from the reference in {int((y != reference.numpy()).sum())} "
                                f"values (columns used {list(c_fired)} vs {fired})")
    delta_onnx.export_step(lowered, outdir / "delta_step.onnx")
    onnx_check = delta_onnx.verify_step(outdir / "delta_step.onnx", lowered, x.numpy(), reference.numpy())
    delta_onnx.export_dense(lowered, outdir / "dense.onnx")
    if any(n.target is DELTA_ACT for n in original.call_nodes()) and threshold == 0.0:
        trained = original(x)
        trained = trained[0] if isinstance(trained, (tuple, list)) else trained
        lowering["int8_max_abs_err_vs_trained"] = float((trained - reference).abs().max())
        lowering["trained_max_abs"] = float(trained.abs().max())
    return {
        "layers": [{"n_in": int(l["weight"].shape[1]), "n_out": int(l["weight"].shape[0]), "relu": l["relu"],
                    "levels": l["levels"]} for l in layers],
        "threshold": threshold, "key_interval": key_interval, "kernel": runtime.kernel, **lowering,
        "verification": {"c_bit_exact": True, "onnx_step": onnx_check,
                         "random_walk_sparsity": [1 - f / (x.shape[0] * x.shape[1] * l["weight"].shape[1])
                                                  for f, l in zip(fired, layers)]},
        "artifacts": list(ARTIFACTS),
    }


def _convert_stateful(model: str, lowered: Graph, outdir: Path, threshold: float, key_interval: int,
                      lowering: dict) -> dict:
    """A per-frame CNN (delta_conv2d layers, C scatter kernel) or a DeltaGRU chain (C column kernel): its
    backend writes the artifacts and checks the C kernel and the ONNX step model against the reference."""
    from hwact.backends import delta_conv_c, delta_gru_c

    body = (delta_conv_c.convert_conv if model == "conv" else delta_gru_c.convert_gru)(lowered, outdir)
    return {"model": model, "threshold": threshold, "key_interval": key_interval, **lowering, **body}


def load_stream(path, n_in: int, sequences: int | None = None) -> tuple[np.ndarray, np.ndarray | None]:
    """Frames x (sequences, time, n_in) float32 and labels y (or None) of a stream .npz: only its first
    `sequences` sequences are read (a 2-D x is one sequence), shapes checked from the headers first."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such stream file")
    with open_npz(path) as archive:
        if "x" not in archive:
            raise InputError(f"{path}: not a stream .npz with an 'x' array",
                             hint=f"arrays found: {', '.join(archive.files) or 'none'}")
        one = len(archive.info("x").shape) == 2
        shape = (1, *archive.info("x").shape) if one else archive.info("x").shape
        if len(shape) != 3 or shape[2] != n_in:
            raise InputError(f"{path}: frames of shape {shape}, this model takes (sequences, time, {n_in})",
                             hint="x must be float32 (sequences, time, features)")
        if shape[0] == 0 or shape[1] == 0:
            raise InputError(f"{path}: the stream is empty (x of shape {shape})",
                             hint="x must hold at least one sequence of at least one frame")
        x = archive.read("x", rows=None if one else sequences).astype(np.float32, copy=False)
        x = x[None] if one else x
        y = None
        if "y" in archive:
            info = archive.info("y")
            if info.shape != shape[:1] or info.dtype.kind not in INTEGER:
                raise InputError(f"{path}: labels y of shape {info.shape} and dtype {info.dtype}; "
                                 f"expected one integer class per sequence, shape ({shape[0]},)")
            y = archive.read("y", rows=x.shape[0], kinds=INTEGER)
    if not np.isfinite(x).all():
        raise InputError(f"{path}: the frames hold NaN or inf values")
    return x, y


def converted_threshold(outdir: Path) -> float | None:
    """The run-time threshold `hwact convert` stored for this folder, as reported (None when report.json
    is gone or does not hold a finite threshold >= 0; the runtime reads its thresholds from the net)."""
    try:
        threshold = float(json.loads((outdir / "report.json").read_text())["delta"]["threshold"])
    except (OSError, ValueError, KeyError, TypeError, OverflowError):
        return None
    return threshold if 0 <= threshold < float("inf") else None


def check_runtime(runtime, x: np.ndarray, threshold: float | None, source: Path) -> None:
    """The runtime's outputs and columns used equal the PyTorch reference's (from the net file's own
    layers) on the first frames of x."""
    from hwact.backends import delta_c

    x = x[:CHECK_SEQUENCES, :CHECK_FRAMES]
    runtime.reset(x.shape[0])
    y, fired = runtime.run(x)
    with torch.no_grad():
        reference, expected = delta_c.reference_layers(runtime.layers, torch.from_numpy(x), threshold)
    if not np.array_equal(y, reference.numpy()) or list(fired) != expected:
        raise VerificationError(f"{source}: the C runtime built from it differs from its PyTorch reference on "
                                f"the first {x.shape[1]} frames", hint="report this as a hwact bug")


def dense_session(path: Path, frame: np.ndarray, n_out: int):
    """An onnxruntime session on a folder's dense.onnx, checked to map one frame to n_out values (the file
    is untrusted data: whatever onnxruntime cannot load or run is an InputError naming it)."""
    from hwact.backends import delta_onnx
    from hwact.ir.graph import first_line

    try:
        sess = delta_onnx.session(path, threads=1)
        shape = sess.run(None, {"x": np.ascontiguousarray(frame)})[0].shape
    except Exception as exc:  # onnxruntime's own exception types: a corrupt file, missing input 'x', ...
        raise InputError(f"{path}: onnxruntime cannot run it ({first_line(exc)})") from exc
    if shape != (1, n_out):
        raise InputError(f"{path}: gives outputs of shape {shape} for one frame, delta_net.bin gives (1, {n_out})")
    return sess


def bench_stream(outdir, stream_npz, threshold: float | None = None, repeats: int = 5,
                 max_sequences: int | None = 64, onnxruntime: bool = True) -> dict:
    """Per-layer temporal sparsity, MACs skipped and per-frame latency (delta C kernel vs the same
    kernel dense vs onnxruntime on the dense model) over the sequences in `stream_npz`."""
    from hwact.backends import delta_c

    outdir = Path(outdir)
    for net, kind in (("delta_conv_net.bin", "conv"), ("delta_gru_net.bin", "GRU")):
        if (outdir / net).exists():
            raise InputError(f"{outdir}: a delta {kind} model; `bench --stream` times per-frame MLP delta models",
                             hint="its C kernel and ONNX step model were checked by convert (report.json)")
    if not (outdir / "delta_net.bin").exists():
        raise InputError(f"{outdir}: not a delta convert folder (no delta_net.bin)")
    runtime = delta_c.DeltaRuntime.open(outdir)
    if threshold is not None:
        runtime.set_threshold(threshold)
    x, labels = load_stream(stream_npz, runtime.n_in, max_sequences)
    check_runtime(runtime, x, threshold, outdir / "delta_net.bin")
    if threshold is None:  # the threshold the folder was converted with is the one in effect
        threshold = converted_threshold(outdir)
    if max_sequences:
        x = x[:max_sequences]
        labels = labels[:max_sequences] if labels is not None else None
    sequences, steps, _ = x.shape
    frames = sequences * steps

    def run_all(dense: bool):
        # every sequence is its own stream (own state, from reset); one C call runs them all
        runtime.reset(sequences)
        return runtime.run(x, dense=dense)

    delta_y, fired = run_all(False)
    dense_y, _ = run_all(True)
    delta_s = best_seconds(lambda: run_all(False), repeats)
    dense_s = best_seconds(lambda: run_all(True), repeats)
    result = {"sequences": sequences, "frames_per_sequence": steps, "kernel": runtime.kernel,
              "threshold": threshold, "layers": []}
    macs_total = macs_skipped = 0
    for (n_in, n_out), used in zip(runtime.shapes, fired):
        columns = frames * n_in
        skipped = columns - int(used)
        macs_total += columns * n_out
        macs_skipped += skipped * n_out
        result["layers"].append({"n_in": n_in, "n_out": n_out, "temporal_sparsity": skipped / columns,
                                 "columns_used": int(used), "macs": columns * n_out, "macs_skipped": skipped * n_out})
    sparsity = macs_skipped / macs_total
    result["mac_sparsity"] = sparsity
    result["ideal_speedup"] = 1.0 / max(1.0 - sparsity, 1e-9)
    latency = {"delta_c_us": 1e6 * delta_s / frames, "dense_c_us": 1e6 * dense_s / frames}
    if onnxruntime and (outdir / "dense.onnx").exists():
        sess = dense_session(outdir / "dense.onnx", x[0, :1], runtime.n_out)
        frames_list = [np.ascontiguousarray(x[i, t:t + 1]) for i in range(sequences) for t in range(steps)]
        ort_y = None

        def run_ort():
            nonlocal ort_y
            ort_y = [sess.run(None, {"x": f})[0] for f in frames_list]

        latency["onnxruntime_dense_us"] = 1e6 * best_seconds(run_ort, repeats) / frames
        ort_logits = np.concatenate(ort_y).reshape(sequences, steps, -1)
    else:
        ort_logits = None
    result["latency_per_frame"] = latency
    result["speedup_vs_dense_c"] = latency["dense_c_us"] / latency["delta_c_us"]
    result["speedup_fraction_of_ideal"] = result["speedup_vs_dense_c"] / result["ideal_speedup"]
    if "onnxruntime_dense_us" in latency:
        result["speedup_vs_onnxruntime"] = latency["onnxruntime_dense_us"] / latency["delta_c_us"]
    if labels is not None:
        result["accuracy"] = {"delta_c": float((delta_y.mean(axis=1).argmax(axis=1) == labels).mean()),
                              "dense_c": float((dense_y.mean(axis=1).argmax(axis=1) == labels).mean())}
        if ort_logits is not None:
            result["accuracy"]["onnxruntime_dense_float"] = float((ort_logits.mean(axis=1).argmax(axis=1) == labels).mean())
    return result


def bench(outdir, request: BenchRequest) -> dict:
    """`hwact bench OUT --stream DATA.npz` on a folder the delta-c backend wrote."""
    if not request.stream:
        raise InputError(f"{outdir}: a delta model is benchmarked on a frame sequence",
                         hint="pass --stream DATA.npz (x: float32 (sequences, time, features), optional y labels)")
    if request.threshold is not None and not request.threshold >= 0:
        raise InputError(f"delta threshold must be >= 0, got {request.threshold}")
    return bench_stream(outdir, request.stream, threshold=request.threshold,
                        repeats=max(1, min(int(request.iterations or 5), 50)))
