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
"""

from __future__ import annotations

import ctypes
import hashlib
import platform
import shutil
import struct
import subprocess
import tempfile
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from hwact.errors import InputError, ToolMissingError, UnsupportedError, VerificationError
from hwact.ir.graph import Graph
from hwact.npz import load_arrays
from hwact.passes.lower_delta import delta_layers

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


def net_blob(graph: Graph) -> bytes:
    layers = chain(graph)
    parts = [b"HWDL", struct.pack("<iii", 1, len(layers), layers[0]["key_interval"])]
    for layer in layers:
        weight = layer["weight"]
        n_out, n_in = weight.shape
        parts.append(struct.pack("<iiiif", n_in, n_out, layer["levels"], int(layer["relu"]),
                                 float(layer["threshold"])))
        parts.append(layer["step"].to(torch.float32).numpy().astype("<f4").tobytes())
        parts.append(layer["scale"].to(torch.float32).numpy().astype("<f4").tobytes())
        parts.append(layer["bias_acc"].to(torch.int32).numpy().astype("<i4").tobytes())
        parts.append(weight.t().contiguous().to(torch.int8).numpy().tobytes())
        size = sum(len(p) for p in parts)
        parts.append(b"\0" * ((4 - size % 4) % 4))
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


def parse_net(blob: bytes, source: str = "delta net") -> list[dict]:
    """The layers of a net file (format in the module docstring), every field and size checked before it
    is read (the file may come from anyone): dicts with n_in, n_out, levels, relu, threshold,
    key_interval, step, scale, bias_acc, weight (n_out, n_in) int8 tensors - the reference's layer
    keys - and the byte offset of the layer's header."""
    def bad(reason: str) -> InputError:
        return InputError(f"{source}: not a valid delta net file ({reason})",
                          hint="write it again with `hwact convert MODEL --target cpu`")

    if len(blob) < 16 or blob[:4] != b"HWDL":
        raise bad("no HWDL header")
    version, count, key_interval = struct.unpack_from("<iii", blob, 4)
    if version != 1:
        raise bad(f"version {version}, this hwact reads version 1")
    if not 1 <= count <= MAX_LAYERS or key_interval < 0:
        raise bad(f"{count} layers (1 to {MAX_LAYERS}), key-frame interval {key_interval}")
    layers, offset = [], 16
    for index in range(count):
        if len(blob) - offset < 20:
            raise bad(f"layer {index}: truncated header")
        n_in, n_out, levels, relu, threshold = struct.unpack_from("<iiiif", blob, offset)
        if n_in < 1 or n_out < 1 or not 1 <= levels <= 127 or relu not in (0, 1) or not 0 <= threshold < np.inf:
            raise bad(f"layer {index}: n_in {n_in}, n_out {n_out}, levels {levels}, relu {relu}, "
                      f"threshold {threshold}")
        if layers and n_in != layers[-1]["n_out"]:
            raise bad(f"layer {index} reads {n_in} values, layer {index - 1} gives {layers[-1]['n_out']}")
        body = offset + 20
        end = body + 4 * n_in + 8 * n_out + n_in * n_out
        if end > len(blob):
            raise bad(f"layer {index}: {n_in} x {n_out} weights need {end - offset} bytes, "
                      f"{len(blob) - offset} are left")
        step = np.frombuffer(blob, "<f4", n_in, body).astype(np.float32)
        scale = np.frombuffer(blob, "<f4", n_out, body + 4 * n_in).astype(np.float32)
        if not (np.isfinite(step).all() and (step > 0).all() and np.isfinite(scale).all()):
            raise bad(f"layer {index}: a step that is not finite and > 0, or a scale that is not finite")
        bias_acc = np.frombuffer(blob, "<i4", n_out, body + 4 * n_in + 4 * n_out).astype(np.int32)
        weight = np.frombuffer(blob, np.int8, n_in * n_out, end - n_in * n_out).reshape(n_in, n_out).T.copy()
        layers.append({"offset": offset, "n_in": n_in, "n_out": n_out, "levels": levels, "relu": bool(relu),
                       "threshold": torch.tensor(threshold, dtype=torch.float32), "key_interval": key_interval,
                       "step": torch.from_numpy(step), "scale": torch.from_numpy(scale),
                       "bias_acc": torch.from_numpy(bias_acc), "weight": torch.from_numpy(weight)})
        offset = end + (4 - end % 4) % 4
    if offset != len(blob):
        raise bad(f"{len(blob) - offset} bytes after the last layer")
    return layers


def layer_offsets(blob: bytes) -> list[int]:
    """Byte offset of every layer header in a net blob."""
    return [layer["offset"] for layer in parse_net(blob)]


def fingerprint(blob: bytes) -> str:
    """Identity of a net for its state files: layer shapes and weights, not the run-time settings
    (thresholds, key-frame interval)."""
    data = bytearray(blob)
    data[12:16] = bytes(4)
    for offset in layer_offsets(blob):
        data[offset + 16:offset + 20] = bytes(4)
    return hashlib.sha256(bytes(data)).hexdigest()[:16]


def _compiler(name: str) -> str:
    if shutil.which(name) is None:
        raise ToolMissingError(f"{name} is not installed", hint="scripts/install-tools.sh installs the C toolchains")
    return name


def host_arch_flags() -> list[str]:
    if platform.machine() in ("x86_64", "AMD64"):
        flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
        return ["-mavx2"] if " avx2" in flags else []
    return []


def compile_shared(outdir: Path, sources: tuple[str, ...], library: str, arch_flags: list[str] | None = None) -> Path:
    """Copy `sources` (package files: the first is the .c compiled, the rest what it includes or a reader
    needs) into outdir and build outdir/`library` for this machine (AVX2 where the CPU has it)."""
    outdir.mkdir(parents=True, exist_ok=True)
    for name in sources:
        shutil.copyfile(source_dir() / name, outdir / name)
    path = outdir / library
    flags = host_arch_flags() if arch_flags is None else arch_flags
    _run([_compiler("gcc"), *C_FLAGS, *flags, "-shared", "-fPIC", str(outdir / sources[0]), "-o", str(path), "-lm"])
    return path


def cross_compile_aarch64(outdir: Path, c_files: tuple[str, ...], exe: str, defines: tuple[str, ...] = ()) -> Path:
    """Static aarch64 build (NEON kernels) of package .c files, to run under qemu-aarch64."""
    outdir.mkdir(parents=True, exist_ok=True)
    path = outdir / exe
    _run([_compiler("aarch64-linux-gnu-gcc"), *C_FLAGS, *defines, "-static",
          *(str(source_dir() / name) for name in c_files), "-o", str(path), "-lm"])
    return path


def build_library(outdir: Path, arch_flags: list[str] | None = None) -> Path:
    """Compile the runtime into outdir/libhwact_delta.so for this machine (copies the sources)."""
    return compile_shared(outdir, SOURCES, "libhwact_delta.so", arch_flags)


def build_aarch64(outdir: Path) -> Path:
    """Cross-compile the stand-alone runner for aarch64 (NEON kernel); run it with qemu-aarch64."""
    return cross_compile_aarch64(outdir, ("delta.c", "delta_main.c"), "delta_main_aarch64")


def _run(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True)
    if done.returncode != 0:
        raise VerificationError(f"{command[0]} failed: {done.stderr.strip().splitlines()[:1]}")


def run_under_qemu(exe: Path, blob: bytes, x: np.ndarray, workdir: Path, dense: bool = False) -> dict:
    """Run the aarch64 runner on x (batch, steps, n_in) under qemu-user; returns y, fired, state, kernel."""
    qemu = shutil.which("qemu-aarch64")
    if qemu is None:
        raise ToolMissingError("qemu-aarch64 is not installed", hint="apt-get install qemu-user")
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "net.bin").write_bytes(blob)
    batch, steps, n_in = x.shape
    (workdir / "in.bin").write_bytes(struct.pack("<iii", batch, steps, n_in) + np.ascontiguousarray(x, "<f4").tobytes())
    done = subprocess.run([qemu, "-L", "/usr/aarch64-linux-gnu", str(exe), str(workdir / "net.bin"),
                           str(workdir / "in.bin"), str(workdir / "out.bin"), "1" if dense else "0"],
                          capture_output=True, text=True, timeout=300)
    if done.returncode != 0:
        raise VerificationError(f"aarch64 delta runner failed: {done.stderr.strip()}")
    runtime = DeltaRuntime.from_blob(blob, library=None)
    raw = (workdir / "out.bin").read_bytes()
    n_out, layers, state_len = runtime.n_out, runtime.n_layers, runtime.state_len
    y_bytes = batch * steps * n_out * 4
    return {"y": np.frombuffer(raw[:y_bytes], "<f4").reshape(batch, steps, n_out),
            "fired": np.frombuffer(raw[y_bytes:y_bytes + 8 * layers], "<i8"),
            "state": np.frombuffer(raw[y_bytes + 8 * layers:], "<i4").reshape(batch, state_len),
            "kernel": done.stdout.strip()}


class DeltaRuntime:
    """ctypes handle on the compiled runtime for one net, with the state of `batch` streams. Loading a
    library runs its code: `library` is one hwact has just built (`open` rebuilds a folder's)."""

    def __init__(self, blob: bytes, library: Path | None, source: str = "delta net"):
        self.blob = bytes(blob)
        self.layers = parse_net(self.blob, source)
        self.fingerprint = fingerprint(self.blob)
        self.n_layers = len(self.layers)
        self.shapes = [(layer["n_in"], layer["n_out"]) for layer in self.layers]
        self.n_in, self.n_out = self.shapes[0][0], self.shapes[-1][1]
        self.state_len = sum(a + b for a, b in self.shapes)
        self.lib = None
        if library is not None:
            self.lib = ctypes.CDLL(str(library))
            self._declare()
            self._buffer = ctypes.create_string_buffer(self.blob, len(self.blob))
            self.net = self.lib.dl_load(self._buffer, len(self.blob))
            if not self.net:
                raise InputError("malformed delta net file")
            self.kernel = self.lib.dl_kernel_name().decode()
        self.state = np.zeros((0, self.state_len), np.int32)
        self.frame = np.zeros(0, np.int64)

    @classmethod
    def from_blob(cls, blob: bytes, library: Path | None) -> "DeltaRuntime":
        return cls(blob, library)

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
        lib = self.lib
        lib.dl_load.restype = ctypes.c_void_p
        lib.dl_load.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
        lib.dl_free.argtypes = [ctypes.c_void_p]
        lib.dl_kernel_name.restype = ctypes.c_char_p
        lib.dl_set_threshold.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_float]
        lib.dl_set_key_interval.argtypes = [ctypes.c_void_p, ctypes.c_int32]
        lib.dl_reset.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p]
        lib.dl_run.argtypes = [ctypes.c_void_p, ctypes.c_int32, ctypes.c_int32, ctypes.c_void_p, ctypes.c_void_p,
                               ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int32, ctypes.c_void_p]

    def __del__(self):
        if getattr(self, "lib", None) is not None and getattr(self, "net", None):
            self.lib.dl_free(self.net)
            self.net = None

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
        if not threshold >= 0:
            raise InputError(f"delta threshold must be >= 0, got {threshold}")
        if not -1 <= layer < self.n_layers:
            raise InputError(f"delta layer {layer} does not exist (this net has {self.n_layers}; -1 = all)")
        self.lib.dl_set_threshold(self.net, layer, float(threshold))

    def set_key_interval(self, interval: int) -> None:
        if interval < 0:
            raise InputError(f"key-frame interval must be >= 0, got {interval}")
        self.lib.dl_set_key_interval(self.net, int(interval))

    # ----- running ------------------------------------------------------------------------
    def run(self, x: np.ndarray, dense: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """Run frames x (batch, steps, n_in) from the current state; returns y and columns used per layer."""
        x = np.ascontiguousarray(x, np.float32)
        if x.ndim != 3 or x.shape[2] != self.n_in:
            raise InputError(f"stream of shape {tuple(x.shape)}: expected (batch, time, {self.n_in}) frames")
        if self.state.shape[0] != x.shape[0]:
            if self.state.shape[0] == 0:
                self.reset(x.shape[0])
            else:
                raise InputError(f"stream batch {x.shape[0]} != state batch {self.state.shape[0]}",
                                 hint="reset the runtime for a new batch of streams")
        y = np.zeros((x.shape[0], x.shape[1], self.n_out), np.float32)
        fired = np.zeros(self.n_layers, np.int64)
        self.lib.dl_run(self.net, x.shape[1], x.shape[0], x.ctypes.data, y.ctypes.data, self.state.ctypes.data,
                        self.frame.ctypes.data, int(dense), fired.ctypes.data)
        return y, fired


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
