"""Shared builders for the delta tests: a random delta MLP, exported, loaded and lowered."""

from __future__ import annotations

import torch

from hwact.ir.graph import from_exported
from hwact.ir.graph import InputSpec
from hwact.nn.delta import FrameMLP
from hwact.passes.lower_delta import LowerDelta


def delta_model(features=24, hidden=(40, 36), classes=8, seed=0, steps=(0.1, 0.05, 0.05)):
    torch.manual_seed(seed)
    model = FrameMLP(features, hidden, classes).to_delta(init_steps=steps).eval()
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, torch.nn.Linear):
                m.bias.uniform_(-0.5, 0.5)
    return model


def delta_graph(model, steps_t=12):
    features = model.features
    example = torch.randn(2, steps_t, features)
    batch = torch.export.Dim("batch", min=1, max=4096)
    program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
    return from_exported(program, [InputSpec("x", (2, steps_t, features))])


def lowered(model=None, threshold=0.0, key_interval=0, **kw):
    graph = delta_graph(model or delta_model(**kw))
    graph, count = LowerDelta(delta_threshold=threshold, key_interval=key_interval)(graph)
    return graph


def walk(batch, steps, features, seed=0, scale=0.3):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, steps, features, generator=g) * scale).cumsum(dim=1)
