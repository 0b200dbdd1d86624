"""Built-in model zoo: random weights (seeded), no downloads; each family at a tiny size for tests and
a realistic size. `build(name, **overrides)` returns (module, input specs)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch

from hwact.errors import InputError
from hwact.ir.graph import InputSpec
from hwact.models.bert import Bert
from hwact.models.cnn import ResNet, SmallCNN
from hwact.models.convnext import ConvNeXt
from hwact.models.swin import Swin
from hwact.models.vit import ViT


@dataclass(frozen=True)
class ZooEntry:
    factory: Callable[..., torch.nn.Module]
    kwargs: dict
    input_shape: tuple[int, ...]
    input_dtype: torch.dtype = torch.float32
    input_high: int | None = None  # integer inputs are drawn from [0, input_high)
    description: str = ""
    extra: dict = field(default_factory=dict)


ZOO: dict[str, ZooEntry] = {
    "vit-tiny": ZooEntry(ViT, dict(img_size=32, patch_size=8, num_classes=10, dim=64, depth=2, heads=2),
                         (1, 3, 32, 32), description="ViT, 2 blocks, dim 64, 32x32 input"),
    "vit-digits": ZooEntry(ViT, dict(img_size=8, patch_size=2, in_chans=1, num_classes=10, dim=64, depth=4,
                                     heads=4, mlp_ratio=2.0),
                           (1, 1, 8, 8), description="ViT for scikit-learn digits (8x8 grey, 10 classes), 4 blocks"),
    "vit-s16": ZooEntry(ViT, dict(img_size=224, patch_size=16, num_classes=1000, dim=384, depth=12, heads=6),
                        (1, 3, 224, 224), description="ViT-S/16 at 224 (~22M params)"),
    "swin-tiny": ZooEntry(Swin, dict(img_size=32, patch_size=2, num_classes=10, dim=16, depths=(2, 2),
                                     heads=(1, 2), window=4),
                          (1, 3, 32, 32), description="Swin, 2 stages, shifted 4x4 windows, 32x32 input"),
    "swin-t": ZooEntry(Swin, dict(), (1, 3, 224, 224), description="Swin-T at 224 (~28M params)"),
    "convnext-tiny": ZooEntry(ConvNeXt, dict(num_classes=10, dims=(16, 32), depths=(1, 1)),
                              (1, 3, 32, 32), description="ConvNeXt, 2 stages, 32x32 input"),
    "convnext-t": ZooEntry(ConvNeXt, dict(), (1, 3, 224, 224), description="ConvNeXt-T at 224 (~29M params)"),
    "bert-tiny": ZooEntry(Bert, dict(vocab=1000, max_len=64, dim=64, depth=2, heads=2, hidden=128),
                          (1, 16), torch.int64, 1000, description="BERT-style encoder, 2 layers, tanh GELU, 16 tokens"),
    "bert-base": ZooEntry(Bert, dict(), (1, 128), torch.int64, 30522,
                          description="BERT-base encoder (~110M params), tanh GELU, 128 tokens"),
    "cnn-tiny": ZooEntry(SmallCNN, dict(), (1, 3, 32, 32), description="3 conv-BN-ReLU layers + linear-BN head"),
    "resnet18": ZooEntry(ResNet, dict(), (1, 3, 224, 224), description="ResNet-18 at 224 (~11.7M params)"),
}


def names() -> list[str]:
    return list(ZOO)


def build(name: str, seed: int = 0, **overrides) -> tuple[torch.nn.Module, list[InputSpec]]:
    """The zoo model `name` (eval mode, weights from `seed`) and its input specs."""
    if name not in ZOO:
        raise InputError(f"unknown architecture '{name}'", hint="known: " + ", ".join(ZOO))
    entry = ZOO[name]
    torch.manual_seed(seed)
    module = entry.factory(**{**entry.kwargs, **overrides}).eval()
    name_of_input = "input_ids" if entry.input_dtype == torch.int64 else "x"
    return module, [InputSpec(name_of_input, entry.input_shape, entry.input_dtype, entry.input_high)]
