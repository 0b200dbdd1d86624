"""gelu-to-relu: replace every GELU site by ReLU.

    GELU(x) = x·Φ(x)  ->  ReLU(x) = max(0, x)

Matched forms: aten.gelu (erf and tanh-approximate, i.e. nn.GELU / F.gelu) and the hand-written
formulas 0.5·x·(1+erf(x/√2)) and 0.5·x·(1+tanh(√(2/π)·(x+0.044715·x³))) (see hwact.ir.activations).
The swap is lossy by design (|GELU(x) − ReLU(x)| ≤ 0.17, largest near x ≈ −0.75); recover accuracy with
`hwact finetune`. ReLU is positively homogeneous, which is what CLE and scale folding need.

Before:                                   After:
    %fc1 = aten.linear(%x, %w1, %b1)          %fc1 = aten.linear(%x, %w1, %b1)
    %gelu = aten.gelu(%fc1)                   %relu = aten.relu(%fc1)
    %fc2 = aten.linear(%gelu, %w2, %b2)       %fc2 = aten.linear(%relu, %w2, %b2)
or, for a formula site, the div/erf/add/mul chain collapses to one aten.relu.

Options: only / skip — glob patterns on module paths (e.g. 'blocks.1*') choosing the sites.
"""

from __future__ import annotations

import torch

from hwact.ir import activations
from hwact.ir.graph import Graph
from hwact.passes.base import Pass, register


@register
class GeluToRelu(Pass):
    name = "gelu-to-relu"
    takes = ("only", "skip")
    preconditions = ()

    def __init__(self, only: tuple[str, ...] = (), skip: tuple[str, ...] = ()):
        self.only, self.skip = tuple(only), tuple(skip)

    def replacement(self):
        return (torch.ops.aten.relu.default,)

    def __call__(self, graph: Graph) -> tuple[Graph, int]:
        sites = activations.select(activations.gelu_sites(graph), self.only, self.skip)
        for site in sites:
            activations.replace_site(graph, site, *self.replacement())
        if sites:
            graph.recompile()
        return graph, len(sites)
