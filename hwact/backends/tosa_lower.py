"""The integer graph an int8 recipe made, lowered to a TOSA 1.0 (PRO-INT) network, written as a neutral
description (JSON + constants) that hwact/backends/tosa_tool/serialize.py turns into a .tosa file.

The network maps the integer codes after the graph's input `quantize` to the codes before its output
`dequantize`; those two (one float multiply each) stay with the host, their scales go to the report.

Tensors. A hwact integer tensor holds codes in its producer's declared bounds [qmin, qmax]; in TOSA it is
stored in the narrowest type with a zero point zp (code = stored − zp, TOSA's own convention):
    [-128, 127] -> int8, zp 0;   [0, 255] -> int8, zp −128;   int16 -> int16, zp 0;   else int32, zp 0.
hwact is NCHW, TOSA's convolutions are NHWC: every value carries a permutation `perm` (the TOSA tensor is
the logical tensor permuted by it), so permutes are free and a TRANSPOSE (or a RESHAPE when only size-1
dimensions move) is emitted only where an op needs another layout.

Ops (hwact reference -> TOSA; every requantization is one RESCALE):
    int_conv2d           CONV2D (groups 1) / DEPTHWISE_CONV2D (groups = C) on NHWC, int8 x int8 -> int32 with
                         input_zp, bias; RESCALE per channel
    int_linear           RESHAPE to [1, rows, 1, K], CONV2D 1x1, RESCALE per channel, RESHAPE back
    int_matmul           RESHAPE to rank 3, MATMUL (int8, zero points) -> int32, RESCALE
    requantize           RESCALE
    int_add              RESCALE each operand by its dyadic (to int16 when its whole code range fits, then x1 to
                         int32: Vela makes that one 16-bit ADD; else to int32; a constant operand: its rescaled
                         codes as an int32 constant), ADD, RESCALE x1 to the output type
    int_mul              RESCALE x1 of each operand to int32 (zero point removed), MUL (shift 0), RESCALE
    int_max_pool2d       MAX_POOL2D (max commutes with the zero-point offset)
    int_lut (8 bit)      TABLE: entry s = clamp(table[clamp(s − zp_in − in_qmin, 0, N−1)], qmin, qmax) + zp_out
    int_mask (constant)  nothing when every position is kept, else MUL / ADD with constants, RESCALE x1
    clamp on codes       CLAMP on stored values
    sum (mean pooling)   over H and W of 8-bit codes: DEPTHWISE_CONV2D with a kernel of ones (input_zp removes the
                         zero point); else RESCALE to int32 (zero point removed), REDUCE_SUM per axis
    constant_pad_nd      PAD (the pad code plus the zero point); a pad of code 0 (real 0) read only by convs is
                         folded into their padding instead (TOSA pads may be asymmetric)
    layout ops           RESHAPE, TRANSPOSE, SLICE, CONCAT, TILE (permute/transpose: a new perm, no op)

RESCALE is exactly hwact's requantization: TOSA's apply_scale_32 with rounding_mode SINGLE_ROUND computes
(value · multiplier + 2^(shift−1)) >> shift in int64, i.e. floor((x · m0 + 2^(shift−1)) / 2^shift), the
rounding_shift of hwact/ir/int_ops.py, then clamps to the output type; multiplier = m0 and shift = shift
of hwact's dyadic() (TOSA requires 2 <= shift <= 62; a smaller shift is refused by name). The x1 RESCALE is
multiplier 2^30, shift 30. A clamp tighter than the storage type adds a CLAMP.

    npu_softmax          REDUCE_MAX, SUB, an int8 index (RESCALE; wide: RESCALE to log2 units,
                         ARITHMETIC_RIGHT_SHIFT, SUB), two int8 TABLEs (exp's high and low byte), ADD to int16 (wide:
                         int32 and ARITHMETIC_RIGHT_SHIFT), REDUCE_SUM, CLZ, LOGICAL_LEFT_SHIFT, Newton MULs for the
                         reciprocal, its int16 row factor, one int16 x int16 MUL, RESCALE
    npu_layernorm        REDUCE_SUM of x, MUL by C, SUB, MAXIMUM(d, 0) and REDUCE_SUM for the CLZ row shift (no
                         REDUCE_MAX / MIN: Vela's slowest ops on a wide row), MUL (squares with a shift),
                         ARITHMETIC_RIGHT_SHIFT (eps), CLZ normalization, Newton MULs for 1/sqrt, one MUL by the
                         row factor, MUL γo, ADD βo, RESCALE by a shift (fused into the ADD)
                         (both op for op as their references in hwact/ir/int_npu_ops.py, on [1, rows, C])

Not lowered (the check names them, with the recipe that avoids them): Shiftmax and I-LayerNorm (their
reference carries int64 intermediates: 2^62 / Σe, isqrt of a 61-bit variance; TOSA's INT profile stops at
int32 and Ethos-U55 has no INTDIV), ShiftGELU (its σ depends on the row maximum, so it is no 256-entry
table of the input code), embeddings and masks (GATHER, SELECT: not on Ethos-U55/U65).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.fx

from hwact.errors import UnsupportedError
from hwact.ir.graph import Graph, op_name
from hwact.ir.ops import load_all_ops, op_args, output_bounds
from hwact.ir.record import record
from hwact.ir.summary import float_compute_nodes, is_bookkeeping

NHWC = (0, 2, 3, 1)
RANGES = {"INT8": (-128, 127), "INT16": (-32768, 32767), "INT32": (-(1 << 31), (1 << 31) - 1)}
NUMPY = {"INT8": np.int8, "INT16": np.int16, "INT32": np.int32}
IDENTITY_MULTIPLIER, IDENTITY_SHIFT = 1 << 30, 30

# ops without a bit-exact TOSA lowering, with the reason the check reports
BLOCKED = {
    "hwact.shiftmax.default": "Shiftmax's reference divides 2^62 by the row sum and multiplies in int64, beyond "
                              "TOSA's int32 INT profile (and Ethos-U55 has no INTDIV); use --recipe int8-npu "
                              "(npu-softmax: an int32 softmax)",
    "hwact.i_layernorm.default": "I-LayerNorm's variance (up to 2^61) and integer square root need int64, beyond "
                                 "TOSA's int32 INT profile; use --recipe int8-npu (npu-layernorm: an int32 LayerNorm)",
    "hwact.shift_gelu.default": "ShiftGELU's σ depends on the row maximum, so it is no 256-entry TABLE of the input "
                                "code; use --recipe int8-npu (lut-gelu: GELU as a per-code TABLE)",
    "hwact.lambda_shift_gelu.default": "lambda-ShiftGELU's σ depends on the row maximum, so it is no 256-entry TABLE "
                                       "of the input code; use --recipe int8-npu (lut-gelu: GELU as a per-code TABLE)",
    "hwact.int_embedding.default": "embedding lookups (GATHER) are not supported on Ethos-U55/U65",
    "hwact.int_mask.default": "a mask computed from the inputs (SELECT) is not supported on Ethos-U55/U65 (a "
                              "constant mask lowers)",
}
PASS_THROUGH = {"aten.contiguous.default", "aten.clone.default", "aten.alias.default", "aten.detach.default"}
RESHAPES = {"aten.reshape.default", "aten.view.default", "aten._unsafe_view.default", "aten.flatten.using_ints",
            "aten.unflatten.int", "aten.unsqueeze.default", "aten.squeeze.dim", "aten.squeeze.dims",
            "aten.squeeze.default"}
SCALAR_OPS = {"aten.sym_size.int", "mul", "add", "sub", "floordiv", "getitem"}   # python ints on shapes


@dataclass(frozen=True)
class Value:
    """A hwact integer tensor in the TOSA network: TOSA tensor `name` = logical tensor (hwact's `shape`)
    permuted by `perm`, stored as `dtype` with code = stored − zp."""
    name: str
    shape: tuple[int, ...]
    dtype: str
    zp: int
    perm: tuple[int, ...]

    @property
    def tosa_shape(self) -> list[int]:
        return [self.shape[p] for p in self.perm]


def storage(low: int, high: int) -> tuple[str, int]:
    """(TOSA type, zero point) that holds codes in [low, high] (module docstring)."""
    if -128 <= low and high <= 127:
        return "INT8", 0
    if 0 <= low and high <= 255:
        return "INT8", -128
    if -32768 <= low and high <= 32767:
        return "INT16", 0
    return "INT32", 0


def _name(node) -> str:
    return node if isinstance(node, str) else op_name(node) if node.op == "call_function" else node.op


class Network:
    """The TOSA network being built: tensors, constants and ops, in the description's terms."""

    def __init__(self):
        self.tensors: dict[str, dict] = {}
        self.consts: dict[str, tuple[str, np.ndarray]] = {}
        self.ops: list[dict] = []
        self.inputs: list[str] = []
        self.outputs: list[str] = []
        self._cache: dict = {}

    def unique(self, hint: str) -> str:
        name, index = hint, 1
        while name in self.tensors or name in self.consts:
            index += 1
            name = f"{hint}_{index}"
        return name

    def tensor(self, hint: str, shape, dtype: str) -> str:
        name = self.unique(hint)
        self.tensors[name] = {"name": name, "shape": [int(s) for s in shape], "dtype": dtype}
        return name

    def const(self, hint: str, values, dtype: str) -> str:
        given = np.asarray(values)
        key = ("const", dtype, given.dtype.str, given.shape, given.tobytes())
        if key not in self._cache:
            array = np.asarray(values, dtype=np.int64 if dtype == "SHAPE" else NUMPY.get(dtype, np.int8))
            name = self.unique(hint)
            self.consts[name] = (dtype, array)
            self._cache[key] = name
        return self._cache[key]

    def op(self, kind: str, inputs: list[str], shape, dtype: str, attr: list, hint: str) -> str:
        out = self.tensor(hint, shape, dtype)
        self.ops.append({"op": kind, "inputs": inputs, "outputs": [out], "attr": attr})
        return out

    # ----- building blocks ----------------------------------------------------------------------------
    def zero_point(self, zp: int, dtype: str) -> str:
        return self.const(f"zp_{dtype.lower()}_{zp}".replace("-", "m"), [zp], dtype)

    def shape_of(self, name: str) -> list[int]:
        return list(self.tensors[name]["shape"]) if name in self.tensors else list(self.consts[name][1].shape)

    def reshape(self, name: str, shape, dtype: str, hint: str) -> str:
        if self.shape_of(name) == [int(s) for s in shape]:
            return name
        return self.op("RESHAPE", [name, self.const(f"shape_{len(shape)}d", list(shape), "SHAPE")], shape, dtype,
                       ["ReshapeAttribute", []], hint)

    def layout(self, value: Value, perm: tuple[int, ...]) -> str:
        """The TOSA tensor of `value` laid out as its logical tensor permuted by `perm` (cached)."""
        perm = tuple(perm)
        if perm == value.perm:
            return value.name
        key = ("layout", value.name, perm)
        if key not in self._cache:
            order = [value.perm.index(p) for p in perm]          # TOSA axes in the wanted order
            shape = [value.shape[p] for p in perm]
            moved = [a for a in order if value.tosa_shape[a] != 1]
            if moved == sorted(moved):                          # only size-1 axes move: a reshape
                self._cache[key] = self.reshape(value.name, shape, value.dtype, f"{value.name}_r")
            else:
                # the size-1 axes reshaped away first: Vela splits a rank-5 transpose into many
                kept = sorted(moved)
                squeezed = self.reshape(value.name, [value.tosa_shape[a] for a in kept], value.dtype,
                                        f"{value.name}_sq")
                turned = self.op("TRANSPOSE", [squeezed], [value.tosa_shape[a] for a in moved], value.dtype,
                                 ["TransposeAttribute", [[kept.index(a) for a in moved]]], f"{value.name}_t")
                self._cache[key] = self.reshape(turned, shape, value.dtype, f"{value.name}_t_r")
        return self._cache[key]

    def logical(self, value: Value) -> str:
        return self.layout(value, tuple(range(len(value.shape))))

    def rescale(self, name: str, in_dtype: str, in_zp: int, m0, shift, out_dtype: str, out_zp: int,
                shape, hint: str) -> str:
        """RESCALE: stored_out = clamp(floor(((stored − in_zp) · m0 + 2^(shift−1)) / 2^shift) + out_zp)."""
        m0, shift = np.atleast_1d(np.asarray(m0, dtype=np.int64)), np.atleast_1d(np.asarray(shift, dtype=np.int64))
        if int(shift.min()) < 2 or int(shift.max()) > 62:
            raise UnsupportedError(f"{hint}: requantization shift {int(shift.min())}..{int(shift.max())} is outside "
                                   "TOSA RESCALE's 2..62")
        per_channel = m0.size > 1
        inputs = [name, self.const(f"{hint}_multiplier" if per_channel else f"m0_{int(m0[0])}", m0, "INT32"),
                  self.const(f"{hint}_shift" if per_channel else f"shift_{int(shift[0])}", shift, "INT8"),
                  self.zero_point(in_zp, in_dtype), self.zero_point(out_zp, out_dtype)]
        return self.op("RESCALE", inputs, shape, out_dtype,
                       ["RescaleAttribute", [True, {"RoundingMode": "SINGLE_ROUND"}, per_channel, False, False]], hint)

    def clamp(self, name: str, dtype: str, low: int, high: int, shape, hint: str) -> str:
        lo_hi = [np.asarray([v], dtype=NUMPY[dtype]).view(np.uint8).tolist() for v in (low, high)]
        return self.op("CLAMP", [name], shape, dtype,
                       ["ClampAttribute", [lo_hi[0], lo_hi[1], {"NanPropagationMode": "PROPAGATE"}]], hint)

    def narrow(self, name: str, shape, low: int, high: int, dtype: str, zp: int, hint: str) -> str:
        """A CLAMP to codes [low, high] when the storage type alone does not bound them."""
        type_low, type_high = RANGES[dtype]
        if low + zp <= type_low and high + zp >= type_high:
            return name
        return self.clamp(name, dtype, max(low + zp, type_low), min(high + zp, type_high), shape, f"{hint}_clamp")

    def requantize_to(self, name: str, in_dtype: str, in_zp: int, m0, shift, bounds, shape, hint: str):
        """RESCALE to the storage of `bounds`, then CLAMP to them; (tensor, dtype, zp)."""
        dtype, zp = storage(*bounds)
        out = self.rescale(name, in_dtype, in_zp, m0, shift, dtype, zp, shape, hint)
        return self.narrow(out, shape, *bounds, dtype, zp, hint), dtype, zp

    def scalar(self, value: int, rank: int) -> str:
        """An int32 constant of shape [1] * rank (broadcasts against any tensor of that rank)."""
        return self.const(f"i32_{value}".replace("-", "m"), np.full([1] * rank, value, dtype=np.int64), "INT32")

    def binary(self, kind: str, a: str, b: str, shape, hint: str) -> str:
        """An int32 element-wise op (ADD, SUB, MAXIMUM, MINIMUM, LOGICAL_LEFT_SHIFT, ARITHMETIC_RIGHT_SHIFT)."""
        attributes = {"ADD": ["AddAttribute", []], "SUB": ["SubAttribute", []],
                      "MAXIMUM": ["MaximumAttribute", [{"NanPropagationMode": "PROPAGATE"}]],
                      "MINIMUM": ["MinimumAttribute", [{"NanPropagationMode": "PROPAGATE"}]],
                      "LOGICAL_LEFT_SHIFT": ["LogicalLeftShiftAttribute", []],
                      "ARITHMETIC_RIGHT_SHIFT": ["ArithmeticRightShiftAttribute", [True]]}
        return self.op(kind, [a, b], shape, "INT32", attributes[kind], hint)

    def mul(self, a: str, b: str, shift: int, shape, hint: str) -> str:
        """MUL of int32 tensors: floor((a · b + 2^(shift−1)) / 2^shift) in 64 bits (a · b for shift 0)."""
        return self.op("MUL", [a, b, self.const(f"mul_shift_{shift}", [shift], "INT8")], shape, "INT32",
                       ["MulAttribute", []], hint)

    def producer(self, name: str) -> dict | None:
        return next((op for op in reversed(self.ops) if name in op["outputs"]), None)

    def prune(self) -> None:
        """Drop ops whose results nothing reads (a RESHAPE a TABLE was moved before), and their tensors."""
        while True:
            read = set(self.outputs) | {name for op in self.ops for name in op["inputs"]}
            dead = [op for op in self.ops if not any(out in read for out in op["outputs"])]
            if not dead:
                break
            for op in dead:
                self.ops.remove(op)
                for out in op["outputs"]:
                    self.tensors.pop(out, None)
        read = {name for op in self.ops for name in op["inputs"]}
        self.consts = {name: value for name, value in self.consts.items() if name in read}

    def description(self) -> tuple[dict, dict[str, np.ndarray]]:
        self.prune()
        body = {"format": "hwact-tosa-description", "version": 1,
                "tensors": list(self.tensors.values()),
                "consts": [{"name": n, "dtype": d, "key": n} for n, (d, _) in self.consts.items()],
                "inputs": self.inputs, "outputs": self.outputs, "ops": self.ops}
        return body, {n: a for n, (_, a) in self.consts.items()}


# ----- the graph walk ------------------------------------------------------------------------------------
def _hwact(name: str):
    load_all_ops()
    return getattr(torch.ops.hwact, name).default


def _constant(graph: Graph, node) -> torch.Tensor:
    value = graph.module
    for part in node.target.split("."):
        value = getattr(value, part)
    return value.detach()


def _ints(values) -> list[int]:
    return [int(v) for v in values]


def _window(net: Network, x: Value, kernel, stride, padding, dilation=(1, 1), extra_pads=(0, 0, 0, 0)):
    """x in NHWC and TOSA's [top, bottom, left, right] pads: torch's symmetric padding plus `extra_pads`
    (a zero PAD folded into this window). TOSA requires (size − 1 + pads − (k − 1)·d) to divide by the
    stride: the bottom/right rows the last window never reaches are dropped from the padding, and from the
    input (a SLICE) when the padding has fewer."""
    name, pads, crop = net.layout(x, NHWC), [], []
    for axis, (size, k, s, p, d) in enumerate(zip(x.shape[2:], kernel, stride, padding, dilation)):
        before, after = p + extra_pads[2 * axis], p + extra_pads[2 * axis + 1]
        unreached = (size - 1 + before + after - (k - 1) * d) % s
        pads += [before, max(after - unreached, 0)]
        crop.append(max(unreached - after, 0))
    if any(crop):
        n, c, h, w = x.shape
        size = [n, h - crop[0], w - crop[1], c]
        name = net.op("SLICE", [name, net.const("start", [0, 0, 0, 0], "SHAPE"), net.const("size", size, "SHAPE")],
                      size, x.dtype, ["SliceAttribute", []], f"{name}_crop")
    return name, pads


class Lowering:
    """Walks the graph in order; `values[node]` is each node's value on one sample (shapes, scalars)."""

    def __init__(self, graph: Graph, values: dict):
        self.graph, self.values, self.net = graph, values, Network()
        self.env: dict = {}
        self.folded_pads: dict = {}         # a zero PAD node read only by convs -> its [top, bottom, left, right]
        self.scales: dict = {"inputs": {}, "outputs": {}}

    def shape(self, node) -> tuple[int, ...]:
        return tuple(int(s) for s in self.values[node].shape)

    def value(self, arg) -> Value:
        if isinstance(arg, torch.fx.Node) and arg.op == "get_attr" and arg not in self.env:
            tensor = _constant(self.graph, arg).to(torch.int64)
            dtype, zp = storage(int(tensor.min()), int(tensor.max()))
            name = self.net.const(arg.name, (tensor + zp).numpy(), dtype)
            self.env[arg] = Value(name, tuple(tensor.shape), dtype, zp, tuple(range(tensor.dim())))
        value = self.env.get(arg)
        if not isinstance(value, Value):
            raise UnsupportedError(f"{arg}: not an integer tensor of the network")
        return value

    def run(self) -> Network:
        for node in self.graph.fx.nodes:
            if node.op in ("placeholder", "get_attr"):
                continue
            if node.op == "output":
                self.output(node)
                continue
            name = _name(node)
            value = self.values.get(node)
            if name in SCALAR_OPS or not isinstance(value, torch.Tensor) or value.dtype == torch.bool:
                # python scalars, and boolean masks (read by int_mask as constants: _int_mask)
                self.env[node] = value
                continue
            handler = HANDLERS.get(name)
            if handler is None:
                raise UnsupportedError(f"{node.name} ({name}): no TOSA lowering")
            self.env[node] = handler(self, node)
        return self.net

    def output(self, node) -> None:
        for leaf in torch.utils._pytree.tree_leaves(node.args):
            if not isinstance(leaf, torch.fx.Node):
                continue
            if leaf.target is not _hwact("dequantize"):
                raise UnsupportedError(f"{leaf.name}: a graph output must come from hwact.dequantize")
            value = self.value(leaf.args[0])
            name = self.net.logical(value)
            if name in self.net.inputs or name in self.net.consts or name in self.net.outputs:
                name = self.net.op("IDENTITY", [name], value.shape, value.dtype, ["IdentityAttribute", []],
                                   f"{leaf.name}_out")
            self.net.outputs.append(name)
            self.scales["outputs"][name] = {"node": leaf.name, "scale": float(op_args(leaf).scale),
                                            "zero_point": value.zp, "dtype": value.dtype.lower()}


# ----- handlers: one per hwact/aten op; each returns the node's Value ------------------------------------
def _quantize(self: Lowering, node) -> Value:
    args = op_args(node)
    if not (isinstance(args.x, torch.fx.Node) and args.x.op == "placeholder"):
        raise UnsupportedError(f"{node.name}: a quantize inside the network (only graph inputs are quantized)")
    dtype, zp = storage(int(args.qmin), int(args.qmax))
    name = self.net.tensor(node.name, self.shape(node), dtype)
    self.net.inputs.append(name)
    self.scales["inputs"][name] = {"node": node.name, "placeholder": args.x.name, "scale": float(args.scale),
                                   "zero_point": zp, "dtype": dtype.lower()}
    return Value(name, self.shape(node), dtype, zp, tuple(range(len(self.shape(node)))))


def _conv2d(self: Lowering, node) -> Value:
    a = op_args(node)
    x = self.value(a.q)
    weight = _constant(self.graph, a.weight).to(torch.int64)
    out_channels, in_per_group = weight.shape[0], weight.shape[1]
    kh, kw = weight.shape[2], weight.shape[3]
    shape = self.shape(node)
    nhwc = [shape[p] for p in NHWC]
    xin, pads = _window(self.net, x, (kh, kw), a.stride, a.padding, a.dilation, self.folded_pads.get(a.q, (0, 0, 0, 0)))
    attr = [pads, _ints(a.stride), _ints(a.dilation), False, {"DType": "INT32"}]
    bias = self.net.const(f"{node.name}_bias", _constant(self.graph, a.bias).numpy(), "INT32")
    zps = [self.net.zero_point(x.zp, x.dtype), self.net.zero_point(0, "INT8")]
    if a.groups == 1:
        w = self.net.const(f"{node.name}_weight", weight.permute(0, 2, 3, 1).numpy(), "INT8")
        acc = self.net.op("CONV2D", [xin, w, bias, *zps], nhwc, "INT32", ["Conv2dAttribute", attr], f"{node.name}_acc")
    elif a.groups == x.shape[1] == out_channels and in_per_group == 1:
        w = self.net.const(f"{node.name}_weight", weight[:, 0].permute(1, 2, 0).reshape(kh, kw, out_channels, 1).numpy(),
                           "INT8")
        acc = self.net.op("DEPTHWISE_CONV2D", [xin, w, bias, *zps], nhwc, "INT32",
                          ["DepthwiseConv2dAttribute", attr], f"{node.name}_acc")
    else:
        raise UnsupportedError(f"{node.name}: grouped convolution ({a.groups} groups) has no TOSA lowering")
    out, dtype, zp = self.net.requantize_to(acc, "INT32", 0, _constant(self.graph, a.m0).numpy(),
                                            _constant(self.graph, a.shift).numpy(), output_bounds(node), nhwc, node.name)
    return Value(out, shape, dtype, zp, NHWC)


def _linear(self: Lowering, node) -> Value:
    a = op_args(node)
    x = self.value(a.q)
    weight = _constant(self.graph, a.weight)
    shape = self.shape(node)
    rows, k, n = math.prod(x.shape[:-1]), x.shape[-1], weight.shape[0]
    xin = self.net.reshape(self.net.logical(x), [1, rows, 1, k], x.dtype, f"{node.name}_in")
    w = self.net.const(f"{node.name}_weight", weight.reshape(n, 1, 1, k).numpy(), "INT8")
    bias = self.net.const(f"{node.name}_bias", _constant(self.graph, a.bias).numpy(), "INT32")
    acc = self.net.op("CONV2D", [xin, w, bias, self.net.zero_point(x.zp, x.dtype), self.net.zero_point(0, "INT8")],
                      [1, rows, 1, n], "INT32",
                      ["Conv2dAttribute", [[0, 0, 0, 0], [1, 1], [1, 1], False, {"DType": "INT32"}]], f"{node.name}_acc")
    out, dtype, zp = self.net.requantize_to(acc, "INT32", 0, _constant(self.graph, a.m0).numpy(),
                                            _constant(self.graph, a.shift).numpy(), output_bounds(node),
                                            [1, rows, 1, n], node.name)
    out = self.net.reshape(out, shape, dtype, f"{node.name}_out")
    return Value(out, shape, dtype, zp, tuple(range(len(shape))))


def _matmul(self: Lowering, node) -> Value:
    from hwact.ir.int_ops import dyadic
    a = op_args(node)
    left, right = self.value(a.a), self.value(a.b)
    if left.dtype != "INT8" or right.dtype != "INT8":
        raise UnsupportedError(f"{node.name}: MATMUL takes 8-bit operands ({left.dtype}, {right.dtype} here)")
    if left.shape[:-2] != right.shape[:-2]:
        raise UnsupportedError(f"{node.name}: broadcast batch dimensions {left.shape} @ {right.shape}")
    shape = self.shape(node)
    batch = math.prod(left.shape[:-2])
    m, k, n = left.shape[-2], left.shape[-1], right.shape[-1]
    lhs = self.net.reshape(self.net.logical(left), [batch, m, k], "INT8", f"{node.name}_a")
    rhs = self.net.reshape(self.net.logical(right), [batch, k, n], "INT8", f"{node.name}_b")
    acc = self.net.op("MATMUL", [lhs, rhs, self.net.zero_point(left.zp, "INT8"), self.net.zero_point(right.zp, "INT8")],
                      [batch, m, n], "INT32", ["MatMulAttribute", []], f"{node.name}_acc")
    m0, shift = dyadic(float(a.multiplier))
    out, dtype, zp = self.net.requantize_to(acc, "INT32", 0, m0, shift, output_bounds(node), [batch, m, n], node.name)
    out = self.net.reshape(out, shape, dtype, f"{node.name}_out")
    return Value(out, shape, dtype, zp, tuple(range(len(shape))))


def _requantize(self: Lowering, node) -> Value:
    from hwact.ir.int_ops import dyadic
    a = op_args(node)
    x = self.value(a.q)
    m0, shift = dyadic(float(a.in_scale) / float(a.out_scale))
    out, dtype, zp = self.net.requantize_to(x.name, x.dtype, x.zp, m0, shift, output_bounds(node), x.tosa_shape,
                                            node.name)
    return Value(out, x.shape, dtype, zp, x.perm)


def _add(self: Lowering, node) -> Value:
    from hwact.ir.int_ops import dyadic, rounding_shift
    a = op_args(node)
    left, right = self.value(a.a), self.value(a.b)
    shape = self.shape(node)
    perm, names, operands_shape = _broadcast_operands(self, node, left, right)
    operands = [(left, names[0], dyadic(float(a.a_multiplier)), "a"),
                (right, names[1], dyadic(float(a.b_multiplier)), "b")]

    def fits_int16(operand: Value, scale) -> bool:
        """Every stored code of the operand, RESCALEd by `scale` (monotone), lies in int16."""
        low, high = (int(rounding_shift(torch.tensor(code - operand.zp), *scale)) for code in RANGES[operand.dtype])
        return operand.dtype in ("INT8", "INT16") and -32768 <= low and high <= 32767

    narrow = all(fits_int16(operand, scale) for operand, _, scale, _ in operands)
    wide = []
    for operand, name, (m0, shift), side in operands:
        stored = self.net.shape_of(name)
        if narrow:
            # each branch RESCALEd to int16 (exact: the whole code range fits), then x1 to int32: Vela fuses the
            # x1 RESCALEs and the output's into one 16-bit ADD (it cannot take two general input scales)
            name = self.net.rescale(name, operand.dtype, operand.zp, m0, shift, "INT16", 0, stored,
                                    f"{node.name}_{side}16")
            wide.append(self.net.rescale(name, "INT16", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT32", 0, stored,
                                         f"{node.name}_{side}32"))
        elif name in self.net.consts and _fits_int32(values := rounding_shift(
                torch.from_numpy(self.net.consts[name][1].astype(np.int64)) - operand.zp, m0, shift)):
            # a constant branch (ViT's position embedding): its rescaled codes are a constant too
            wide.append(self.net.const(f"{node.name}_{side}32", values.numpy(), "INT32"))
        else:
            wide.append(self.net.rescale(name, operand.dtype, operand.zp, m0, shift, "INT32", 0, stored,
                                         f"{node.name}_{side}32"))
    total = self.net.op("ADD", wide, operands_shape, "INT32", ["AddAttribute", []], f"{node.name}_sum")
    out, dtype, zp = self.net.requantize_to(total, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT,
                                            output_bounds(node), operands_shape, node.name)
    return Value(out, shape, dtype, zp, perm)


def _fits_int32(values: torch.Tensor) -> bool:
    return int(values.min()) >= -(1 << 31) and int(values.max()) < 1 << 31


def _broadcast_operands(self: Lowering, node, left: Value, right: Value) -> tuple[tuple, list[str], list[int]]:
    """(perm, TOSA names, TOSA shape) of two operands of an element-wise op, both in the layout of the one
    with the output's shape (TOSA broadcasts size-1 dimensions of equal-rank operands; moving only size-1
    dimensions is a RESHAPE, so a squeeze-excite scale [N, C, 1, 1] meets an NHWC tensor without a TRANSPOSE)."""
    shape = self.shape(node)
    rank = len(shape)

    def at_rank(value: Value) -> Value:
        if len(value.shape) == rank:
            return value
        padded = (1,) * (rank - len(value.shape)) + tuple(value.shape)
        return Value(self.net.reshape(self.net.logical(value), padded, value.dtype, f"{node.name}_bc"), padded,
                     value.dtype, value.zp, tuple(range(rank)))

    left, right = at_rank(left), at_rank(right)
    perm = left.perm if left.shape == shape or right.shape != shape else right.perm
    return perm, [self.net.layout(left, perm), self.net.layout(right, perm)], [shape[p] for p in perm]


def _mul(self: Lowering, node) -> Value:
    """int_mul: MUL (8/16-bit operands widened to int32 by a x1 RESCALE that also removes the zero point,
    shift 0: |a·b| <= 2^30 is exact in int32), then RESCALE by the op's dyadic multiplier."""
    from hwact.ir.int_ops import dyadic
    a = op_args(node)
    left, right = self.value(a.a), self.value(a.b)
    perm, names, shape = _broadcast_operands(self, node, left, right)
    wide = [self.net.rescale(name, operand.dtype, operand.zp, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT32", 0,
                             self.net.shape_of(name), f"{node.name}_{side}32")
            for operand, name, side in ((left, names[0], "a"), (right, names[1], "b"))]
    product = self.net.op("MUL", [*wide, self.net.const("mul_shift_0", [0], "INT8")], shape, "INT32",
                          ["MulAttribute", []], f"{node.name}_product")
    m0, shift = dyadic(float(a.multiplier))
    out, dtype, zp = self.net.requantize_to(product, "INT32", 0, m0, shift, output_bounds(node), shape, node.name)
    return Value(out, self.shape(node), dtype, zp, perm)


def _max_pool(self: Lowering, node) -> Value:
    a = op_args(node)
    x = self.value(a.q)
    shape = self.shape(node)
    nhwc = [shape[p] for p in NHWC]
    xin, pads = _window(self.net, x, a.kernel, a.stride, a.padding)
    attr = [_ints(a.kernel), _ints(a.stride), pads, {"NanPropagationMode": "PROPAGATE"}]
    out = self.net.op("MAX_POOL2D", [xin], nhwc, x.dtype, ["MaxPool2dAttribute", attr], node.name)
    return Value(out, shape, x.dtype, x.zp, NHWC)


def _lut(self: Lowering, node) -> Value:
    a = op_args(node)
    x = self.value(a.q)
    dtype, zp = storage(*output_bounds(node))
    if x.dtype != "INT8" or dtype != "INT8":
        raise UnsupportedError(f"{node.name}: TABLE on Ethos-U takes int8 -> int8 only ({x.dtype} -> {dtype} here)")
    table = _constant(self.graph, a.table).to(torch.int64)
    stored = torch.arange(-128, 128)
    index = torch.clamp(stored - x.zp - int(a.in_qmin), 0, table.numel() - 1)
    entries = torch.clamp(table[index], int(a.qmin), int(a.qmax)) + zp
    table = self.net.const(f"{node.name}_table", entries.numpy(), "INT8")
    source = self.net.producer(x.name)
    if source is not None and source["op"] == "RESHAPE":
        # TABLE is element-wise: look up before the reshape, so Vela fuses it into the producer (a linear's RESCALE)
        before = source["inputs"][0]
        looked = self.net.op("TABLE", [before, table], self.net.shape_of(before), "INT8", ["TableAttribute", []],
                             f"{node.name}_lut")
        return Value(self.net.reshape(looked, x.tosa_shape, "INT8", node.name), x.shape, "INT8", zp, x.perm)
    out = self.net.op("TABLE", [x.name, table], x.tosa_shape, "INT8", ["TableAttribute", []], node.name)
    return Value(out, x.shape, "INT8", zp, x.perm)


def _clamp(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    low, high = (node.args + (None, None))[1:3]
    type_low, type_high = RANGES[x.dtype]
    low = type_low if low is None else max(int(math.ceil(low)) + x.zp, type_low)
    high = type_high if high is None else min(int(math.floor(high)) + x.zp, type_high)
    out = self.net.clamp(x.name, x.dtype, low, high, x.tosa_shape, node.name)
    return Value(out, x.shape, x.dtype, x.zp, x.perm)


def _sum(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    dims = [d % len(x.shape) for d in node.args[1]]
    keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
    kept = list(x.shape)
    for d in dims:
        kept[d] = 1
    height, width = (x.shape[2], x.shape[3]) if len(x.shape) == 4 else (0, 0)
    if sorted(dims) == [2, 3] and x.dtype == "INT8" and height <= 64 and height * width <= 4096:
        # a spatial sum of 8-bit codes: a depthwise convolution with a kernel of ones over the whole map
        # (exact in int32, the zero point removed by input_zp; REDUCE_SUM over H and W makes Vela transpose)
        channels = x.shape[1]
        ones = self.net.const(f"{node.name}_ones", np.ones((height, width, channels, 1), np.int8), "INT8")
        bias = self.net.const(f"{node.name}_bias", np.zeros(channels, np.int32), "INT32")
        name = self.net.op("DEPTHWISE_CONV2D", [self.net.layout(x, NHWC), ones, bias, self.net.zero_point(x.zp, "INT8"),
                                                self.net.zero_point(0, "INT8")], [x.shape[0], 1, 1, channels], "INT32",
                           ["DepthwiseConv2dAttribute", [[0, 0, 0, 0], [1, 1], [1, 1], False, {"DType": "INT32"}]],
                           node.name if keepdim else f"{node.name}_sum")
        value = Value(name, tuple(kept), "INT32", 0, NHWC)
    else:
        name = x.name
        if x.dtype != "INT32" or x.zp != 0:
            name = self.net.rescale(name, x.dtype, x.zp, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT32", 0, x.tosa_shape,
                                    f"{node.name}_32")
        reduced = list(x.shape)
        for d in dims:
            reduced[d] = 1
            name = self.net.op("REDUCE_SUM", [name], [reduced[p] for p in x.perm], "INT32",
                               ["ReduceSumAttribute", [x.perm.index(d)]], f"{node.name}_{d}")
        value = Value(name, tuple(kept), "INT32", 0, x.perm)
    if keepdim:
        return value
    shape = self.shape(node)
    return Value(self.net.reshape(self.net.logical(value), shape, "INT32", node.name), shape, "INT32", 0,
                 tuple(range(len(shape))))


def _reshape(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    shape = self.shape(node)
    if shape == x.shape:
        return x
    return Value(self.net.reshape(self.net.logical(x), shape, x.dtype, node.name), shape, x.dtype, x.zp,
                 tuple(range(len(shape))))


def _permute(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    rank = len(x.shape)
    if _name(node) == "aten.permute.default":
        dims = [d % rank for d in node.args[1]]
    else:
        dims = list(range(rank))
        if _name(node) == "aten.transpose.int":
            i, j = node.args[1] % rank, node.args[2] % rank
            dims[i], dims[j] = dims[j], dims[i]
        else:                                   # aten.t.default
            dims.reverse()
    inverse = [dims.index(i) for i in range(rank)]
    # TOSA = old.permute(x.perm); new = old.permute(dims) -> old = new.permute(inverse)
    return Value(x.name, self.shape(node), x.dtype, x.zp, tuple(inverse[p] for p in x.perm))


def _slice_value(self: Lowering, x: Value, dim: int, start: int, size: int, hint: str) -> str:
    """A SLICE of logical dim `dim` of x in the logical layout (x TRANSPOSEd first when it is permuted)."""
    logical = Value(self.net.logical(x), x.shape, x.dtype, x.zp, tuple(range(len(x.shape))))
    return _slice_in_place(self, logical, dim, start, size, hint).name


def _sliced_linear(node) -> bool:
    """`node` (the tensor a select / slice reads) is a linear's output seen through reshapes and permutes that
    nothing else reads, and every reader of `node` is a select or slice: its parts may be computed apart."""
    parts = {"aten.select.int", "aten.slice.Tensor"}
    if not isinstance(node, torch.fx.Node) or not all(_name(user) in parts for user in node.users):
        return False
    while _name(node) in RESHAPES | PASS_THROUGH | {"aten.permute.default", "aten.transpose.int"}:
        node = node.args[0]
        if not isinstance(node, torch.fx.Node) or len(node.users) != 1:
            return False
    return node.target is _hwact("int_linear")


def _linear_channels(self: Lowering, name: str, axis: int, start: int, size: int, sizes: list[int],
                     hint: str) -> str | None:
    """The part `sizes` of TOSA tensor `name` on `axis` as its own CONV2D + RESCALE (+ CLAMP), when `name` is a
    linear's output ([1, rows, 1, n] CONV2D 1x1, RESCALE, CLAMP, RESHAPEs) and the part is a range of its output
    channels (the axes from `axis` on are the channels); else None. A channel slice of an 8-bit tensor costs Vela
    one copy per row on Ethos-U55; the linear's own split costs nothing (same MACs; the whole is pruned)."""
    net = self.net
    shape, current = net.shape_of(name), name
    while (op := net.producer(current)) is not None and op["op"] == "RESHAPE":
        current = op["inputs"][0]
    clamp = op if op is not None and op["op"] == "CLAMP" else None
    rescale = net.producer(op["inputs"][0]) if clamp else op
    conv = net.producer(rescale["inputs"][0]) if rescale is not None and rescale["op"] == "RESCALE" else None
    if conv is None or conv["op"] != "CONV2D" or not all(c in net.consts for c in conv["inputs"][1:3]):
        return None
    out = net.shape_of(conv["outputs"][0])
    weight = net.consts[conv["inputs"][1]][1]
    if out[0] != 1 or out[2] != 1 or weight.shape[1:3] != (1, 1) or math.prod(shape[axis:]) != out[3]:
        return None
    inner = math.prod(shape[axis + 1:])
    low, high = start * inner, (start + size) * inner
    part = [1, out[1], 1, high - low]
    acc = net.op("CONV2D", [conv["inputs"][0], net.const(f"{hint}_weight", weight[low:high], "INT8"),
                            net.const(f"{hint}_bias", net.consts[conv["inputs"][2]][1][low:high], "INT32"),
                            *conv["inputs"][3:]], part, "INT32", conv["attr"], f"{hint}_acc")
    m0, shift = (net.consts[c][1] for c in rescale["inputs"][1:3])
    in_zp, out_zp = (int(net.consts[c][1].reshape(-1)[0]) for c in rescale["inputs"][3:5])
    dtype = net.tensors[rescale["outputs"][0]]["dtype"]
    result = net.rescale(acc, "INT32", in_zp, m0[low:high] if m0.size > 1 else m0,
                         shift[low:high] if shift.size > 1 else shift, dtype, out_zp, part, f"{hint}_rescale")
    if clamp:
        result = net.op("CLAMP", [result], part, dtype, clamp["attr"], f"{hint}_clamp")
    return net.reshape(result, sizes, dtype, hint)


def _slice_in_place(self: Lowering, x: Value, dim: int, start: int, size: int, hint: str, split: bool = False) -> Value:
    """A SLICE of logical dim `dim` taken in x's own TOSA layout: no TRANSPOSE first. Attention's q, k, v come
    out of one [1, N, 3, H, D] tensor permuted to [3, 1, H, N, D]: transposing the whole before slicing costs Vela
    13 chained transposes (about 100k U85 cycles per block); sliced first, each part transposes alone. With
    `split` (_sliced_linear), a part that is a range of a linear's output channels is that linear's own split."""
    axis = x.perm.index(dim)
    starts, sizes = [0] * len(x.shape), list(x.tosa_shape)
    starts[axis], sizes[axis] = start, size
    name = _linear_channels(self, x.name, axis, start, size, sizes, hint) if split else None
    if name is None:
        name = self.net.op("SLICE", [x.name, self.net.const("start", starts, "SHAPE"),
                                     self.net.const("size", sizes, "SHAPE")], sizes, x.dtype, ["SliceAttribute", []],
                           hint)
    shape = list(x.shape)
    shape[dim] = size
    return Value(name, tuple(shape), x.dtype, x.zp, x.perm)


def _select_value(self: Lowering, x: Value, dim: int, index: int, hint: str, split: bool = False) -> Value:
    """x[..., index, ...] along logical dim `dim`, sliced in x's own layout, the dim dropped (a RESHAPE)."""
    part = _slice_in_place(self, x, dim, index, 1, f"{hint}_slice", split)
    perm = tuple(p - (p > dim) for p in part.perm if p != dim)
    shape = tuple(size for axis, size in enumerate(x.shape) if axis != dim)
    return Value(self.net.reshape(part.name, [shape[p] for p in perm], x.dtype, hint), shape, x.dtype, x.zp, perm)


def _select(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    dim = node.args[1] % len(x.shape)
    return _select_value(self, x, dim, node.args[2] % x.shape[dim], node.name, _sliced_linear(node.args[0]))


def _slice(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    dim, start, end, step = (list(node.args[1:]) + [0, None, None, 1][len(node.args) - 1:])[:4]
    dim = dim % len(x.shape)
    start, end, _ = slice(start, end).indices(x.shape[dim])
    shape = self.shape(node)
    if shape == x.shape:
        return x
    if step == 1:
        return _slice_in_place(self, x, dim, start, end - start, node.name, _sliced_linear(node.args[0]))
    # every step-th element (Swin's patch merging): the dim split into [size / step, step], one SLICE of both
    size = x.shape[dim]
    if size % step:
        raise UnsupportedError(f"{node.name}: strided slice (step {step}) of a dim of {size}, not a multiple")
    split = list(x.shape[:dim]) + [size // step, step] + list(x.shape[dim + 1:])
    folded = self.net.reshape(self.net.logical(x), split, x.dtype, f"{node.name}_split")
    starts, sizes = [0] * len(split), list(split)
    starts[dim], sizes[dim] = start // step, len(range(start, end, step))
    starts[dim + 1], sizes[dim + 1] = start % step, 1
    bounds = [self.net.const("start", starts, "SHAPE"), self.net.const("size", sizes, "SHAPE")]
    part = self.net.op("SLICE", [folded, *bounds], sizes, x.dtype, ["SliceAttribute", []], f"{node.name}_slice")
    return Value(self.net.reshape(part, shape, x.dtype, node.name), shape, x.dtype, x.zp, tuple(range(len(shape))))


def _cat(self: Lowering, node) -> Value:
    parts = [self.value(p) for p in node.args[0]]
    dim = (node.args[1] if len(node.args) > 1 else 0) % len(parts[0].shape)
    if len({(p.dtype, p.zp) for p in parts}) != 1:
        raise UnsupportedError(f"{node.name}: concatenated tensors are stored differently "
                               f"({sorted({(p.dtype, p.zp) for p in parts})})")
    shape = self.shape(node)
    out = self.net.op("CONCAT", [self.net.logical(p) for p in parts], shape, parts[0].dtype,
                      ["ConcatAttribute", [dim]], node.name)
    return Value(out, shape, parts[0].dtype, parts[0].zp, tuple(range(len(shape))))


def _expand(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    shape = self.shape(node)
    padded = [1] * (len(shape) - len(x.shape)) + list(x.shape)
    name = self.net.reshape(self.net.logical(x), padded, x.dtype, f"{node.name}_in")
    multiples = [s // p for s, p in zip(shape, padded)]
    out = self.net.op("TILE", [name, self.net.const("multiples", multiples, "SHAPE")], shape, x.dtype,
                      ["TileAttribute", []], node.name)
    return Value(out, shape, x.dtype, x.zp, tuple(range(len(shape))))


def _roll(self: Lowering, node) -> Value:
    x = self.value(node.args[0])
    shifts, dims = list(node.args[1]), list(node.args[2]) if len(node.args) > 2 else []
    if len(shifts) != len(dims):
        raise UnsupportedError(f"{node.name}: roll without dims has no TOSA lowering")
    value = x
    for shift, dim in zip(shifts, dims):
        dim = dim % len(x.shape)
        size = x.shape[dim]
        shift = shift % size
        if shift == 0:
            continue
        tail = _slice_value(self, value, dim, size - shift, shift, f"{node.name}_tail")
        head = _slice_value(self, value, dim, 0, size - shift, f"{node.name}_head")
        name = self.net.op("CONCAT", [tail, head], x.shape, x.dtype, ["ConcatAttribute", [dim]], node.name)
        value = Value(name, x.shape, x.dtype, x.zp, tuple(range(len(x.shape))))
    return value


def _pad(self: Lowering, node) -> Value:
    """constant_pad_nd on codes: PAD in the value's own layout, the pad value stored with its zero point."""
    x = self.value(node.args[0])
    pads, fill = list(node.args[1]), node.args[2] if len(node.args) > 2 else 0
    if any(p < 0 for p in pads) or float(fill) != int(fill):
        raise UnsupportedError(f"{node.name}: negative padding or a pad value between codes ({fill})")
    conv = _hwact("int_conv2d")
    if (fill == 0 and len(x.shape) == 4 and len(pads) <= 4
            and all(user.target is conv and user.args[0] is node for user in node.users)):
        # code 0 is real 0, which is what a convolution's own padding adds: fold it into the convs
        pads = pads + [0] * (4 - len(pads))
        self.folded_pads[node] = [pads[2], pads[3], pads[0], pads[1]]
        return x
    per_dim = [[0, 0] for _ in x.shape]
    for index in range(0, len(pads), 2):                 # torch: last dim first, (before, after) pairs
        per_dim[len(x.shape) - 1 - index // 2] = [pads[index], pads[index + 1]]
    low, high = RANGES[x.dtype]
    stored = int(fill) + x.zp
    if not low <= stored <= high:
        raise UnsupportedError(f"{node.name}: pad value {fill} is outside the codes of {x.dtype} zero point {x.zp}")
    padding = [p for axis in x.perm for p in per_dim[axis]]
    shape = self.shape(node)
    out = self.net.op("PAD", [x.name, self.net.const("padding", padding, "SHAPE"), self.net.const(
        f"pad_{x.dtype.lower()}_{stored}".replace("-", "m"), [stored], x.dtype)], [shape[p] for p in x.perm], x.dtype,
        ["PadAttribute", []], node.name)
    return Value(out, shape, x.dtype, x.zp, x.perm)


def _rows(self: Lowering, x: Value, hint: str) -> tuple[str, list[int], list[int]]:
    """x as [1, rows, C] (the reduced dim last, channel-wise for Vela's reductions); (name, row shape, column shape)."""
    rows, channels = math.prod(x.shape[:-1]), x.shape[-1]
    return (self.net.reshape(self.net.logical(x), [1, rows, channels], x.dtype, hint), [1, rows, channels],
            [1, rows, 1])


def _to_int32(self: Lowering, name: str, dtype: str, zp: int, shape, hint: str) -> str:
    return self.net.rescale(name, dtype, zp, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT32", 0, shape, hint)


def _reduce(self: Lowering, kind: str, name: str, dtype: str, shape, hint: str) -> str:
    attr = (["ReduceSumAttribute", [2]] if kind == "REDUCE_SUM" else
            [f"{kind.title().replace('_', '')}Attribute", [2, {"NanPropagationMode": "PROPAGATE"}]])
    return self.net.op(kind, [name], shape, dtype, attr, hint)


def _clz(self: Lowering, name: str, shape, hint: str) -> str:
    return self.net.op("CLZ", [name], shape, "INT32", ["ClzAttribute", []], hint)


def _npu_softmax(self: Lowering, node) -> Value:
    """hwact::npu_softmax (hwact/ir/int_npu_ops.py), op for op: REDUCE_MAX, SUB, the int8 table index (narrow: a
    RESCALE with zero point 127; wide: RESCALE to log2 units, ARITHMETIC_RIGHT_SHIFT, SUB), two int8 TABLEs
    (high and low byte), the wide form's ARITHMETIC_RIGHT_SHIFT, REDUCE_SUM, CLZ, shifts, Newton MULs, the int16
    row factor f, MUL e · f (int16 x int16), RESCALE. Narrow: the ADD of the two bytes (each RESCALEd to int32,
    x256 and x1) has one reader, a x1 RESCALE to int16, so Vela 5.2 fuses the three RESCALEs into an 8-bit ADD
    (it does not when the ADD writes int32)."""
    from hwact.ir.int_npu_ops import NEWTON_STEPS, RECIPROCAL_START, WIDE_FRACTION_BITS, softmax_npu_constants
    a = op_args(node)
    x = self.value(a.q)
    if x.dtype not in ("INT8", "INT16"):
        raise UnsupportedError(f"{node.name}: npu_softmax takes 8- or 16-bit codes ({x.dtype} here)")
    c = softmax_npu_constants(float(a.in_scale), float(a.out_scale), x.shape[-1], bool(a.wide))
    net, n = self.net, node.name
    xin, row, col = _rows(self, x, f"{n}_in")
    top = _reduce(self, "REDUCE_MAX", xin, x.dtype, col, f"{n}_max")
    d = net.binary("SUB", _to_int32(self, xin, x.dtype, x.zp, row, f"{n}_x32"),
                   _to_int32(self, top, x.dtype, x.zp, col, f"{n}_max32"), row, f"{n}_d")
    if c.wide:
        t = net.rescale(d, "INT32", 0, c.index_m0, c.index_shift, "INT32", 0, row, f"{n}_log2")
        whole = net.binary("ARITHMETIC_RIGHT_SHIFT", t, net.scalar(WIDE_FRACTION_BITS, 3), row, f"{n}_whole")
        fraction = net.binary("SUB", t, net.binary("LOGICAL_LEFT_SHIFT", whole, net.scalar(WIDE_FRACTION_BITS, 3), row,
                                                   f"{n}_whole_units"), row, f"{n}_fraction")
        index = net.rescale(fraction, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT8", 0, row, f"{n}_index")
    else:
        index = net.rescale(d, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT8", 127, row, f"{n}_index")
    values = np.asarray(c.values, dtype=np.int64)
    parts = []
    for byte, entries, multiplier_shift in (("hi", values >> 8, 22), ("lo", values & 255, IDENTITY_SHIFT)):
        table = net.const(f"{n}_exp_{byte}", entries - 128, "INT8")
        looked = net.op("TABLE", [index, table], row, "INT8", ["TableAttribute", []], f"{n}_exp_{byte}")
        parts.append(net.rescale(looked, "INT8", -128, IDENTITY_MULTIPLIER, multiplier_shift, "INT32", 0, row,
                                 f"{n}_exp_{byte}32"))
    e = net.binary("ADD", *parts, row, f"{n}_exp")
    if c.wide:
        amount = net.binary("MINIMUM", net.binary("SUB", net.scalar(0, 3), whole, row, f"{n}_neg_whole"),
                            net.scalar(31, 3), row, f"{n}_exp_shift")
        e = net.binary("ARITHMETIC_RIGHT_SHIFT", e, amount, row, f"{n}_exp_scaled")
        e16 = net.rescale(e, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT16", 0, row, f"{n}_exp16")
        total = _reduce(self, "REDUCE_SUM", e, "INT32", col, f"{n}_sum")
    else:
        # ADD's only reader is this x1 RESCALE to int16: Vela makes the byte recombination one 8-bit ADD
        e16 = net.rescale(e, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT16", 0, row, f"{n}_exp16")
        total = _reduce(self, "REDUCE_SUM", _to_int32(self, e16, "INT16", 0, row, f"{n}_exp32"), "INT32", col,
                        f"{n}_sum")
    shift = net.binary("SUB", _clz(self, total, col, f"{n}_clz"), net.scalar(1, 3), col, f"{n}_norm")
    normal = net.binary("LOGICAL_LEFT_SHIFT", total, shift, col, f"{n}_sum_norm")
    r = net.binary("SUB", net.scalar(RECIPROCAL_START[0], 3),
                   net.mul(normal, net.scalar(RECIPROCAL_START[1], 3), 31, col, f"{n}_r0"), col, f"{n}_r")
    for step in range(NEWTON_STEPS):
        error = net.binary("SUB", net.scalar(1 << 30, 3), net.mul(normal, r, 31, col, f"{n}_ar{step}"), col,
                           f"{n}_two_minus{step}")
        r = net.mul(r, error, 29, col, f"{n}_r{step + 1}")
    f = net.binary("ARITHMETIC_RIGHT_SHIFT", r, net.binary("SUB", net.scalar(c.reciprocal_shift, 3), shift, col,
                                                           f"{n}_f_shift"), col, f"{n}_f")
    f16 = net.rescale(f, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, "INT16", 0, col, f"{n}_f16")
    p = net.op("MUL", [e16, f16, net.const("mul_shift_0", [0], "INT8")], row, "INT32", ["MulAttribute", []],
               f"{n}_p")
    out, dtype, zp = net.requantize_to(p, "INT32", 0, c.out_m0, c.out_shift, output_bounds(node), row, n)
    shape = self.shape(node)
    return Value(net.reshape(out, shape, dtype, f"{n}_out"), shape, dtype, zp, tuple(range(len(shape))))


def _npu_layernorm(self: Lowering, node) -> Value:
    """hwact::npu_layernorm (hwact/ir/int_npu_ops.py), op for op: REDUCE_SUM of x and of max(d, 0) for the row
    shift by CLZ (no REDUCE_MAX / MIN), squares as MUL with shift, the variance normalized by CLZ and shifts, Newton
    MULs for 1/sqrt, one full-size MUL by the row factor, γ MUL, β ADD, RESCALE. The x1 RESCALE before a reduction
    has that reduction as its only reader, so Vela fuses it; C · x is an 8/16-bit MUL (no int32 copy of x)."""
    from hwact.ir.int_ops import rounding_shift
    from hwact.ir.int_npu_ops import (NEWTON_STEPS, RSQRT_START, SQUARE_SHIFT, check_layernorm_affine,
                                      layernorm_gamma_scale, layernorm_npu_constants)
    a = op_args(node)
    x = self.value(a.q)
    if x.dtype not in ("INT8", "INT16"):
        raise UnsupportedError(f"{node.name}: npu_layernorm takes 8- or 16-bit codes ({x.dtype} here)")
    channels = x.shape[-1]
    gamma = _constant(self.graph, a.gamma_int).to(torch.int64)
    beta = _constant(self.graph, a.beta_int).to(torch.int64)
    c = layernorm_npu_constants(channels, float(a.in_scale), float(a.out_scale), float(a.gamma_scale), float(a.eps),
                                int(a.in_qmin), int(a.in_qmax))
    out_shift = int(a.out_shift)
    check_layernorm_affine(c, out_shift, int(gamma.abs().max()), int(beta.abs().max()))
    gamma, beta = (rounding_shift(t, *layernorm_gamma_scale(c, out_shift)) for t in (gamma, beta))     # γo, βo
    low, high = RANGES[x.dtype]
    if int(a.in_qmin) > low - x.zp or int(a.in_qmax) < high - x.zp:      # the op's clamp, when storage is wider
        x = Value(self.net.clamp(x.name, x.dtype, int(a.in_qmin) + x.zp, int(a.in_qmax) + x.zp, x.tosa_shape,
                                 f"{node.name}_in_clamp"), x.shape, x.dtype, x.zp, x.perm)
    net, n = self.net, node.name
    xin, row, col = _rows(self, x, f"{n}_in")
    total = _reduce(self, "REDUCE_SUM", _to_int32(self, xin, x.dtype, x.zp, row, f"{n}_x32"), "INT32", col, f"{n}_sum")
    if x.zp == 0 and channels <= RANGES[x.dtype][1]:
        times = net.op("MUL", [xin, net.const(f"c_{x.dtype.lower()}_{channels}", np.full([1, 1, 1], channels),
                                              x.dtype), net.const("mul_shift_0", [0], "INT8")], row, "INT32",
                       ["MulAttribute", []], f"{n}_cx")
    else:
        times = net.mul(_to_int32(self, xin, x.dtype, x.zp, row, f"{n}_x32_mul"), net.scalar(channels, 3), 0, row,
                        f"{n}_cx")
    d = net.binary("SUB", times, total, row, f"{n}_d")
    positive = net.binary("MAXIMUM", d, net.scalar(0, 3), row, f"{n}_positive")
    if c.pre_shift:
        positive = net.binary("ARITHMETIC_RIGHT_SHIFT", positive, net.scalar(c.pre_shift, 3), row, f"{n}_positive_k")
    spread = _reduce(self, "REDUCE_SUM", positive, "INT32", col, f"{n}_spread")
    if c.slack:
        spread = net.binary("ADD", spread, net.scalar(c.slack, 3), col, f"{n}_spread_slack")
    row_shift = net.binary("MINIMUM", net.binary("SUB", _clz(self, spread, col, f"{n}_spread_clz"),
                                                 net.scalar(2 + c.pre_shift, 3), col, f"{n}_row_shift0"),
                           net.scalar(c.max_row_shift, 3), col, f"{n}_row_shift")
    if c.pre_shift:
        up = net.binary("MAXIMUM", row_shift, net.scalar(0, 3), col, f"{n}_row_up")
        down = net.binary("MAXIMUM", net.binary("SUB", net.scalar(0, 3), row_shift, col, f"{n}_row_neg"),
                          net.scalar(0, 3), col, f"{n}_row_down")
        dn = net.binary("ARITHMETIC_RIGHT_SHIFT", net.binary("LOGICAL_LEFT_SHIFT", d, up, row, f"{n}_dn_up"), down,
                        row, f"{n}_dn")
    else:
        dn = net.binary("LOGICAL_LEFT_SHIFT", d, row_shift, row, f"{n}_dn")
    squares = _reduce(self, "REDUCE_SUM", net.mul(dn, dn, SQUARE_SHIFT, row, f"{n}_sq"), "INT32", col, f"{n}_sq_sum")
    eps_half = net.binary("SUB", net.scalar(c.max_row_shift, 3), row_shift, col, f"{n}_eps_half_shift")
    eps_shift = net.binary("MINIMUM", net.binary("ADD", eps_half, eps_half, col, f"{n}_eps_shift0"),
                           net.scalar(31, 3), col, f"{n}_eps_shift")
    eps = net.binary("ARITHMETIC_RIGHT_SHIFT", net.scalar(c.eps_hi, 3), eps_shift, col, f"{n}_eps")
    v = net.binary("MAXIMUM", net.binary("ADD", squares, eps, col, f"{n}_v0"), net.scalar(1, 3), col, f"{n}_v")
    h = net.binary("SUB", net.binary("ARITHMETIC_RIGHT_SHIFT", _clz(self, v, col, f"{n}_v_clz"), net.scalar(1, 3), col,
                                     f"{n}_half_clz"), net.scalar(1, 3), col, f"{n}_h")
    vn = net.binary("LOGICAL_LEFT_SHIFT", v, net.binary("ADD", h, h, col, f"{n}_2h"), col, f"{n}_vn")
    y = net.binary("SUB", net.scalar(RSQRT_START[0], 3), net.mul(vn, net.scalar(RSQRT_START[1], 3), 31, col,
                                                                 f"{n}_y0"), col, f"{n}_y")
    for step in range(NEWTON_STEPS):
        ay2 = net.mul(net.mul(vn, y, 31, col, f"{n}_ay{step}"), y, 29, col, f"{n}_ay2{step}")
        y = net.mul(y, net.binary("SUB", net.scalar(3 << 29, 3), ay2, col, f"{n}_three_minus{step}"), 30, col,
                    f"{n}_y{step + 1}")
    factor = net.binary("LOGICAL_LEFT_SHIFT", net.mul(y, net.scalar(c.k, 3), c.k_shift, col, f"{n}_yk"),
                        net.binary("MINIMUM", h, net.scalar(c.max_h, 3), col, f"{n}_h_bounded"), col, f"{n}_factor")
    z = net.mul(dn, factor, c.z_shift, row, f"{n}_z")
    scaled = net.mul(z, net.const(f"{n}_gamma", gamma.reshape(1, 1, channels).numpy(), "INT32"), 0, row, f"{n}_zg")
    acc = net.binary("ADD", scaled, net.const(f"{n}_beta", beta.reshape(1, 1, channels).numpy(), "INT32"), row,
                     f"{n}_acc")
    # a plain shift (2^30 / 2^(so + 30)): Vela applies it in the ADD's output, no RESCALE op of its own
    out, dtype, zp = net.requantize_to(acc, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT + out_shift,
                                       output_bounds(node), row, n)
    shape = self.shape(node)
    return Value(net.reshape(out, shape, dtype, f"{n}_out"), shape, dtype, zp, tuple(range(len(shape))))


def _constant_mask(node) -> bool:
    """int_mask's keep is computed from constants only (no graph input above it but through shapes)."""
    seen, todo = set(), [op_args(node).keep]
    while todo:
        arg = todo.pop()
        if not isinstance(arg, torch.fx.Node) or arg in seen or _name(arg) in SCALAR_OPS:
            continue
        seen.add(arg)
        if arg.op == "placeholder":
            return False
        todo.extend(arg.all_input_nodes)
    return True


def _int_mask(self: Lowering, node) -> Value:
    """int_mask with a constant keep: the codes unchanged where every position is kept (HF attention without a
    mask), else codes · keep + fill · (1 − keep) as int32 MUL and ADD with constants, RESCALE x1 to storage."""
    a = op_args(node)
    if not _constant_mask(node):
        raise UnsupportedError(f"{node.name}: {BLOCKED['hwact.int_mask.default']}")
    x = self.value(a.q)
    shape = self.shape(node)
    keep = self.values[a.keep].to(torch.bool).expand(shape)
    if bool(keep.all()) and shape == x.shape:
        return x
    net, n = self.net, node.name
    x32 = _to_int32(self, net.logical(x), x.dtype, x.zp, list(shape), f"{n}_x32") if shape == x.shape else None
    if x32 is None:
        raise UnsupportedError(f"{node.name}: a mask that broadcasts the scores {x.shape} to {shape}")
    kept = net.mul(x32, net.const(f"{n}_keep", keep.to(torch.int64).numpy(), "INT32"), 0, list(shape), f"{n}_kept")
    filled = net.binary("ADD", kept, net.const(f"{n}_fill", (int(a.fill) * (~keep).to(torch.int64)).numpy(), "INT32"),
                        list(shape), f"{n}_masked")
    out, dtype, zp = net.requantize_to(filled, "INT32", 0, IDENTITY_MULTIPLIER, IDENTITY_SHIFT, output_bounds(node),
                                       list(shape), n)
    return Value(out, shape, dtype, zp, tuple(range(len(shape))))


def _pass_through(self: Lowering, node) -> Value:
    return self.value(node.args[0])


HANDLERS = {
    "hwact.quantize.default": _quantize,
    "hwact.int_conv2d.default": _conv2d,
    "hwact.int_linear.default": _linear,
    "hwact.int_matmul.default": _matmul,
    "hwact.requantize.default": _requantize,
    "hwact.int_add.default": _add,
    "hwact.int_max_pool2d.default": _max_pool,
    "hwact.int_lut.default": _lut,
    "hwact.int_mul.default": _mul,
    "hwact.npu_softmax.default": _npu_softmax,
    "hwact.npu_layernorm.default": _npu_layernorm,
    "hwact.int_mask.default": _int_mask,
    "hwact.dequantize.default": lambda self, node: None,      # an output (handled with the output node)
    "aten.clamp.default": _clamp,
    "aten.sum.dim_IntList": _sum,
    "aten.permute.default": _permute,
    "aten.transpose.int": _permute,
    "aten.t.default": _permute,
    "aten.select.int": _select,
    "aten.slice.Tensor": _slice,
    "aten.cat.default": _cat,
    "aten.expand.default": _expand,
    "aten.roll.default": _roll,
    "aten.constant_pad_nd.default": _pad,
    **{name: _reshape for name in RESHAPES},
    **{name: _pass_through for name in PASS_THROUGH},
}


def _strided_remainder(node) -> bool:
    """A slice with step > 1 over a dim whose size the step does not divide (_slice cannot split it)."""
    step = node.args[4] if len(node.args) > 4 else 1
    value = node.args[0].meta.get("val") if isinstance(node.args[0], torch.fx.Node) else None
    if step == 1 or value is None:
        return False
    dim = (node.args[1] if len(node.args) > 1 else 0) % value.dim()
    return int(value.shape[dim]) % step != 0


# ----- check before emitting -----------------------------------------------------------------------------
def problems(graph: Graph) -> list[str]:
    """One line per node the TOSA lowering cannot take, with the reason and what would fix it."""
    load_all_ops()
    lines = []
    floats = set(float_compute_nodes(graph))
    dequantize = _hwact("dequantize")
    for node in graph.call_nodes():
        name = _name(node)
        if is_bookkeeping(node) or name in SCALAR_OPS:
            continue
        if node in floats:
            lines.append(f"{node.name} ({name}) computes in float: Ethos-U has no float units; lower it with an int8 "
                         "recipe (--recipe int8-npu, the Ethos-U targets' default; `hwact inspect` names the pass for "
                         "each op)")
        elif name in BLOCKED and not (name == "hwact.int_mask.default" and _constant_mask(node)):
            lines.append(f"{node.name} ({name}): {BLOCKED[name]}")
        elif name not in HANDLERS:
            lines.append(f"{node.name} ({name}): no TOSA lowering for this op")
        elif name == "aten.slice.Tensor" and _strided_remainder(node):
            lines.append(f"{node.name} ({name}): strided slice of a dim whose size is no multiple of the step has "
                         "no TOSA lowering")
        elif name == "hwact.int_conv2d.default" and op_args(node).groups != 1:
            weight = op_args(node).weight
            if _constant(graph, weight).shape[1] != 1:
                lines.append(f"{node.name} ({name}): grouped convolution ({op_args(node).groups} groups) has no "
                             "TOSA lowering (groups 1 and depthwise only)")
    for node in graph.fx.nodes:
        if node.op == "placeholder" and any(user.target is not _hwact("quantize") and _name(user) not in SCALAR_OPS
                                            for user in node.users):
            lines.append(f"{node.name} (input): feeds integer ops directly (token ids?); the TOSA network starts "
                         "at hwact.quantize")
        if node.op == "call_function" and node.target is dequantize and any(u.op != "output" for u in node.users):
            if node not in floats and not any(u in floats for u in node.users):
                lines.append(f"{node.name} (hwact.dequantize): feeds more than the graph output")
    return lines


def lower(graph: Graph, sample: tuple) -> tuple[Network, dict]:
    """The TOSA network of `graph` for batch 1 (`sample`: one input of batch 1); (network, scales)."""
    values: dict = {}
    record(graph.module, [sample], lambda node, value: values.__setitem__(node, value))
    lowering = Lowering(graph, values)
    return lowering.run(), lowering.scales


def write_description(network: Network, folder: Path) -> tuple[Path, Path]:
    body, constants = network.description()
    description, arrays = folder / "network.json", folder / "constants.npz"
    description.write_text(json.dumps(body))
    np.savez(arrays, **constants)
    return description, arrays


def op_counts(network: Network) -> dict[str, int]:
    counts: dict[str, int] = {}
    for op in network.ops:
        counts[op["op"]] = counts.get(op["op"], 0) + 1
    return dict(sorted(counts.items()))

