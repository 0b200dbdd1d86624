"""The one table of which float ops the int8 recipes lower to integer ops, and by which passes.

`hwact inspect` (and the convert report's target support) advises "lower it with --recipe int8-shiftgelu
(<passes>)" for an op listed here and says "no integer lowering exists for this op" for any other;
tests/test_inspect_advice.py converts zoo models and the Hugging Face suite (hwact.hf_suite) with
int8-shiftgelu and checks that no op listed here is left computing in float, that no op still computing
in float is listed, and that every op of the suite the recipe lowers is listed. A pass that learns to
lower a new op adds it here (op names as hwact.ir.graph.op_name prints them).

The value names the passes of the recipe that take the op to integers, in recipe order: "canonicalize +
fold-quant-scales" for an op canonicalize rewrites into one fold-quant-scales lowers (addmm -> linear),
"canonicalize" alone for one it removes (eval dropout, identity casts).

INT8_CONDITIONS says when a listed op is lowered only in some forms (the others stay float islands,
which the integer-only postcondition then names).
"""

from __future__ import annotations

INT8_RECIPE = "int8-shiftgelu"

_LUT_BOUNDS = ("when a hwact op declares the code bounds of its input (a cat, pad or negation in between "
               "leaves them unknown: refused), at most 65536 codes")

INT8_LOWERABLE: dict[str, str] = {
    # fold-quant-scales (hwact/passes/fold_quant_scales.py): layers, ReLU and clamps, embeddings, scalings,
    # products, additions, matmuls, masked fills, zero pads, cat, mean, max pooling and the shape ops that
    # move integer codes unchanged
    "aten.linear.default": "fold-quant-scales",
    "aten.conv2d.default": "fold-quant-scales",
    "aten.relu.default": "fold-quant-scales",
    "aten.relu_.default": "fold-quant-scales",
    "aten.hardtanh.default": "fold-quant-scales",
    "aten.relu6.default": "fold-quant-scales",
    "aten.clamp.default": "fold-quant-scales",
    "aten.embedding.default": "fold-quant-scales",
    "aten.mul.Tensor": "fold-quant-scales",
    "aten.mul.Scalar": "fold-quant-scales",
    "aten.div.Tensor": "fold-quant-scales",
    "aten.div.Scalar": "fold-quant-scales",
    "aten.add.Tensor": "fold-quant-scales",
    "aten.matmul.default": "fold-quant-scales",
    "aten.bmm.default": "fold-quant-scales",
    "aten.where.ScalarOther": "fold-quant-scales",
    "aten.constant_pad_nd.default": "fold-quant-scales",
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
    "aten.t.default": "fold-quant-scales",
    "aten.roll.default": "fold-quant-scales",
    "aten._unsafe_view.default": "fold-quant-scales",
    # canonicalize (hwact/passes/canonicalize.py) removes identities: eval dropout, copies (it also removes
    # casts to the dtype a tensor already has, but a cast is not listed: the same op names a real cast,
    # e.g. token ids to float, where a float path starts that no pass lowers)
    "aten.dropout.default": "canonicalize",
    "aten.dropout_.default": "canonicalize",
    "aten.feature_dropout.default": "canonicalize",
    "aten.alpha_dropout.default": "canonicalize",
    "aten.feature_alpha_dropout.default": "canonicalize",
    "aten.clone.default": "canonicalize",
    "aten.contiguous.default": "canonicalize",
    "aten.alias.default": "canonicalize",
    "aten.detach.default": "canonicalize",
    "aten.detach_.default": "canonicalize",
    "aten.lift_fresh_copy.default": "canonicalize",
    "aten._assert_tensor_metadata.default": "canonicalize",
    # ... and rewrites these into forms the passes after it lower
    "aten.addmm.default": "canonicalize + fold-quant-scales",
    "aten.conv1d.default": "canonicalize + fold-quant-scales",
    "aten.adaptive_avg_pool2d.default": "canonicalize + fold-quant-scales",
    "aten.adaptive_avg_pool1d.default": "canonicalize + fold-quant-scales",
    "aten.avg_pool2d.default": "canonicalize + fold-quant-scales",
    "aten.split.Tensor": "canonicalize + fold-quant-scales",
    "aten.split_with_sizes.default": "canonicalize + fold-quant-scales",
    "aten.pad.default": "canonicalize + fold-quant-scales",
    "aten.erf.default": "canonicalize + shift-gelu",
    "aten.pow.Tensor_Scalar": "canonicalize + shift-gelu",
    # explicit-padding: string padding to numbers (an even "same" kernel gets a zero constant_pad_nd)
    "aten.conv2d.padding": "explicit-padding + fold-quant-scales",
    "aten.conv1d.padding": "explicit-padding + canonicalize + fold-quant-scales",
    # decompose-sdpa: q·kᵀ, scaling, masked fill, softmax, ·v
    "aten.scaled_dot_product_attention.default": "decompose-sdpa + fold-quant-scales + shiftmax",
    # cleanup: computed from constants only, folded offline
    "aten.index.Tensor": "cleanup",
    # folded into the conv/linear before it (then lowered with it)
    "aten.batch_norm.default": "fold-bn",
    "aten._native_batch_norm_legit_no_training.default": "fold-bn",
    # the passes that replace a float island by one integer op
    "aten.gelu.default": "shift-gelu",
    "aten.layer_norm.default": "i-layernorm",
    "aten.softmax.int": "shiftmax",
    "aten._softmax.default": "shiftmax",
    "aten.silu.default": "lut-activations",
    "aten.sigmoid.default": "lut-activations",
    "aten.tanh.default": "lut-activations",
    "aten.hardswish.default": "lut-activations",
    "aten.hardsigmoid.default": "lut-activations",
    "aten.elu.default": "lut-activations",
    "aten.mish.default": "lut-activations",
    "aten.leaky_relu.default": "lut-activations",
    "aten.softplus.default": "lut-activations",
}

INT8_CONDITIONS: dict[str, str] = {
    "aten.linear.default": "with constant weights",
    "aten.conv2d.default": "with constant weights and numeric padding",
    "aten.embedding.default": "with a constant table",
    "aten.mul.Tensor": "of activations, constants or a number (a per-channel layer scale after a conv/linear: "
                       "fold-layer-scale)",
    "aten.mul.Scalar": "by a constant number only",
    "aten.div.Tensor": "by a constant number only",
    "aten.div.Scalar": "by a constant number only",
    "aten.where.ScalarOther": "as where(mask, x, -inf) (a masked fill below -1e9, as decompose-sdpa writes)",
    "aten.constant_pad_nd.default": "with pad value 0",
    "aten.max_pool2d.default": "without dilation or ceil_mode",
    "aten.dropout.default": "in eval mode (train=False: removed)",
    "aten.dropout_.default": "in eval mode (train=False: removed)",
    "aten.feature_dropout.default": "in eval mode (train=False: removed)",
    "aten.alpha_dropout.default": "in eval mode (train=False: removed)",
    "aten.feature_alpha_dropout.default": "in eval mode (train=False: removed)",
    "aten.addmm.default": "with constant weight and bias (becomes a linear)",
    "aten.conv1d.default": "with constant weights (becomes a conv2d)",
    "aten.conv1d.padding": "with constant weights; 'valid', or 'same' with stride 1 (becomes a conv2d)",
    "aten.adaptive_avg_pool2d.default": "to output size 1 (becomes a mean)",
    "aten.adaptive_avg_pool1d.default": "to output size 1 (becomes a mean)",
    "aten.avg_pool2d.default": "with one window over the whole input, no padding, no divisor override "
                               "(becomes a mean)",
    "aten.split.Tensor": "along a dim of known length, its pieces read by getitem only (becomes slices)",
    "aten.split_with_sizes.default": "along a dim of known length, its pieces read by getitem only "
                                     "(becomes slices)",
    "aten.pad.default": "in constant mode with value 0 (becomes constant_pad_nd)",
    "aten.erf.default": "inside a GELU formula 0.5·x·(1+erf(x/√2)) (becomes aten.gelu)",
    "aten.pow.Tensor_Scalar": "inside a GELU formula 0.5·x·(1+tanh(√(2/π)(x+0.044715·x³))) "
                              "(becomes aten.gelu)",
    "aten.conv2d.padding": "with constant weights; 'valid', or 'same' with stride 1",
    "aten.scaled_dot_product_attention.default": "with no mask, a causal or boolean mask, or an additive "
                                                 "mask computed from constants; not enable_gqa with fewer "
                                                 "key/value heads (repeat_interleave stays float)",
    "aten.index.Tensor": "on constants (folded offline: Swin's relative-position bias)",
    "aten.layer_norm.default": "over the last dim only",
    "aten.batch_norm.default": "right after a conv2d (string padding: explicit-padding first) or a linear, "
                               "in inference mode; not after a conv1d",
    "aten._native_batch_norm_legit_no_training.default": "right after a conv2d or a linear",
    "aten.tanh.default": _LUT_BOUNDS + "; inside a GELU formula: canonicalize + shift-gelu",
    **{op: _LUT_BOUNDS for op in ("aten.silu.default", "aten.sigmoid.default", "aten.hardswish.default",
                                  "aten.hardsigmoid.default", "aten.elu.default", "aten.mish.default",
                                  "aten.leaky_relu.default", "aten.softplus.default")},
}

# In-place forms: canonicalize makes op_(x, ...) op(x, ...) (every later reader of x reads the result),
# then the op is lowered as above, under the same condition.
for _op in ("aten.add.Tensor", "aten.mul.Tensor", "aten.mul.Scalar", "aten.div.Tensor", "aten.div.Scalar",
            "aten.hardtanh.default", "aten.relu6.default", "aten.clamp.default", "aten.gelu.default",
            "aten.silu.default", "aten.sigmoid.default", "aten.tanh.default", "aten.hardswish.default",
            "aten.hardsigmoid.default", "aten.elu.default", "aten.mish.default", "aten.leaky_relu.default"):
    _packet, _overload = _op.rsplit(".", 1)
    INT8_LOWERABLE[f"{_packet}_.{_overload}"] = f"canonicalize + {INT8_LOWERABLE[_op]}"
    if _op in INT8_CONDITIONS:
        INT8_CONDITIONS[f"{_packet}_.{_overload}"] = INT8_CONDITIONS[_op]
del _op, _packet, _overload


def lowering_advice(op: str, recipe: str | None = None) -> str:
    """What `hwact inspect` tells a user about a float op that blocks an integer-only target. `recipe`: the
    target's own int8 recipe when it has one (Ethos-U: int8-npu, which lowers the same ops with other
    passes), named instead of int8-shiftgelu and its passes."""
    if op not in INT8_LOWERABLE:
        return "no integer lowering exists for this op"
    condition = INT8_CONDITIONS.get(op)
    how = INT8_LOWERABLE[op] if recipe in (None, INT8_RECIPE) else "the target's default recipe"
    return f"lower it with --recipe {recipe or INT8_RECIPE} ({how}{', ' + condition if condition else ''})"
