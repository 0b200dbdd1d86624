"""fold-quant-scales: lower a calibrated float graph to integer ops with every scale folded offline.

Every float tensor t with calibrated range (lo, hi) (pass `calibrate`) gets a symmetric scale:

    uint8  [0, 255]           S = hi / 255              when lo >= 0 (e.g. after a ReLU, softmax)
    int8   [-128, 127]        S = max(|lo|, |hi|) / 127  otherwise
    int16  [-32768, 32767]    S = max(|lo|, |hi|) / 32767 for residual additions (I-ViT's 16-bit stream)

and the graph is rewritten, node by node, into hwact integer ops (hwact/ir/int_ops.py):

    input x                  q = hwact.quantize(x, S_x)                        (the only float → int step)
    linear / conv2d          W_q,c = clamp(round(W_c / S_w,c), ±127), S_w,c = max|W_c| / 127 per channel,
                             bias_q,c = round(b_c / (S_in·S_w,c)) (int32),
                             out = clamp(rounding_shift(Σ q·W_q + bias_q, dyadic(S_in·S_w,c / S_out)))
                             hwact.int_linear / hwact.int_conv2d; a ReLU that is the layer's only user
                             is fused as the clamp [0, 255] (its scale from the ReLU's range)
    relu (not fused)         aten.clamp(q, 0)                                   (scale unchanged)
    hardtanh(lo, hi), relu6, clamp
                             aten.clamp(q, round(lo / S), round(hi / S))        (scale unchanged)
    embedding(W, ids)        hwact.int_embedding(W_q, ids): W_q = clamp(round(W / S_W), ±127) int8 with
                             one scale S_W = max|W| / 127 (every row looked up shares it)
    a · b (two activations)  hwact.int_mul, multiplier S_a·S_b / S_out (squeeze-excite gates)
    where(m, x, f), f < −1e9 hwact.int_mask(q, m, −32768, qmax_q): masked scores (decompose-sdpa's −inf,
                             canonicalize's additive finfo.min masks) get int16's lowest code at q's scale,
                             codes [−32768, qmax_q]: the real −32768·S_q lies ≥ 256 ranges below the
                             scores, so shiftmax (its clamp n then at n_max) gives them weight 2^−n ≈ 0;
                             q's own lowest code would leave them e^−(range of the scores), not near 0
    constant_pad_nd(x, 0)    aten.constant_pad_nd(q, pad, 0): code 0 is the real 0 (scale unchanged)
    x · c, x / c (c a number) folded into the scale: S_out = S·|c| (aten.neg when c < 0)
    a + b                    hwact.int_add: each branch requantized to S_out once, then added (int16)
    a @ b (activations)      hwact.int_matmul, multiplier S_a·S_b / S_out
    cat                      every input requantized to the cat's scale, aten.cat on the int tensors
    mean over dims           aten.sum (int64) then hwact.requantize with multiplier S_in / (N·S_out)
    max_pool2d               hwact.int_max_pool2d                                (scale unchanged)
    shape ops                reshape/permute/transpose/select/... run unchanged on the int32 carrier
    graph output             hwact.dequantize(q, S)                             (the only int → float step)

Float constants used as activations (a position embedding, a class token) are quantized offline (int16
for additions, int8 otherwise). 8-bit-only consumers (linear, conv, matmul, pooling) of a 16-bit tensor
get a hwact.requantize to int8 in front. Any other op (GELU, softmax, LayerNorm, ...) is left as a float
island of exactly this shape, which shift-gelu, shiftmax, i-layernorm replace by integer ops:

    q_in → hwact.dequantize(q_in, S_in) → <one aten op> → hwact.quantize(y, S_out, qmin, qmax) → q_out

Overflow guard: a layer whose worst-case accumulator K·max|q_in|·127 + max|bias_q| reaches 2^31, or
whose bias does not fit int32, fails with the node named (int32 accumulation cannot hold it).

Before:                                           After:
    %x = placeholder                                  %q = hwact.quantize(%x, 0.031, -128, 127)
    %fc1 = aten.linear(%x, %w1, %b1)                  %h = hwact.int_linear(%q, %w1_q, %b1_q, %m0, %shift,
    %relu = aten.relu(%fc1)                                                  False, 0, 255)
    %fc2 = aten.linear(%relu, %w2, %b2)               %o = hwact.int_linear(%h, %w2_q, %b2_q, ..., -128, 127)
    return %fc2                                       return hwact.dequantize(%o, 0.047)
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.fx

from hwact.errors import PreconditionError
from hwact.ir import int_elementwise_ops, int_ops  # noqa: F401  (registers the hwact integer ops)
from hwact.ir.graph import Graph, module_path, op_name
from hwact.ir.int_ops import dyadic_tensors
from hwact.ir.params import add_constant, get_tensor
from hwact.passes.base import Pass, register
from hwact.passes.calibrate import RANGE_KEY, float_nodes
from hwact.passes.cleanup import Cleanup
from hwact.quant.layers import as_layer

aten = torch.ops.aten
hw = torch.ops.hwact

INT8 = (-128, 127)
UINT8 = (0, 255)
INT16 = (-32768, 32767)
INT32_LIMIT = 2**31 - 1

SHAPE_OPS = {aten.reshape.default, aten.view.default, aten.permute.default, aten.transpose.int,
             aten.select.int, aten.slice.Tensor, aten.flatten.using_ints, aten.expand.default,
             aten.unsqueeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
             aten.contiguous.default, aten.clone.default, aten.t.default, aten.roll.default,
             aten._unsafe_view.default, aten.alias.default, aten.detach.default}
RELUS = {aten.relu.default, aten.relu_.default}
ADDS = {aten.add.Tensor}
SCALINGS = {aten.mul.Tensor: False, aten.mul.Scalar: False, aten.div.Tensor: True, aten.div.Scalar: True}
MATMULS = {aten.matmul.default, aten.bmm.default}
MEANS = {aten.mean.dim}
POOLS = {aten.max_pool2d.default}
CLAMPS = {aten.hardtanh.default: (-1.0, 1.0), aten.relu6.default: (0.0, 6.0), aten.clamp.default: (None, None)}
MASK_FILLS = {aten.where.ScalarOther}
MASKED_BELOW = -1e9


@dataclass
class QTensor:
    """An integer tensor of the lowered graph: real value = node · scale, values in [qmin, qmax]."""

    node: torch.fx.Node
    scale: float
    qmin: int
    qmax: int

    @property
    def unsigned(self) -> bool:
        return self.qmin >= 0

    @property
    def is_8bit(self) -> bool:
        return self.qmin >= -128 and self.qmax <= 255

    @property
    def magnitude(self) -> int:
        return max(abs(self.qmin), abs(self.qmax))


def scale_for(lo: float, hi: float, bounds: tuple[int, int] | None = None) -> tuple[float, int, int]:
    """(S, qmin, qmax) for a calibrated range; uint8 for non-negative 8-bit tensors."""
    if bounds is None:
        bounds = UINT8 if lo >= 0 else INT8
    if bounds == UINT8 and lo < 0:
        bounds = INT8
    magnitude = hi if bounds == UINT8 else max(abs(lo), abs(hi))
    scale = magnitude / bounds[1] if magnitude > 0 and math.isfinite(magnitude) else 1.0
    return scale, bounds[0], bounds[1]


def quantize_weight(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Symmetric int8 per output channel: (W_q int8, S_w float64 per channel); zero channels get S = 1."""
    magnitude = weight.detach().abs().reshape(weight.shape[0], -1).amax(dim=1).to(torch.float64)
    scales = torch.where(magnitude > 0, magnitude / 127, torch.ones_like(magnitude))
    view = (-1,) + (1,) * (weight.dim() - 1)
    q = torch.clamp(torch.round(weight.detach().to(torch.float64) / scales.reshape(view)), -127, 127)
    return q.to(torch.int8), scales


@register
class FoldQuantScales(Pass):
    name = "fold-quant-scales"
    preconditions = ("calibrate ran (every float node carries a calibrated range)",)
    tolerance = None

    def check(self, graph: Graph) -> list[str]:
        return [f"{n.name}: no calibrated range (run calibrate first)"
                for n in float_nodes(graph) if RANGE_KEY not in n.meta]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        lowering = _Lowering(graph)
        changed = lowering.run()
        graph.fx.eliminate_dead_code()
        Cleanup._drop_unused_weights(graph)
        graph.fx.lint()
        graph.recompile()
        graph.meta["hwact_integer"] = lowering.report
        return graph, changed


class _Lowering:
    def __init__(self, graph: Graph):
        self.graph = graph
        self.ints: dict[torch.fx.Node, QTensor] = {}
        self.report: list[dict] = []
        self.changed = 0

    # ----- building blocks -----------------------------------------------------------------------
    def _call(self, target, args: tuple, like: torch.fx.Node | None) -> torch.fx.Node:
        node = self.graph.fx.call_function(target, args)
        if like is not None:
            for key in ("nn_module_stack", "stack_trace", "source_fn_stack"):
                if key in like.meta:
                    node.meta[key] = like.meta[key]
        self.changed += 1
        return node

    def _constant(self, stem: str, value: torch.Tensor, before: torch.fx.Node) -> torch.fx.Node:
        return add_constant(self.graph, stem, value, before, trainable=False)

    def _range(self, node: torch.fx.Node) -> tuple[float, float]:
        return node.meta[RANGE_KEY]

    def _quantize_float(self, node: torch.fx.Node, bounds=None) -> QTensor:
        """An int version of a float value (placeholder, island output, float constant)."""
        if node.op == "get_attr":  # quantized offline: the graph holds the int32 constant
            value = get_tensor(self.graph, node).detach()
            scale, qmin, qmax = scale_for(float(value.min()), float(value.max()), bounds)
            q = torch.ops.hwact.quantize(value, scale, qmin, qmax)
            with self.graph.fx.inserting_after(node):
                return QTensor(self._constant(f"{node.name}_q", q, node), scale, qmin, qmax)
        scale, qmin, qmax = scale_for(*self._range(node), bounds)
        with self.graph.fx.inserting_after(node):
            q = self._call(hw.quantize.default, (node, scale, qmin, qmax), node)
        return QTensor(q, scale, qmin, qmax)

    def _int(self, value, bounds=None) -> QTensor | None:
        if not isinstance(value, torch.fx.Node):
            return None
        if value in self.ints:
            return self.ints[value]
        if value.op == "get_attr" and get_tensor(self.graph, value).is_floating_point():
            self.ints[value] = self._quantize_float(value, bounds)
            return self.ints[value]
        return None

    def _requantize(self, qt: QTensor, scale: float, qmin: int, qmax: int, like) -> QTensor:
        if qt.scale == scale and qt.qmin >= qmin and qt.qmax <= qmax:
            return qt
        node = self._call(hw.requantize.default, (qt.node, qt.scale, scale, qmin, qmax), like)
        return QTensor(node, scale, qmin, qmax)

    def _as_8bit(self, qt: QTensor, like) -> QTensor:
        if qt.is_8bit:
            return qt
        return self._requantize(qt, qt.scale * qt.magnitude / 127, *INT8, like)

    def _out(self, node: torch.fx.Node, bounds=None) -> tuple[float, int, int]:
        return scale_for(*self._range(node), bounds)

    # ----- the walk ------------------------------------------------------------------------------
    def run(self) -> int:
        for node in list(self.graph.fx.nodes):
            if node.op == "placeholder":
                if RANGE_KEY in node.meta:
                    self.ints[node] = self._quantize_float(node)
            elif node.op == "call_function" and node not in self.ints:
                with self.graph.fx.inserting_before(node):
                    try:
                        self._lower(node)
                    except PreconditionError as exc:   # a scale the integer ops cannot hold: name the node
                        where = module_path(node)
                        raise PreconditionError(f"fold-quant-scales: node {node.name} ({op_name(node)}"
                                                f"{', ' + where if where else ''}): {exc.message}",
                                                hint=exc.hint) from None
            elif node.op == "output":
                self._lower_output(node)
        return self.changed

    def _lower(self, node: torch.fx.Node) -> None:
        if node.target in SHAPE_OPS and node.args and isinstance(node.args[0], torch.fx.Node):
            self._int(node.args[0])  # a float constant moved around (a class token): quantize it offline
        if node.target is aten.embedding.default and self._lower_embedding(node):
            return
        inputs = [a for a in node.all_input_nodes if a in self.ints]
        if not inputs or RANGE_KEY not in node.meta:
            return  # no integer input (shape arithmetic, constants) or no float output
        target = node.target
        layer = as_layer(node)
        if layer is not None and layer.input in self.ints and self._lower_layer(node, layer):
            return
        if target in RELUS:
            qt = self.ints[node.args[0]]
            clamped = self._call(aten.clamp.default, (qt.node, 0), node)
            self.ints[node] = QTensor(clamped, qt.scale, max(qt.qmin, 0), qt.qmax)
        elif target in CLAMPS and node.args[0] in self.ints:
            self._lower_clamp(node)
        elif target in MASK_FILLS and node.args[1] in self.ints and isinstance(node.args[2], (int, float)) \
                and node.args[2] < MASKED_BELOW:
            qt = self.ints[node.args[1]]
            masked = self._call(hw.int_mask.default, (qt.node, node.args[0], INT16[0], qt.qmax), node)
            self.ints[node] = QTensor(masked, qt.scale, INT16[0], qt.qmax)
        elif target is aten.constant_pad_nd.default and node.args[0] in self.ints \
                and float(node.args[2] if len(node.args) > 2 else 0.0) == 0.0:
            qt = self.ints[node.args[0]]
            padded = self._call(aten.constant_pad_nd.default, (qt.node, list(node.args[1]), 0), node)
            self.ints[node] = QTensor(padded, qt.scale, min(qt.qmin, 0), max(qt.qmax, 0))
        elif target is aten.mul.Tensor and all(isinstance(a, torch.fx.Node) for a in node.args[:2]) \
                and all(self._int(a) for a in node.args[:2]):
            self._lower_product(node)
        elif target in SCALINGS and isinstance(node.args[1], (int, float)) and node.args[1] != 0 \
                and node.args[0] in self.ints:
            self._lower_scaling(node, SCALINGS[target])
        elif target in ADDS and len(node.args) == 2 and self._lower_add(node):
            pass
        elif target in MATMULS and all(self._int(a) for a in node.args[:2]):
            self._lower_matmul(node)
        elif target is aten.cat.default and all(self._int(a) for a in node.args[0]):
            self._lower_cat(node)
        elif target in SHAPE_OPS and node.args[0] in self.ints:
            qt = self.ints[node.args[0]]
            moved = self._call(target, (qt.node, *node.args[1:]), node)
            self.ints[node] = QTensor(moved, qt.scale, qt.qmin, qt.qmax)
        elif target in MEANS and node.args[0] in self.ints:
            self._lower_mean(node)
        elif target in POOLS and node.args[0] in self.ints and self._lower_pool(node):
            pass
        else:
            self._island(node)

    def _lower_layer(self, node: torch.fx.Node, layer) -> bool:
        args = list(node.args) + [None] * (7 - len(node.args))
        if layer.kind == "conv":
            if node.target is not aten.conv2d.default or isinstance(args[4], str):
                return False
        qt = self._as_8bit(self.ints[layer.input], node)
        weight = layer.weight(self.graph)
        bias = layer.bias(self.graph)
        fused = next(iter(node.users)) if len(node.users) == 1 else None
        fused = fused if fused is not None and fused.target in RELUS and RANGE_KEY in fused.meta else None
        out_scale, qmin, qmax = self._out(fused or node)
        if fused is not None:
            qmin = 0
        w_q, w_scales = quantize_weight(weight)
        acc_scales = qt.scale * w_scales
        bias_q = torch.zeros(weight.shape[0], dtype=torch.float64) if bias is None else \
            torch.round(bias.detach().to(torch.float64) / acc_scales)
        fan_in = weight[0].numel()
        worst = fan_in * qt.magnitude * 127 + float(bias_q.abs().max())
        if worst >= INT32_LIMIT:
            raise PreconditionError(f"{node.name}: int32 accumulator can overflow (worst case {worst:.3g} "
                                    f">= 2^31 with {fan_in} inputs)", hint="recalibrate with a clipping "
                                    "method (--calib-method percentile|mse) or split the layer")
        m0, shift = dyadic_tensors(acc_scales / out_scale)
        stem = node.name
        w_node = self._constant(f"{stem}_wq", w_q, node)
        b_node = self._constant(f"{stem}_bq", bias_q.to(torch.int32), node)
        m_node = self._constant(f"{stem}_m0", m0, node)
        s_node = self._constant(f"{stem}_shift", shift, node)
        if layer.kind == "linear":
            out = self._call(hw.int_linear.default, (qt.node, w_node, b_node, m_node, s_node, qt.unsigned,
                                                     qmin, qmax), node)
        else:
            stride, padding, dilation = (list(a) if a is not None else d
                                         for a, d in zip(args[3:6], ([1, 1], [0, 0], [1, 1])))
            out = self._call(hw.int_conv2d.default, (qt.node, w_node, b_node, m_node, s_node, stride, padding,
                                                     dilation, int(args[6] or 1), qt.unsigned, qmin, qmax), node)
        self.ints[node] = QTensor(out, out_scale, qmin, qmax)
        if fused is not None:
            self.ints[fused] = self.ints[node]
        self.report.append({"node": node.name, "kind": layer.kind, "input_scale": qt.scale,
                            "output_scale": out_scale, "output_bits": "uint8" if qmin == 0 else "int8",
                            "fused_relu": fused is not None, "worst_accumulator": worst})
        return True

    def _lower_scaling(self, node: torch.fx.Node, divide: bool) -> None:
        qt = self.ints[node.args[0]]
        factor = abs(float(node.args[1]))
        scale = qt.scale / factor if divide else qt.scale * factor
        if node.args[1] < 0:
            negated = self._call(aten.neg.default, (qt.node,), node)
            self.ints[node] = QTensor(negated, scale, -qt.qmax, -qt.qmin)
        else:
            self.ints[node] = QTensor(qt.node, scale, qt.qmin, qt.qmax)

    def _lower_clamp(self, node: torch.fx.Node) -> None:
        qt = self.ints[node.args[0]]
        low, high = CLAMPS[node.target]
        low = node.args[1] if len(node.args) > 1 else node.kwargs.get("min", low)
        high = node.args[2] if len(node.args) > 2 else node.kwargs.get("max", high)
        code_low = qt.qmin if low is None else max(qt.qmin, round(float(low) / qt.scale))
        code_high = qt.qmax if high is None else min(qt.qmax, round(float(high) / qt.scale))
        clamped = self._call(aten.clamp.default, (qt.node, code_low, code_high), node)
        self.ints[node] = QTensor(clamped, qt.scale, min(code_low, code_high), code_high)

    def _lower_embedding(self, node: torch.fx.Node) -> bool:
        table, ids = node.args[0], node.args[1]
        if not (isinstance(table, torch.fx.Node) and table.op == "get_attr") or RANGE_KEY not in node.meta:
            return False
        weight = get_tensor(self.graph, table).detach().to(torch.float64)
        magnitude = float(weight.abs().max())
        scale = magnitude / 127 if magnitude > 0 else 1.0
        codes = torch.clamp(torch.round(weight / scale), -127, 127).to(torch.int8)
        table_q = self._constant(f"{node.name}_table_q", codes, node)
        out = self._call(hw.int_embedding.default, (table_q, ids), node)
        self.ints[node] = QTensor(out, scale, -127, 127)
        return True

    def _lower_product(self, node: torch.fx.Node) -> None:
        a, b = (self._int(arg) for arg in node.args[:2])
        scale, qmin, qmax = self._out(node)
        out = self._call(hw.int_mul.default, (a.node, b.node, a.scale * b.scale / scale, qmin, qmax), node)
        self.ints[node] = QTensor(out, scale, qmin, qmax)

    def _lower_add(self, node: torch.fx.Node) -> bool:
        a, b = (self._int(arg, INT16) for arg in node.args[:2])
        if a is None or b is None:
            return False
        scale, qmin, qmax = self._out(node, INT16)
        out = self._call(hw.int_add.default, (a.node, b.node, a.scale / scale, b.scale / scale, qmin, qmax), node)
        self.ints[node] = QTensor(out, scale, qmin, qmax)
        return True

    def _lower_matmul(self, node: torch.fx.Node) -> None:
        a, b = (self._as_8bit(self._int(arg), node) for arg in node.args[:2])
        scale, qmin, qmax = self._out(node)
        out = self._call(hw.int_matmul.default, (a.node, b.node, a.unsigned, b.unsigned, a.scale * b.scale / scale,
                                                 qmin, qmax), node)
        self.ints[node] = QTensor(out, scale, qmin, qmax)

    def _lower_cat(self, node: torch.fx.Node) -> None:
        parts = [self._int(arg) for arg in node.args[0]]
        bounds = INT16 if any(not p.is_8bit for p in parts) else None
        scale, qmin, qmax = self._out(node, bounds)
        aligned = [self._requantize(p, scale, qmin, qmax, node).node for p in parts]
        out = self._call(aten.cat.default, (aligned, *node.args[1:]), node)
        self.ints[node] = QTensor(out, scale, qmin, qmax)

    def _lower_mean(self, node: torch.fx.Node) -> None:
        qt = self.ints[node.args[0]]
        shape = node.args[0].meta["val"].shape
        dims = [d % len(shape) for d in node.args[1]]
        count = math.prod(int(shape[d]) for d in dims)
        keepdim = bool(node.args[2]) if len(node.args) > 2 else bool(node.kwargs.get("keepdim", False))
        total = self._call(aten.sum.dim_IntList, (qt.node, dims, keepdim), node)
        scale, qmin, qmax = self._out(node)
        out = self._call(hw.requantize.default, (total, qt.scale / count, scale, qmin, qmax), node)
        self.ints[node] = QTensor(out, scale, qmin, qmax)

    def _lower_pool(self, node: torch.fx.Node) -> bool:
        args = list(node.args) + [None] * (6 - len(node.args))
        kernel = list(args[1])
        stride = list(args[2]) if args[2] else kernel
        padding = list(args[3]) if args[3] else [0, 0]
        if (args[4] not in (None, 1, [1, 1], (1, 1))) or args[5]:
            return False  # dilation / ceil_mode: keep as an island
        kernel, stride, padding = ([v] * 2 if len(v) == 1 else v for v in (kernel, stride, padding))
        qt = self._as_8bit(self.ints[node.args[0]], node)
        out = self._call(hw.int_max_pool2d.default, (qt.node, kernel, stride, padding, qt.unsigned), node)
        self.ints[node] = QTensor(out, qt.scale, qt.qmin, qt.qmax)
        return True

    def _island(self, node: torch.fx.Node) -> None:
        """dequantize every int input → the float op unchanged → quantize at the op's calibrated range."""
        def dequantized(arg):
            if isinstance(arg, torch.fx.Node) and arg in self.ints:
                qt = self.ints[arg]
                return self._call(hw.dequantize.default, (qt.node, qt.scale), arg)
            return arg

        node.args = torch.fx.node.map_aggregate(node.args, dequantized)
        node.kwargs = torch.fx.node.map_aggregate(node.kwargs, dequantized)
        self.ints[node] = self._quantize_float(node)

    def _lower_output(self, node: torch.fx.Node) -> None:
        def dequantized(arg):
            if isinstance(arg, torch.fx.Node) and arg in self.ints:
                qt = self.ints[arg]
                with self.graph.fx.inserting_before(node):
                    return self._call(hw.dequantize.default, (qt.node, qt.scale), arg)
            return arg

        node.args = torch.fx.node.map_aggregate(node.args, dequantized)
