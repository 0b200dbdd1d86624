"""The one table of which float ops the int8 recipes lower to integer ops, and by which pass.

`hwact inspect` advises "lower it with --recipe int8-shiftgelu (<pass>)" for an op listed here and says
"no integer lowering exists for this op" for any other; tests/test_inspect_advice.py converts a zoo model
with int8-shiftgelu and checks that no op listed here is left computing in float. A pass that learns to
lower a new op adds it here (op names as hwact.ir.graph.op_name prints them).

INT8_CONDITIONS says when a listed op is lowered only in some forms (the others stay float islands,
which the integer-only postcondition then names).
"""

from __future__ import annotations

INT8_RECIPE = "int8-shiftgelu"

INT8_LOWERABLE: dict[str, str] = {
    # fold-quant-scales (hwact/passes/fold_quant_scales.py): layers, ReLU, scalings, additions, matmuls,
    # cat, mean, max pooling and the shape ops that move integer codes unchanged
    "aten.linear.default": "fold-quant-scales",
    "aten.conv2d.default": "fold-quant-scales",
    "aten.relu.default": "fold-quant-scales",
    "aten.relu_.default": "fold-quant-scales",
    "aten.mul.Tensor": "fold-quant-scales",
    "aten.mul.Scalar": "fold-quant-scales",
    "aten.div.Tensor": "fold-quant-scales",
    "aten.div.Scalar": "fold-quant-scales",
    "aten.add.Tensor": "fold-quant-scales",
    "aten.matmul.default": "fold-quant-scales",
    "aten.bmm.default": "fold-quant-scales",
    "aten.cat.default": "fold-quant-scales",
    "aten.mean.dim": "fold-quant-scales",
    "aten.max_pool2d.default": "fold-quant-scales",
    "aten.reshape.default": "fold-quant-scales",
    "aten.view.default": "fold-quant-scales",
    "aten.permute.default": "fold-quant-scales",
    "aten.transpose.int": "fold-quant-scales",
    "aten.select.int": "fold-quant-scales",
    "aten.slice.Tensor": "fold-quant-scales",
    "aten.flatten.using_ints": "fold-quant-scales",
    "aten.expand.default": "fold-quant-scales",
    "aten.unsqueeze.default": "fold-quant-scales",
    "aten.squeeze.dim": "fold-quant-scales",
    "aten.squeeze.dims": "fold-quant-scales",
    "aten.squeeze.default": "fold-quant-scales",
    "aten.contiguous.default": "fold-quant-scales",
    "aten.clone.default": "fold-quant-scales",
    "aten.t.default": "fold-quant-scales",
    "aten.roll.default": "fold-quant-scales",
    "aten._unsafe_view.default": "fold-quant-scales",
    "aten.alias.default": "fold-quant-scales",
    "aten.detach.default": "fold-quant-scales",
    # folded into the conv/linear before it (then lowered with it)
    "aten.batch_norm.default": "fold-bn",
    "aten._native_batch_norm_legit_no_training.default": "fold-bn",
    # the passes that replace a float island by one integer op
    "aten.gelu.default": "shift-gelu",
    "aten.layer_norm.default": "i-layernorm",
    "aten.softmax.int": "shiftmax",
    "aten._softmax.default": "shiftmax",
}

INT8_CONDITIONS: dict[str, str] = {
    "aten.linear.default": "with constant weights",
    "aten.conv2d.default": "with constant weights and numeric padding",
    "aten.mul.Tensor": "by a constant number only, or a per-channel layer scale after a conv/linear "
                       "(fold-layer-scale)",
    "aten.mul.Scalar": "by a constant number only",
    "aten.div.Tensor": "by a constant number only",
    "aten.div.Scalar": "by a constant number only",
    "aten.max_pool2d.default": "without dilation or ceil_mode",
    "aten.layer_norm.default": "over the last dim only",
    "aten.batch_norm.default": "right after a conv or linear, in inference mode",
    "aten._native_batch_norm_legit_no_training.default": "right after a conv or linear",
}


def lowering_advice(op: str) -> str:
    """What `hwact inspect` tells a user about a float op that blocks an integer-only target."""
    if op not in INT8_LOWERABLE:
        return "no integer lowering exists for this op"
    condition = INT8_CONDITIONS.get(op)
    return f"lower it with --recipe {INT8_RECIPE} ({INT8_LOWERABLE[op]}{', ' + condition if condition else ''})"
