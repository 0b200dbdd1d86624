"""train-delta -> convert -> bench --stream through the CLI, and its bad-input errors (exit 2)."""

import json
import shutil

import numpy as np
import pytest
import torch

from hwact.backends import delta_backend
from hwact.backends.base import BenchRequest


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    from click.testing import CliRunner

    from hwact.cli import main

    out = tmp_path_factory.mktemp("delta") / "model"
    result = CliRunner().invoke(main, ["train-delta", "-o", str(out), "--per-word", "4", "--hidden", "32,32",
                                       "--epochs", "4", "--delta-epochs", "2"])
    assert result.exit_code == 0, result.output
    return out


def test_train_convert_bench(cli, trained, tmp_path):
    summary = json.loads((trained / "train.json").read_text())
    assert len(summary["temporal_sparsity"]) == 3 and all(0 <= s <= 1 for s in summary["temporal_sparsity"])
    assert sorted(p.name for p in trained.iterdir()) == ["delta_model.pt2", "dense_model.pt2", "stream.npz", "train.json"]
    code, out, err = cli("convert", trained / "delta_model.pt2", "--target", "cpu", "-o", tmp_path / "conv")
    assert code == 0, err
    report = json.loads((tmp_path / "conv" / "report.json").read_text())
    assert report["model"] == "delta" and report["backends"] == ["delta-c"]
    assert [l["n_in"] for l in report["delta"]["layers"]] == [24, 32, 32]
    assert report["delta"]["verification"]["c_bit_exact"] and report["delta"]["verification"]["onnx_step"]["bit_exact"]
    for name in ("delta_net.bin", "libhwact_delta.so", "delta_step.onnx", "dense.onnx"):
        assert (tmp_path / "conv" / name).is_file()

    result = delta_backend.bench_stream(tmp_path / "conv", trained / "stream.npz", repeats=1, max_sequences=4)
    stream = np.load(trained / "stream.npz")["x"][:4]
    for layer in result["layers"]:
        frames = stream.shape[0] * stream.shape[1]
        assert layer["columns_used"] + layer["temporal_sparsity"] * frames * layer["n_in"] == pytest.approx(frames * layer["n_in"])
        assert layer["macs_skipped"] == (frames * layer["n_in"] - layer["columns_used"]) * layer["n_out"]
    assert result["accuracy"]["delta_c"] == result["accuracy"]["dense_c"]   # threshold 0: same outputs
    higher = delta_backend.bench_stream(tmp_path / "conv", trained / "stream.npz", threshold=1.0, repeats=1,
                                     max_sequences=4, onnxruntime=False)
    assert higher["mac_sparsity"] > result["mac_sparsity"]

    code, out, err = cli("bench", tmp_path / "conv", "--stream", trained / "stream.npz", "--iterations", "1")
    assert code == 0, err
    assert "latency_per_frame" in out and "temporal_sparsity" in out


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc not installed")
def test_convert_for_a_gpu_target(cli, trained, tmp_path):
    """cuda-sm80 deploys delta models with the delta-cuda backend: nvcc builds the runner for sm_80, and
    on a GPU machine it runs bit-exact against the reference (compile only here)."""
    from hwact.backends.toolchain import gpu_available

    code, _, err = cli("convert", trained / "delta_model.pt2", "--target", "cuda-sm80", "-o", tmp_path / "gpu")
    assert code == 0, err
    report = json.loads((tmp_path / "gpu" / "report.json").read_text())
    assert report["backends"] == ["delta-cuda"] and report["delta"]["arch"] == "sm_80"
    assert report["delta"]["ran_on_gpu"] is gpu_available()
    assert (tmp_path / "gpu" / "delta_cuda_main").stat().st_size > 0 and (tmp_path / "gpu" / "delta_net.bin").exists()


def test_bad_inputs_exit_2(cli, trained, tmp_path):
    code, out, err = cli("convert", trained / "delta_model.pt2", "--target", "fpga-lut6", "-o", tmp_path / "x")
    assert code == 2 and "not delta models (hint: targets for delta models: cpu, cuda-sm80)" in err
    assert not (tmp_path / "x").exists()
    code, _, err = cli("convert", trained / "delta_model.pt2", "-o", tmp_path / "conv")
    assert code == 0, err
    np.savez(tmp_path / "wrong.npz", x=np.zeros((2, 10, 23), np.float32))
    code, _, err = cli("bench", tmp_path / "conv", "--stream", tmp_path / "wrong.npz")
    assert code == 2 and "this model takes (sequences, time, 24)" in err
    code, _, err = cli("bench", tmp_path / "conv")
    assert code == 2 and "--stream" in err
    for shape in [(0, 5, 24), (2, 0, 24)]:
        np.savez(tmp_path / "empty.npz", x=np.zeros(shape, np.float32))
        code, _, err = cli("bench", tmp_path / "conv", "--stream", tmp_path / "empty.npz")
        assert code == 2 and "the stream is empty" in err, err
    for labels in [np.array([1]), np.array(["a", "b"])]:
        np.savez(tmp_path / "labels.npz", x=np.zeros((2, 5, 24), np.float32), y=labels)
        code, _, err = cli("bench", tmp_path / "conv", "--stream", tmp_path / "labels.npz")
        assert code == 2 and "one integer class per sequence" in err, err
    with pytest.raises(Exception, match="threshold must be >= 0"):
        delta_backend.bench(tmp_path / "conv", BenchRequest(stream=str(trained / "stream.npz"), threshold=-1.0))
    code, _, err = cli("train-delta", "-o", tmp_path / "t", "--hidden", "a,b")
    assert code == 2 and "--hidden" in err


def test_convert_a_delta_cnn(cli, tmp_path):
    from hwact.nn.delta import FrameCNN

    torch.manual_seed(0)
    model = FrameCNN(2, (6, 6), (4,), 3, delta=True).eval()
    example = torch.randn(2, 5, 2, 6, 6)
    torch.export.save(torch.export.export(model, (example,)), tmp_path / "cnn.pt2")
    code, _, err = cli("convert", tmp_path / "cnn.pt2", "--target", "cpu", "--delta-threshold", "0.1",
                       "-o", tmp_path / "conv")
    assert code == 0, err
    delta = json.loads((tmp_path / "conv" / "report.json").read_text())["delta"]
    assert delta["model"] == "conv" and delta["bit_exact"] == {"c": True, "onnx": True}
    assert delta["lowered_layers"] == 2 and [l["out_channels"] for l in delta["layers"]] == [4]
    assert 0 <= delta["layers"][0]["temporal_sparsity"] <= 1 and delta["threshold"] == 0.1
    for name in ("delta_conv_net.bin", "libhwact_delta_conv.so", "delta_conv_step.onnx"):
        assert (tmp_path / "conv" / name).is_file()
    np.savez(tmp_path / "s.npz", x=np.zeros((1, 5, 2, 6, 6), np.float32))
    code, _, err = cli("bench", tmp_path / "conv", "--stream", tmp_path / "s.npz")
    assert code == 2 and "a delta conv model" in err


def test_convert_a_delta_gru(cli, tmp_path):
    from hwact.nn.delta import DeltaGRU

    torch.manual_seed(0)
    model = DeltaGRU(6, 8).eval()
    torch.export.save(torch.export.export(model, (torch.randn(2, 7, 6),)), tmp_path / "gru.pt2")
    code, _, err = cli("convert", tmp_path / "gru.pt2", "--target", "cpu", "-o", tmp_path / "gru")
    assert code == 0, err
    delta = json.loads((tmp_path / "gru" / "report.json").read_text())["delta"]
    assert delta["model"] == "gru" and delta["lowered_layers"] == 1
    assert delta["max_abs_error"] == {"c": 0.0, "onnx": 0.0} and delta["layers"][0]["hidden"] == 8
    for name in ("delta_gru_net.bin", "delta_gru_step.onnx"):
        assert (tmp_path / "gru" / name).is_file()


class _KeywordGRU(torch.nn.Module):
    def __init__(self, mean_over_time: bool):
        super().__init__()
        from hwact.nn.delta import DeltaGRU

        self.gru, self.head, self.mean_over_time = DeltaGRU(6, 8), torch.nn.Linear(8, 3), mean_over_time

    def forward(self, x):
        h = self.gru(x)
        return self.head(h.mean(dim=1, keepdim=True) if self.mean_over_time else h)


def test_delta_gru_with_a_per_frame_head(cli, tmp_path):
    torch.manual_seed(0)
    for mean_over_time in (False, True):
        model = _KeywordGRU(mean_over_time).eval()
        torch.export.save(torch.export.export(model, (torch.randn(2, 7, 6),)), tmp_path / f"kw{mean_over_time}.pt2")
    code, _, err = cli("convert", tmp_path / "kwFalse.pt2", "--target", "cpu", "-o", tmp_path / "kw")
    assert code == 0, err
    delta = json.loads((tmp_path / "kw" / "report.json").read_text())["delta"]
    assert delta["head"] == ["aten.linear.default"] and delta["max_abs_error"]["c"] == 0.0
    assert delta["max_abs_error"]["onnx"] <= 1e-5          # the step model's output is the head's logits
    import onnxruntime as ort

    outputs = ort.InferenceSession(str(tmp_path / "kw" / "delta_gru_step.onnx")).get_outputs()
    assert outputs[0].name == "y" and outputs[0].shape[-1] == 3
    code, _, err = cli("convert", tmp_path / "kwTrue.pt2", "--target", "cpu", "-o", tmp_path / "never")
    assert code == 2 and "mix frames" in err and not (tmp_path / "never").exists()
