"""HeLU as an nn.Module (forward ReLU, hysteresis backward); see hwact/ir/helu_ops.py for the math."""

from __future__ import annotations

import torch

from hwact.ir import helu_ops  # noqa: F401  (registers torch.ops.hwact.helu)


class HeLU(torch.nn.Module):
    def __init__(self, alpha: float = 0.05):
        super().__init__()
        if alpha < 0:
            raise ValueError("HeLU alpha must be >= 0")
        self.alpha = float(alpha)

    def forward(self, x):
        return torch.ops.hwact.helu(x, self.alpha)

    def extra_repr(self) -> str:
        return f"alpha={self.alpha}"
