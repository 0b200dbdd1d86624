"""hwact convert: report.json fields and consistency, ONNX agreement, determinism, atomic output."""

import hashlib
import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from hwact import models

REQUIRED = ["input", "passes", "ops_before", "ops_after", "activations_before", "activations_after",
            "artifacts", "versions"]


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    from click.testing import CliRunner

    from hwact.cli import main

    root = tmp_path_factory.mktemp("convert")
    module, _ = models.build("swin-tiny")
    ckpt = root / "swin.pt2"
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(module, (torch.randn(2, 3, 32, 32),), dynamic_shapes=({0: batch},)), ckpt)
    outs = []
    for name in ("a", "b"):
        result = CliRunner().invoke(main, ["convert", str(ckpt), "--passes", "gelu-to-relu,fold-bn,cleanup",
                                           "-o", str(root / name)])
        assert result.exit_code == 0, result.output
        outs.append(root / name)
    return ckpt, outs, result.output


def test_report_has_the_fields_and_consistent_numbers(converted):
    ckpt, (out, _), stdout = converted
    report = json.loads((out / "report.json").read_text())
    for key in REQUIRED:
        assert key in report
    assert report["input"]["sha256"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()
    assert report["input"]["format"] == "pt2" and report["input"]["input_shapes"] == {"x": "2x3x32x32"}
    assert [p["name"] for p in report["passes"]] == ["gelu-to-relu", "fold-bn", "cleanup"]
    swap = report["passes"][0]
    assert swap["changed"] == 4 == report["ops_before"]["aten.gelu.default"]
    assert "aten.gelu.default" not in report["ops_after"]
    assert report["ops_after"]["aten.relu.default"] == 4
    assert swap["max_abs_err"] > 0 and 0 < swap["cosine"] < 1 and 0 <= swap["top1_agreement"] <= 1
    assert swap["mean_abs_err"] <= swap["max_abs_err"]
    assert report["passes"][1]["changed"] == 0 and "no change" in report["passes"][1]["note"]
    assert [s["form"] for s in report["activations_before"]] == ["erf"] * 4
    assert [s["form"] for s in report["activations_after"]] == ["relu"] * 4
    assert sorted(report["artifacts"]) == ["model.onnx", "report.json", "report.md"]
    assert all((out / a).exists() for a in report["artifacts"])
    assert report["onnx"]["ort_max_abs_err"] < 1e-4
    assert "torch" in report["versions"] and "onnxruntime" in report["versions"]
    md = (out / "report.md").read_text()
    assert "| gelu-to-relu | 4 |" in md and "aten.gelu.default | 4 | 0 |" in md
    assert "gelu-to-relu" in stdout and "changed    4" in stdout


def test_onnx_matches_torch_and_is_deterministic(converted):
    ckpt, (a, b), _ = converted
    assert (a / "model.onnx").read_bytes() == (b / "model.onnx").read_bytes()
    model = onnx.load(str(a / "model.onnx"))
    onnx.checker.check_model(model)
    assert model.opset_import[0].version >= 20
    assert not list(a.glob("*.data"))  # one self-contained file
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # dynamic batch
    from hwact.load import load
    from hwact.passes.base import make_pass

    graph = load(str(ckpt)).graph
    for name in ("gelu-to-relu", "fold-bn", "cleanup"):
        graph, _ = make_pass(name, {})(graph)
    x = torch.randn(5, 3, 32, 32)
    session = ort.InferenceSession(str(a / "model.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    np.testing.assert_allclose(got, graph(x).numpy(), atol=1e-5)


def test_existing_outdir_is_kept_without_force(converted, cli):
    _, (out, _), _ = converted
    before = (out / "report.json").read_text()
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "-o", out)
    assert code == 2 and "already exists" in stderr and "--force" in stderr
    assert (out / "report.json").read_text() == before
    code, _, _ = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "-o", out, "--force")
    assert code == 0 and json.loads((out / "report.json").read_text())["input"]["path"] == "zoo:vit-tiny"


def test_failing_convert_leaves_nothing(tmp_path, cli):
    out = tmp_path / "out"
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--passes", "gelu-to-relu,no-such-pass", "-o", out)
    assert code == 2 and "unknown pass 'no-such-pass'" in stderr
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--target", "nowhere", "-o", out)
    assert code == 2 and "unknown target 'nowhere'" in stderr
    assert list(tmp_path.iterdir()) == []


def test_calibration_npz_and_labels(tmp_path, cli):
    x = np.random.default_rng(0).standard_normal((24, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, y=np.arange(24) % 10)
    code, stdout, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--calib", tmp_path / "calib.npz",
                               "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert 0 <= report["accuracy"]["before"] <= 1 and 0 <= report["accuracy"]["after"] <= 1
    np.savez(tmp_path / "bad.npz", images=x)
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--calib", tmp_path / "bad.npz",
                          "-o", tmp_path / "out2")
    assert code == 2 and "no array named 'x'" in stderr
    np.savez(tmp_path / "shape.npz", x=x[:, :, :16])
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--calib", tmp_path / "shape.npz",
                          "-o", tmp_path / "out2")
    assert code == 2 and "the model expects (N, 3, 32, 32)" in stderr
    assert not (tmp_path / "out2").exists()


def test_non_deployable_target_is_reported_per_op(tmp_path, cli):
    code, stdout, _ = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--target", "npu-int8", "-o", tmp_path / "o")
    assert code == 0
    support = json.loads((tmp_path / "o" / "report.json").read_text())["target_support"]
    assert support["deployable"] is False
    assert {"aten.layer_norm.default", "aten.softmax.int", "aten.linear.default"} <= set(support["not_native"])
    assert support["not_native"]["aten.softmax.int"]["count"] == 2
    assert "shiftmax" in support["not_native"]["aten.softmax.int"]["reason"]
    # the NPU has an integer datapath for linear and relu, but this graph still feeds them float32
    assert "no float units" in support["not_native"]["aten.linear.default"]["reason"]
    assert "no float units" in support["not_native"]["aten.relu.default"]["reason"]
    assert "aten.linear.default" not in support["native"]
    assert "not yet deployable on npu-int8" in stdout


def test_integer_recipe_makes_vit_deployable_on_the_npu_and_bit_exact(tmp_path, cli):
    x = np.random.default_rng(1).standard_normal((16, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, y=np.arange(16) % 10)
    code, stdout, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "int8-shiftgelu", "--target", "npu-int8",
                               "--calib", tmp_path / "calib.npz", "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["postconditions"] == ["integer-only"] and report["backends"] == ["onnx"]
    assert report["integer"]["float_nodes"] == []
    assert report["onnx"]["bit_exact"] is True and report["onnx"]["ort_max_abs_err"] == 0.0
    assert report["target_support"]["deployable"] is True
    assert len(report["integer"]["layers"]) > 0 and len(report["integer"]["nonlinear"]) > 0
    assert "accuracy" in report and 0 <= report["accuracy"]["after"] <= 1
    model = onnx.load(tmp_path / "out" / "model.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"MatMulInteger", "ConvInteger"} <= ops and "Erf" not in ops and "Softmax" not in ops
    assert "Integer lowering: integer-only" in (tmp_path / "out" / "report.md").read_text()
    np.savez(tmp_path / "nan.npz", x=np.full_like(x, np.nan))
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "int8-shiftgelu", "--calib", tmp_path / "nan.npz",
                          "-o", tmp_path / "out2")
    assert code == 2 and len(stderr.strip().splitlines()) == 1 and "holds NaN or infinite values" in stderr
    assert not (tmp_path / "out2").exists()


@pytest.mark.parametrize("model,recipe", [("swin-tiny", "int8-shiftgelu"), ("swin-tiny", "int8-relu"),
                                          ("convnext-tiny", "int8-relu")])
def test_swin_and_convnext_lower_integer_only(tmp_path, cli, model, recipe):
    # Swin: cleanup folds the relative-position bias (a table indexed by a constant) before quantization;
    # ConvNeXt: fold-layer-scale removes the float layer-scale multiply
    code, _, stderr = cli("convert", f"zoo:{model}", "--recipe", recipe, "--target", "npu-int8", "-o", tmp_path / "o")
    assert code == 0, stderr
    report = json.loads((tmp_path / "o" / "report.json").read_text())
    assert report["integer"]["float_nodes"] == [] and report["onnx"]["bit_exact"] is True
    assert report["target_support"]["deployable"] is True
    assert "aten.index.Tensor" not in report["ops_after"] and "aten.mul.Tensor" not in report["ops_after"]


def test_calibration_data_the_model_cannot_take_is_exit_2(tmp_path, cli):
    np.savez(tmp_path / "nan.npz", x=np.full((4, 3, 32, 32), np.nan, np.float32))
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "--calib", tmp_path / "nan.npz",
                          "-o", tmp_path / "o1")
    assert code == 2 and "holds NaN or infinite values" in stderr and not (tmp_path / "o1").exists()
    np.savez(tmp_path / "ids.npz", input_ids=np.full((4, 16), 5000, np.int64))   # beyond bert-tiny's vocabulary
    code, _, stderr = cli("convert", "zoo:bert-tiny", "--passes", "gelu-to-relu", "--calib", tmp_path / "ids.npz",
                          "-o", tmp_path / "o2")
    assert code == 2 and "rejects the calibration inputs" in stderr and not (tmp_path / "o2").exists()
    x = np.zeros((8, 3, 32, 32), np.float32)
    for labels, message in [(np.arange(4), "expected one integer class per sample, shape (8,)"),
                            (np.full(8, 10), "labels 'y' span 10..10")]:
        np.savez(tmp_path / "y.npz", x=x, y=labels)
        code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "fold-bn", "--calib", tmp_path / "y.npz",
                              "-o", tmp_path / "o3")
        assert code == 2 and message in stderr and not (tmp_path / "o3").exists(), stderr


def test_calib_method_without_calibrate_is_refused(tmp_path, cli):
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--recipe", "relu", "--calib-method", "mse", "-o", tmp_path / "o")
    assert code == 2 and "does not run" in stderr and not (tmp_path / "o").exists()


def test_static_batch_onnx_benches_only_at_its_batch(tmp_path, cli):
    module, _ = models.build("cnn-tiny")
    torch.export.save(torch.export.export(module, (torch.randn(2, 3, 32, 32),)), tmp_path / "static.pt2")
    code, _, stderr = cli("convert", tmp_path / "static.pt2", "--recipe", "fold-bn", "-o", tmp_path / "o")
    assert code == 0, stderr
    assert json.loads((tmp_path / "o" / "report.json").read_text())["onnx"]["batch"] == 2
    code, _, stderr = cli("bench", tmp_path / "o", "--iterations", "2")
    assert code == 2 and "fixed batch of 2" in stderr and "--batch 2" in stderr
    code, stdout, stderr = cli("bench", tmp_path / "o", "--iterations", "2", "--batch", "2", "--json")
    assert code == 0, stderr


def test_a_target_defined_by_a_toml_file_alone(tmp_path, cli):
    """Adding a target is one TOML file: its default recipe and backend chain drive the convert."""
    (tmp_path / "edge-relu.toml").write_text('''
name = "edge-relu"
kind = "cpu"
description = "test target: float models get GELU -> ReLU by default, exported to ONNX"
numeric_formats = ["float32"]

[deploy.tensor]
recipe = "relu"
backends = ["onnx"]

[[rule]]
ops = ["aten.*"]
native = true
reason = "every ATen op"
''')
    code, stdout, stderr = cli("convert", "zoo:vit-tiny", "--target", tmp_path / "edge-relu.toml", "-o", tmp_path / "out")
    assert code == 0, stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["target"] == "edge-relu" and report["backends"] == ["onnx"]
    assert [p["name"] for p in report["passes"]] == ["gelu-to-relu", "fold-bn", "cleanup"]
    assert report["passes"][0]["changed"] > 0 and report["target_support"]["deployable"] is True
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--target", tmp_path / "edge-relu.toml", "--recipe", "none",
                          "-o", tmp_path / "plain")
    assert code == 0 and json.loads((tmp_path / "plain" / "report.json").read_text())["passes"] == []
    (tmp_path / "broken.toml").write_text('name = "broken"\n[deploy.tensor]\nrecipe = "relu"\n')
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--target", tmp_path / "broken.toml", "-o", tmp_path / "b")
    assert code == 2 and "not a valid target file" in stderr and not (tmp_path / "b").exists()
    code, _, stderr = cli("convert", "zoo:vit-tiny", "--target", "no-such-target", "-o", tmp_path / "n")
    assert code == 2 and "unknown target 'no-such-target'" in stderr

