"""ONNX export of a lowered delta network as a streaming step model with explicit state.

delta_step.onnx, one frame per call (any ONNX runtime can step it):
    inputs : x (batch, n_in) float32,
             threshold_l (1,) float32          per layer, run-time threshold (0 = exact),
             state_l (batch, n_in_l) int32     last transmitted codes,
             acc_l (batch, n_out_l) int32      accumulators (start: bias_acc),
             frame (1,) int64                  frame counter (key frames)
    outputs: y (batch, n_out) float32, then state_l', acc_l' per layer, frame'
Each layer is hwact::delta_linear on a one-frame sequence, written through its registered ONNX
translation (Round/Clip/Sub/Abs/Where + an int32 MatMul), so the ONNX model is bit-exact with the
reference. `initial_state(...)` gives the start values; feed each call's outputs to the next call.

dense.onnx: the same weights as a plain float MLP (W = weight * scale / step, b = bias_acc * scale),
one frame per call: the onnxruntime baseline for `hwact bench --stream`.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from hwact.backends.delta_c import chain
from hwact.backends.onnx import OPSET, ort_session
from hwact.errors import VerificationError
from hwact.ir.delta_ops import require_threshold
from hwact.ir.graph import Graph
from hwact.ir.ops import ONNX_TRANSLATIONS, load_all_ops


class DeltaStep(torch.nn.Module):
    def __init__(self, layers: list[dict], key_interval: int):
        super().__init__()
        self.specs = [(int(l["levels"]), bool(l["relu"])) for l in layers]
        self.key_interval = key_interval
        for i, layer in enumerate(layers):
            for key in ("step", "weight", "scale", "bias_acc"):
                self.register_buffer(f"l{i}_{key}", layer[key].clone())

    def forward(self, x, *rest):
        count = len(self.specs)
        thresholds, states, accs, frame = rest[:count], rest[count:2 * count], rest[2 * count:3 * count], rest[-1]
        h = x.unsqueeze(1)
        new_states, new_accs, new_frame = [], [], frame
        for i, (levels, relu) in enumerate(self.specs):
            y, state, acc, new_frame = torch.ops.hwact.delta_linear(
                h, getattr(self, f"l{i}_step"), levels, getattr(self, f"l{i}_weight"), getattr(self, f"l{i}_scale"),
                getattr(self, f"l{i}_bias_acc"), thresholds[i], self.key_interval, states[i], accs[i], frame)
            h = torch.relu(y) if relu else y
            new_states.append(state)
            new_accs.append(acc)
        return (h.squeeze(1), *new_states, *new_accs, new_frame)


def io_names(count: int) -> tuple[list[str], list[str]]:
    inputs = ["x", *[f"threshold_{i}" for i in range(count)], *[f"state_{i}" for i in range(count)],
              *[f"acc_{i}" for i in range(count)], "frame"]
    outputs = ["y", *[f"state_{i}_out" for i in range(count)], *[f"acc_{i}_out" for i in range(count)], "frame_out"]
    return inputs, outputs


def initial_state(graph: Graph, batch: int, threshold: float | None = None) -> dict[str, np.ndarray]:
    """Start values of every state input (and the thresholds) for `batch` streams."""
    if threshold is not None:
        require_threshold(threshold)
    layers = chain(graph)
    feeds = {}
    for i, layer in enumerate(layers):
        value = float(layer["threshold"]) if threshold is None else float(threshold)
        feeds[f"threshold_{i}"] = np.array([value], np.float32)
        feeds[f"state_{i}"] = np.zeros((batch, layer["weight"].shape[1]), np.int32)
        feeds[f"acc_{i}"] = np.tile(layer["bias_acc"].numpy().astype(np.int32), (batch, 1))
    feeds["frame"] = np.zeros(1, np.int64)
    return feeds


def export_step(graph: Graph, path: Path) -> Path:
    layers = chain(graph)
    module = DeltaStep(layers, layers[0]["key_interval"]).eval()
    names, outputs = io_names(len(layers))
    return export_step_module(module, torch.zeros(2, layers[0]["weight"].shape[1]), initial_state(graph, batch=2),
                              names, outputs, path)


def export_step_module(module: torch.nn.Module, x: torch.Tensor, feeds: dict[str, np.ndarray], names: list[str],
                       outputs: list[str], path: Path, optimize: bool = True) -> Path:
    """Export a one-frame step model module(x, *feeds[names[1:]]) to one ONNX file (opset 20): the batch
    dimension of x and of every state input is dynamic; thresholds and the frame counter are not."""
    load_all_ops()
    args = (x, *[torch.from_numpy(feeds[n]) for n in names[1:]])
    batch = torch.export.Dim("batch", min=1, max=4096)
    specs = [None if n.startswith("threshold_") or n == "frame" else {0: batch} for n in names]
    program = torch.export.export(module, args, dynamic_shapes=(specs[0], tuple(specs[1:])))
    onnx_program = torch.onnx.export(program, (), dynamo=True, opset_version=OPSET, input_names=names,
                                     output_names=outputs, custom_translation_table=dict(ONNX_TRANSLATIONS),
                                     verbose=False, optimize=optimize)
    onnx_program.save(str(path), external_data=False)
    return path


def export_dense(graph: Graph, path: Path) -> Path:
    """The float dense MLP with the lowered net's weights (one frame per call): the ORT baseline."""
    layers = chain(graph)
    linears, modules = [], []
    for layer in layers:
        weight = layer["weight"].to(torch.float32) * layer["scale"][:, None] / layer["step"][None, :]
        linear = torch.nn.Linear(weight.shape[1], weight.shape[0])
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(layer["bias_acc"].to(torch.float32) * layer["scale"])
        modules.append(linear)
        if layer["relu"]:
            modules.append(torch.nn.ReLU())
        linears.append(linear)
    model = torch.nn.Sequential(*modules).eval()
    x = torch.zeros(2, layers[0]["weight"].shape[1])
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (x,), dynamic_shapes=({0: batch},))
    torch.onnx.export(program, (), dynamo=True, opset_version=OPSET, input_names=["x"], output_names=["y"],
                      verbose=False).save(str(path), external_data=False)
    return path


def session(path: Path, threads: int = 1):
    """An onnxruntime CPU session on a step model: one thread by default (one frame per call is small)."""
    return ort_session(path, threads)


def run_stream(sess, graph: Graph, x: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Step the ONNX model over x (batch, steps, n_in), feeding state outputs back; y (batch, steps, n_out)."""
    return step_frames(sess, initial_state(graph, x.shape[0], threshold), x)


def step_frames(sess, feeds: dict[str, np.ndarray], x: np.ndarray) -> np.ndarray:
    """Run a one-frame step model over x (batch, steps, ...): each frame goes in as input 'x', every output
    'NAME_out' comes back as input 'NAME' of the next frame; returns the stacked 'y' (batch, steps, ...)."""
    feeds = dict(feeds)
    names = [i.name for i in sess.get_inputs()]
    outs = [o.name for o in sess.get_outputs()]
    ys = []
    for t in range(x.shape[1]):
        feeds["x"] = np.ascontiguousarray(x[:, t], np.float32)
        result = dict(zip(outs, sess.run(outs, {n: feeds[n] for n in names})))
        ys.append(result["y"])
        for name in outs[1:]:
            feeds[name.removesuffix("_out")] = result[name]
    return np.stack(ys, axis=1)


def verify_step(path: Path, graph: Graph, x: np.ndarray, reference: np.ndarray) -> dict:
    y = run_stream(session(path), graph, x)
    if y.shape != reference.shape:
        raise VerificationError(f"ONNX step model output {y.shape} != reference {reference.shape}")
    mismatches = int((y != reference).sum())
    if mismatches:
        raise VerificationError(f"ONNX step model differs from the reference in {mismatches} values "
                                f"(max abs {float(np.abs(y - reference).max()):.3g})")
    return {"frames": int(x.shape[1]), "streams": int(x.shape[0]), "bit_exact": True}
