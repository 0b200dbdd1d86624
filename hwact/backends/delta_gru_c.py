"""C runtime and ONNX step model for lowered delta GRUs: a chain of hwact::delta_gru layers.

The C runtime (delta_c_src/delta_gru.c) keeps per stream, per layer, the last sent x and h codes,
the int32 accumulators M_x, M_h (3H each) and h, and per frame adds only the weight columns of the
inputs and hidden units whose code moved by at least the layer's code threshold (column kernel:
AVX2 on x86-64, NEON on aarch64, scalar elsewhere; column-major weights so a fired column is
contiguous), then runs the gates. Semantics: hwact/ir/delta_gru_ops.py. The accumulators are exact
integers and every float step (x / step, round half-even, acc * scale, the rational tanh and the gate
arithmetic) is one IEEE single operation in the reference's order, compiled with -ffp-contract=off:
the kernel matches the PyTorch reference bit for bit (TOLERANCE = 0; the verification also reports
the max abs error). The ONNX step model is checked against the same reference.

Net file (little endian), written by `net_blob`:
    "HWDG", int32 version = 1, int32 n_layers, int32 key_interval, then per layer
    int32 n_in, hidden, levels, 0; float32 theta_x, theta_h; float32 step_x[n_in], step_h[hidden],
    scale_x[3 hidden], scale_h[3 hidden]; int32 bias_x[3 hidden], bias_h[3 hidden];
    int8 weight_x[n_in][3 hidden], weight_h[hidden][3 hidden] (column-major); pad to 4.

delta_gru_step.onnx, one frame per call:
    inputs : x (batch, n_in) float32, then per layer threshold_l (2,) float32 (θx, θh),
             codes_x_l, codes_h_l, acc_x_l, acc_h_l int32, h_l float32 (batch, ...), and frame (1,) int64
    outputs: y (batch, hidden) float32, then the per-layer state as <name>_out, frame_out
"""

from __future__ import annotations

import ctypes
import struct
from pathlib import Path

import numpy as np
import torch

from hwact.backends.delta_c import (NetRuntime, check_chain, compile_shared, cross_compile_aarch64, le_bytes,
                                    net_header, pad4, random_walk, stream_input)
from hwact.backends.delta_onnx import export_step_module, session, step_frames
from hwact.backends.toolchain import aarch64_emulator, read_arrays, run_runner
from hwact.errors import UnsupportedError, VerificationError
from hwact.ir.delta_gru_ops import delta_gru_layers
from hwact.ir.delta_ops import require_threshold
from hwact.ir.graph import Graph

SOURCES = ("delta_gru.c", "delta_gru.h", "delta_simd.h", "delta_gru_main.c")
LIBRARY = "libhwact_delta_gru.so"
TOLERANCE = 0.0        # max abs error allowed, C and ONNX vs the reference (bit-exact by construction)
HEAD_TOLERANCE = 1e-5  # a float head after the GRU, in onnxruntime vs torch (relative to max |logit|)
STATE_NAMES = ("codes_x", "codes_h", "acc_x", "acc_h", "h")


# ----- the lowered graph -----------------------------------------------------------------------
def gru_chain(graph: Graph) -> list[dict]:
    """The lowered GRU layers, checked to form one chain input -> delta_gru -> ... -> output."""
    return check_chain(graph, delta_gru_layers(graph), "delta_gru", "delta GRU", head=True)


def frame_head(graph: Graph) -> torch.fx.GraphModule | None:
    """The ops between the last GRU's output h (B, T, H) and the model output (a classifier head), as a
    module of their own; None when h is the model output. They run after the kernel (C or ONNX step),
    so they must be per frame: applied to each frame alone they must give what they give on the
    sequence (a mean over time would not, and is refused)."""
    last = gru_chain(graph)[-1]["output"]
    output = next(n for n in graph.fx.nodes if n.op == "output")
    returned = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    if returned is last:
        return None
    head = torch.fx.Graph()
    env = {last: head.placeholder("h")}
    for node in graph.fx.nodes:
        if node.op in ("placeholder", "output", "get_attr") or node in env:
            continue
        if not any(d in env for d in node.all_input_nodes):
            continue
        for dep in node.all_input_nodes:
            if dep not in env and dep.op == "get_attr":
                env[dep] = head.get_attr(dep.target)
            elif dep not in env:
                raise UnsupportedError(f"{node.name}: the ops after the last delta GRU read {dep.name}, not only "
                                       "its output h; the kernel runs the GRU chain, then a head on h")
        env[node] = head.node_copy(node, lambda n: env[n])
    if returned not in env:
        raise UnsupportedError("the model output does not depend on the last delta GRU's output")
    head.output(env[returned])
    module = torch.fx.GraphModule(graph.module, head)
    _check_per_frame(module, last)
    return module


def _check_per_frame(head: torch.fx.GraphModule, last: torch.fx.Node) -> None:
    h = torch.randn(2, 5, *last.meta["val"].shape[2:], generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        whole = head(h)
        frames = torch.cat([head(h[:, t:t + 1]) for t in range(h.shape[1])], dim=1)
    if whole.shape != frames.shape or not torch.allclose(whole, frames, rtol=1e-5, atol=1e-6):
        raise UnsupportedError("the ops after the last delta GRU mix frames (e.g. a mean over time): a streaming "
                               "step model needs a per-frame head", hint="average the per-frame logits outside")


def net_blob(graph: Graph) -> bytes:
    layers = gru_chain(graph)
    parts = [b"HWDG", struct.pack("<iii", 1, len(layers), layers[0]["key_interval"])]
    for layer in layers:
        hidden, n_in = layer["weight_h"].shape[1], layer["weight_x"].shape[1]
        theta = layer["threshold"].to(torch.float32).reshape(-1)
        parts.append(struct.pack("<iiiiff", n_in, hidden, layer["levels"], 0, float(theta[0]), float(theta[-1])))
        parts += [le_bytes(layer[key], "<f4") for key in ("step_x", "step_h", "scale_x", "scale_h")]
        parts += [le_bytes(layer[key], "<i4") for key in ("bias_x", "bias_h")]
        parts += [le_bytes(layer[key].t(), "i1") for key in ("weight_x", "weight_h")]
        pad4(parts)
    return b"".join(parts)


def layer_shapes(blob: bytes) -> list[tuple[int, int]]:
    """(n_in, hidden) of every layer of a net blob (one hwact wrote: the header is checked, not the layers)."""
    count, _ = net_header(blob, b"HWDG", "delta GRU net")
    shapes, offset = [], 16
    for _ in range(count):
        n_in, hidden = struct.unpack("<ii", blob[offset:offset + 8])
        shapes.append((n_in, hidden))
        offset += 24 + 4 * (n_in + hidden) + 48 * hidden + (n_in + hidden) * 3 * hidden
        offset += (4 - offset % 4) % 4
    return shapes


# ----- building ----------------------------------------------------------------------------------
def build_library(outdir: Path, arch_flags: list[str] | None = None) -> Path:
    """Compile the runtime into outdir/libhwact_delta_gru.so for this machine (copies the sources)."""
    return compile_shared(outdir, SOURCES, LIBRARY, arch_flags)


def build_aarch64(outdir: Path) -> Path:
    """Cross-compile the stand-alone runner for aarch64 (NEON kernel); run it with qemu-aarch64."""
    return cross_compile_aarch64(outdir, ("delta_gru.c", "delta_gru_main.c"), "delta_gru_main_aarch64")


def run_under_qemu(exe: Path, blob: bytes, x: np.ndarray, workdir: Path) -> dict:
    """Run the aarch64 runner on x (batch, steps, n_in) under qemu-user; returns y, fired, kernel."""
    what = "aarch64 delta GRU runner"
    raw, printed = run_runner(exe, {"net.bin": blob, "in.bin": stream_input(x)}, workdir, what, aarch64_emulator())
    shapes = layer_shapes(blob)
    y, fired = read_arrays(raw, [("<f4", (*x.shape[:2], shapes[-1][1])), ("<i8", (len(shapes), 2))], what)
    return {"y": y, "fired": fired, "kernel": printed}


# ----- running -----------------------------------------------------------------------------------
class DeltaGRURuntime(NetRuntime):
    """The delta GRU chain runtime (delta_gru.c) for one net, with the state of `batch` streams."""
    PREFIX, WHAT = "dg", "delta GRU"

    def __init__(self, blob: bytes, library: Path):
        super().__init__(blob, library, layer_shapes(blob))
        self.state_len, self.hidden_len = self.lib.dg_state_len(self.net), self.lib.dg_hidden_len(self.net)
        self.reset(0)

    def _declare(self) -> None:
        super()._declare()
        lib = self.lib
        lib.dg_state_len.restype = lib.dg_hidden_len.restype = ctypes.c_int64
        lib.dg_state_len.argtypes = lib.dg_hidden_len.argtypes = [ctypes.c_void_p]
        lib.dg_set_threshold.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_float, ctypes.c_float]
        lib.dg_reset.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]
        lib.dg_run.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]

    def reset(self, batch: int) -> None:
        self.state = np.zeros((batch, self.state_len), np.int32)
        self.hidden = np.zeros((batch, self.hidden_len), np.float32)
        self.frame = np.zeros(batch, np.int64)
        self.lib.dg_reset(self.net, batch, self.state.ctypes.data, self.hidden.ctypes.data, self.frame.ctypes.data)

    def set_threshold(self, theta_x: float, theta_h: float | None = None, layer: int = -1) -> None:
        self._set_threshold(layer, theta_x, theta_x if theta_h is None else theta_h)

    def run(self, x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Run frames x (batch, steps, n_in) from the current state; returns y (batch, steps, hidden)
        and the columns used, (n_layers, 2): x columns and h columns per layer."""
        return self._run(x, (self.n_layers, 2), ("state", "hidden", "frame"))


def call_layer(layer: dict, x: torch.Tensor, state: tuple, threshold: torch.Tensor | None = None):
    """One hwact::delta_gru call of `layer` on x (batch, steps, n_in) from `state` (six Nones: start)."""
    threshold = layer["threshold"] if threshold is None else threshold
    return torch.ops.hwact.delta_gru(x, layer["step_x"], layer["step_h"], layer["levels"], layer["weight_x"],
                                     layer["weight_h"], layer["scale_x"], layer["scale_h"], layer["bias_x"],
                                     layer["bias_h"], threshold, layer["key_interval"], *state)


def reference_stream(graph: Graph, x: torch.Tensor) -> tuple[torch.Tensor, list[tuple[int, int]]]:
    """The PyTorch reference of the chain, one hwact::delta_gru call per frame with the state carried
    between calls; returns y (batch, steps, hidden) and per layer the (x, h) columns used (the codes
    that were sent)."""
    h = x.to(torch.float32)
    fired = []
    for layer in gru_chain(graph):
        hidden = layer["weight_h"].shape[1]
        codes = (torch.zeros(h.shape[0], h.shape[2], dtype=torch.int32),
                 torch.zeros(h.shape[0], hidden, dtype=torch.int32))
        state, outputs, used_x, used_h = (None,) * 6, [], 0, 0
        for t in range(h.shape[1]):
            y, *state = call_layer(layer, h[:, t:t + 1].contiguous(), tuple(state))
            used_x += int((state[0] != codes[0]).sum())
            used_h += int((state[1] != codes[1]).sum())
            codes = (state[0], state[1])
            outputs.append(y)
        h = torch.cat(outputs, dim=1)
        fired.append((used_x, used_h))
    return h, fired


# ----- ONNX step model ---------------------------------------------------------------------------
class DeltaGRUStep(torch.nn.Module):
    """One frame of the chain with the state as explicit inputs and outputs (hwact::delta_gru, T = 1)."""

    def __init__(self, layers: list[dict], head: torch.nn.Module | None = None):
        super().__init__()
        self.head = head
        self.specs = [(layer["levels"], layer["key_interval"]) for layer in layers]
        for i, layer in enumerate(layers):
            for key in ("step_x", "step_h", "weight_x", "weight_h", "scale_x", "scale_h", "bias_x", "bias_h"):
                self.register_buffer(f"l{i}_{key}", layer[key].clone())

    def forward(self, x, *rest):
        frame, per_layer, new_frame = rest[-1], len(STATE_NAMES) + 1, rest[-1]
        h, outputs = x.unsqueeze(1), []
        for i, (levels, key_interval) in enumerate(self.specs):
            threshold, *state = rest[i * per_layer:(i + 1) * per_layer]
            b = {key: getattr(self, f"l{i}_{key}") for key in ("step_x", "step_h", "weight_x", "weight_h",
                                                                "scale_x", "scale_h", "bias_x", "bias_h")}
            h, *new_state, new_frame = torch.ops.hwact.delta_gru(
                h, b["step_x"], b["step_h"], levels, b["weight_x"], b["weight_h"], b["scale_x"], b["scale_h"],
                b["bias_x"], b["bias_h"], threshold, key_interval, *state, frame)
            outputs += new_state
        y = h if self.head is None else self.head(h)
        return (y.squeeze(1), *outputs, new_frame)


def io_names(count: int) -> tuple[list[str], list[str]]:
    per_layer = [[f"threshold_{i}", *[f"{name}_{i}" for name in STATE_NAMES]] for i in range(count)]
    inputs = ["x", *[name for names in per_layer for name in names], "frame"]
    outputs = ["y", *[f"{name}_{i}_out" for i in range(count) for name in STATE_NAMES], "frame_out"]
    return inputs, outputs


def initial_state(graph: Graph, batch: int, threshold: float | None = None) -> dict[str, np.ndarray]:
    """Start values of every state input (and the thresholds) of the step model for `batch` streams."""
    if threshold is not None:
        require_threshold(threshold)
    feeds = {}
    for i, layer in enumerate(gru_chain(graph)):
        theta = np.full(2, threshold, np.float32) if threshold is not None else layer["threshold"].numpy()
        n_in, hidden = layer["weight_x"].shape[1], layer["weight_h"].shape[1]
        feeds[f"threshold_{i}"] = theta
        feeds[f"codes_x_{i}"] = np.zeros((batch, n_in), np.int32)
        feeds[f"codes_h_{i}"] = np.zeros((batch, hidden), np.int32)
        feeds[f"acc_x_{i}"] = np.tile(layer["bias_x"].numpy().astype(np.int32), (batch, 1))
        feeds[f"acc_h_{i}"] = np.tile(layer["bias_h"].numpy().astype(np.int32), (batch, 1))
        feeds[f"h_{i}"] = np.zeros((batch, hidden), np.float32)
    feeds["frame"] = np.zeros(1, np.int64)
    return feeds


def export_step(graph: Graph, path: Path) -> Path:
    """delta_gru_step.onnx: one frame per call, state in and out (torch.onnx dynamo export, opset 20)."""
    layers = gru_chain(graph)
    names, outputs = io_names(len(layers))
    # optimize=False: the onnx optimizer drops Add(x, c) for |c| < 1e-8 as an identity, and the tanh
    # polynomial's high coefficients are that small (the step model would lose bit-exactness)
    return export_step_module(DeltaGRUStep(layers, frame_head(graph)).eval(),
                              torch.zeros(2, layers[0]["weight_x"].shape[1]), initial_state(graph, batch=2),
                              names, outputs, path, optimize=False)


def run_stream(sess, graph: Graph, x: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Step the ONNX model over x (batch, steps, n_in), feeding state outputs back; y (batch, steps, hidden)."""
    return step_frames(sess, initial_state(graph, x.shape[0], threshold), x)


# ----- convert -----------------------------------------------------------------------------------
def max_error(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a.astype(np.float64) - b.astype(np.float64)).max()) if a.size else 0.0


def convert_gru(lowered_graph: Graph, outdir: Path, sequences: int = 4, steps: int = 40, seed: int = 0) -> dict:
    """Write delta_gru_net.bin, the C sources, libhwact_delta_gru.so and delta_gru_step.onnx to outdir,
    check C and ONNX against the reference over random-walk sequences, and return the report."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    layers = gru_chain(lowered_graph)
    blob = net_blob(lowered_graph)
    (outdir / "delta_gru_net.bin").write_bytes(blob)
    runtime = DeltaGRURuntime(blob, build_library(outdir))
    step_path = export_step(lowered_graph, outdir / "delta_gru_step.onnx")
    x = random_walk(sequences, steps, layers[0]["weight_x"].shape[1], seed=seed)
    expected, fired = reference_stream(lowered_graph, x)
    y_c, used = runtime.run(x.numpy())
    errors = {"c": max_error(y_c, expected.numpy())}
    if errors["c"] > TOLERANCE or used.tolist() != [list(f) for f in fired]:
        raise VerificationError(f"delta GRU C kernel differs from the reference (max abs {errors['c']:.3g}, "
                                f"columns {used.tolist()} vs {fired})")
    head = frame_head(lowered_graph)
    y_onnx = run_stream(session(step_path), lowered_graph, x.numpy())
    if head is None:
        errors["onnx"] = max_error(y_onnx, expected.numpy())
        limit = TOLERANCE
    else:  # the GRU part is bit-exact; the float head runs in onnxruntime: float32 rounding of a GEMM
        with torch.no_grad():
            logits = head(expected).numpy()
        errors["onnx"] = max_error(y_onnx, logits)
        limit = HEAD_TOLERANCE * max(1.0, float(np.abs(logits).max()))
    if not errors["onnx"] <= limit:
        raise VerificationError(f"delta GRU ONNX step model differs from the reference (max abs {errors['onnx']:.3g})")
    frames = sequences * steps
    report_layers = []
    for (n_in, hidden), (fired_x, fired_h) in zip(runtime.shapes, fired):
        report_layers.append({"n_in": n_in, "hidden": hidden, "x_sparsity": 1 - fired_x / (frames * n_in),
                              "h_sparsity": 1 - fired_h / (frames * hidden)})
    return {"layers": report_layers, "kernel": runtime.kernel, "tolerance": TOLERANCE, "max_abs_error": errors,
            "head": None if head is None else sorted({str(n.target) for n in head.graph.nodes
                                                      if n.op == "call_function"}),
            "frames": steps, "streams": sequences, "key_interval": layers[0]["key_interval"],
            "artifacts": sorted(p.name for p in outdir.iterdir())}
