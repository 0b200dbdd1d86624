"""Issue 14: an integer model.onnx carries no per-node metadata. The exporter's "namespace" strings (the whole
nn.Module class path, repeated on each of the many small nodes an integer graph has) were 44 % of zoo:vit-tiny's
int8-shiftgelu file (488,554 -> 270,776 bytes without them); a float export keeps them (one per node)."""

from __future__ import annotations

import onnx
import pytest


def _metadata_bytes(model) -> tuple[int, int]:
    """(bytes of all per-node metadata keys and values, nodes carrying a "namespace")."""
    nodes = list(model.graph.node) + [n for f in model.functions for n in f.node]
    total = sum(len(p.key) + len(p.value) for n in nodes for p in n.metadata_props)
    return total, sum(any(p.key == "namespace" for p in n.metadata_props) for n in nodes)


@pytest.mark.slow
def test_integer_onnx_carries_no_per_node_metadata(tmp_path, cli):
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "int8-shiftgelu", "-o", tmp_path / "int")
    assert code == 0, stderr
    path = tmp_path / "int" / "model.onnx"
    model = onnx.load(str(path))
    assert len(model.graph.node) > 50  # many small integer nodes
    total, namespaced = _metadata_bytes(model)
    assert namespaced == 0 and total == 0
    assert total < 0.05 * path.stat().st_size


@pytest.mark.slow
def test_float_onnx_keeps_one_module_path_per_node(tmp_path, cli):
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "relu", "-o", tmp_path / "float")
    assert code == 0, stderr
    model = onnx.load(str(tmp_path / "float" / "model.onnx"))
    keys = {p.key for n in model.graph.node for p in n.metadata_props}
    assert keys == {"namespace"}
