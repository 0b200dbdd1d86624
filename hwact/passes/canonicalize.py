"""canonicalize: rewrite what exported models hold into the few forms the integer lowering knows.

Every rewrite leaves the function unchanged (up to float rounding):

    identities removed        eval dropout (train=False), clone, contiguous, alias, detach(_),
                              lift_fresh_copy, casts to the dtype the tensor already has
                              (to.dtype / to.dtype_layout / to.device / _to_copy), _assert_tensor_metadata;
                              once a copy is removed, every aten.view becomes aten.reshape (same values;
                              a view downstream of the copy, through a permute, may need a copy now)
    in-place -> out-of-place  op_(x, ...) becomes op(x, ...) and every later reader of x reads the result
                              (h += x in a residual block: aten.add_.Tensor -> aten.add.Tensor); kept
                              in place when another view of x's memory (its base, when x is a view, or a
                              view of x) is read after it (keep[:, 0] = True: the write must reach keep)
    GELU formulas             0.5·x·(1+erf(x/√2)) and 0.5·x·(1+tanh(√(2/π)(x+0.044715x³))) become
                              aten.gelu(x) / aten.gelu(x, approximate="tanh") (hwact.ir.activations: the one
                              matcher gelu-to-relu uses), so shift-gelu and lut-gelu see them
    addmm(b, x, W)            linear(x, Wᵀ, b) when W and b are constants (GPT-2's Conv1D)
    conv1d(x, W)              squeeze(conv2d(unsqueeze(x, 2), W[:, :, None, :], stride (1, s),
                              padding (0, p), dilation (1, d)), 2): one integer conv kernel for both
    adaptive_avg_pool2d(x, 1) mean(x, [-2, -1], keepdim)   adaptive_avg_pool1d(x, 1) -> mean(x, [-1], keepdim)
                              avg_pool2d with one window over the whole input, no padding -> the same mean
    split / split_with_sizes  each getitem(split(x, ...), i) becomes slice(x, dim, start, end)
    pad(x, p, "constant", v)  constant_pad_nd(x, p, v)
    cat([empty, x, ...])      1-D empty tensors dropped from cat (GPT-2's empty key/value cache)
    group_norm(x, G, w, b, ε) x: [N, C, *S], R = (C/G)·∏S, c = channel:
                              y = reshape(layer_norm(reshape(x, [-1, G, R]), [R], ε), [-1, C, *S]) · w[c] + b[c]
                              (layer_norm without affine: mean and variance over one group's R values,
                              which is what GroupNorm normalises; w, b become [C, 1, ..] constants, so
                              fold-quant-scales lowers the product and sum to hwact.int_mul / int_add and
                              i-layernorm takes the layer_norm). native_group_norm(x, w, b, N, C, HxW, G, ε)
                              (after run_decompositions) likewise, when only its output 0 is read.
    additive attention mask   add(s, M) -> where(keep, s, f) when M = carrier(where(c, 0, f)) (keep = c),
                              carrier(where(c, f, 0)) (keep = ¬c) or carrier((1 − float(c)) · f) (keep = c),
                              c a bool tensor, f ≤ −1e30 or −inf a number, carrier = shape ops (expand,
                              unsqueeze, view, reshape, slice, select, squeeze, permute, transpose) replayed
                              on keep. Transformers' eager attention writes M = where(mask, 0, finfo.min)
                              from the integer attention_mask. Exact in float32: s + 0 = s, and
                              s + f = f for every |s| < 2^75 since ulp(f) ≥ 2^76 (|f| ≥ 1e30), so a fully
                              masked row stays what it was (uniform for finfo.min). keep is derived from
                              c by structure, not from M's values, so no float mask tensor is left;
                              fold-quant-scales lowers where(keep, q, f) to hwact.int_mask(q, keep, −32768, qmax).
                              A mask built from an int tensor ((1 − m.float())·f, m int64) is not taken:
                              its values are not provably 0/1.

Before:                                          After:
    %d = aten.dropout(%h, 0.1, False)                %a = aten.add.Tensor(%h, %x)
    %a = aten.add_.Tensor(%d, %x)
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx

from hwact.ir import activations
from hwact.ir.graph import Graph
from hwact.ir.params import add_constant, constant_value, get_tensor
from hwact.passes._rewrite import call, replace
from hwact.passes.base import Pass, register

aten = torch.ops.aten

DROPOUTS = {aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default,
            aten.alpha_dropout.default, aten.feature_alpha_dropout.default}
VALUE_IDENTITIES = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
                    aten.detach_.default, aten.lift_fresh_copy.default}
CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default}
SPLITS = {aten.split.Tensor, aten.split_with_sizes.default}
MASK_CARRIERS = {aten.expand.default, aten.unsqueeze.default, aten.view.default, aten.reshape.default,
                 aten.slice.Tensor, aten.select.int, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default,
                 aten.permute.default, aten.transpose.int, aten._unsafe_view.default}
MASK_WHERES = {aten.where.ScalarOther, aten.where.ScalarSelf, aten.where.Scalar, aten.where.self}
MASK_FILL_AT_MOST = -1e30


def _val(node):
    return node.meta.get("val") if isinstance(node, torch.fx.Node) else None


def _is_identity(node: torch.fx.Node) -> bool:
    if not node.args or not isinstance(node.args[0], torch.fx.Node):
        return False
    if node.target in DROPOUTS:
        train = node.args[2] if len(node.args) > 2 else node.kwargs.get("train", False)
        return not train
    if node.target in VALUE_IDENTITIES:
        return True
    if node.target in CASTS:
        before, after = _val(node.args[0]), _val(node)
        return isinstance(before, torch.Tensor) and isinstance(after, torch.Tensor) and before.dtype == after.dtype
    return False


def _functional(target):
    """The out-of-place overload of an in-place aten op (add_.Tensor -> add.Tensor), else None."""
    if not isinstance(target, torch._ops.OpOverload):
        return None
    name = target._opname
    if not name.endswith("_") or name.startswith("_") or target.namespace != "aten":
        return None
    packet = getattr(aten, name[:-1], None)
    return getattr(packet, target._overloadname, None) if packet is not None else None


def _aliases(node: torch.fx.Node) -> bool:
    """Whether `node`'s value shares memory with one of its inputs (a view, an in-place op's result, a piece
    of a split), by the op's schema: its first return carries an alias annotation (Tensor(a))."""
    if node.target is operator.getitem and node.args and isinstance(node.args[0], torch.fx.Node):
        node = node.args[0]
    if not isinstance(node.target, torch._ops.OpOverload):
        return False
    returns = node.target._schema.returns
    return bool(returns) and returns[0].alias_info is not None


def _alias_family(node: torch.fx.Node, skip: torch.fx.Node) -> set[torch.fx.Node]:
    """Every node sharing `node`'s memory: up through views to the base, then down through every view of
    it (not through `skip`, the in-place op being rewritten)."""
    base = node
    while _aliases(base) and base.args and isinstance(base.args[0], torch.fx.Node):
        base = base.args[0]
    family, stack = {base}, [base]
    while stack:
        for user in stack.pop().users:
            if user is not skip and user not in family and _aliases(user):
                family.add(user)
                stack.append(user)
    return family


def _global_avg_pool(node: torch.fx.Node) -> bool:
    """avg_pool2d whose one window covers the whole input (no padding, no divisor override): a mean."""
    if node.target is not aten.avg_pool2d.default or not isinstance(_val(node.args[0]), torch.Tensor):
        return False
    args = list(node.args) + [None] * (7 - len(node.args))
    kernel = list(args[1]) * (2 if len(args[1]) == 1 else 1)
    height, width = _val(node.args[0]).shape[-2:]
    padding = args[3] or [0]
    return (isinstance(height, int) and isinstance(width, int) and kernel[0] >= height and kernel[1] >= width
            and all(int(p) == 0 for p in padding) and args[6] is None and tuple(_val(node).shape[-2:]) == (1, 1))


@register
class Canonicalize(Pass):
    name = "canonicalize"
    tolerance = 1e-4

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed = sum(rewrite(graph) for rewrite in (self._identities, self._in_place, self._gelu_formulas,
                                                     self._addmm, self._conv1d, self._adaptive_pools,
                                                     self._splits, self._pads, self._empty_cats,
                                                     self._group_norms, self._additive_masks))
        graph.fx.eliminate_dead_code()
        graph.fx.lint()
        graph.recompile()
        return graph, changed

    @staticmethod
    def _identities(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is aten._assert_tensor_metadata.default and not node.users:
                graph.fx.erase_node(node)
                changed += 1
            elif _is_identity(node):
                replace(graph, node, node.args[0])
                changed += 1
        if changed:   # a view of what was a contiguous copy (directly or after a permute) may need the copy
            for node in graph.call_nodes():
                if node.target is aten.view.default:
                    node.target = aten.reshape.default
        return changed

    @staticmethod
    def _in_place(graph: Graph) -> int:
        order = {node: index for index, node in enumerate(graph.fx.nodes)}
        changed = 0
        for node in list(graph.call_nodes()):
            functional = _functional(node.target)
            if functional is None or not node.args or not isinstance(node.args[0], torch.fx.Node):
                continue
            mutated = node.args[0]
            others = _alias_family(mutated, node) - {mutated}
            if any(order.get(user, -1) > order[node] for other in others for user in other.users):
                continue   # the write is seen later through another view of the same memory: keep it in place
            later = [user for user in mutated.users if order.get(user, -1) > order[node]]
            node.target = functional
            for user in later:   # they read x after the in-place op changed it: they read its result
                user.replace_input_with(mutated, node)
            changed += 1
        return changed

    @staticmethod
    def _gelu_formulas(graph: Graph) -> int:
        sites = [s for s in activations.gelu_sites(graph) if s.form in ("erf-formula", "tanh-formula")]
        for site in sites:
            with graph.fx.inserting_after(site.output):
                approximate = "tanh" if site.form == "tanh-formula" else "none"
                gelu = call(graph, aten.gelu.default, (site.x,), site.output, {"approximate": approximate})
            site.output.replace_all_uses_with(gelu)
        return len(sites)

    @staticmethod
    def _addmm(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is not aten.addmm.default or len(node.args) != 3 or node.kwargs:
                continue
            bias, x, weight = node.args
            if not all(isinstance(a, torch.fx.Node) and a.op == "get_attr" for a in (bias, weight)):
                continue
            transposed = add_constant(graph, "linear_weight", get_tensor(graph, weight).t(), node)
            with graph.fx.inserting_before(node):
                linear = call(graph, aten.linear.default, (x, transposed, bias), node)
            replace(graph, node, linear)
            changed += 1
        return changed

    @staticmethod
    def _conv1d(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is not aten.conv1d.default or node.kwargs:
                continue
            args = list(node.args) + [None] * (7 - len(node.args))
            x, weight, bias, stride, padding, dilation, groups = args
            if not (isinstance(weight, torch.fx.Node) and weight.op == "get_attr"):
                continue
            one = lambda value, default: [1, int((value or [default])[0])]  # noqa: E731
            weight2d = add_constant(graph, "conv2d_weight", get_tensor(graph, weight).unsqueeze(2), node)
            with graph.fx.inserting_before(node):
                wide = call(graph, aten.unsqueeze.default, (x, 2), node)
                conv = call(graph, aten.conv2d.default,
                            (wide, weight2d, bias, one(stride, 1), [0, int((padding or [0])[0])], one(dilation, 1),
                             int(groups or 1)), node)
                narrow = call(graph, aten.squeeze.dim, (conv, 2), node)
            replace(graph, node, narrow)
            changed += 1
        return changed

    @staticmethod
    def _adaptive_pools(graph: Graph) -> int:
        dims = {aten.adaptive_avg_pool2d.default: [-2, -1], aten.adaptive_avg_pool1d.default: [-1],
                aten.avg_pool2d.default: [-2, -1]}
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target in dims and all(int(s) == 1 for s in node.args[1]) or _global_avg_pool(node):
                with graph.fx.inserting_before(node):
                    mean = call(graph, aten.mean.dim, (node.args[0], dims[node.target], True), node)
                replace(graph, node, mean)
                changed += 1
        return changed

    @staticmethod
    def _splits(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target not in SPLITS:
                continue
            source, sizes = node.args[0], node.args[1]
            dim = node.args[2] if len(node.args) > 2 else node.kwargs.get("dim", 0)
            length = _val(source).shape[dim] if isinstance(_val(source), torch.Tensor) else None
            if not isinstance(length, int) or not all(u.target is operator.getitem for u in node.users):
                continue
            if isinstance(sizes, int):
                sizes = [min(sizes, length - start) for start in range(0, length, sizes)]
            starts = [sum(sizes[:i]) for i in range(len(sizes))]
            for user in list(node.users):
                index = user.args[1]
                with graph.fx.inserting_before(user):
                    piece = call(graph, aten.slice.Tensor, (source, dim, starts[index], starts[index] + sizes[index]),
                                 node)
                replace(graph, user, piece)
            graph.fx.erase_node(node)
            changed += 1
        return changed

    @staticmethod
    def _pads(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is not aten.pad.default:
                continue
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
            if mode != "constant":
                continue
            with graph.fx.inserting_before(node):
                padded = call(graph, aten.constant_pad_nd.default, (node.args[0], list(node.args[1]),
                                                                    float(value or 0.0)), node)
            replace(graph, node, padded)
            changed += 1
        return changed

    @staticmethod
    def _empty_cats(graph: Graph) -> int:
        changed = 0
        for node in graph.call_nodes():
            if node.target is not aten.cat.default:
                continue
            parts = node.args[0]
            kept = [p for p in parts if not (isinstance(_val(p), torch.Tensor) and tuple(_val(p).shape) == (0,))]
            if len(kept) == len(parts) or not kept:
                continue
            node.args = (kept, *node.args[1:])
            changed += 1
        return changed

    @staticmethod
    def _group_norms(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is aten.group_norm.default:
                args = list(node.args) + [None] * (5 - len(node.args))
                x, groups, weight, bias = args[:4]
                weight, bias = node.kwargs.get("weight", weight), node.kwargs.get("bias", bias)
                eps = node.kwargs.get("eps", args[4] if args[4] is not None else 1e-5)
                outputs = [node]
            elif node.target is aten.native_group_norm.default:
                x, weight, bias, _, _, _, groups, eps = node.args
                outputs = list(node.users)
                if not all(u.target is operator.getitem and u.args[1] == 0 for u in outputs):
                    continue   # mean / rstd read: keep the op
            else:
                continue
            shape = _val(x).shape if isinstance(_val(x), torch.Tensor) else None
            if shape is None or len(shape) < 2 or not all(isinstance(d, int) for d in shape[1:]):
                continue
            channels, spatial = int(shape[1]), [int(d) for d in shape[2:]]
            rest = channels // int(groups) * math.prod(spatial)
            with graph.fx.inserting_before(node):
                grouped = call(graph, aten.reshape.default, (x, [-1, int(groups), rest]), node)
                normal = call(graph, aten.layer_norm.default, (grouped, [rest], None, None, float(eps)), node)
                y = call(graph, aten.reshape.default, (normal, [-1, channels, *spatial]), node)
                per_channel = [channels] + [1] * len(spatial)
                for value, op in ((weight, aten.mul.Tensor), (bias, aten.add.Tensor)):
                    if value is None:
                        continue
                    if isinstance(value, torch.fx.Node) and value.op == "get_attr":
                        column = add_constant(graph, "group_norm_" + ("weight" if op is aten.mul.Tensor else "bias"),
                                              get_tensor(graph, value).detach().reshape(per_channel), node,
                                              trainable=False)
                    else:
                        column = call(graph, aten.reshape.default, (value, per_channel), node)
                    y = call(graph, op, (y, column), node)
            for output in outputs:
                replace(graph, output, y)
            if node.target is aten.native_group_norm.default:
                graph.fx.erase_node(node)
            changed += 1
        return changed

    @staticmethod
    def _additive_masks(graph: Graph) -> int:
        changed = 0
        for node in list(graph.call_nodes()):
            if node.target is not aten.add.Tensor or len(node.args) != 2 or node.kwargs:
                continue
            for scores, mask in (node.args, node.args[::-1]):
                if not isinstance(scores, torch.fx.Node) or not isinstance(_val(scores), torch.Tensor) \
                        or not _val(scores).is_floating_point():
                    continue
                found = _mask_source(graph, mask)
                if found is None:
                    continue
                keep, negate, carriers, fill = found   # keep after the carriers has M's shape: same broadcast
                with graph.fx.inserting_before(node):
                    if negate:
                        keep = call(graph, aten.logical_not.default, (keep,), node)
                    for carrier in carriers:   # the same shape ops, on the bool tensor
                        keep = call(graph, carrier.target, (keep, *carrier.args[1:]), carrier, dict(carrier.kwargs))
                    masked = call(graph, aten.where.ScalarOther, (keep, scores, fill), node)
                replace(graph, node, masked)
                changed += 1
                break
        return changed


def _number(graph: Graph, value) -> float | None:
    """The one number a scalar argument or a constant node (zeros(), full(.., v), a uniform buffer) holds."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, torch.fx.Node):
        return None
    try:
        tensor = constant_value(graph, value)
    except Exception:  # noqa: BLE001 - it depends on an input (or cannot be evaluated): not a constant
        return None
    if not isinstance(tensor, torch.Tensor) or tensor.numel() == 0:
        return None
    first = tensor.reshape(-1)[0]
    return float(first) if bool((tensor == first).all()) else None


def _is_bool(node) -> bool:
    return isinstance(_val(node), torch.Tensor) and _val(node).dtype == torch.bool


def _mask_source(graph: Graph, mask):
    """(c, negate, carriers, f) when `mask` holds only 0 and f (≤ −1e30) chosen by the bool tensor c (see the
    module docstring): keep = ¬c if negate else c, then the carrier shape ops in order; None otherwise."""
    carriers = []
    while isinstance(mask, torch.fx.Node) and mask.target in MASK_CARRIERS:
        carriers.append(mask)
        mask = mask.args[0]
    if not isinstance(mask, torch.fx.Node) or mask.op != "call_function":
        return None
    carriers.reverse()
    if mask.target in MASK_WHERES and len(mask.args) == 3 and _is_bool(mask.args[0]):
        chosen, other = _number(graph, mask.args[1]), _number(graph, mask.args[2])
        if chosen == 0.0 and other is not None and other <= MASK_FILL_AT_MOST:
            return mask.args[0], False, carriers, other
        if other == 0.0 and chosen is not None and chosen <= MASK_FILL_AT_MOST:
            return mask.args[0], True, carriers, chosen
        return None
    if mask.target in (aten.mul.Tensor, aten.mul.Scalar) and len(mask.args) == 2:
        for factor, fill in (mask.args, mask.args[::-1]):
            fill = _number(graph, fill) if not isinstance(fill, torch.fx.Node) or fill.op != "placeholder" else None
            if fill is None or fill > MASK_FILL_AT_MOST or not isinstance(factor, torch.fx.Node):
                continue
            if factor.target is aten.rsub.Scalar and _number(graph, factor.args[1]) == 1.0:
                cast = factor.args[0]
                if isinstance(cast, torch.fx.Node) and cast.target in CASTS and _is_bool(cast.args[0]):
                    return cast.args[0], False, carriers, fill
    return None
