"""gelu-to-helu: replace every GELU site by HeLU, for fine-tuning after the swap.

    GELU(x)  ->  HeLU_α(x):  forward max(0, x);  backward 1[x > −α]

Same matching as gelu-to-relu (all GELU forms, only/skip globs). The new node is
`hwact.helu(x, α)`, whose forward is exactly ReLU (so outputs equal gelu-to-relu's) and whose gradient
lets slightly negative units keep learning (hysteresis). It exports to ONNX as a plain Relu.

Before:                        After:
    %gelu = aten.gelu(%fc1)        %helu = hwact.helu(%fc1, 0.05)
"""

from __future__ import annotations

import torch

from hwact.errors import InputError
from hwact.ir import helu_ops  # noqa: F401  (registers torch.ops.hwact.helu)
from hwact.passes.base import register
from hwact.passes.gelu_to_relu import GeluToRelu


@register
class GeluToHelu(GeluToRelu):
    name = "gelu-to-helu"
    takes = ("only", "skip", "helu_alpha")

    def __init__(self, only: tuple[str, ...] = (), skip: tuple[str, ...] = (), helu_alpha: float = 0.05):
        super().__init__(only, skip)
        if not helu_alpha >= 0:
            raise InputError(f"--helu-alpha must be >= 0, got {helu_alpha}")
        self.alpha = float(helu_alpha)

    def replacement(self):
        return (torch.ops.hwact.helu.default, self.alpha)
