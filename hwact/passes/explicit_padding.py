"""explicit-padding: rewrite a convolution with string padding ("valid" / "same") to the integer-padding
overload, so that passes and backends that read `padding` as integers (fold-bn, CLE, the ONNX and integer
lowerings) see it.

For a conv with kernel k_i, dilation d_i and stride s_i along spatial dim i (aten.conv{1,2,3}d.padding):

    "valid"   no padding:                  padding_i = 0
    "same"    (stride 1 only, as PyTorch)  total_i = d_i·(k_i − 1), left_i = ⌊total_i / 2⌋,
              right_i = total_i − left_i   (the output keeps the input's size)

When left_i = right_i for every i (odd kernel, or an even dilation), "same" is the integer padding left_i
per side. Otherwise right_i = left_i + 1 along some dims: one zero row/column is appended at the end of
those dims with aten.constant_pad_nd, and the conv pads left_i per side. This is the very computation
ATen's own "same" convolution performs (Convolution.cpp, _convolution_same: constant_pad_nd by
right − left, then a symmetric convolution), so the result is bit-identical: tolerance 0.

Before:                                                   After:
    %c = aten.conv2d.padding(%x, %w, %b, [1, 1], "same")      %c = aten.conv2d.default(%x, %w, %b, [1, 1], [1, 1])
         (3x3 kernel)
    %c = aten.conv2d.padding(%x, %w, %b, [1, 1], "same")      %p = aten.constant_pad_nd(%x, [0, 1, 0, 1], 0.0)
         (2x2 kernel)                                         %c = aten.conv2d.default(%p, %w, %b, [1, 1], [0, 0])
    %c = aten.conv2d.padding(%x, %w, None, [2, 2], "valid")   %c = aten.conv2d.default(%x, %w, None, [2, 2], [0, 0])

A "same" conv with a stride other than 1 (PyTorch refuses to run it) or whose kernel size is unknown is
left as it is and named in the pass's note.
"""

from __future__ import annotations

import torch
import torch.fx

from hwact.ir.graph import Graph
from hwact.ir.params import get_tensor
from hwact.passes.base import Pass, register

aten = torch.ops.aten
# string-padding overload -> integer-padding overload
_EXPLICIT = {
    aten.conv1d.padding: aten.conv1d.default,
    aten.conv2d.padding: aten.conv2d.default,
    aten.conv3d.padding: aten.conv3d.default,
}
_ARGS = ("input", "weight", "bias", "stride", "padding", "dilation", "groups")
_DEFAULTS = {"bias": None, "stride": 1, "padding": "valid", "dilation": 1, "groups": 1}


def _arguments(node: torch.fx.Node) -> dict:
    """The conv's arguments by schema name, defaults filled in."""
    values = dict(_DEFAULTS)
    values.update(zip(_ARGS, node.args))
    values.update(node.kwargs)
    return values


def _per_dim(value, dims: int) -> list:
    """An int or a one-element list broadcast to `dims` entries (the schema's SymInt[N] rule)."""
    if isinstance(value, (list, tuple)):
        return list(value) * dims if len(value) == 1 else list(value)
    return [value] * dims


def _kernel(graph: Graph, weight) -> tuple[int, ...] | None:
    """Spatial kernel size of the conv weight (a constant, or a computed value with a traced shape)."""
    tensor = get_tensor(graph, weight) if isinstance(weight, torch.fx.Node) and weight.op == "get_attr" else None
    if tensor is None and isinstance(weight, torch.fx.Node):
        tensor = weight.meta.get("val")
    if not isinstance(tensor, torch.Tensor) or not all(isinstance(k, int) for k in tensor.shape[2:]):
        return None
    return tuple(int(k) for k in tensor.shape[2:])


def explicit_padding(padding: str, kernel: tuple[int, ...], stride: list, dilation: list) \
        -> tuple[list[int], list[int]] | None:
    """(symmetric padding per spatial dim, extra zeros at the end of each spatial dim) for a string
    padding, or None when it has no integer form (an unknown mode, or "same" with a stride other than 1)."""
    dims = len(kernel)
    if padding == "valid":
        return [0] * dims, [0] * dims
    if padding != "same" or any(s != 1 for s in stride):
        return None
    total = [d * (k - 1) for d, k in zip(dilation, kernel)]
    left = [t // 2 for t in total]
    return left, [t - 2 * l for t, l in zip(total, left)]  # right − left: 0 or 1


@register
class ExplicitPadding(Pass):
    name = "explicit-padding"
    tolerance = 0.0

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        changed, kept = 0, []
        for conv in graph.call_nodes():
            if conv.target not in _EXPLICIT:
                continue
            if self._rewrite(graph, conv):
                changed += 1
            else:
                kept.append(conv.name)
        self.note = (f"kept {len(kept)} conv with a string padding that has no integer form: {', '.join(kept)}"
                     if kept else "")
        if changed:
            graph.recompile()
        return graph, changed

    @staticmethod
    def _rewrite(graph: Graph, conv: torch.fx.Node) -> bool:
        args = _arguments(conv)
        kernel = _kernel(graph, args["weight"])
        if kernel is None:
            return False
        dims = len(kernel)
        stride, dilation = _per_dim(args["stride"], dims), _per_dim(args["dilation"], dims)
        explicit = explicit_padding(args["padding"], kernel, stride, dilation)
        if explicit is None:
            return False
        padding, extra = explicit
        x = args["input"]
        if any(extra):
            # constant_pad_nd lists (begin, end) pairs from the last dim to the first
            pad = [amount for e in reversed(extra) for amount in (0, e)]
            with graph.fx.inserting_before(conv):
                x = graph.fx.call_function(aten.constant_pad_nd.default, (x, pad, 0.0))
            x.meta["nn_module_stack"] = conv.meta.get("nn_module_stack", {})
            value = args["input"].meta.get("val") if isinstance(args["input"], torch.fx.Node) else None
            if isinstance(value, torch.Tensor):
                x.meta["val"] = aten.constant_pad_nd.default(value, pad, 0.0)
        conv.target = _EXPLICIT[conv.target]
        conv.args = (x, args["weight"], args["bias"], stride, padding, dilation, args["groups"])
        conv.kwargs = {}
        return True
