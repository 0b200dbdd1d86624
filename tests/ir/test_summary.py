"""hwact.ir.summary.float_compute_nodes: the float nodes of a graph, found by one run and remembered until the
graph or its tensors' dtypes change."""

from __future__ import annotations

import torch

from hwact.ir import summary
from hwact.ir.graph import InputSpec, trace
from hwact.ir.summary import float_compute_nodes


class Small(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.fc = torch.nn.Linear(4, 3)

    def forward(self, x):
        return torch.relu(self.fc(x))


def test_float_compute_nodes_runs_once_per_graph_state(monkeypatch):
    graph = trace(Small().eval(), (InputSpec("x", (2, 4)),))
    runs = []
    run = summary._run_float_nodes
    monkeypatch.setattr(summary, "_run_float_nodes", lambda g: runs.append(1) or run(g))
    first = [n.name for n in float_compute_nodes(graph)]
    assert first and [n.name for n in float_compute_nodes(graph)] == first and len(runs) == 1
    relu = next(n for n in graph.fx.nodes if n.op == "call_function" and "relu" in str(n.target))
    with graph.fx.inserting_after(relu):                 # the graph changes: asked again, it runs again
        rounded = graph.fx.call_function(torch.ops.aten.round.default, (relu,))
    relu.replace_all_uses_with(rounded, delete_user_cb=lambda user: user is not rounded)
    graph.module.recompile()
    assert [n.name for n in float_compute_nodes(graph)] == first + [rounded.name] and len(runs) == 2
