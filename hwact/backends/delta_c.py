"""C backend for lowered delta networks: a chain of hwact::delta_linear layers (ReLU between them).

The C runtime (delta_c_src/delta.c) keeps per stream, per layer, the last transmitted codes and the
int32 accumulators, and per frame updates each accumulator with only the weight columns whose input
code changed by at least the layer's code threshold (column kernel: AVX2 on x86-64, NEON on aarch64,
scalar elsewhere). Integer accumulation makes it bit-exact with the PyTorch reference op; the float
steps (x / step, round half-even, acc * scale) are IEEE single operations on both sides, compiled
with -ffp-contract=off.

Net file (little endian), written by `net_blob`:
    "HWDL", int32 version = 1, int32 n_layers, int32 key_interval, then per layer
    int32 n_in, n_out, levels, relu; float32 threshold; float32 step[n_in]; float32 scale[n_out];
    int32 bias_acc[n_out]; int8 weight[n_in][n_out] (column-major W: column j contiguous); pad to 4.
A net file from a convert folder is untrusted: `parse_net` checks every field and size before anything
reads it, and `DeltaRuntime.open` compiles the runtime from the package's own sources.

Shared by the other delta backends (conv, GRU, CUDA): the chain check, the net file helpers (`le_bytes`,
`pad4`, `net_header`), the gcc builds, the runners' frames file (`stream_input`) and the ctypes runtime
base classes (`StreamRuntime`, `NetRuntime`).
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import struct
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hwact.backends.toolchain import (aarch64_emulator, compile_to, host_arch_flags, read_arrays, require_tool,
                                      run_runner)
from hwact.errors import InputError, UnsupportedError
from hwact.ir.delta_ops import delta_layers, require_key_interval, require_threshold
from hwact.ir.graph import Graph
from hwact.npz import load_arrays

SOURCES = ("delta.c", "delta.h", "delta_simd.h", "delta_main.c")
MAX_NET_BYTES = 1 << 30     # a delta_net.bin larger than 1 GiB (a billion int8 weights) is refused unread
MAX_LAYERS = 1024           # the C loader's limit
C_FLAGS = ["-O3", "-ffp-contract=off", "-fno-fast-math", "-fno-trapping-math", "-std=c11", "-Wall"]  # no FP exceptions are read: lets gcc vectorize selects, changes no result


def source_dir() -> Path:
    return Path(str(resources.files("hwact.backends").joinpath("delta_c_src")))


def chain(graph: Graph) -> list[dict]:
    """The lowered layers, checked to form one chain input -> delta_linear (-> relu) -> ... -> output."""
    return check_chain(graph, delta_layers(graph), "delta_linear", "delta")


def check_chain(graph: Graph, layers: list[dict], op: str, what: str, head: bool = False) -> list[dict]:
    """`layers` (dicts with node, input, output, key_interval), checked to form the whole graph as one
    chain: the single model input -> layer -> ... -> the model output, one key-frame interval (with
    `head`, ops may follow the last layer: the caller runs them)."""
    if not layers:
        raise UnsupportedError(f"the graph has no hwact.{op} layer", hint="run the lower-delta pass first")
    placeholders = [n for n in graph.fx.nodes if n.op == "placeholder"]
    if len(placeholders) != 1 or layers[0]["input"] is not placeholders[0]:
        raise UnsupportedError(f"the first {what} layer must read the (single) model input")
    for previous, layer in zip(layers[:-1], layers[1:]):
        if layer["input"] is not previous["output"]:
            raise UnsupportedError(f"{layer['node'].name} does not read {previous['node'].name}'s output: "
                                   f"the C runtime runs chains of {what} layers")
    output = next(n for n in graph.fx.nodes if n.op == "output")
    returned = output.args[0][0] if isinstance(output.args[0], (tuple, list)) else output.args[0]
    if returned is not layers[-1]["output"] and not head:
        raise UnsupportedError(f"the model output must be the last {what} layer's output")
    if len({layer["key_interval"] for layer in layers}) != 1:
        raise UnsupportedError(f"all {what} layers of a net must share one key-frame interval")
    return layers


def le_bytes(values, dtype: str) -> bytes:
    """A tensor's (or array's) values as the C order bytes of a little-endian numpy `dtype` ("<f4", "<i4", "i1")."""
    values = values.detach().numpy() if isinstance(values, torch.Tensor) else values
    return np.ascontiguousarray(values, dtype).tobytes()


def pad4(parts: list[bytes]) -> None:
    """Append the zero bytes that bring the total length of `parts` to a multiple of 4 (the next layer's
    alignment in every delta net file)."""
    parts.append(bytes(-sum(len(part) for part in parts) % 4))


def net_blob(graph: Graph) -> bytes:
    layers = chain(graph)
    parts = [b"HWDL", struct.pack("<iii", 1, len(layers), layers[0]["key_interval"])]
    for layer in layers:
        weight = layer["weight"]
        n_out, n_in = weight.shape
        parts.append(struct.pack("<iiiif", n_in, n_out, layer["levels"], int(layer["relu"]),
                                 float(layer["threshold"])))
        parts += [le_bytes(layer["step"], "<f4"), le_bytes(layer["scale"], "<f4"), le_bytes(layer["bias_acc"], "<i4"),
                  le_bytes(weight.t(), "i1")]
        pad4(parts)
    return b"".join(parts)


def read_net(path: Path) -> bytes:
    """The bytes of a net file from a folder: a regular file of at most MAX_NET_BYTES, checked unread."""
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such delta net file (or not a regular file)")
    size = path.stat().st_size
    if size > MAX_NET_BYTES:
        raise InputError(f"{path}: {size} bytes, more than a delta net file may have ({MAX_NET_BYTES})")
    return path.read_bytes()


def _bad_net(source: str, reason: str) -> InputError:
    return InputError(f"{source}: not a valid delta net file ({reason})",
                      hint="write it again with `hwact convert MODEL --target cpu`")


def net_header(blob: bytes, magic: bytes, source: str) -> tuple[int, int]:
    """(n_layers, key_interval) from the 16 bytes a chain's net file starts with (HWDL, HWDG): the format's
    magic, int32 version = 1, n_layers (1 to MAX_LAYERS), key_interval (>= 0), each checked."""
    if len(blob) < 16 or blob[:4] != magic:
        raise _bad_net(source, f"no {magic.decode()} header")
    version, count, key_interval = struct.unpack_from("<iii", blob, 4)
    if version != 1:
        raise _bad_net(source, f"version {version}, this hwact reads version 1")
    if not 1 <= count <= MAX_LAYERS or key_interval < 0:
        raise _bad_net(source, f"{count} layers (1 to {MAX_LAYERS}), key-frame interval {key_interval}")
    return count, key_interval


def parse_net(blob: bytes, source: str = "delta net") -> list[dict]:
    """The layers of a net file (format in the module docstring), every field and size checked before it
    is read (the file may come from anyone): dicts with n_in, n_out, levels, relu, threshold,
    key_interval, step, scale, bias_acc, weight (n_out, n_in) int8 tensors - the reference's layer
    keys - and the byte offset of the layer's header."""
    count, key_interval = net_header(blob, b"HWDL", source)
    layers, offset = [], 16
    for index in range(count):
        if len(blob) - offset < 20:
            raise _bad_net(source, f"layer {index}: truncated header")
        n_in, n_out, levels, relu, threshold = struct.unpack_from("<iiiif", blob, offset)
        if n_in < 1 or n_out < 1 or not 1 <= levels <= 127 or relu not in (0, 1) or not 0 <= threshold < np.inf:
            raise _bad_net(source, f"layer {index}: n_in {n_in}, n_out {n_out}, levels {levels}, relu {relu}, "
                                   f"threshold {threshold}")
        if layers and n_in != layers[-1]["n_out"]:
            raise _bad_net(source, f"layer {index} reads {n_in} values, layer {index - 1} gives {layers[-1]['n_out']}")
        body = offset + 20
        end = body + 4 * n_in + 8 * n_out + n_in * n_out
        if end > len(blob):
            raise _bad_net(source, f"layer {index}: {n_in} x {n_out} weights need {end - offset} bytes, "
                                   f"{len(blob) - offset} are left")
        step = np.frombuffer(blob, "<f4", n_in, body).astype(np.float32)
        scale = np.frombuffer(blob, "<f4", n_out, body + 4 * n_in).astype(np.float32)
        if not (np.isfinite(step).all() and (step > 0).all() and np.isfinite(scale).all()):
            raise _bad_net(source, f"layer {index}: a step that is not finite and > 0, or a scale that is not finite")
        bias_acc = np.frombuffer(blob, "<i4", n_out, body + 4 * n_in + 4 * n_out).astype(np.int32)
        weight = np.frombuffer(blob, np.int8, n_in * n_out, end - n_in * n_out).reshape(n_in, n_out).T.copy()
        layers.append({"offset": offset, "n_in": n_in, "n_out": n_out, "levels": levels, "relu": bool(relu),
                       "threshold": torch.tensor(threshold, dtype=torch.float32), "key_interval": key_interval,
                       "step": torch.from_numpy(step), "scale": torch.from_numpy(scale),
                       "bias_acc": torch.from_numpy(bias_acc), "weight": torch.from_numpy(weight)})
        offset = end + (4 - end % 4) % 4
    if offset != len(blob):
        raise _bad_net(source, f"{len(blob) - offset} bytes after the last layer")
    return layers


def net_shapes(blob: bytes) -> list[tuple[int, int]]:
    """(n_in, n_out) of every layer of a net blob."""
    return [(layer["n_in"], layer["n_out"]) for layer in parse_net(blob)]


def fingerprint(blob: bytes) -> str:
    """Identity of a net for its state files: layer shapes and weights, not the run-time settings
    (thresholds, key-frame interval)."""
    data = bytearray(blob)
    data[12:16] = bytes(4)
    for layer in parse_net(blob):
        data[layer["offset"] + 16:layer["offset"] + 20] = bytes(4)
    return hashlib.sha256(bytes(data)).hexdigest()[:16]


# ----- building ----------------------------------------------------------------------------------
def compile_shared(outdir: Path, sources: tuple[str, ...], library: str, arch_flags: list[str] | None = None) -> Path:
    """Copy `sources` (package files: the first is the .c compiled, the rest what it includes or a reader
    needs) into outdir and build outdir/`library` for this machine (AVX2 where the CPU has it)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name in sources:
        shutil.copyfile(source_dir() / name, outdir / name)
    path = outdir / library
    flags = host_arch_flags() if arch_flags is None else arch_flags
    compile_to(path, [require_tool("gcc"), *C_FLAGS, *flags, "-shared", "-fPIC", str(outdir / sources[0]), "-lm"],
               "gcc")
    return path


def cross_compile_aarch64(outdir: Path, c_files: tuple[str, ...], exe: str, defines: tuple[str, ...] = ()) -> Path:
    """Static aarch64 build (NEON kernels) of package .c files, to run under qemu-aarch64."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / exe
    compile_to(path, [require_tool("aarch64-linux-gnu-gcc"), *C_FLAGS, *defines, "-static",
                      *(str(source_dir() / name) for name in c_files), "-lm"], "aarch64-linux-gnu-gcc")
    return path


def build_library(outdir: Path, arch_flags: list[str] | None = None) -> Path:
    """Compile the runtime into outdir/libhwact_delta.so for this machine (copies the sources)."""
    return compile_shared(outdir, SOURCES, "libhwact_delta.so", arch_flags)


def build_aarch64(outdir: Path) -> Path:
    """Cross-compile the stand-alone runner for aarch64 (NEON kernel); run it with qemu-aarch64."""
    return cross_compile_aarch64(outdir, ("delta.c", "delta_main.c"), "delta_main_aarch64")


# ----- the stand-alone runners (aarch64 under qemu-user, CUDA) -------------------------------------
def stream_input(x: np.ndarray) -> bytes:
    """A runner's frames file: int32 batch, steps, n_in, then float32 x (batch, steps, n_in)."""
    batch, steps, n_in = x.shape
    return struct.pack("<iii", batch, steps, n_in) + le_bytes(x, "<f4")


def random_walk(batch: int, steps: int, shape, seed: int = 0, scale: float = 0.3) -> torch.Tensor:
    """Smooth test sequences (batch, steps, *shape) for the checks: a seeded Gaussian random walk (real
    streams change little between frames)."""
    shape = (shape,) if isinstance(shape, int) else tuple(shape)
    generator = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, *shape, generator=generator) * scale).cumsum(dim=1)


def runner_output(raw: bytes, blob: bytes, batch: int, steps: int, what: str) -> dict:
    """The output file of a delta runner (aarch64 or CUDA) on net `blob`: y (batch, steps, n_out) float32,
    the columns used per layer (int64) and the final state (batch, state_len) int32."""
    shapes = net_shapes(blob)
    y, fired, state = read_arrays(raw, [("<f4", (batch, steps, shapes[-1][1])), ("<i8", (len(shapes),)),
                                        ("<i4", (batch, sum(n_in + n_out for n_in, n_out in shapes)))], what)
    return {"y": y, "fired": fired, "state": state}


def run_under_qemu(exe: Path, blob: bytes, x: np.ndarray, workdir: Path, dense: bool = False) -> dict:
    """Run the aarch64 runner on x (batch, steps, n_in) under qemu-user; returns y, fired, state, kernel."""
    what = "aarch64 delta runner"
    raw, printed = run_runner(exe, {"net.bin": blob, "in.bin": stream_input(x)}, workdir, what, aarch64_emulator(),
                              ("1" if dense else "0",))
    return {**runner_output(raw, blob, x.shape[0], x.shape[1], what), "kernel": printed}


# ----- running -----------------------------------------------------------------------------------
class StreamRuntime:
    """ctypes handle on a compiled delta kernel library (C functions PREFIX_*), with the state of a batch
    of streams of frames of `frame_shape`. Loading a library runs its code: `library` is one hwact has
    just built, never one found in a folder. Subclasses declare their functions (`_declare`) and keep
    their state arrays, batch first, which `reset(batch)` restarts."""
    PREFIX = ""

    def __init__(self, library: Path, frame_shape: tuple[int, ...]):
        self.frame_shape = tuple(int(d) for d in frame_shape)
        self.lib = ctypes.CDLL(str(library))
        self.c("kernel_name").restype = ctypes.c_char_p
        self._declare()
        self.kernel = self.c("kernel_name")().decode()

    def c(self, name: str):
        """The library's C function PREFIX_name."""
        return getattr(self.lib, f"{self.PREFIX}_{name}")

    def _declare(self) -> None:
        """Set the argument and result types of the library's functions."""

    def reset(self, batch: int) -> None:  # pragma: no cover - interface
        """Start `batch` fresh streams."""
        raise NotImplementedError

    def frames(self, x: np.ndarray) -> np.ndarray:
        """x as contiguous float32 frames (batch, time, *frame_shape); the first call sets the number of
        streams, later ones must keep it."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 2 + len(self.frame_shape) or x.shape[2:] != self.frame_shape:
            raise InputError(f"stream of shape {tuple(x.shape)}: expected (batch, time, "
                             f"{', '.join(map(str, self.frame_shape))}) frames")
        if self.state.shape[0] != x.shape[0]:
            if self.state.shape[0]:
                raise InputError(f"stream batch {x.shape[0]} != state batch {self.state.shape[0]}",
                                 hint="reset the runtime for a new batch of streams")
            self.reset(x.shape[0])
        return x


class NetRuntime(StreamRuntime):
    """A StreamRuntime over one net blob that the library loads (PREFIX_load, kept alive in `_buffer`) and
    runs as a chain of layers of (n_in, n_out) `shapes`; `WHAT` names the net in errors."""
    WHAT = ""

    def __init__(self, blob: bytes, library: Path, shapes: list[tuple[int, int]]):
        self.blob = bytes(blob)
        self.shapes = shapes
        self.n_layers = len(shapes)
        self.n_in, self.n_out = shapes[0][0], shapes[-1][1]
        super().__init__(library, (self.n_in,))
        self._buffer = ctypes.create_string_buffer(self.blob, len(self.blob))
        self.net = self.c("load")(self._buffer, len(self.blob))
        if not self.net:
            raise InputError(f"malformed {self.WHAT} net file")

    def _declare(self) -> None:
        self.c("load").restype = ctypes.c_void_p
        self.c("load").argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        self.c("free").argtypes = [ctypes.c_void_p]
        self.c("set_key_interval").argtypes = [ctypes.c_void_p, ctypes.c_int32]

    def __del__(self):
        if getattr(self, "net", None):
            self.c("free")(self.net)
            self.net = None

    def _set_threshold(self, layer: int, *thresholds: float) -> None:
        require_threshold(*thresholds)
        if not -1 <= layer < self.n_layers:
            raise InputError(f"{self.WHAT} layer {layer} does not exist (this net has {self.n_layers}; -1 = all)")
        self.c("set_threshold")(self.net, layer, *(float(t) for t in thresholds))

    def set_key_interval(self, interval: int) -> None:
        require_key_interval(interval)
        self.c("set_key_interval")(self.net, int(interval))

    def _run(self, x: np.ndarray, fired_shape, state: tuple[str, ...], options: tuple = ()):
        """PREFIX_run(net, steps, batch, x, y, *state arrays (named), *options, fired) on frames x from the
        current state: y (batch, steps, n_out) and the columns used (int64, `fired_shape`)."""
        x = self.frames(x)                          # (re)sets the state arrays for a first batch
        y = np.zeros((x.shape[0], x.shape[1], self.n_out), np.float32)
        fired = np.zeros(fired_shape, np.int64)
        self.c("run")(self.net, x.shape[1], x.shape[0], x.ctypes.data, y.ctypes.data,
                      *(getattr(self, name).ctypes.data for name in state), *options, fired.ctypes.data)
        return y, fired


class DeltaRuntime(NetRuntime):
    """The delta_linear chain runtime (delta.c) for one net, with the state of `batch` streams."""
    PREFIX, WHAT = "dl", "delta"

    def __init__(self, blob: bytes, library: Path, source: str = "delta net"):
        self.layers = parse_net(blob, source)
        self.fingerprint = fingerprint(blob)
        shapes = [(layer["n_in"], layer["n_out"]) for layer in self.layers]
        self.state_len = sum(n_in + n_out for n_in, n_out in shapes)
        super().__init__(blob, library, shapes)
        self.reset(0)

    @classmethod
    def open(cls, folder: Path) -> "DeltaRuntime":
        """The runtime for a convert folder's delta_net.bin. The folder is untrusted data: its
        libhwact_delta.so and C files are never used; the library is compiled from the package's own
        sources in a private temp folder, removed once the library is loaded."""
        path = Path(folder) / "delta_net.bin"
        blob = read_net(path)
        parse_net(blob, str(path))                   # a malformed file is refused before compiling
        with tempfile.TemporaryDirectory(prefix="hwact_delta_") as work:
            return cls(blob, build_library(Path(work)), str(path))

    def _declare(self) -> None:
        super()._declare()
        lib = self.lib
        lib.dl_set_threshold.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_float]
        lib.dl_reset.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
        lib.dl_run.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]

    # ----- state --------------------------------------------------------------------------
    def reset(self, batch: int) -> None:
        self.state = np.zeros((batch, self.state_len), np.int32)
        self.frame = np.zeros(batch, np.int64)
        self.lib.dl_reset(self.net, batch, self.state.ctypes.data, self.frame.ctypes.data)

    def save_state(self, path: Path) -> None:
        np.savez(path, state=self.state, frame=self.frame, fingerprint=np.array(self.fingerprint))

    def load_state(self, path: Path) -> None:
        try:
            archive = load_arrays(path)
            state, frame, owner = archive["state"], archive["frame"], str(archive["fingerprint"])
        except Exception as exc:
            raise InputError(f"{path}: not a delta state file ({type(exc).__name__})") from exc
        if owner != self.fingerprint:
            raise InputError(f"{path}: state of another model (net {owner}, this net is {self.fingerprint})",
                             hint="reset the stream instead of loading this state")
        if state.ndim != 2 or state.shape[1] != self.state_len or frame.shape != (state.shape[0],):
            raise InputError(f"{path}: state shape {state.shape} does not fit this net ({self.state_len} per stream)")
        self.state, self.frame = np.ascontiguousarray(state, np.int32), np.ascontiguousarray(frame, np.int64)

    def set_threshold(self, threshold: float, layer: int = -1) -> None:
        self._set_threshold(layer, threshold)

    # ----- running ------------------------------------------------------------------------
    def run(self, x: np.ndarray, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run frames x (batch, steps, n_in) from the current state; returns y and columns used per layer."""
        return self._run(x, self.n_layers, ("state", "frame"), (int(dense),))


def reference_stream(graph: Graph, x: torch.Tensor, threshold: float | None = None,
                     key_interval: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """The PyTorch reference of the whole chain, run frame by frame with the state carried between
    calls of hwact::delta_linear; returns y (batch, steps, n_out) and the columns used per layer
    (the inputs whose transmitted code changed)."""
    return reference_layers(chain(graph), x, threshold, key_interval)


def reference_layers(layers: list[dict], x: torch.Tensor, threshold: float | None = None,
                     key_interval: int | None = None) -> tuple[torch.Tensor, list[int]]:
    """`reference_stream` of layer dicts (from `chain` or `parse_net`)."""
    h = x.to(torch.float32)
    fired = []
    for layer in layers:
        limit = layer["threshold"] if threshold is None else torch.tensor(float(threshold))
        interval = layer["key_interval"] if key_interval is None else int(key_interval)
        state = acc = frame = None
        outputs, used = [], 0
        for t in range(h.shape[1]):
            before = torch.zeros(h.shape[0], h.shape[2], dtype=torch.int32) if state is None else state
            y, state, acc, frame = torch.ops.hwact.delta_linear(
                h[:, t:t + 1].contiguous(), layer["step"], layer["levels"], layer["weight"], layer["scale"],
                layer["bias_acc"], limit, interval, state, acc, frame)
            used += int((state != before).sum())
            outputs.append(y)
        h = torch.cat(outputs, dim=1)
        if layer["relu"]:
            h = torch.relu(h)
        fired.append(used)
    return h, fired
