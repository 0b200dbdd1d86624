"""The pass manager's Reference: the outputs of its last verification, which the backends read instead of
running the final graph again, only while the graph is still the computation that gave them."""

from __future__ import annotations

import torch

import hwact.backends.onnx as onnx_backend
from hwact.load import load
from hwact.passes import base
from hwact.passes.manager import random_batches, run_verified
from hwact.pipeline import ConvertOptions, convert
from hwact.targets import load_target


def _runs(graph, batches):
    with torch.no_grad():
        return [[graph.module(*batch)] for batch in batches]


def test_reference_is_the_final_graph_outputs_and_lapses_when_the_graph_changes():
    graph = load("zoo:vit-tiny").graph
    batches = random_batches(graph.inputs, 8, 4)
    graph, records, reference = run_verified(graph, ["gelu-to-relu", "calibrate"], {}, batches)
    assert [r.changed > 0 for r in records] == [True, True]
    runs = reference.runs_of(graph, batches)
    fresh = _runs(graph, batches)
    assert len(runs) == len(fresh) == 2
    assert all(torch.equal(a[0], b[0]) for a, b in zip(runs, fresh))

    assert reference.runs_of(graph, list(batches)) is None           # other batches (even equal ones)
    weight = next(graph.module.parameters())
    with torch.no_grad():
        weight.add_(0.0)                                              # written in place: version bumped
    assert reference.runs_of(graph, batches) is None


def test_a_pass_that_changes_the_graph_but_reports_nothing_leaves_no_reference():
    @base.register
    class QuietForTest(base.Pass):
        """Test-only pass: scales a weight in place and claims it changed nothing."""
        name = "quiet-for-test"

        def __call__(self, graph):
            with torch.no_grad():
                next(graph.module.parameters()).mul_(2.0)
            return graph, 0

    try:
        graph = load("zoo:vit-tiny").graph
        batches = random_batches(graph.inputs, 8, 4)
        graph, _, reference = run_verified(graph, ["quiet-for-test"], {}, batches)
        assert reference.runs_of(graph, batches) is None
    finally:
        base._REGISTRY.classes.pop("quiet-for-test")


def test_convert_verifies_onnx_on_the_reference_and_runs_the_graph_when_there_is_none(tmp_path, monkeypatch):
    calls = []
    run_outputs = onnx_backend.run_outputs
    monkeypatch.setattr(onnx_backend, "run_outputs", lambda *args: calls.append(1) or run_outputs(*args))
    loaded = load("zoo:vit-tiny")
    report = convert(loaded, ConvertOptions(recipe="relu"), load_target("cpu"), tmp_path / "a", force=False,
                     log=lambda line: None)
    assert report["onnx"]["ort_max_abs_err"] < 1e-4 and calls == []    # read, not run again

    from hwact.passes import manager
    monkeypatch.setattr(manager.Reference, "runs_of", lambda self, graph, batches: None)
    report = convert(load("zoo:vit-tiny"), ConvertOptions(recipe="relu"), load_target("cpu"), tmp_path / "b",
                     force=False, log=lambda line: None)
    assert report["onnx"]["ort_max_abs_err"] < 1e-4 and calls == [1]
