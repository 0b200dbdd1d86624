"""Building blocks shared by the zoo models."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

GELU_FORMS = ("module", "functional", "tanh", "erf-formula", "tanh-formula")


class FunctionalGELU(nn.Module):
    """GELU through F.gelu (exact erf form, or the tanh approximation)."""

    def __init__(self, approximate: str = "none"):
        super().__init__()
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(x, approximate=self.approximate)


class ErfFormulaGELU(nn.Module):
    """GELU written out as older BERT code does: 0.5*x*(1+erf(x/sqrt(2)))."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.erf(x / math.sqrt(2.0)))


class TanhFormulaGELU(nn.Module):
    """GELU's tanh approximation written out: 0.5*x*(1+tanh(sqrt(2/pi)*(x+0.044715*x**3)))."""

    def forward(self, x):
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * torch.pow(x, 3))))


def make_gelu(form: str) -> nn.Module:
    if form == "module":
        return nn.GELU()
    if form == "functional":
        return FunctionalGELU("none")
    if form == "tanh":
        return FunctionalGELU("tanh")
    if form == "erf-formula":
        return ErfFormulaGELU()
    if form == "tanh-formula":
        return TanhFormulaGELU()
    raise ValueError(f"unknown GELU form {form!r}; one of {GELU_FORMS}")


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, gelu: str = "module"):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = make_gelu(gelu)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x):
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention written as matmul + softmax (so integer passes see a softmax node).

    `bias` (heads, N, N), when given, is added to the attention logits (Swin's relative position bias
    and shifted-window mask)."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x, bias=None):
        batch, tokens, dim = x.shape
        qkv = self.qkv(x).reshape(batch, tokens, 3, self.heads, dim // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * self.scale) @ k.transpose(-2, -1)
        if bias is not None:
            logits = logits + bias
        attn = logits.softmax(dim=-1)
        out = (attn @ v).transpose(1, 2).reshape(batch, tokens, dim)
        return self.proj(out)
