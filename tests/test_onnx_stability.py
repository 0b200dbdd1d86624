"""The model.onnx that `hwact convert` writes stays byte-identical: its sha256 for zoo models x recipes equals
the one recorded in tests/data/onnx_hashes.json (recorded before issue 13, by scripts/onnx_hashes.py; the int8
hashes of vit-tiny and cnn-tiny again on 2026-12-05, when integer exports began to store each weight as its
uint8 operand and to read shift_exp from a table; the float hashes did not move)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from onnx_hashes import RECIPES, onnx_hash  # noqa: E402

RECORDED = json.loads((Path(__file__).parent / "data" / "onnx_hashes.json").read_text())


@pytest.mark.slow
@pytest.mark.parametrize("recipe", RECIPES)
@pytest.mark.parametrize("model", ["vit-tiny", "cnn-tiny"])
def test_converted_onnx_is_byte_identical(model, recipe):
    assert onnx_hash(model, recipe) == RECORDED[f"{model} {recipe}"], (
        f"zoo:{model} --recipe {recipe} writes a different model.onnx: find the cause, or explain the difference "
        "and record the new hashes with scripts/onnx_hashes.py")
