"""Vision Transformer (Dosovitskiy et al.): patch embedding, pre-norm MHSA + GELU MLP blocks, CLS head."""

from __future__ import annotations

import torch
import torch.nn as nn

from hwact.models.common import Attention, Mlp


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, mlp_ratio: float, gelu: str):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu)

    def forward(self, x):
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class ViT(nn.Module):
    def __init__(self, img_size=224, patch_size=16, in_chans=3, num_classes=1000, dim=384, depth=12,
                 heads=6, mlp_ratio=4.0, gelu="module"):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        tokens = (img_size // patch_size) ** 2
        self.cls_token = nn.Parameter(torch.randn(1, 1, dim) * 0.02)
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[Block(dim, heads, mlp_ratio, gelu) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])
