"""Run a plan (hwact/backends/int_cpu_plan.py) with the integer CPU kernels (hwact/backends/int_cpu_src/).

Every hwact op of the plan runs one kernel of the library (ctypes); the few aten ops a plan may hold
(layout, index arithmetic, masks: int_cpu_plan.TORCH_OPS) run as torch ops on the same arrays (views
where torch can). Integer tensors are stored in the narrowest type their bounds allow (int8, uint8,
int16, int32: the plan's out_type), so an 8-bit activation moves one byte per value. Every constant a
kernel needs besides its inputs (dyadic m0/shift, exponent zero points, LayerNorm constants) is derived
once with the functions the op's Python reference uses, and weights are packed once for the ISA in use.

Memory (hwact/backends/int_cpu_memory.py): the first run for a set of input shapes records every kernel
output's size and lifetime and checks every step's size; later runs with those shapes write the kernel
outputs into one static arena laid out from that record. A program is not re-entrant (one arena): calls
are serialized by a lock; use one program per thread for parallel calls.

    program = IntCpuProgram(read_plan(folder), load(build()), threads=2)
    logits = program(pixel_values)           # numpy or torch in, torch tensors out
    program.layout(pixel_values.shape)       # the arena of that shape: arena_bytes, activation_bytes
"""

from __future__ import annotations

import ctypes
import math
import threading

import numpy as np
import torch
import torch.fx

from hwact.backends.int_cpu_memory import (ArenaLayout, Buffer, check_size, check_torch_step, memory_limit_bytes,
                                            place, storages)
from hwact.backends.int_cpu_plan import Const, Plan, Ref
from hwact.backends.int_cpu_static import NotStatic, StaticProgram, compile_static
from hwact.errors import InputError, UnsupportedError
from hwact.ir.int_nonlinear_ops import SHIFT_GELU_LAMBDA, gelu_constants, layernorm_constants, softmax_constants
from hwact.ir.int_ops import dyadic

hw = torch.ops.hwact
TORCH_TYPES = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
               "float32": torch.float32}
ROWS_PER_THREAD = 32
KERNEL_TYPE = {torch.int8: 0, torch.uint8: 1, torch.int16: 2, torch.int32: 3}


def _ptr(tensor: torch.Tensor | None):
    return None if tensor is None else ctypes.c_void_p(tensor.data_ptr())


def _int32(tensor: torch.Tensor) -> torch.Tensor:
    return tensor.detach().to(torch.int32).contiguous()


def _codes(tensor: torch.Tensor) -> torch.Tensor:
    """A contiguous integer tensor in a type the kernels read (int64 sums become int32: they fit)."""
    if tensor.dtype not in KERNEL_TYPE:
        tensor = tensor.to(torch.int32)
    return tensor.contiguous()


def _check(condition: bool, step, what: str) -> None:
    """A plan read from a folder is hostile: every shape a kernel relies on is checked before the call (a C
    kernel given a wrong size would read or write outside its arrays)."""
    if not condition:
        raise InputError(f"plan step {step.name} ({step.op_name}): {what}")


def _eight_bit(step, x: torch.Tensor) -> None:
    _check(x.dtype in (torch.int8, torch.uint8), step, f"takes 8-bit codes, got {x.dtype}")


def broadcast_pattern(shape: tuple, small: tuple) -> tuple[int, int] | None:
    """(div, mod) with small[index] = big[(i / div) % mod] for a tensor of `small` shape broadcast to
    `shape`, when small's non-1 dims are one contiguous block of shape's dims; None otherwise."""
    small = (1,) * (len(shape) - len(small)) + tuple(small)
    dims = [i for i, size in enumerate(small) if size != 1]
    if not dims:
        return math.prod(shape), 1          # one value for every element
    first, last = dims[0], dims[-1]
    if any(small[i] != shape[i] for i in range(first, last + 1)):
        return None
    return math.prod(shape[last + 1:]), math.prod(shape[first:last + 1])


def _merged(tensor: torch.Tensor) -> torch.Tensor | None:
    """`tensor` (..., M, K) viewed as (batch, M, K), or None when its strides do not allow a view."""
    try:
        return tensor.view(-1, *tensor.shape[-2:])
    except RuntimeError:
        return None


class IntCpuProgram:
    def __init__(self, plan: Plan, library, threads: int = 1, use_static: bool = True):
        self.plan, self.lib, self.threads = plan, library, max(1, int(threads))
        self.constants = {key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in plan.constants.items()}
        self.packed: dict[tuple, tuple] = {}
        self.memo: dict[tuple, tuple] = {}
        self.layouts: dict[tuple, tuple[ArenaLayout, torch.Tensor]] = {}   # input shapes -> (layout, arena)
        self.memory_limit = memory_limit_bytes()
        self.lock = threading.Lock()
        self._layout = self._arena = self._record = None
        self._index = 0
        self.step_hook = None          # called with each step before it runs (int_cpu_static's recording)
        self.static: dict[tuple, object] = {}    # input shapes -> StaticProgram, or why there is none
        self.use_static = use_static
        self.kernels = {hw.quantize.default: self._quantize, hw.dequantize.default: self._dequantize,
                        hw.requantize.default: self._requantize, hw.int_linear.default: self._linear,
                        hw.int_conv2d.default: self._conv2d, hw.int_matmul.default: self._matmul,
                        hw.int_add.default: self._add, hw.int_mul.default: self._mul, hw.int_lut.default: self._lut,
                        hw.int_mask.default: self._mask, hw.int_max_pool2d.default: self._max_pool2d,
                        hw.int_embedding.default: self._embedding, hw.shiftmax.default: self._shiftmax,
                        hw.shift_gelu.default: self._shift_gelu, hw.lambda_shift_gelu.default: self._shift_gelu,
                        hw.i_layernorm.default: self._layernorm}
        missing = sorted({s.op_name for s in plan.steps if s.op_name.startswith("hwact.") and s.op not in self.kernels})
        if missing:
            raise UnsupportedError(f"the integer CPU runtime has no kernel for {', '.join(missing)}")

    # ----- running -------------------------------------------------------------------------------
    @staticmethod
    def signature(*inputs) -> tuple:
        """The key of a set of inputs: their shapes and types (one arena and static program each)."""
        return tuple((tuple(value.shape), value.dtype) for value in map(torch.as_tensor, inputs))

    def __call__(self, *inputs) -> list[torch.Tensor]:
        env = {name: torch.as_tensor(value) for name, value in zip(self.plan.inputs, inputs)}
        signature = self.signature(*env.values())
        torch_threads = torch.get_num_threads()
        torch.set_num_threads(1)   # the torch steps are small views and copies: threads only contend
        try:
            with self.lock, torch.no_grad():
                self.lib.hw_set_threads(self.threads)
                if isinstance(self.static.get(signature), StaticProgram):
                    return self.static[signature](*env.values())
                if signature in self.layouts:
                    self._layout, self._arena = self.layouts[signature]
                    return self._run(env, record=None)
                self._layout = self._arena = None
                record = {"allocations": {}, "last_use": {}}
                inputs = list(env.values())
                outputs = self._run(env, record)
                layout = self._plan_arena(record, storages(outputs))
                if self.use_static:
                    self._compile(signature, inputs)
                static = isinstance(self.static.get(signature), StaticProgram)   # the runner has its own memory
                self.layouts[signature] = (layout, torch.empty(0 if static else max(1, layout.arena_bytes),
                                                               dtype=torch.uint8))
                return outputs
        finally:
            self._layout = self._arena = None
            torch.set_num_threads(torch_threads)

    def _compile(self, signature: tuple, inputs: list[torch.Tensor]) -> None:
        """The static program of these shapes (int_cpu_static), or the reason the plan keeps this executor."""
        try:
            self.static[signature] = compile_static(self, inputs)
        except NotStatic as reason:
            self.static[signature] = str(reason)
        except Exception as error:  # noqa: BLE001 - the Python executor ran this plan: it stays the executor
            self.static[signature] = f"the static compile failed: {type(error).__name__}: {error}"

    def executor(self, *input_shapes) -> dict:
        """Which executor runs inputs of these shapes, and its memory (after a first run with them)."""
        for signature, static in self.static.items():
            if tuple(shape for shape, _ in signature) == tuple(tuple(shape) for shape in input_shapes):
                if isinstance(static, StaticProgram):
                    return {"executor": "static C program", "workspace_bytes": static.workspace_bytes,
                            "program_constant_bytes": len(static.constants), "instructions": static.instructions}
                return {"executor": "python", "why": static}
        return {"executor": "python"}

    def layout(self, *input_shapes) -> ArenaLayout | None:
        """The arena laid out for inputs of these shapes (after a first run with them), else None."""
        for signature, (layout, _) in self.layouts.items():
            if tuple(shape for shape, _ in signature) == tuple(tuple(shape) for shape in input_shapes):
                return layout
        return None

    def _run(self, env: dict, record: dict | None) -> list[torch.Tensor]:
        """Every step in order. With `record` (the first run of a shape): each torch step's size is checked on
        meta tensors first, and every kernel output's allocation and last reader are noted."""
        for index, step in enumerate(self.plan.steps):
            self._index = index
            if self.step_hook:
                self.step_hook(step)
            args = self._resolve(step.args, env)
            kwargs = self._resolve(step.kwargs, env)
            kernel = self.kernels.get(step.op)
            if record is not None:
                for address in storages((args, kwargs)):
                    record["last_use"][address] = index
                if kernel is None:
                    check_torch_step(step, args, kwargs, self.memory_limit)
                self._record = record["allocations"].setdefault(index, [])
            env[step.name] = kernel(step, *args, **kwargs) if kernel else self._torch_op(step, args, kwargs)
        self._record = None
        return [env[name] for name in self.plan.outputs]

    @staticmethod
    def _plan_arena(record: dict, returned: set[int]) -> ArenaLayout:
        """The arena of the kernel outputs one recorded run made (int_cpu_memory.place), leaving out those
        the caller gets back and steps that allocated more than once."""
        buffers = []
        for index, allocations in record["allocations"].items():
            if len(allocations) == 1 and allocations[0][0] not in returned:
                address, nbytes = allocations[0]
                buffers.append(Buffer(index, nbytes, index, max(index, record["last_use"].get(address, index))))
        return place(buffers)

    @staticmethod
    def _torch_op(step, args, kwargs):
        """An aten op of the plan on codes: code arguments first widened to the step's type (so -(-128)
        and a cat of int8 with int16 are exact), the result in that type."""
        dtype = TORCH_TYPES.get(step.out_type) if step.out_type != "float32" else None
        if dtype is not None:
            args = torch.fx.node.map_aggregate(
                args, lambda a: a.to(dtype) if isinstance(a, torch.Tensor) and a.dtype in KERNEL_TYPE else a)
        result = step.op(*args, **kwargs)
        if dtype is not None and isinstance(result, torch.Tensor) and result.dtype != dtype \
                and result.dtype in (*KERNEL_TYPE, torch.int64):
            result = result.to(dtype)
        return result

    def _resolve(self, value, env):
        if isinstance(value, Ref):
            return env[value]
        if isinstance(value, Const):
            return self.constants[value]
        if isinstance(value, list):
            return [self._resolve(v, env) for v in value]
        if isinstance(value, dict):
            return {k: self._resolve(v, env) for k, v in value.items()}
        return value

    def _out(self, step, shape, dtype: torch.dtype | None = None) -> torch.Tensor:
        """The step's output: its slice of the arena when one is laid out for these shapes, else new memory
        (whose address and size the recording run notes)."""
        dtype = dtype or TORCH_TYPES[step.out_type]
        shape = tuple(int(size) for size in shape)
        nbytes = math.prod(shape) * dtype.itemsize
        if self._layout is not None and self._index in self._layout.offsets:
            offset, planned = self._layout.offsets[self._index]
            if planned == nbytes:
                return self._arena[offset:offset + nbytes].view(dtype).view(shape)
        out = self._scratch(step, shape, dtype)
        if self._record is not None:
            self._record.append((out.untyped_storage().data_ptr(), nbytes))
        return out

    def _scratch(self, step, shape, dtype: torch.dtype) -> torch.Tensor:
        """New memory for a step, refused when it is larger than one step may use."""
        check_size(step, shape, dtype, self.memory_limit)
        return torch.empty(tuple(shape), dtype=dtype)

    def _threads_for(self, rows: int) -> int:
        """Threads for a GEMM of `rows` rows: the kernels start their threads per call, which costs more
        than it saves below ROWS_PER_THREAD rows each."""
        return max(1, min(self.threads, rows // ROWS_PER_THREAD))

    def _memo(self, key, make):
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    # ----- kernels -------------------------------------------------------------------------------
    def _quantize(self, step, x, scale, qmin, qmax):
        x = x.to(torch.float32).contiguous()
        out = self._out(step, x.shape)
        self.lib.hw_quantize(_ptr(x), x.numel(), float(scale), int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _dequantize(self, step, q, scale):
        q = _codes(q)
        out = self._out(step, q.shape, torch.float32)
        self.lib.hw_dequantize(_ptr(q), KERNEL_TYPE[q.dtype], q.numel(), float(scale), _ptr(out))
        return out

    def _requantize(self, step, q, in_scale, out_scale, qmin, qmax):
        q = _codes(q)
        m0, shift = dyadic(in_scale / out_scale)
        out = self._out(step, q.shape)
        self.lib.hw_requantize(_ptr(q), KERNEL_TYPE[q.dtype], q.numel(), m0, shift, int(qmin), int(qmax), _ptr(out),
                               KERNEL_TYPE[out.dtype])
        return out

    def _pack(self, key, weight: torch.Tensor):
        """(packed buffer, N, K) of an int8 (N, K) weight, packed once."""
        if key not in self.packed:
            weight = weight.to(torch.int8).contiguous()
            n, k = weight.shape
            buffer = ctypes.create_string_buffer(max(1, int(self.lib.hw_pack_size(n, k))))
            self.lib.hw_pack(_ptr(weight), n, k, buffer)
            self.packed[key] = (buffer, n, k)
        return self.packed[key]

    def _epilogue(self, step, bias, m0, shift, start=0, stop=None):
        wanted = (stop if stop is not None else bias.numel()) - start
        _check(all(t.numel() >= start + wanted for t in (bias, m0, shift)) and wanted > 0, step,
               "bias, m0 and shift need one value per output channel")
        return self._memo((step.name, "epi", start), lambda: (_int32(bias[start:stop]), _int32(m0[start:stop]),
                                                              _int32(shift[start:stop])))

    def _linear(self, step, q, weight, bias, m0, shift, unsigned_input, qmin, qmax):
        x = _codes(q)
        _eight_bit(step, x)
        _check(weight.dim() == 2 and x.dim() >= 1 and x.shape[-1] == weight.shape[1] and weight.shape[0] > 0, step,
               f"input {tuple(x.shape)} does not match weight {tuple(weight.shape)}")
        packed, n, k = self._pack(step.name, weight)
        bias_c, m0_c, shift_c = self._epilogue(step, bias, m0, shift, 0, n)
        rows = x.numel() // k
        out = self._out(step, (*x.shape[:-1], n))
        self.lib.hw_linear(_ptr(x), KERNEL_TYPE[x.dtype], rows, k, k, packed, n, _ptr(bias_c), _ptr(m0_c),
                           _ptr(shift_c), int(qmin), int(qmax), None, 0, _ptr(out), KERNEL_TYPE[out.dtype], n, 1,
                           self._threads_for(rows))
        return out

    def _conv2d(self, step, q, weight, bias, m0, shift, stride, padding, dilation, groups, unsigned_input, qmin, qmax):
        x = _codes(q)
        _eight_bit(step, x)
        _check(x.dim() == 4 and weight.dim() == 4 and min(weight.shape) > 0 and groups >= 1
               and weight.shape[0] % groups == 0 and x.shape[1] == weight.shape[1] * groups, step,
               f"input {tuple(x.shape)} does not match weight {tuple(weight.shape)} with {groups} groups")
        _check(min(stride) >= 1 and min(dilation) >= 1 and min(padding) >= 0, step, "stride, dilation, padding")
        batch, channels, height, width = x.shape
        c_out, c_in, kh, kw = weight.shape
        oh = (height + 2 * padding[0] - dilation[0] * (kh - 1) - 1) // stride[0] + 1
        ow = (width + 2 * padding[1] - dilation[1] * (kw - 1) - 1) // stride[1] + 1
        _check(oh >= 1 and ow >= 1, step, "the kernel is larger than the padded input")
        out = self._out(step, (batch, c_out, oh, ow))
        geometry = (kh, kw, stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1])
        if groups == channels == c_out and c_in == 1:
            w = self._memo((step.name, "dw"), lambda: weight.to(torch.int8).reshape(c_out, kh, kw).contiguous())
            bias_c, m0_c, shift_c = self._epilogue(step, bias, m0, shift, 0, c_out)
            for image in range(batch):
                self.lib.hw_depthwise_conv2d(_ptr(x[image]), KERNEL_TYPE[x.dtype], channels, height, width, _ptr(w),
                                             *geometry, _ptr(bias_c), _ptr(m0_c), _ptr(shift_c), int(qmin), int(qmax),
                                             _ptr(out[image]), KERNEL_TYPE[out.dtype])
            return out
        per_group = c_out // groups
        if groups == 1:   # every image's patches in one GEMM (N·OH·OW rows)
            packed, _, k = self._pack((step.name, 0), weight.reshape(c_out, -1))
            bias_c, m0_c, shift_c = self._epilogue(step, bias, m0, shift, 0, c_out)
            pixels = oh * ow
            columns = self._scratch(step, (batch * pixels, k), x.dtype)
            for image in range(batch):
                self.lib.hw_im2col(_ptr(x[image]), KERNEL_TYPE[x.dtype], c_in, height, width, *geometry,
                                   _ptr(columns[image * pixels]))
            direct = batch == 1      # one image: the GEMM writes NCHW itself (pixel stride 1, channel stride OH·OW)
            rows_out = out if direct else self._scratch(step, (batch * pixels, c_out), out.dtype)
            self.lib.hw_linear(_ptr(columns), KERNEL_TYPE[x.dtype], batch * pixels, k, k, packed, c_out, _ptr(bias_c),
                               _ptr(m0_c), _ptr(shift_c), int(qmin), int(qmax), None, 0, _ptr(rows_out),
                               KERNEL_TYPE[out.dtype], *((1, pixels) if direct else (c_out, 1)),
                               self._threads_for(batch * pixels))
            if not direct:       # the NHWC result moved to NCHW once
                out.copy_(rows_out.view(batch, oh, ow, c_out).permute(0, 3, 1, 2))
            return out
        columns = self._scratch(step, (oh * ow, c_in * kh * kw), x.dtype)
        for group in range(groups):
            lo, hi = group * per_group, (group + 1) * per_group
            packed, _, k = self._pack((step.name, group), weight[lo:hi].reshape(per_group, -1))
            bias_c, m0_c, shift_c = self._epilogue(step, bias, m0, shift, lo, hi)
            for image in range(batch):
                source = x[image, group * c_in:(group + 1) * c_in].contiguous()
                self.lib.hw_im2col(_ptr(source), KERNEL_TYPE[x.dtype], c_in, height, width, *geometry, _ptr(columns))
                self.lib.hw_linear(_ptr(columns), KERNEL_TYPE[x.dtype], oh * ow, k, k, packed, per_group, _ptr(bias_c),
                                   _ptr(m0_c), _ptr(shift_c), int(qmin), int(qmax), None, 0, _ptr(out[image, lo]),
                                   KERNEL_TYPE[out.dtype], 1, oh * ow, self._threads_for(oh * ow))
        return out

    def _matmul(self, step, a, b, a_unsigned, b_unsigned, multiplier, qmin, qmax):
        _eight_bit(step, a)
        _eight_bit(step, b)
        _check(a.dim() >= 2 and b.dim() >= 2 and a.shape[-1] == b.shape[-2], step,
               f"shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")
        batch_shape = torch.broadcast_shapes(a.shape[:-2], b.shape[:-2])
        rows, depth, cols = a.shape[-2], a.shape[-1], b.shape[-1]
        for shape in ((*batch_shape, rows, depth), (*batch_shape, depth, cols)):
            check_size(step, shape, torch.int16, self.memory_limit)   # the operands may be copied, as int16 at most
        a = a.expand(*batch_shape, rows, depth)
        b = b.expand(*batch_shape, depth, cols)
        m0, shift = dyadic(multiplier)
        out = self._out(step, (*batch_shape, rows, cols))
        # the kernel takes one batch stride per operand: several batch dims are one call when they merge
        # into one (a view), else one call per index of the leading dims (a head-split view of (B, T, H, d)
        # as (B, H, T, d) is H heads at stride d inside each image), so no operand is copied
        merged = _merged(a), _merged(b)          # never None with at most one batch dim
        for index in [()] if None not in merged else np.ndindex(*batch_shape[:-1]):
            a3, b3 = (merged[0], merged[1]) if not index else (a[index], b[index])
            target = out[index] if index else out
            self.lib.hw_matmul(_ptr(a3), KERNEL_TYPE[a3.dtype], *a3.stride(), _ptr(b3), KERNEL_TYPE[b3.dtype],
                               *b3.stride(), a3.shape[0], rows, depth, cols, m0, shift, int(qmin), int(qmax),
                               _ptr(target), KERNEL_TYPE[out.dtype], self._threads_for(a3.shape[0] * rows))
        return out

    def _binary(self, step, a, b):
        """(a, b, swapped, div, mod, out): a has the output's shape, b is broadcast by (div, mod)."""
        shape = torch.broadcast_shapes(a.shape, b.shape)
        check_size(step, shape, torch.int32, self.memory_limit)       # operands may be expanded and copied
        swapped = tuple(a.shape) != tuple(shape)
        if swapped:
            a, b = b, a
        a = _codes(a.expand(shape)) if tuple(a.shape) != tuple(shape) else _codes(a)
        pattern = broadcast_pattern(tuple(shape), tuple(b.shape))
        if pattern is None:
            b, pattern = b.expand(shape), (1, math.prod(shape))
        return a, _codes(b), swapped, pattern[0], pattern[1], self._out(step, shape)

    def _add(self, step, a, b, a_multiplier, b_multiplier, qmin, qmax):
        a, b, swapped, div, mod, out = self._binary(step, a, b)
        (ma, sa), (mb, sb) = dyadic(a_multiplier), dyadic(b_multiplier)
        if swapped:
            (ma, sa), (mb, sb) = (mb, sb), (ma, sa)
        self.lib.hw_add(_ptr(a), KERNEL_TYPE[a.dtype], _ptr(b), KERNEL_TYPE[b.dtype], out.numel(), div, mod, ma, sa,
                        mb, sb, int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _mul(self, step, a, b, multiplier, qmin, qmax):
        a, b, _, div, mod, out = self._binary(step, a, b)
        m0, shift = dyadic(multiplier)
        self.lib.hw_mul(_ptr(a), KERNEL_TYPE[a.dtype], _ptr(b), KERNEL_TYPE[b.dtype], out.numel(), div, mod, m0, shift,
                        int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _mask(self, step, q, keep, fill, qmax=None):
        shape = torch.broadcast_shapes(q.shape, keep.shape)
        check_size(step, shape, torch.int32, self.memory_limit)
        x = _codes(q.expand(shape))
        pattern = broadcast_pattern(tuple(shape), tuple(keep.shape))
        if pattern is None:
            keep, pattern = keep.expand(shape), (1, math.prod(shape))
        flags = keep.to(torch.uint8).contiguous()
        out = self._out(step, shape)
        self.lib.hw_mask(_ptr(x), KERNEL_TYPE[x.dtype], _ptr(flags), out.numel(), pattern[0], pattern[1], int(fill),
                         _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _lut(self, step, q, table, in_qmin, qmin, qmax):
        x = _codes(q)
        table_c = self._memo((step.name, "table"), lambda: _int32(table))
        _check(table_c.dim() == 1 and 1 <= table_c.numel() <= 65536, step, "a table of 1 to 65536 entries")
        out = self._out(step, x.shape)
        self.lib.hw_lut(_ptr(x), KERNEL_TYPE[x.dtype], x.numel(), _ptr(table_c), int(in_qmin), table_c.numel(),
                        int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _max_pool2d(self, step, q, kernel, stride, padding, unsigned_input):
        x = _codes(q)
        _check(x.dim() == 4 and min(kernel) >= 1 and min(stride) >= 1 and min(padding) >= 0
               and 2 * max(padding) <= min(kernel), step, "pooling geometry")
        batch, channels, height, width = x.shape
        oh = (height + 2 * padding[0] - kernel[0]) // stride[0] + 1
        ow = (width + 2 * padding[1] - kernel[1]) // stride[1] + 1
        _check(oh >= 1 and ow >= 1, step, "the window is larger than the padded input")
        out = self._out(step, (batch, channels, oh, ow), x.dtype)
        self.lib.hw_max_pool2d(_ptr(x), KERNEL_TYPE[x.dtype], batch * channels, height, width, kernel[0], kernel[1],
                               stride[0], stride[1], padding[0], padding[1], _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _embedding(self, step, table, ids):
        _check(table.dim() == 2, step, "the table must be (rows, dim)")
        table_c = self._memo((step.name, "table"), lambda: table.to(torch.int8).contiguous())
        index = ids.to(torch.int64).contiguous()
        _check(not index.numel() or (int(index.min()) >= 0 and int(index.max()) < table_c.shape[0]), step,
               f"token ids must lie in [0, {table_c.shape[0]})")
        out = self._out(step, (*index.shape, table_c.shape[1]))
        self.lib.hw_embedding(_ptr(table_c), table_c.shape[0], table_c.shape[1], _ptr(index), index.numel(),
                              _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _rows(self, q, dim: int = -1):
        """(contiguous codes with `dim` last, the permutation that undoes it or None)."""
        dim = dim % q.dim()
        if dim == q.dim() - 1:
            return _codes(q), None
        order = [d for d in range(q.dim()) if d != dim] + [dim]
        inverse = [order.index(d) for d in range(q.dim())]
        return _codes(q.permute(order)), inverse

    def _shiftmax(self, step, q, in_scale, out_scale, dim, qmin, qmax, n):
        x, inverse = self._rows(q, dim)
        channels = x.shape[-1]
        x0, m0, shift = self._memo((step.name, channels), lambda: softmax_constants(in_scale, out_scale, n, channels))
        out = self._out(step, x.shape)
        self.lib.hw_shiftmax(_ptr(x), KERNEL_TYPE[x.dtype], x.numel() // channels, channels, x0, n, m0, shift,
                             int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out if inverse is None else out.permute(inverse)

    def _shift_gelu(self, step, q, in_scale, out_scale, qmin, qmax, n, lam=SHIFT_GELU_LAMBDA):
        x = _codes(q)
        channels = x.shape[-1] if x.dim() else 1
        x0, drop, m0, shift = self._memo((step.name,), lambda: gelu_constants(in_scale, out_scale, n, lam))
        out = self._out(step, x.shape)
        self.lib.hw_shift_gelu(_ptr(x), KERNEL_TYPE[x.dtype], x.numel() // channels, channels, x0, n, drop, m0, shift,
                               int(qmin), int(qmax), _ptr(out), KERNEL_TYPE[out.dtype])
        return out

    def _layernorm(self, step, q, gamma_int, beta_int, in_scale, out_scale, gamma_scale, eps, qmin, qmax):
        x = _codes(q)
        channels = x.shape[-1]
        _check(gamma_int.numel() == channels and beta_int.numel() == channels, step,
               "gamma and beta need one value per channel")
        k, eps_int, precision, m0, shift = self._memo(
            (step.name, "c"), lambda: layernorm_constants(channels, in_scale, out_scale, gamma_scale, eps))
        gamma_c, beta_c = self._memo((step.name, "gb"), lambda: (_int32(gamma_int), _int32(beta_int)))
        out = self._out(step, x.shape)
        self.lib.hw_i_layernorm(_ptr(x), KERNEL_TYPE[x.dtype], x.numel() // channels, channels, _ptr(gamma_c),
                                _ptr(beta_c), k, eps_int, precision, m0, shift, int(qmin), int(qmax), _ptr(out),
                                KERNEL_TYPE[out.dtype])
        return out

