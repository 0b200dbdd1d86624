"""sha256 of model.onnx for zoo models x recipes, as `hwact convert` writes it (target cpu, random
calibration). Used to prove a refactor changes no output byte: `python scripts/onnx_hashes.py
[--models a,b] > hashes.json`, then compare with the table recorded in tests/data/onnx_hashes.json (which
tests/test_onnx_stability.py checks for vit-tiny and cnn-tiny, importing `onnx_hash` from here)."""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import tempfile
from pathlib import Path

RECIPES = ("relu", "int8-relu", "int8-shiftgelu")


def onnx_hash(model: str, recipe: str) -> str:
    """'sha256:<hex>' of the converted model.onnx, or 'error: <message>' when the convert refuses."""
    from click.testing import CliRunner

    from hwact.cli import main

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        result = CliRunner().invoke(main, ["convert", f"zoo:{model}", "--recipe", recipe, "-o", str(out)])
        if result.exit_code != 0:
            return "error: " + (result.stderr or str(result.exception)).strip().splitlines()[-1][:200]
        return "sha256:" + hashlib.sha256((out / "model.onnx").read_bytes()).hexdigest()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--models", default="vit-tiny,vit-digits,swin-tiny,convnext-tiny,bert-tiny,cnn-tiny")
    args = parser.parse_args()
    table = {}
    for model in args.models.split(","):
        for recipe in RECIPES:
            table[f"{model} {recipe}"] = onnx_hash(model, recipe)
            print(f"{model} {recipe}: {table[f'{model} {recipe}']}", file=sys.stderr)
    print(json.dumps(table, indent=1))


if __name__ == "__main__":
    main()
