"""canonicalize: rewrite what exported models hold into the few forms the integer lowering knows.

Every rewrite leaves the function unchanged (up to float rounding):

    identities removed        eval dropout (train=False), clone, contiguous, alias, detach(_),
                              lift_fresh_copy, casts to the dtype the tensor already has
                              (to.dtype / to.dtype_layout / to.device / _to_copy), _assert_tensor_metadata;
                              a view that read a removed copy becomes a reshape
    in-place -> out-of-place  op_(x, ...) becomes op(x, ...) and every later reader of x reads the result
                              (h += x in a residual block: aten.add_.Tensor -> aten.add.Tensor)
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

Before:                                          After:
    %d = aten.dropout(%h, 0.1, False)                %a = aten.add.Tensor(%h, %x)
    %a = aten.add_.Tensor(%d, %x)
"""

from __future__ import annotations

import operator

import torch
import torch.fx

from hwact.ir import activations
from hwact.ir.graph import Graph
from hwact.ir.params import add_constant, get_tensor
from hwact.passes._rewrite import call, replace
from hwact.passes.base import Pass, register

aten = torch.ops.aten

DROPOUTS = {aten.dropout.default, aten.dropout_.default, aten.feature_dropout.default,
            aten.alpha_dropout.default, aten.feature_alpha_dropout.default}
VALUE_IDENTITIES = {aten.clone.default, aten.contiguous.default, aten.alias.default, aten.detach.default,
                    aten.detach_.default, aten.lift_fresh_copy.default}
CASTS = {aten.to.dtype, aten.to.dtype_layout, aten.to.device, aten._to_copy.default}
SPLITS = {aten.split.Tensor, aten.split_with_sizes.default}


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
                                                     self._splits, self._pads, self._empty_cats))
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
                for user in node.users:   # a view of what was a contiguous copy may need the copy
                    if user.target is aten.view.default:
                        user.target = aten.reshape.default
                replace(graph, node, node.args[0])
                changed += 1
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
