"""fold-bn: fold an inference-mode BatchNorm into the conv or linear that feeds it.

With BN(y) = γ·(y − μ)/√(σ² + ε) + β and y = W·x + b (b = 0 when the layer has no bias), per output
channel c with s_c = γ_c/√(σ²_c + ε):

    W'_c = s_c · W_c          b'_c = s_c · (b_c − μ_c) + β_c          BN(W·x + b) = W'·x + b'

exact up to float rounding. BatchNorm normalizes dim 1 of its input z, so the fold needs the element
z[n, c, ...] to be output channel c of the layer:

  * conv1d/conv2d/conv3d/convolution (not transposed, integer padding: run explicit-padding first for
    padding="same"/"valid"): z is the conv's output (N, C, ...), channel c on dim 1.
  * linear, directly or through row-major reshapes only (view, reshape, flatten, unflatten, squeeze,
    unsqueeze, reshape_as, view_as; LeViT's `bn(linear(x).flatten(0, 1))`): a reshape keeps the
    row-major order of the elements, and output feature c of a linear with C features is the element
    of flat index i with i mod C = c. z of shape (M, C', 1, ..., 1) holds at [m, c'] flat index
    m·C' + c', which is feature c' for every m exactly when C' = C. So the fold applies when z's dim 1
    is C and every later dim is 1, and is refused otherwise (a (B, L, C) linear output fed to a
    BatchNorm1d directly normalizes over L, not the features; a permute or transpose between them
    moves the features).

The layer (and each reshape) must have no other user that reads its values: the layer's output changes.
Users that read only its shape (sym_size, the `other` of reshape_as/view_as) are allowed.
aten.batch_norm and aten._native_batch_norm_legit_no_training (which returns (out, mean, invstd),
read through getitem) are both folded.

Before:                                          After:
    %conv = aten.conv2d(%x, %w, None, ...)          %conv = aten.conv2d(%x, %w_folded, %b_folded, ...)
    %bn = aten.batch_norm(%conv, %g, %b, %m, %v,
                          False, 0.1, 1e-5, True)
    %relu = aten.relu(%bn)                          %relu = aten.relu(%conv)

    %fc = aten.linear(%h, %w, %b)   (B, L, C)       %fc = aten.linear(%h, %w_folded, %b_folded)
    %flat = aten.flatten(%fc, 0, 1) (B·L, C)        %flat = aten.flatten(%fc, 0, 1)
    %bn = aten.batch_norm(%flat, ...)
    %out = aten.reshape_as(%bn, %fc)                %out = aten.reshape_as(%flat, %fc)
"""

from __future__ import annotations

import math
import operator

import torch
import torch.fx

from hwact.ir.graph import Graph, op_name
from hwact.ir.params import add_constant, get_tensor
from hwact.passes.base import Pass, register

aten = torch.ops.aten
_CONVS = (aten.conv1d.default, aten.conv2d.default, aten.conv3d.default)
_BATCH_NORMS = (aten.batch_norm.default, aten._native_batch_norm_legit_no_training.default)
# ops whose output is their input (args[0]) with another shape and the same row-major element order
_RESHAPES = (aten.view.default, aten.reshape.default, aten._unsafe_view.default, aten.flatten.using_ints,
             aten.unflatten.int, aten.squeeze.dim, aten.squeeze.dims, aten.squeeze.default, aten.unsqueeze.default,
             aten.reshape_as.default, aten.view_as.default)
_SHAPE_OF_ARG1 = (aten.reshape_as.default, aten.view_as.default)   # read only the shape of args[1]


def _bn_parts(bn):
    """(input, γ, β, μ, σ², eps) node/values of a batch-norm node, or None when in training mode."""
    if bn.target is aten.batch_norm.default:
        x, w, b, mean, var, training, _momentum, eps = bn.args[:8]
        return None if training else (x, w, b, mean, var, eps)
    x, w, b, mean, var, _momentum, eps = bn.args[:7]
    return (x, w, b, mean, var, eps)


def _is_constant(node) -> bool:
    return node is None or (isinstance(node, torch.fx.Node) and node.op == "get_attr")


def _reads_only_shape(user: torch.fx.Node, node: torch.fx.Node) -> bool:
    """`user` reads the shape of `node`, never its values (so rescaling `node` leaves it as it is)."""
    if user.target is aten.sym_size.int:
        return True
    return (user.target in _SHAPE_OF_ARG1 and len(user.args) == 2 and user.args[1] is node
            and user.args[0] is not node and node not in user.kwargs.values())


def _value_users(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [u for u in node.users if not _reads_only_shape(u, node)]


def _shape(node) -> tuple | None:
    value = node.meta.get("val") if isinstance(node, torch.fx.Node) else None
    return tuple(value.shape) if isinstance(value, torch.Tensor) else None


def _show(shape) -> str:
    return "(" + ", ".join(str(d) for d in shape) + ")"


def _foldable_layer(graph: Graph, x) -> tuple[torch.fx.Node | None, str]:
    """(the conv/linear whose output channels are dim 1 of the BatchNorm input `x`, "") or (None, why not)."""
    if not isinstance(x, torch.fx.Node) or x.op != "call_function":
        return None, "fed by a graph input or constant"
    layer, between = x, []
    while layer.target in _RESHAPES and isinstance(layer.args[0], torch.fx.Node):
        between.append(layer)
        layer = layer.args[0]
    if layer.target is aten.convolution.default and layer.args[6]:
        return None, "fed by a transposed convolution"
    is_conv = layer.target in _CONVS or layer.target is aten.convolution.default
    if not is_conv and layer.target is not aten.linear.default:
        hint = " (string padding: run explicit-padding first)" if str(layer.target).endswith(".padding") else ""
        return None, f"fed by {op_name(layer)}{hint}"
    if is_conv and between:
        return None, f"{op_name(between[-1])} between {layer.name} and it (a conv's channels must stay on dim 1)"
    for node in [layer] + between[::-1]:
        users = _value_users(node)
        if len(users) != 1:
            return None, f"{node.name} has {len(users)} users"
    args = layer.args
    if len(args) < 2 or not _is_constant(args[1]) or not _is_constant(args[2] if len(args) > 2 else None):
        return None, f"{layer.name}'s weight or bias is computed, not a constant"
    weight, shape = get_tensor(graph, args[1]), _shape(x)
    if is_conv and shape is not None and len(shape) != weight.dim():
        return None, f"{layer.name} runs on an unbatched input {_show(shape)}"
    if layer.target is aten.linear.default:
        features = weight.shape[0]
        if shape is None:
            return None, f"the shape of {x.name} is unknown"
        if len(shape) < 2 or not isinstance(shape[1], int) or shape[1] != features:
            return None, f"its channel dim 1 of {_show(shape)} is not the {features} output features of {layer.name}"
        if not all(isinstance(d, int) for d in shape[2:]) or math.prod(shape[2:]) != 1:
            return None, (f"its input {_show(shape)} has dims after the channel dim 1: each of its channels "
                          f"would mix the {features} output features of {layer.name}")
    return layer, ""


def _bn_output_users_ok(bn: torch.fx.Node) -> str:
    """"" when the BatchNorm's output alone is read; else why not (the saved statistics of
    _native_batch_norm_legit_no_training, or the tuple used as a whole)."""
    if bn.target is aten.batch_norm.default:
        return ""
    for user in bn.users:
        if user.target is not operator.getitem:
            return f"its result tuple is read by {user.name}"
        if user.args[1] != 0 and user.users:
            return f"its saved statistics are read ({user.name})"
    return ""


def scale_layer_output(graph: Graph, layer, scale: torch.Tensor, offset: torch.Tensor, stem: str) -> None:
    """Make the conv/linear `layer` compute scale_c · y_c + offset_c per output channel c of y = W·x + b:
    W'_c = scale_c · W_c, b'_c = scale_c · b_c + offset_c (b = 0 when the layer has none)."""
    weight = get_tensor(graph, layer.args[1])
    bias_node = layer.args[2] if len(layer.args) > 2 else None
    bias = get_tensor(graph, bias_node) if bias_node is not None else torch.zeros(weight.shape[0])
    w_node = add_constant(graph, f"{stem}_weight", weight * scale.reshape(-1, *([1] * (weight.dim() - 1))), layer)
    b_node = add_constant(graph, f"{stem}_bias", bias * scale + offset, layer)
    args = list(layer.args) + [None] * max(0, 3 - len(layer.args))
    args[1], args[2] = w_node, b_node
    layer.args = tuple(args)


@register
class FoldBatchNorm(Pass):
    name = "fold-bn"
    preconditions = ("BatchNorm runs in inference mode (running statistics)",)
    tolerance = 1e-4

    def check(self, graph: Graph) -> list[str]:
        return [f"{n.name}: batch_norm in training mode (batch statistics) cannot be folded"
                for n in graph.call_nodes() if n.target in _BATCH_NORMS and _bn_parts(n) is None]

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed, kept = 0, []
        for bn in graph.call_nodes():
            if bn.target not in _BATCH_NORMS or _bn_parts(bn) is None:
                continue
            x, gamma, beta, mean, var, eps = _bn_parts(bn)
            layer, why = _foldable_layer(graph, x)
            why = why or _bn_output_users_ok(bn)
            if not why and not all(_is_constant(n) for n in (gamma, beta, mean, var)):
                why = "its statistics or affine parameters are computed, not constants"
            if why:
                kept.append(f"{bn.name} ({why})")
                continue
            self._fold(graph, layer, x, bn, [get_tensor(graph, n) for n in (gamma, beta, mean, var)], eps)
            changed += 1
        # a BatchNorm after something other than a single-use conv/linear stays (it is a scale and shift)
        self.note = (f"kept {len(kept)} BatchNorm not fed by a single-use conv/linear: {', '.join(kept)}"
                     if kept else "")
        if changed:
            graph.recompile()
        return graph, changed

    @staticmethod
    def _fold(graph: Graph, layer, x, bn, stats, eps: float) -> None:
        gamma, beta, mean, var = stats
        scale = (gamma if gamma is not None else torch.ones_like(var)) / torch.sqrt(var + eps)
        shift = beta if beta is not None else torch.zeros_like(var)
        scale_layer_output(graph, layer, scale, shift - mean * scale, "folded")
        if x is layer and bn.target is aten.batch_norm.default:
            layer.meta = dict(bn.meta, nn_module_stack=layer.meta.get("nn_module_stack", {}))
        if bn.target is aten.batch_norm.default:
            bn.replace_all_uses_with(x)
        else:  # (out, mean, invstd): getitem 0 reads the output, the statistics are unread
            for item in list(bn.users):
                if item.args[1] == 0:
                    item.replace_all_uses_with(x)
                graph.fx.erase_node(item)
        graph.fx.erase_node(bn)
