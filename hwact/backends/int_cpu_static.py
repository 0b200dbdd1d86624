"""Static programs: a plan compiled for fixed input shapes into one C call (int_cpu_runner/runner.c).

The Python executor (int_cpu_runtime.py) pays Python and ctypes dispatch on every step. For a given set of
input shapes everything it does besides the kernels' arithmetic is fixed, so `compile_static` runs the
plan once through a fresh executor while recording:

  - every kernel call (the library is wrapped): its arguments, each pointer turned into (region, offset);
  - every torch op (a TorchDispatchMode): a view makes nothing; an op whose inputs do not depend on the
    plan's inputs (an int32 epilogue, an index table) becomes a constant; an op on input-derived data must
    be something the runner has (clone / type conversion / copy_ as a strided copy, cat, constant_pad_nd,
    roll, an integer sum, a gather through constant indices, integer element-wise ops and comparisons, an
    integer clamp), else its result is marked, and the compile fails only if a kernel or an output reads it
    (then the plan keeps the Python executor, with the reason).

Regions: `const` (snapshot in the constants blob), `work` (the values computed from the inputs: laid out
in one workspace with int_cpu_memory.place over the instructions that touch them), `input` / `output`
(the caller's arrays), `packed` (weights packed at load for the ISA in use: hw_pack calls are the
program's init instructions). The encoding is described in int_cpu_runner/runner.c.
"""

from __future__ import annotations

import bisect
import ctypes
import struct
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hwact.backends import int_cpu_lib
from hwact.backends.int_cpu_memory import ALIGN, Buffer, place
from hwact.errors import InputError, UnsupportedError, VerificationError

MAGIC, VERSION, OFFSET_BITS = 0x6877707267, 2, 40
OPCODES = ["hw_linear", "hw_matmul", "hw_im2col", "hw_depthwise_conv2d", "hw_shiftmax", "hw_shift_gelu",
           "hw_i_layernorm", "hw_requantize", "hw_add", "hw_mul", "hw_lut", "hw_clamp", "hw_mask", "hw_max_pool2d",
           "hw_sum_requantize", "hw_embedding", "hw_quantize", "hw_dequantize", "hw_pack", "copy", "fill", "sum",
           "gather", "elementwise"]
KIND = {"const": 0, "work": 1, "input": 2, "output": 3, "packed": 4}
ELEMENT = {torch.int8: 0, torch.uint8: 1, torch.int16: 2, torch.int32: 3, torch.int64: 4, torch.float32: 5,
           torch.bool: 6}
T_INT, T_FLOAT, T_PTR, T_NULL = 0, 1, 2, 3
PROGRAM_FILES = ("program.bin", "program_constants.bin")
aten = torch.ops.aten
VIEW_FREE = {aten.empty.memory_format, aten.empty_strided.default}
# ops whose every result element is one element of their first argument, chosen by constant indices
SELECTING = {aten.index.Tensor, aten.gather.default, aten.index_select.default}
# integer element-wise ops of the runner (int_cpu_runner/runner.c: enum operation)
OPERATIONS = {aten.add.Tensor: 0, aten.sub.Tensor: 1, aten.mul.Tensor: 2, aten.bitwise_and.Tensor: 3,
              aten.bitwise_or.Tensor: 4, aten.bitwise_xor.Tensor: 5, aten.eq.Tensor: 6, aten.ne.Tensor: 7,
              aten.lt.Tensor: 8, aten.le.Tensor: 9, aten.gt.Tensor: 10, aten.ge.Tensor: 11, aten.eq.Scalar: 6,
              aten.ne.Scalar: 7, aten.lt.Scalar: 8, aten.le.Scalar: 9, aten.gt.Scalar: 10, aten.ge.Scalar: 11,
              aten.add.Scalar: 0, aten.sub.Scalar: 1, aten.mul.Scalar: 2, aten.logical_and.default: 12,
              aten.logical_or.default: 13, aten.logical_not.default: 14, aten.neg.default: 15,
              aten.bitwise_and.Scalar: 3, aten.bitwise_or.Scalar: 4}
MAX, MIN = 16, 17


class NotStatic(Exception):
    """The plan cannot become a static program for these shapes (the message says which step and why)."""


@dataclass(eq=False)
class Region:
    kind: str                        # const | work | input | output | packed (const/work decided at the end)
    base: int = 0
    nbytes: int = 0
    keep: object = None              # the tensor or buffer, kept alive so no address is reused while recording
    tainted: bool = False            # depends on the plan's inputs
    unsupported: str | None = None   # why its value cannot be computed by the runner
    index: int = 0                   # input / output position
    constant: bool = False           # holds a value computed from constants only
    shape: tuple = ()                # packed: (n, k)


def _numpy_type(dtype: torch.dtype):
    return torch.empty(0, dtype=dtype).numpy().dtype


def _elem(tensor: torch.Tensor) -> int:
    if tensor.dtype not in ELEMENT:
        raise NotStatic(f"a {tensor.dtype} tensor")
    return ELEMENT[tensor.dtype]


@dataclass
class Recording:
    regions: list[Region] = field(default_factory=list)
    bases: list[int] = field(default_factory=list)          # sorted region bases, for address lookup
    by_base: dict[int, Region] = field(default_factory=dict)
    init: list[tuple] = field(default_factory=list)          # (opcode, [(tag, value)]); value of a pointer:
    run: list[tuple] = field(default_factory=list)           # (region, byte offset)
    step: str = ""

    # ----- regions ----------------------------------------------------------------------------------
    def add(self, region: Region) -> Region:
        if region.base in self.by_base:
            return self.by_base[region.base]
        bisect.insort(self.bases, region.base)
        self.by_base[region.base] = region
        self.regions.append(region)
        return region

    def of_tensor(self, tensor: torch.Tensor, kind: str = "const") -> Region:
        storage = tensor.untyped_storage()
        base = storage.data_ptr()
        if base in self.by_base:
            return self.by_base[base]
        return self.add(Region(kind, base, storage.nbytes(), tensor))

    def pointer(self, address: int) -> tuple[Region, int]:
        at = bisect.bisect_right(self.bases, address) - 1
        region = self.by_base[self.bases[at]] if at >= 0 else None
        if region is None or address > region.base + region.nbytes:
            raise NotStatic(f"step {self.step}: a kernel reads memory the recording does not know")
        if region.unsupported:
            raise NotStatic(f"step {self.step} reads a value the runner cannot compute ({region.unsupported})")
        return region, address - region.base

    def tensor_pointer(self, tensor: torch.Tensor) -> tuple[int, tuple]:
        self.of_tensor(tensor)
        return T_PTR, self.pointer(tensor.data_ptr())

    # ----- instructions -----------------------------------------------------------------------------
    def append(self, instruction: tuple) -> None:
        self.run.append(instruction)

    def copy(self, dst: torch.Tensor, src: torch.Tensor) -> None:
        """dst = src (broadcast to dst's shape, converted to dst's type) as one strided copy."""
        sizes = list(dst.shape)
        src_strides = _broadcast_strides(src, dst.shape)
        args = [self.tensor_pointer(dst), (T_INT, _elem(dst)), self.tensor_pointer(src), (T_INT, _elem(src)),
                (T_INT, len(sizes)), *[(T_INT, s) for s in sizes], *[(T_INT, s) for s in dst.stride()],
                *[(T_INT, s) for s in src_strides]]
        self.mark_written(dst)
        self.append(("copy", args))

    def gather(self, dst: torch.Tensor, src: torch.Tensor, offsets: torch.Tensor) -> None:
        """dst (contiguous) = src's elements at `offsets` (int64, elements from src's first element)."""
        if not dst.is_contiguous():
            raise NotStatic("a gather into a strided result")
        table = offsets.to(torch.int64).contiguous()
        self.of_tensor(table).constant = True
        self.mark_written(dst)
        self.append(("gather", [self.tensor_pointer(dst), (T_INT, _elem(dst)), self.tensor_pointer(src),
                                    (T_INT, _elem(src)), (T_INT, dst.numel()), self.tensor_pointer(table),
                                    (T_INT, src.untyped_storage().nbytes() // src.element_size()
                                     - src.storage_offset())]))

    def elementwise(self, operation: int, dst: torch.Tensor, a: torch.Tensor, b: torch.Tensor | None) -> None:
        operands = [a] if b is None else [a, b]
        if any(t.is_floating_point() for t in operands) or (dst.is_floating_point() and operation not in (MAX, MIN)):
            raise NotStatic("float arithmetic")
        strides = [_broadcast_strides(t, dst.shape) for t in operands] + ([[0] * dst.dim()] if b is None else [])
        args = [self.tensor_pointer(dst), (T_INT, _elem(dst)), self.tensor_pointer(a), (T_INT, _elem(a)),
                self.tensor_pointer(b) if b is not None else (T_NULL, 0), (T_INT, _elem(b) if b is not None else 0),
                (T_INT, operation), (T_INT, dst.dim()), *[(T_INT, s) for s in dst.shape],
                *[(T_INT, s) for s in dst.stride()], *[(T_INT, s) for row in strides for s in row]]
        self.mark_written(dst)
        self.append(("elementwise", args))

    def fill(self, dst: torch.Tensor, value) -> None:
        value = (T_INT, _float_bits(value) if dst.dtype == torch.float32 else int(value))
        self.mark_written(dst)
        self.append(("fill", [self.tensor_pointer(dst), (T_INT, _elem(dst)), (T_INT, dst.numel()), value]))

    def integer_sum(self, out: torch.Tensor, x: torch.Tensor, dims: list[int], keepdim: bool) -> None:
        dims = sorted(d % x.dim() for d in dims) if dims else list(range(x.dim()))
        kept = [d for d in range(x.dim()) if d not in dims]
        out_strides = [out.stride(d if keepdim else i) for i, d in enumerate(kept)]
        args = [self.tensor_pointer(out), (T_INT, _elem(out)), self.tensor_pointer(x), (T_INT, _elem(x)),
                (T_INT, len(kept)), (T_INT, len(dims)), *[(T_INT, x.shape[d]) for d in kept],
                *[(T_INT, s) for s in out_strides], *[(T_INT, x.stride(d)) for d in kept],
                *[(T_INT, x.shape[d]) for d in dims], *[(T_INT, x.stride(d)) for d in dims]]
        self.mark_written(out)
        self.append(("sum", args))

    def mark_written(self, tensor: torch.Tensor) -> None:
        self.mark_region_written(self.of_tensor(tensor, "work"))

    def mark_region_written(self, region: Region) -> None:
        """A value computed from the inputs goes into `region` (which must not hold constants)."""
        if region.constant:
            raise NotStatic(f"step {self.step} writes into memory that holds constants")
        region.tainted, region.unsupported = True, None


def _broadcast_strides(tensor: torch.Tensor, shape) -> list[int]:
    """Element strides that read `tensor` broadcast to `shape` (a size-1 or missing dim reads stride 0)."""
    strides = [0] * len(shape)
    for d in range(1, tensor.dim() + 1):
        strides[-d] = tensor.stride(-d) if tensor.shape[-d] != 1 else 0
    return strides


def _float_bits(value: float) -> int:
    """The bits of `value` as a float32, as a signed int32 (how a program carries a float)."""
    return struct.unpack("<i", struct.pack("<f", float(value)))[0]


def _constant(value, dtype: torch.dtype, recording: Recording) -> torch.Tensor:
    """A Python number as a 0-d constant region of `dtype` (kept alive by the recording)."""
    if isinstance(value, float) and not dtype.is_floating_point and not value.is_integer():
        raise NotStatic("an integer compared with a fraction")
    tensor = torch.tensor(value, dtype=dtype if not isinstance(value, bool) else torch.bool)
    recording.of_tensor(tensor).constant = True
    return tensor


class RecordingLibrary:
    """The kernel library, every call of a program opcode recorded (then made)."""

    def __init__(self, library, recording: Recording):
        self._library, self._recording = library, recording
        self._types = int_cpu_lib.prototypes()
        self._written = int_cpu_lib.written_pointers()

    def __getattr__(self, name):
        function = getattr(self._library, name)
        if name not in OPCODES:
            return function

        def call(*args):
            recording = self._recording
            if name == "hw_pack":      # the packed buffer is a region of its own, made at load
                recording.add(Region("packed", ctypes.addressof(args[3]), ctypes.sizeof(args[3]), args[3],
                                     shape=(int(args[1]), int(args[2]))))
            encoded = []
            for index, (value, kind) in enumerate(zip(args, self._types[name][1])):
                if kind in (ctypes.c_void_p, ctypes.c_char_p):
                    if value is None:
                        encoded.append((T_NULL, 0))
                        continue
                    address = value.value if isinstance(value, ctypes.c_void_p) else ctypes.addressof(value)
                    region, offset = recording.pointer(address)
                    if index in self._written[name] and region.kind != "packed":
                        recording.mark_region_written(region)
                    encoded.append((T_PTR, (region, offset)))
                elif kind is ctypes.c_float:
                    encoded.append((T_FLOAT, _float_bits(value)))
                else:
                    encoded.append((T_INT, int(value)))
            if name == "hw_pack":
                recording.init.append((name, encoded))
            else:
                recording.append((name, encoded))
            return function(*args)
        return call


class Tracer(TorchDispatchMode):
    """Every torch op of the recorded run: views pass, constants are noted, data movement is recorded."""

    def __init__(self, recording: Recording):
        super().__init__()
        self.recording = recording

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        result = func(*args, **kwargs)
        recording = self.recording
        inputs = [t for t in torch.utils._pytree.tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        tainted = any(recording.of_tensor(t).tainted for t in inputs)
        if func is aten.copy_.default:
            if tainted:
                recording.copy(args[0], args[1])
            return result
        known = set(recording.by_base)
        for out in torch.utils._pytree.tree_leaves(result):
            if not isinstance(out, torch.Tensor) or out.untyped_storage().data_ptr() in known:
                continue                       # a view of a known region (or no tensor)
            region = recording.of_tensor(out, "work")
            if func in VIEW_FREE:
                continue                       # fresh memory: what writes it decides what it is
            if not tainted:
                region.constant = True         # a value fixed by the plan
                continue
            region.tainted = True
            try:
                self._emit(func, args, kwargs, out)
            except NotStatic as reason:
                region.unsupported = f"{func}: {reason}"
        return result

    def _emit(self, func, args, kwargs, out: torch.Tensor) -> None:
        recording = self.recording
        if func in (aten.clone.default, aten._to_copy.default):
            recording.copy(out, args[0])
        elif func is aten.cat.default:
            dim, start = (args[1] if len(args) > 1 else kwargs.get("dim", 0)) % out.dim(), 0
            for part in args[0]:
                if part.numel():
                    recording.copy(out.narrow(dim, start, part.shape[dim]), part)
                start += part.shape[dim] if part.dim() else 0
        elif func is aten.constant_pad_nd.default:
            x, pad = args[0], list(args[1])
            recording.fill(out, args[2] if len(args) > 2 else 0)
            source, target = x, out
            for pair in range(len(pad) // 2):
                dim = x.dim() - 1 - pair
                left, right = pad[2 * pair], pad[2 * pair + 1]
                length = x.shape[dim] - max(0, -left) - max(0, -right)
                source = source.narrow(dim, max(0, -left), length)
                target = target.narrow(dim, max(0, left), length)
            recording.copy(target, source)
        elif func is aten.roll.default:
            x, shifts, dims = args[0], list(args[1]), list(args[2]) if len(args) > 2 else []
            if len(dims) != len(shifts):
                raise NotStatic("a roll over the flattened tensor")
            parts = [(x, out)]          # out[(i + shift) % size] = x[i]: two blocks per rolled dim
            for shift, dim in zip(shifts, dims):
                size = x.shape[dim]
                shift %= size
                split = []
                for source, target in parts:
                    split.append((source.narrow(dim, 0, size - shift), target.narrow(dim, shift, size - shift)))
                    if shift:
                        split.append((source.narrow(dim, size - shift, shift), target.narrow(dim, 0, shift)))
                parts = split
            for source, target in parts:
                if source.numel():
                    recording.copy(target, source)
        elif func in SELECTING:
            source = args[0]
            if any(recording.of_tensor(t).tainted for t in torch.utils._pytree.tree_leaves((args[1:], kwargs))
                   if isinstance(t, torch.Tensor)):
                raise NotStatic("indices computed from the inputs")
            storage_elements = source.untyped_storage().nbytes() // source.element_size()
            positions = torch.arange(storage_elements, dtype=torch.int64).as_strided(
                source.shape, source.stride(), source.storage_offset()) - source.storage_offset()
            recording.gather(out, source, func(positions, *args[1:], **kwargs))
        elif func in OPERATIONS:
            if kwargs.get("alpha", 1) != 1 or (len(args) > 2 and args[2] != 1):
                raise NotStatic("add/sub with alpha")
            a, b = args[0], args[1] if len(args) > 1 else None
            if b is not None and not isinstance(b, torch.Tensor):
                b = _constant(b, a.dtype, recording)
            recording.elementwise(OPERATIONS[func], out, a, b)
        elif func is aten.clamp.default:
            x = args[0]
            bounds = [args[i] if len(args) > i else kwargs.get(key) for i, key in ((1, "min"), (2, "max"))]
            if any(isinstance(b, torch.Tensor) or (isinstance(b, float) and not b.is_integer()) for b in bounds):
                raise NotStatic("a clamp with tensor or fractional bounds")
            kernel_types = (torch.int8, torch.uint8, torch.int16, torch.int32)
            if x.dtype in kernel_types and out.dtype in kernel_types and x.is_contiguous() and out.is_contiguous():
                low, high = (max(-2**31, int(bounds[0])) if bounds[0] is not None else -2**31,
                             min(2**31 - 1, int(bounds[1])) if bounds[1] is not None else 2**31 - 1)
                recording.mark_written(out)       # one pass of the vectorized clamp kernel (rows.c)
                recording.append(("hw_clamp", [recording.tensor_pointer(x), (T_INT, _elem(x)), (T_INT, x.numel()),
                                               (T_INT, low), (T_INT, high), recording.tensor_pointer(out),
                                               (T_INT, _elem(out))]))
                return
            source = x
            for operation, bound in zip((MAX, MIN), bounds):
                if bound is not None:
                    recording.elementwise(operation, out, source, _constant(int(bound), torch.int64, recording))
                    source = out
            if source is x:
                recording.copy(out, x)
        elif func is aten.sum.dim_IntList and not out.is_floating_point():
            keepdim = args[2] if len(args) > 2 else kwargs.get("keepdim", False)
            recording.integer_sum(out, args[0], list(args[1] or []), bool(keepdim))
        else:
            raise NotStatic("not data movement the runner has")


def _checksum(library, data: bytes) -> int:
    """The runner's FNV-1a 64 of `data` as a signed int64 (its check that constants belong to a program)."""
    value = int(library.hw_fnv1a(data, len(data)))
    return value - (1 << 64) if value >= 1 << 63 else value


def _words(library, recording: Recording, inputs: list[torch.Tensor], outputs: list[torch.Tensor]):
    """(int64 program, constants bytes) of a finished recording."""
    instructions = recording.init + recording.run
    used: dict[Region, list[int]] = {}
    for position, (_, args) in enumerate(instructions):
        for tag, value in args:
            if tag == T_PTR:
                used.setdefault(value[0], []).append(position)
    regions = [r for r in recording.regions if r in used]
    numbers = {region: number for number, region in enumerate(regions)}
    blob, work = bytearray(), []
    table = []
    for region in regions:
        if region.kind in ("input", "output"):
            table.append((KIND[region.kind], region.index, region.nbytes))
        elif region.kind == "packed":
            table.append((KIND["packed"], *region.shape))
        elif region.tainted:
            work.append(Buffer(numbers[region], region.nbytes, min(used[region]), max(used[region])))
            table.append(None)
        else:       # a constant: its bytes now (nothing computed from the inputs wrote it)
            offset = len(blob)
            blob += ctypes.string_at(region.base, region.nbytes)
            blob += bytes(-len(blob) % ALIGN)
            table.append((KIND["const"], offset, region.nbytes))
    layout = place(work)
    for number, (offset, nbytes) in layout.offsets.items():
        table[number] = (KIND["work"], offset, nbytes)
    words = [MAGIC, VERSION, len(blob), _checksum(library, bytes(blob)), len(regions), layout.arena_bytes, len(inputs),
             len(outputs), len(recording.init), len(recording.run)]
    for row in table:
        words += row
    for name, args in instructions:
        words += [OPCODES.index(name), len(args)]
        for tag, value in args:
            words += [tag, (numbers[value[0]] << OFFSET_BITS) | value[1] if tag == T_PTR else value]
    return np.asarray(words, dtype=np.int64), bytes(blob)


@dataclass
class StaticProgram:
    """A compiled program and the shapes it was made for; call it like the executor."""

    library: object
    handle: int
    words: np.ndarray
    constants: bytes
    workspace_bytes: int
    inputs: list[tuple[tuple, torch.dtype]]
    outputs: list[tuple[tuple, torch.dtype]]

    @property
    def instructions(self) -> int:
        """Run instructions (the program header's last word)."""
        return int(self.words[9])

    def __call__(self, *values) -> list[torch.Tensor]:
        return self.profile(*values)[0]

    def profile(self, *values, times: np.ndarray | None = None) -> tuple[list[torch.Tensor], np.ndarray | None]:
        """(outputs, times): with `times` (int64, one per run instruction) each instruction's nanoseconds are
        added to it (hw_program_profile)."""
        arrays = self._arrays(values)
        results = [torch.empty(shape, dtype=dtype) for shape, dtype in self.outputs]
        pointers_in = (ctypes.c_void_p * max(1, len(arrays)))(*[a.data_ptr() for a in arrays])
        pointers_out = (ctypes.c_void_p * max(1, len(results)))(*[r.data_ptr() for r in results])
        error = ctypes.create_string_buffer(256)
        clock = None if times is None else times.ctypes.data
        if self.library.hw_program_profile(self.handle, pointers_in, pointers_out, clock, error, len(error)):
            raise InputError(f"int-cpu: {error.value.decode()}")
        return results, times

    def time_by_opcode(self, *values, repeats: int = 20) -> dict[str, float]:
        """Seconds per call spent in each opcode (a run's profile, averaged over `repeats` calls)."""
        times = np.zeros(self.instructions, dtype=np.int64)
        for _ in range(repeats):
            self.profile(*values, times=times)
        totals: dict[str, float] = {}
        for index, nanoseconds in enumerate(times.tolist()):
            name = OPCODES[self.library.hw_program_opcode(self.handle, index)]
            totals[name] = totals.get(name, 0.0) + nanoseconds / 1e9 / repeats
        return dict(sorted(totals.items(), key=lambda item: -item[1]))

    def _arrays(self, values) -> list[torch.Tensor]:
        """The inputs as contiguous tensors of the program's types; InputError when a shape differs."""
        arrays = []
        for value, (shape, dtype) in zip(values, self.inputs):
            array = torch.as_tensor(value).to(dtype).contiguous()
            if tuple(array.shape) != shape:
                raise InputError(f"the static program takes inputs of shape {shape}, got {tuple(array.shape)}")
            arrays.append(array)
        return arrays

    def save(self, folder: Path) -> list[str]:
        """program.bin and program_constants.bin: what hwact_run (int_cpu_runner/driver) runs."""
        (folder / PROGRAM_FILES[0]).write_bytes(self.words.astype("<i8").tobytes())
        (folder / PROGRAM_FILES[1]).write_bytes(self.constants)
        return list(PROGRAM_FILES)

    def run_driver(self, driver: Path, folder: Path, inputs, prefix: tuple = (), isa: int | None = None,
                   threads: int = 1) -> tuple[list[torch.Tensor], str]:
        """Run the saved program with the hwact_run executable (under `prefix`, e.g. qemu-aarch64) on
        `inputs`; (outputs, the kernel path it reported)."""
        with tempfile.TemporaryDirectory() as scratch:
            scratch = Path(scratch)
            paths = [scratch / f"input_{index}.bin" for index in range(len(self.inputs))]
            for path, array in zip(paths, self._arrays(inputs)):
                path.write_bytes(array.numpy().tobytes())
            options = [*(("--isa", str(isa)) if isa is not None else ()), "--threads", str(threads)]
            done = subprocess.run([*prefix, str(driver), *options, str(folder / PROGRAM_FILES[0]),
                                   str(folder / PROGRAM_FILES[1]), str(scratch), *map(str, paths)],
                                  capture_output=True, text=True, timeout=600)
            if done.returncode:
                raise VerificationError(f"int-cpu: hwact_run failed (exit {done.returncode}): {done.stderr.strip()}")
            results = [torch.from_numpy(np.fromfile(scratch / f"output_{index}.bin", dtype=_numpy_type(dtype))
                                        .reshape(shape)) for index, (shape, dtype) in enumerate(self.outputs)]
        return results, done.stdout.strip()

    def __del__(self):
        if getattr(self, "handle", None):
            self.library.hw_program_free(self.handle)
            self.handle = None


def load_static(library, words: np.ndarray, constants: bytes, inputs, outputs) -> StaticProgram:
    names = [library.hw_program_op_name(i) for i in range(len(OPCODES) + 1)]
    if [n.decode() if n else None for n in names] != [*OPCODES, None]:
        raise UnsupportedError("the int-cpu library's runner has other opcodes than hwact's compiler")
    words = np.ascontiguousarray(words, dtype=np.int64)
    error = ctypes.create_string_buffer(256)
    handle = library.hw_program_new(words.ctypes.data, words.size, constants, len(constants), error, len(error))
    if not handle:
        raise InputError(f"int-cpu: the static program does not load: {error.value.decode()}")
    workspace = int(library.hw_program_workspace_bytes(handle))
    return StaticProgram(library, handle, words, constants, workspace, inputs, outputs)


def compile_static(program, inputs: list[torch.Tensor]) -> StaticProgram:
    """The plan of `program` (an IntCpuProgram) as a static program for inputs shaped like `inputs`;
    NotStatic with the reason when a step needs the Python executor."""
    from hwact.backends.int_cpu_runtime import IntCpuProgram

    recording = Recording()
    fresh = IntCpuProgram(program.plan, RecordingLibrary(program.lib, recording), program.threads)
    fresh.step_hook = lambda step: setattr(recording, "step", f"{step.name} ({step.op_name})")
    env = {}
    for index, (name, value) in enumerate(zip(program.plan.inputs, inputs)):
        tensor = torch.as_tensor(value).contiguous().clone()
        recording.add(Region("input", tensor.data_ptr(), tensor.nbytes, tensor, tainted=True, index=index))
        env[name] = tensor
    for tensor in fresh.constants.values():
        recording.of_tensor(tensor)
    given = list(env.values())
    torch_threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with torch.no_grad(), Tracer(recording):
            results = fresh._run(env, record=None)
            final = []
            for index, result in enumerate(results):
                if not isinstance(result, torch.Tensor):
                    raise NotStatic(f"output {index} is not a tensor")
                recording.step = f"output {index}"
                target = torch.empty(result.shape, dtype=result.dtype)
                region = recording.of_tensor(target)
                region.kind, region.index, region.tainted = "output", index, True
                recording.copy(target, result)
                final.append(target)
    finally:
        torch.set_num_threads(torch_threads)
    words, constants = _words(program.lib, recording, given, final)
    return load_static(program.lib, words, constants, [(tuple(t.shape), t.dtype) for t in given],
                       [(tuple(t.shape), t.dtype) for t in final])
