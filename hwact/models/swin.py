"""Swin Transformer (Liu et al. 2021): windowed attention with shifted windows and a relative position
bias, patch merging between stages, GELU MLPs."""

from __future__ import annotations

import torch
import torch.nn as nn

from hwact.models.common import Mlp


def window_partition(x, ws: int):
    """(B, H, W, C) -> (B * H/ws * W/ws, ws*ws, C)."""
    b, h, w, c = x.shape
    x = x.view(b, h // ws, ws, w // ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, ws * ws, c)


def window_reverse(windows, ws: int, h: int, w: int):
    """(B * H/ws * W/ws, ws*ws, C) -> (B, H, W, C)."""
    c = windows.shape[-1]
    x = windows.view(-1, h // ws, w // ws, ws, ws, c).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(-1, h, w, c)


class WindowAttention(nn.Module):
    def __init__(self, dim: int, heads: int, ws: int):
        super().__init__()
        self.heads, self.ws = heads, ws
        self.scale = (dim // heads) ** -0.5
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)
        self.relative_position_bias_table = nn.Parameter(torch.randn((2 * ws - 1) ** 2, heads) * 0.02)
        coords = torch.stack(torch.meshgrid(torch.arange(ws), torch.arange(ws), indexing="ij")).flatten(1)
        rel = (coords[:, :, None] - coords[:, None, :]).permute(1, 2, 0) + (ws - 1)
        self.register_buffer("relative_position_index", rel[..., 0] * (2 * ws - 1) + rel[..., 1], persistent=False)

    def forward(self, x, mask=None):
        bw, n, c = x.shape
        qkv = self.qkv(x).reshape(bw, n, 3, self.heads, c // self.heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        logits = (q * self.scale) @ k.transpose(-2, -1)
        bias = self.relative_position_bias_table[self.relative_position_index.reshape(-1)]
        logits = logits + bias.reshape(n, n, -1).permute(2, 0, 1).unsqueeze(0)
        if mask is not None:
            windows = mask.shape[0]
            logits = logits.view(-1, windows, self.heads, n, n) + mask.unsqueeze(1).unsqueeze(0)
            logits = logits.view(-1, self.heads, n, n)
        attn = logits.softmax(dim=-1)
        return self.proj((attn @ v).transpose(1, 2).reshape(bw, n, c))


class SwinBlock(nn.Module):
    def __init__(self, dim, heads, resolution, ws, shift, mlp_ratio=4.0, gelu="module"):
        super().__init__()
        self.resolution = resolution
        self.ws = min(ws, resolution)
        self.shift = 0 if resolution <= ws else shift
        self.norm1 = nn.LayerNorm(dim)
        self.attn = WindowAttention(dim, heads, self.ws)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), gelu)
        if self.shift:
            self.register_buffer("attn_mask", self._shift_mask(), persistent=False)
        else:
            self.attn_mask = None

    def _shift_mask(self):
        r, ws, s = self.resolution, self.ws, self.shift
        region = torch.zeros(1, r, r, 1)
        label = 0
        for hs in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
            for wsl in (slice(0, -ws), slice(-ws, -s), slice(-s, None)):
                region[:, hs, wsl, :] = label
                label += 1
        windows = window_partition(region, ws).squeeze(-1)
        diff = windows.unsqueeze(1) - windows.unsqueeze(2)
        return torch.where(diff != 0, torch.tensor(-100.0), torch.tensor(0.0))

    def forward(self, x):
        b, n, c = x.shape
        r = self.resolution
        shortcut = x
        x = self.norm1(x).view(b, r, r, c)
        if self.shift:
            x = torch.roll(x, shifts=(-self.shift, -self.shift), dims=(1, 2))
        x = window_reverse(self.attn(window_partition(x, self.ws), self.attn_mask), self.ws, r, r)
        if self.shift:
            x = torch.roll(x, shifts=(self.shift, self.shift), dims=(1, 2))
        x = shortcut + x.reshape(b, n, c)
        return x + self.mlp(self.norm2(x))


class PatchMerging(nn.Module):
    def __init__(self, dim, resolution):
        super().__init__()
        self.resolution = resolution
        self.norm = nn.LayerNorm(4 * dim)
        self.reduction = nn.Linear(4 * dim, 2 * dim, bias=False)

    def forward(self, x):
        b, _, c = x.shape
        r = self.resolution
        x = x.view(b, r, r, c)
        x = torch.cat([x[:, 0::2, 0::2], x[:, 1::2, 0::2], x[:, 0::2, 1::2], x[:, 1::2, 1::2]], dim=-1)
        return self.reduction(self.norm(x.view(b, -1, 4 * c)))


class Swin(nn.Module):
    def __init__(self, img_size=224, patch_size=4, in_chans=3, num_classes=1000, dim=96,
                 depths=(2, 2, 6, 2), heads=(3, 6, 12, 24), window=7, gelu="module"):
        super().__init__()
        self.patch_embed = nn.Conv2d(in_chans, dim, patch_size, stride=patch_size)
        self.embed_norm = nn.LayerNorm(dim)
        resolution = img_size // patch_size
        stages = []
        for i, (depth, nheads) in enumerate(zip(depths, heads)):
            blocks = [SwinBlock(dim, nheads, resolution, window, 0 if j % 2 == 0 else window // 2, gelu=gelu)
                      for j in range(depth)]
            if i < len(depths) - 1:
                blocks.append(PatchMerging(dim, resolution))
                dim, resolution = dim * 2, resolution // 2
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed_norm(self.patch_embed(x).flatten(2).transpose(1, 2))
        x = self.norm(self.stages(x))
        return self.head(x.mean(dim=1))
