"""hwact::helu — HeLU, the hysteresis ReLU (Kimhi et al. 2024).

Forward:  y = max(0, x)                       (exactly ReLU; deploys as ReLU)
Backward: dy/dx = 1 if x > -alpha else 0      (the gradient threshold sits alpha to the left of 0)
Slightly negative pre-activations still receive gradient, which keeps swapped units from dying while
a GELU->ReLU model is fine-tuned. alpha > 0 is the user's margin (--helu-alpha).
"""

from __future__ import annotations

import torch
from onnxscript import opset20 as op

from hwact.ir.ops import hwact_op, onnx_translation


@hwact_op("helu")
def helu(x: torch.Tensor, alpha: float) -> torch.Tensor:
    return torch.relu(x)


@helu.register_fake
def _(x, alpha):
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, alpha = inputs
    ctx.save_for_backward(x)
    ctx.alpha = alpha


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return grad * (x > -ctx.alpha).to(grad.dtype), None


helu.register_autograd(_backward, setup_context=_setup_context)


@onnx_translation(torch.ops.hwact.helu.default)
def helu_onnx(x, alpha: float):
    return op.Relu(x)
