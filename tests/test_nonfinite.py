"""Non-finite training: NaN/inf hyperparameters are refused, a run whose loss or weights stop being finite
stops with exit 2 and saves nothing, and every JSON file hwact writes is strict JSON."""

import json
import math

import numpy as np
import pytest
import torch

from hwact.errors import InputError
from hwact.report import to_json, write_report
from hwact.train.guard import check_loss, check_weights
from resource_helpers import assert_one_line_error


def strict_loads(text: str):
    def refuse(constant):
        raise ValueError(f"non-standard JSON constant {constant}")

    return json.loads(text, parse_constant=refuse)


@pytest.mark.parametrize("args, message", [
    (["finetune", "zoo:vit-digits", "--data", "digits", "--lr", "inf"], "--lr inf: not a finite number"),
    (["finetune", "zoo:vit-digits", "--data", "digits", "--temperature", "nan"], "--temperature nan: not a finite"),
    (["train-logic", "--data", "digits", "--lr", "inf"], "--lr inf: not a finite number"),
    (["train-logic", "--data", "digits", "--tau", "-inf"], "--tau -inf: not a finite number"),
    (["train-delta", "--penalty", "inf"], "--penalty inf: not a finite number"),
    (["convert", "zoo:cnn-tiny", "--delta-threshold", "nan"], "--delta-threshold nan: not a finite number"),
])
def test_non_finite_hyperparameters_are_refused(cli_process, tmp_path, args, message):
    code, _, stderr = cli_process(*args, "-o", tmp_path / "out")
    assert_one_line_error(code, stderr, message)
    assert list(tmp_path.iterdir()) == []


def test_finetune_that_diverges_stops_and_saves_nothing(cli_process, small_npz, tmp_path):
    out = tmp_path / "tuned"
    code, _, stderr = cli_process("finetune", "zoo:vit-digits", "--data", small_npz, "-o", out, "--lr", "1e30",
                                  "--schedule", "all", "--epochs", "2", "--batch-size", "64", "--no-progress")
    assert_one_line_error(code, stderr, "training diverged at epoch 1 step")
    assert "lower --lr" in stderr and not out.exists()


def test_train_delta_that_diverges_stops_and_saves_nothing(cli, tmp_path):
    code, _, stderr = cli("train-delta", "-o", tmp_path / "kw", "--per-word", "2", "--hidden", "16",
                          "--epochs", "1", "--delta-epochs", "1", "--penalty", "1e38")
    assert_one_line_error(code, stderr, "delta training diverged at epoch 1 step 1 (loss inf)")
    assert "lower --penalty" in stderr and not (tmp_path / "kw").exists()


def test_guards():
    check_loss(1.5, 1, 1, "hint")
    with pytest.raises(InputError, match=r"training diverged at epoch 3 step 7 \(loss nan\)"):
        check_loss(math.nan, 3, 7, "lower --lr")
    module = torch.nn.Linear(2, 2)
    check_weights(module, 1, "hint")
    with torch.no_grad():
        module.bias[0] = math.inf
    with pytest.raises(InputError, match="weight 'bias' holds NaN or infinite values"):
        check_weights(module, 2, "lower --lr")


def test_an_update_that_overflows_float32_is_divergence(cli, tmp_path):
    # Adam's first step is 10 x lr: near 1e38 it overflows float32 inside torch (it used to be exit 1)
    code, _, stderr = cli("train-logic", "--data", "breast-cancer", "--layers", "20,20", "--epochs", "1",
                          "--lr", "3e38", "-o", tmp_path / "lg")
    assert_one_line_error(code, stderr, "training diverged at epoch 1 step 1 (the update overflows float32)")
    assert "lower --lr" in stderr and not (tmp_path / "lg").exists()


def test_reports_are_strict_json(tmp_path, cli):
    assert strict_loads(to_json({"a": math.nan, "b": [math.inf, 1.0], "c": np.float32("nan"), "d": np.int64(3)})) \
        == {"a": None, "b": [None, 1.0], "c": None, "d": 3}
    write_report(tmp_path, {"input": {"path": "m", "format": "zoo", "input_shapes": {}}, "cosine": math.nan})
    assert strict_loads((tmp_path / "report.json").read_text())["cosine"] is None
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "-o", tmp_path / "conv")
    assert code == 0, stderr
    strict_loads((tmp_path / "conv" / "report.json").read_text())
    code, _, stderr = cli("train-logic", "--data", "breast-cancer", "--layers", "20,20", "--epochs", "1",
                          "-o", tmp_path / "lg")
    assert code == 0, stderr
    strict_loads((tmp_path / "lg" / "report.json").read_text())
    code, stdout, stderr = cli("inspect", "zoo:cnn-tiny", "--json")
    assert code == 0, stderr
    strict_loads(stdout)
