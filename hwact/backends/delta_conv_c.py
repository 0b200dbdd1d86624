"""C and ONNX backends for lowered delta conv networks (hwact::delta_conv2d layers, a delta_linear head).

The C kernel (delta_c_src/delta_conv.c) runs ONE hwact::delta_conv2d layer over (B, T, C, H, W)
sequences with the state carried in and out. Per frame it quantizes the input, keeps the inputs whose
code changed by at least the channel's code threshold, and for each fired input (c, iy, ix) adds
d * W[:, c, ky, kx] (int8, contiguous over the output channels) into every accumulator position it
touches:  oy * stride + ky * dilation = iy + padding.  So the work scales with the fired inputs, and
integer accumulation makes it bit-exact with the reference; the float steps (x / step, round
half-even, acc * scale) are IEEE single operations on both sides (-ffp-contract=off).
A whole model runs layer by layer (`run_model`): the delta_conv2d nodes in the C kernel, every other
node of the lowered graph (ReLU, flatten, the delta_linear head) in PyTorch.

Files written by `convert_conv(lowered_graph, outdir)`:
    delta_conv_net.bin      per layer dims, threshold, steps, scales, bias_acc, int8 weights (`net_blob`)
    delta_conv.c            the kernel source, and libhwact_delta_conv.so built for this machine
    delta_conv_step.onnx    one frame per call, state as explicit inputs/outputs (`export_step`):
        inputs : x (batch, C, H, W) float32, threshold_i (1,) float32, state_i int32, acc_i int32,
                 frame (1,) int64           (i over the stateful layers: delta_conv2d, delta_linear)
        outputs: y (batch, classes) float32, state_i_out, acc_i_out, frame_out
Net file (little endian): "HWDC", int32 version = 1, int32 n_layers, then per layer int32 dims[15]
(see `layer_dims`), int32 key_interval, float32 threshold, float32 step[C], float32 scale[O],
int32 bias_acc[O], int8 weight[C][KH][KW][O], padded to 4 bytes.
"""

from __future__ import annotations

import ctypes
import operator
import struct
from pathlib import Path

import numpy as np
import torch
import torch.fx

import hwact.ir.delta_conv_ops  # noqa: F401  (registers hwact::delta_conv2d)
from hwact.backends import delta_c
from hwact.backends.delta_c import StreamRuntime, le_bytes, pad4, random_walk
from hwact.backends.delta_onnx import export_step_module, io_names, session, step_frames
from hwact.backends.toolchain import aarch64_emulator, read_arrays, run_runner
from hwact.errors import UnsupportedError, VerificationError
from hwact.ir.delta_conv_ops import output_shape
from hwact.ir.delta_ops import require_threshold
from hwact.ir.graph import Graph
from hwact.ir.ops import bind_args, op_args, set_op_args
from hwact.ir.params import constant_value

DELTA_CONV2D = torch.ops.hwact.delta_conv2d.default
DELTA_LINEAR = torch.ops.hwact.delta_linear.default
SOURCE = "delta_conv.c"
LIBRARY = "libhwact_delta_conv.so"


# ----- the lowered layers ----------------------------------------------------------------------
def conv_layers(graph: Graph) -> list[dict]:
    """The hwact.delta_conv2d layers in graph order: their tensors, conv geometry and input shape."""
    layers = []
    for node in graph.call_nodes():
        if node.target is not DELTA_CONV2D:
            continue
        args = op_args(node)
        values = {key: constant_value(graph, getattr(args, key)) for key in
                  ("step", "weight", "scale", "bias_acc", "threshold")}
        shape = tuple(args.x.meta["val"].shape)
        layers.append({"node": node, "levels": int(args.levels), "key_interval": int(args.key_interval),
                       "stride": list(args.stride), "padding": list(args.padding), "dilation": list(args.dilation),
                       "in_shape": tuple(int(d) for d in shape[2:]), **values})
    if not layers:
        raise UnsupportedError("the graph has no hwact.delta_conv2d layer", hint="run the lower-delta pass first")
    return layers


def layer_dims(layer: dict) -> np.ndarray:
    """C, H, W, O, KH, KW, OH, OW, stride y/x, padding y/x, dilation y/x, levels (the kernel's dims[])."""
    channels, height, width = layer["in_shape"]
    n_out, _, kh, kw = layer["weight"].shape
    oh, ow = output_shape((height, width), layer["weight"].shape, layer["stride"], layer["padding"], layer["dilation"])
    return np.array([channels, height, width, n_out, kh, kw, oh, ow, *layer["stride"], *layer["padding"],
                     *layer["dilation"], layer["levels"]], np.int32)


def kernel_weight(layer: dict) -> np.ndarray:
    """int8 weight (C, KH, KW, O): one contiguous row of output channels per input tap."""
    return np.ascontiguousarray(layer["weight"].permute(1, 2, 3, 0).to(torch.int8).numpy())


def _layer_tensors(layer: dict) -> list[bytes]:
    """step (C,) float32, scale (O,) float32, bias_acc (O,) int32, weight (C, KH, KW, O) int8: as in the
    net file and the runner's input file."""
    return [le_bytes(layer["step"], "<f4"), le_bytes(layer["scale"], "<f4"), le_bytes(layer["bias_acc"], "<i4"),
            kernel_weight(layer).tobytes()]


def net_blob(graph: Graph) -> bytes:
    layers = conv_layers(graph)
    parts = [b"HWDC", struct.pack("<ii", 1, len(layers))]
    for layer in layers:
        parts += [le_bytes(layer_dims(layer), "<i4"),
                  struct.pack("<if", layer["key_interval"], float(layer["threshold"])), *_layer_tensors(layer)]
        pad4(parts)
    return b"".join(parts)


# ----- building --------------------------------------------------------------------------------
def build_library(outdir: Path, arch_flags: list[str] | None = None) -> Path:
    """Compile delta_conv.c into outdir/libhwact_delta_conv.so (same flags as the delta_linear runtime)."""
    return delta_c.compile_shared(outdir, (SOURCE, "delta_simd.h"), LIBRARY, arch_flags)


def build_aarch64(outdir: Path) -> Path:
    """Cross-compile the stand-alone one-layer runner (NEON kernel) for qemu-aarch64."""
    return delta_c.cross_compile_aarch64(outdir, (SOURCE,), "delta_conv_aarch64", defines=("-DDC_MAIN",))


def _runner_input(layer: dict, x: np.ndarray, threshold: float) -> bytes:
    """The runner's input file: dims, key_interval, threshold, batch, steps, step, scale, weight, x."""
    batch, steps = x.shape[:2]
    return b"".join([le_bytes(layer_dims(layer), "<i4"),
                     struct.pack("<ifii", layer["key_interval"], threshold, batch, steps), *_layer_tensors(layer),
                     le_bytes(x, "<f4")])


def run_under_qemu(exe: Path, layer: dict, x: np.ndarray, workdir: Path) -> dict:
    """One layer from a fresh stream on x (B, T, C, H, W) under qemu-user: y, fired, kernel name."""
    what = "aarch64 delta conv runner"
    raw, printed = run_runner(exe, {"in.bin": _runner_input(layer, x, float(layer["threshold"]))}, workdir, what,
                              aarch64_emulator())
    dims = layer_dims(layer)
    y, fired = read_arrays(raw, [("<f4", (x.shape[0], x.shape[1], int(dims[3]), int(dims[6]), int(dims[7]))),
                                 ("<i8", (1,))], what)
    return {"y": y, "fired": int(fired[0]), "kernel": printed}


# ----- the runtime -----------------------------------------------------------------------------
class ConvLayerRuntime(StreamRuntime):
    """The kernel (delta_conv.c) for one delta_conv2d layer, with the state of `batch` streams.

    State: codes (B, C, H, W) int32, acc (B, OH, OW, O) int32 (channel-last; `reference_state()` gives
    the reference op's (B, O, OH, OW) layout), frame (B,) int64."""
    PREFIX = "dc"

    def __init__(self, layer: dict, library: Path):
        self.layer = layer
        self.dims = layer_dims(layer)
        self.step = np.ascontiguousarray(layer["step"].to(torch.float32).numpy())
        self.scale = np.ascontiguousarray(layer["scale"].to(torch.float32).numpy())
        self.bias_acc = layer["bias_acc"].to(torch.int32).numpy()
        self.weight = kernel_weight(layer)
        self.key_interval = layer["key_interval"]
        super().__init__(library, layer["in_shape"])
        self.limit = np.zeros(int(self.dims[0]), np.int32)
        self.set_threshold(float(layer["threshold"]))
        self.reset(0)

    def _declare(self) -> None:
        lib = self.lib
        lib.dc_limits.argtypes = [ctypes.c_int32, ctypes.c_void_p, ctypes.c_float, ctypes.c_void_p]
        lib.dc_run.restype = ctypes.c_int64
        lib.dc_run.argtypes = [ctypes.c_void_p] * 5 + [ctypes.c_int32] * 3 + [ctypes.c_void_p] * 5

    def set_threshold(self, threshold: float) -> None:
        require_threshold(threshold)
        self.lib.dc_limits(int(self.dims[0]), self.step.ctypes.data, float(threshold), self.limit.ctypes.data)

    def reset(self, batch: int) -> None:
        c, h, w, o, _, _, oh, ow = (int(v) for v in self.dims[:8])
        self.state = np.zeros((batch, c, h, w), np.int32)
        self.acc = np.ascontiguousarray(np.broadcast_to(self.bias_acc, (batch, oh, ow, o)), np.int32)
        self.frame = np.zeros(batch, np.int64)

    def reference_state(self) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.from_numpy(self.state.copy()), torch.from_numpy(self.acc.transpose(0, 3, 1, 2).copy())

    def run(self, x: np.ndarray) -> tuple[np.ndarray, int]:
        """Frames x (B, T, C, H, W) from the current state -> y (B, T, O, OH, OW) and the fired inputs."""
        x = self.frames(x)
        o, oh, ow = (int(self.dims[i]) for i in (3, 6, 7))
        y = np.zeros((x.shape[0], x.shape[1], o, oh, ow), np.float32)
        fired = self.lib.dc_run(self.dims.ctypes.data, self.step.ctypes.data, self.scale.ctypes.data,
                                self.weight.ctypes.data, self.limit.ctypes.data, self.key_interval, x.shape[0],
                                x.shape[1], x.ctypes.data, y.ctypes.data, self.state.ctypes.data,
                                self.acc.ctypes.data, self.frame.ctypes.data)
        return y, int(fired)


class _LayerRunner(torch.fx.Interpreter):
    """Runs a lowered graph with every delta_conv2d call replaced by `run_layer(index, arguments by name)`."""

    def __init__(self, graph: Graph, run_layer):
        super().__init__(graph.module)
        self.run_layer, self.index = run_layer, 0

    def call_function(self, target, args, kwargs):
        if target is DELTA_CONV2D:
            y = self.run_layer(self.index, bind_args(target, args, kwargs))
            self.index += 1
            return (y, None, None, None)
        return super().call_function(target, args, kwargs)


def run_model(graph: Graph, x: torch.Tensor, runtimes: list[ConvLayerRuntime]) -> tuple[torch.Tensor, list[int]]:
    """The whole lowered model on x (B, T, C, H, W) from fresh streams: conv layers in C, the rest in
    PyTorch. Returns y and the fired inputs per conv layer."""
    fired = []

    def run_layer(index, call):
        runtime = runtimes[index]
        runtime.reset(x.shape[0])
        y, used = runtime.run(call.x.detach().numpy())
        fired.append(used)
        return torch.from_numpy(y)

    with torch.no_grad():
        out = _LayerRunner(graph, run_layer).run(x)
    return (out[0] if isinstance(out, (tuple, list)) else out), fired


def reference_fired(graph: Graph, x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """The reference (every op in PyTorch) frame by frame, with the fired inputs per conv layer counted
    as the transmitted codes that changed."""
    fired = []

    def run_layer(index, call):
        state = acc = frame = None
        used, outputs = 0, []
        for t in range(call.x.shape[1]):
            before = state
            y, state, acc, frame = DELTA_CONV2D(**{**vars(call), "x": call.x[:, t:t + 1].contiguous(), "state": state,
                                                   "acc": acc, "frame": frame})
            used += int((state != 0).sum()) if before is None else int((state != before).sum())
            outputs.append(y)
        fired.append(used)
        return torch.cat(outputs, dim=1)

    with torch.no_grad():
        out = _LayerRunner(graph, run_layer).run(x)
    return (out[0] if isinstance(out, (tuple, list)) else out), fired


# ----- ONNX step model -------------------------------------------------------------------------
def _stateful(graph: Graph) -> list[torch.fx.Node]:
    return [n for n in graph.call_nodes() if n.target in (DELTA_CONV2D, DELTA_LINEAR)]


def step_graph(graph: Graph) -> torch.fx.GraphModule:
    """A copy of the lowered graph whose stateful ops read threshold_i, state_i, acc_i and frame from
    inputs and return (y, state_i', ..., acc_i', ..., frame')."""
    module = graph.copy().module
    fx = module.graph
    nodes = [n for n in fx.nodes if n.op == "call_function" and n.target in (DELTA_CONV2D, DELTA_LINEAR)]
    x = next(n for n in fx.nodes if n.op == "placeholder")
    inputs = {}
    with fx.inserting_after(x):
        for name in ["frame", *[f"acc_{i}" for i in reversed(range(len(nodes)))],
                     *[f"state_{i}" for i in reversed(range(len(nodes)))],
                     *[f"threshold_{i}" for i in reversed(range(len(nodes)))]]:
            inputs[name] = fx.placeholder(name)
    outputs = {"state": [], "acc": []}
    for i, node in enumerate(nodes):
        set_op_args(node, threshold=inputs[f"threshold_{i}"], state=inputs[f"state_{i}"], acc=inputs[f"acc_{i}"],
                    frame=inputs["frame"])
        with fx.inserting_after(node):
            items = [fx.call_function(operator.getitem, (node, k)) for k in (1, 2, 3)]
        outputs["state"].append(items[0])
        outputs["acc"].append(items[1])
        frame_out = items[2]
    output = next(n for n in fx.nodes if n.op == "output")
    y = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    output.args = ((y, *outputs["state"], *outputs["acc"], frame_out),)
    fx._codegen = torch.fx.graph.CodeGen()      # plain positional inputs, not the exported pytree spec
    module.recompile()
    return module


class ConvStep(torch.nn.Module):
    """One frame x (B, C, H, W) of the lowered model with explicit state (see the module docstring)."""

    def __init__(self, graph: Graph):
        super().__init__()
        self.inner = step_graph(graph)

    def forward(self, x, *rest):
        y, *state = self.inner(x.unsqueeze(1), *rest)
        return (y.squeeze(1), *state)


def initial_state(graph: Graph, batch: int, threshold: float | None = None) -> dict[str, np.ndarray]:
    """Start values of every state input (and the thresholds) of delta_conv_step.onnx for `batch` streams."""
    if threshold is not None:
        require_threshold(threshold)
    feeds = {}
    for i, node in enumerate(_stateful(graph)):
        args = op_args(node)
        shape = tuple(int(d) for d in args.x.meta["val"].shape[2:])
        bias_acc = constant_value(graph, args.bias_acc).to(torch.int32).numpy()
        value = float(constant_value(graph, args.threshold)) if threshold is None else float(threshold)
        feeds[f"threshold_{i}"] = np.array([value], np.float32)
        feeds[f"state_{i}"] = np.zeros((batch, *shape), np.int32)
        if node.target is DELTA_CONV2D:
            weight = constant_value(graph, args.weight)
            oh, ow = output_shape(shape, weight.shape, args.stride, args.padding, args.dilation)
            feeds[f"acc_{i}"] = np.ascontiguousarray(np.broadcast_to(bias_acc[None, :, None, None],
                                                                     (batch, len(bias_acc), oh, ow)), np.int32)
        else:
            feeds[f"acc_{i}"] = np.tile(bias_acc, (batch, 1))
    feeds["frame"] = np.zeros(1, np.int64)
    return feeds


def export_step(graph: Graph, path: Path) -> Path:
    names, outputs = io_names(len(_stateful(graph)))
    return export_step_module(ConvStep(graph).eval(), torch.zeros(2, *graph.inputs[0].shape[2:]),
                              initial_state(graph, batch=2), names, outputs, path)


def run_onnx_stream(sess, graph: Graph, x: np.ndarray, threshold: float | None = None) -> np.ndarray:
    """Step the ONNX model over x (B, T, C, H, W), feeding the state outputs back; y (B, T, classes)."""
    return step_frames(sess, initial_state(graph, x.shape[0], threshold), x)


# ----- the flow --------------------------------------------------------------------------------
def _mismatch(name: str, got: np.ndarray, expected: np.ndarray) -> None:
    if got.shape != expected.shape or not np.array_equal(got, expected):
        differ = int((got != expected).sum()) if got.shape == expected.shape else "all"
        raise VerificationError(f"{name} differs from the reference ({differ} values)")


def convert_conv(graph: Graph, outdir: Path, sequences: int = 3, batch: int = 2, steps: int = 12) -> dict:
    """Write the artifacts of a lowered delta conv model into outdir and check the C kernel and the ONNX
    step model bit-exact against the reference on random-walk sequences; returns the report."""
    outdir = Path(outdir)
    outdir.mkdir(parents=True, exist_ok=True)
    layers = conv_layers(graph)
    (outdir / "delta_conv_net.bin").write_bytes(net_blob(graph))
    library = build_library(outdir)
    runtimes = [ConvLayerRuntime(layer, library) for layer in layers]
    onnx_path = export_step(graph, outdir / "delta_conv_step.onnx")
    sess = session(onnx_path)
    fired_total, seen = np.zeros(len(layers), np.int64), 0
    for seed in range(sequences):
        x = random_walk(batch, steps, graph.inputs[0].shape[2:], seed=seed)
        expected, fired = reference_fired(graph, x)
        y_c, fired_c = run_model(graph, x, runtimes)
        _mismatch("C delta conv kernel output", y_c.numpy(), expected.numpy())
        if fired_c != fired:
            raise VerificationError(f"C kernel fired {fired_c} inputs per layer, the reference {fired}")
        _mismatch("ONNX step model output", run_onnx_stream(sess, graph, x.numpy()), expected.numpy())
        fired_total += np.array(fired, np.int64)
        seen += batch * steps
    inputs = [int(np.prod(layer["in_shape"])) for layer in layers]
    return {"layers": [{"name": layer["node"].name, "in_shape": list(layer["in_shape"]),
                        "out_channels": int(layer["weight"].shape[0]), "kernel": list(layer["weight"].shape[2:]),
                        "stride": layer["stride"], "padding": layer["padding"], "dilation": layer["dilation"],
                        "temporal_sparsity": round(1.0 - float(fired_total[i]) / (seen * inputs[i]), 4)}
                       for i, layer in enumerate(layers)],
            "kernel": runtimes[0].kernel, "sequences": sequences * batch, "frames": steps,
            "bit_exact": {"c": True, "onnx": True},
            "artifacts": ["delta_conv_net.bin", SOURCE, LIBRARY, "delta_conv_step.onnx"]}
