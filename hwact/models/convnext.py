"""ConvNeXt (Liu et al. 2022): 7x7 depthwise conv, channels-last LayerNorm, inverted GELU MLP, layer scale."""

from __future__ import annotations

import torch
import torch.nn as nn

from hwact.models.common import make_gelu


class ChannelsFirstLayerNorm(nn.LayerNorm):
    """LayerNorm over C of an NCHW tensor (permute to NHWC, normalize, permute back)."""

    def forward(self, x):
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int, gelu: str = "module"):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = make_gelu(gelu)
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.gamma = nn.Parameter(torch.full((dim,), 1e-1))

    def forward(self, x):
        y = self.norm(self.dwconv(x).permute(0, 2, 3, 1))
        y = self.gamma * self.pwconv2(self.act(self.pwconv1(y)))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXt(nn.Module):
    """Stem, then one `stages.i` Sequential per resolution (downsampling first, then its blocks), so a
    module path such as `stages.2.4.act` names its stage (staged distillation swaps stage by stage)."""

    def __init__(self, in_chans=3, num_classes=1000, dims=(96, 192, 384, 768), depths=(3, 3, 9, 3), gelu="module"):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(in_chans, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0], eps=1e-6))
        stages = []
        for i, (dim, depth) in enumerate(zip(dims, depths)):
            downsample = [ChannelsFirstLayerNorm(dims[i - 1], eps=1e-6), nn.Conv2d(dims[i - 1], dim, 2, stride=2)] if i else []
            stages.append(nn.Sequential(*downsample, *[ConvNeXtBlock(dim, gelu) for _ in range(depth)]))
        self.stages = nn.ModuleList(stages)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x):
        x = self.stem(x)
        for stage in self.stages:
            x = stage(x)
        return self.head(self.norm(x.mean(dim=(2, 3))))
