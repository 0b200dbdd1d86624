"""hwact finetune / convert --recover kd from the command line: outputs, bad input, torchrun with 2 processes."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from hwact.load import load

FAST = ["--epochs", "1", "--no-progress", "--batch-size", "128"]


def test_finetune_writes_pt2_state_dict_and_report(cli, small_npz, tmp_path):
    out = tmp_path / "out"
    code, stdout, stderr = cli("finetune", "zoo:vit-digits", "--data", small_npz, "-o", out, "--stages", "2", *FAST)
    assert code == 0, stdout + stderr
    assert sorted(p.name for p in out.iterdir()) == ["model.pt2", "report.json", "report.md", "state_dict.pt"]
    assert not (tmp_path / "out.ckpt").exists()
    report = json.loads((out / "report.json").read_text())
    rec = report["recovery"]
    assert rec["swap"] == "helu" and rec["schedule"] == "staged" and rec["helu_alpha"] == 0.05
    assert rec["seeds"] == {"split": 0, "train": 0} and rec["data"]["train"] == 320 and rec["data"]["val"] == 80
    assert rec["original"]["teacher_agreement"] == 1.0 and 0 <= rec["original"]["accuracy"] <= 1
    assert 0 <= rec["swapped_untuned"]["teacher_agreement"] <= 1
    assert [s["stage"] for s in rec["stages"]] == ["blocks.0..blocks.1", "blocks.2..blocks.3"]
    assert [s["swapped"] for s in rec["stages"]] == [2, 2]
    assert all("after_swap" in s and "after_distill" in s for s in rec["stages"])
    assert len(rec["weights_sha256"]) == 1
    md = (out / "report.md").read_text()
    assert "| original |" in md and "stage 2 `blocks.2..blocks.3`: distilled" in md
    # the .pt2 holds the swapped, tuned graph
    loaded = load(str(out / "model.pt2"))
    ops = [str(n.target) for n in loaded.graph.call_nodes()]
    assert ops.count("hwact.helu.default") == 4 and "aten.gelu.default" not in ops
    # the state_dict goes straight into hwact convert (which re-applies the swap) and gives the same outputs
    converted = tmp_path / "converted"
    code, stdout, stderr = cli("convert", out / "state_dict.pt", "--arch", "vit-digits", "--recipe", "helu", "-o", converted)
    assert code == 0, stdout + stderr
    import onnxruntime as ort

    x = torch.from_numpy(np.load(small_npz)["x"][:16])
    session = ort.InferenceSession(str(converted / "model.onnx"))
    onnx_out = session.run(None, {session.get_inputs()[0].name: x.numpy()})[0]
    assert np.allclose(onnx_out, loaded.graph(x).numpy(), atol=1e-4)


def test_plain_training_and_resume_refusals(cli, small_npz, tmp_path):
    code, stdout, stderr = cli("finetune", "zoo:vit-digits", "--data", small_npz, "-o", tmp_path / "t",
                               "--swap", "none", *FAST)
    assert code == 0, stdout + stderr
    rec = json.loads((tmp_path / "t" / "report.json").read_text())["recovery"]
    assert rec["swap"] == "none" and "swapped_untuned" not in rec and rec["stages"][0]["stage"] == "train"
    code, _, stderr = cli("finetune", "zoo:vit-digits", "--data", small_npz, "-o", tmp_path / "t", *FAST)
    assert code == 2 and "already exists" in stderr
    code, _, stderr = cli("finetune", "zoo:vit-digits", "--data", small_npz, "-o", tmp_path / "r", "--resume", *FAST)
    assert code == 2 and "no checkpoint" in stderr


def _folder(root, size, mode, labels=("a", "b")):
    for name in labels:
        (root / name).mkdir(parents=True)
        channels = 1 if mode == "L" else 3
        array = np.zeros((size, size) if channels == 1 else (size, size, 3), np.uint8)
        Image.fromarray(array, mode).save(root / name / "0.png")
    return root


def _non_classifier(tmp_path):
    class Features(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(8, 8)

        def forward(self, x):
            return torch.nn.functional.gelu(self.fc(x))  # (N, 1, 8, 8) features, no class logits

    path = tmp_path / "features.pt2"
    torch.export.save(torch.export.export(Features(), (torch.randn(2, 1, 8, 8),),
                                          dynamic_shapes=({0: torch.export.Dim("batch")},)), path)
    return path


def test_bad_input_is_one_line_and_exit_2(cli, tmp_path):
    """In-process (a real process per case took 45 s); tests/test_load.py checks a real process's stderr."""
    np.savez(tmp_path / "labels.npz", x=np.zeros((8, 1, 8, 8), np.float32), y=np.array([0, 1, 2, 3, 4, 5, 6, 12]))
    (tmp_path / "empty").mkdir()
    _folder(tmp_path / "big", 16, "L")
    _folder(tmp_path / "rgb", 8, "RGB")
    np.savez(tmp_path / "y.npz", x=np.zeros((8, 1, 8, 8), np.float32), y=np.arange(8))
    cases = [
        (["zoo:vit-digits", "--data", tmp_path / "labels.npz"], "label 12 is out of range for a model with 10 classes"),
        (["zoo:vit-digits", "--data", tmp_path / "empty"], "empty image folder"),
        (["zoo:vit-digits", "--data", tmp_path / "big"], "16x16 pixels, the model expects 8x8"),
        (["zoo:vit-digits", "--data", tmp_path / "rgb"], "3 channel(s), the model expects 1"),
        ([_non_classifier(tmp_path), "--data", tmp_path / "y.npz", "--ce-weight", "0.5"], "no classification output"),
        (["zoo:vit-digits", "--data", "nosuch.npz"], "no such dataset"),
        (["zoo:vit-digits", "--data", "digits", "--epochs", "0"], "--epochs must be >= 1"),
        (["zoo:vit-digits", "--data", tmp_path / "unlabeled.npz", "--ce-weight", "1"], "the data has no labels"),
        (["zoo:vit-digits", "--data", "digits", "--val-fraction", "0"], "--val-fraction must be in (0, 1)"),
    ]
    np.savez(tmp_path / "unlabeled.npz", x=np.zeros((8, 1, 8, 8), np.float32))
    for args, message in cases:
        code, stdout, stderr = cli("finetune", *args, "-o", tmp_path / "never", "--no-progress")
        lines = stderr.strip().splitlines()
        assert code == 2, (args, stderr)
        assert len(lines) == 1 and lines[0].startswith("hwact: error:") and message in lines[0], (args, stderr)
        assert "Traceback" not in stderr and not (tmp_path / "never").exists()


def test_convert_recover_kd_refuses_integer_recipes(cli, tmp_path):
    code, _, stderr = cli("convert", "zoo:vit-digits", "--recipe", "int8-relu", "--recover", "kd", "--data", "digits",
                          "-o", tmp_path / "never")
    assert code == 2 and "fine-tunes a float graph" in stderr and not (tmp_path / "never").exists()


def test_convert_recover_kd(cli, tmp_path):
    out = tmp_path / "conv"
    code, stdout, stderr = cli("convert", "zoo:vit-tiny", "--recipe", "relu", "--recover", "kd",
                               "--data", _folder(tmp_path / "imgs", 32, "RGB", labels=("a", "b", "c", "d", "e")),
                               "-o", out)
    assert code == 0, stdout + stderr
    rec = json.loads((out / "report.json").read_text())["recovery"]
    assert rec["swap"] == "given" and rec["schedule"] == "all" and rec["data"]["train"] + rec["data"]["val"] == 5
    assert rec["stages"][0]["stage"] == "all" and "after_distill" in rec["stages"][0]
    assert "## recovery" in (out / "report.md").read_text()


@pytest.mark.skipif(shutil.which("torchrun", path=os.path.dirname(sys.executable)) is None, reason="no torchrun")
def test_torchrun_two_processes_agree(small_npz, tmp_path):
    torchrun = os.path.join(os.path.dirname(sys.executable), "torchrun")
    hwact = os.path.join(os.path.dirname(sys.executable), "hwact")
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", hwact, "finetune", "zoo:vit-digits",
                           "--data", str(small_npz), "-o", str(out), "--schedule", "all", "--epochs", "2",
                           "--batch-size", "32", "--no-progress"],
                          capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    rec = json.loads((out / "report.json").read_text())["recovery"]
    assert rec["world_size"] == 2
    assert len(rec["weights_sha256"]) == 2 and rec["weights_sha256"][0] == rec["weights_sha256"][1]
    # each rank saw half the 320 training samples: 5 steps of 32 per epoch, identical on both
    assert rec["stages"][0]["epochs_run"] == 2
    assert done.stdout.count("wrote ") == 1  # only rank 0 writes


def test_convert_recover_kd_staged_with_options(cli, tmp_path):
    out = tmp_path / "staged"
    code, stdout, stderr = cli("convert", "zoo:vit-digits", "--recipe", "relu", "--recover", "kd", "--data", "digits",
                               "--epochs", "1", "--schedule", "staged", "--temperature", "2", "--ce-weight", "0.5",
                               "-o", out)
    assert code == 0, stdout + stderr
    rec = json.loads((out / "report.json").read_text())["recovery"]
    assert rec["schedule"] == "staged" and [s["stage"] for s in rec["stages"]] == [f"blocks.{i}" for i in range(4)]
    assert rec["config"]["temperature"] == 2.0 and rec["config"]["ce_weight"] == 0.5
    code, _, stderr = cli("convert", "zoo:vit-digits", "--recipe", "relu", "--temperature", "2", "-o", tmp_path / "x")
    assert code == 2 and "belong to --recover kd" in stderr
