import json

import torch

from hwact.ir.graph import InputSpec, trace
from hwact.ir.summary import flops


def test_inspect_json_reports_census_sites_params_and_targets(cli):
    code, stdout, _ = cli("inspect", "zoo:bert-tiny", "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["ops"]["aten.gelu.default"] == 2 and info["ops"]["aten.softmax.int"] == 2
    assert [s["form"] for s in info["activations"]] == ["tanh-approximate", "tanh-approximate", "tanh"]
    assert info["parameters"] == sum(p.numel() for p in __import__("hwact").models.build("bert-tiny")[0].parameters())
    assert info["targets"]["cpu"]["deployable"] is True
    npu = info["targets"]["npu-int8"]
    assert npu["deployable"] is False and npu["not_native"]["aten.gelu.default"]["count"] == 2
    assert "layers.0.ffn.act" in npu["not_native"]["aten.gelu.default"]["nodes"][0]
    assert info["targets"]["fpga-lut6"]["not_native"]["aten.tanh.default"]["count"] == 1


def test_symbolic_batch_arithmetic_does_not_block_the_cpu(cli):
    # Swin's window partition multiplies the dynamic batch (a Python operator.mul on a SymInt)
    code, stdout, _ = cli("inspect", "zoo:swin-tiny", "--json")
    assert code == 0
    info = json.loads(stdout)
    assert info["ops"].get("mul", 0) > 0
    assert info["targets"]["cpu"]["deployable"] is True and "mul" not in info["targets"]["cpu"]["native"]


def test_inspect_text_lists_blockers(cli):
    code, stdout, _ = cli("inspect", "zoo:cnn-tiny")
    assert code == 0 and "aten.batch_norm.default x4" in stdout and "fold-bn" in stdout


def test_flops_counts_two_per_multiply_accumulate():
    graph = trace(torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 3)),
                  [InputSpec("x", (1, 10))])
    assert flops(graph) == 2 * (10 * 20 + 20 * 3)


def test_bench_compare_interleaved_json(tmp_path, cli):
    for name in ("a", "b"):
        assert cli("export-onnx", "zoo:cnn-tiny", "-o", tmp_path / f"{name}.onnx",
                   *(["--recipe", "fold-bn"] if name == "b" else []))[0] == 0
    code, stdout, stderr = cli("bench", tmp_path / "a.onnx", "--compare", tmp_path / "b.onnx", "--iterations", "20",
                               "--warmup", "2", "--batch", "2", "--threads", "1", "--json")
    assert code == 0, stderr
    result = json.loads(stdout)
    a, b = result["results"]
    assert a["iterations"] == b["iterations"] == 20
    assert 0 < a["min_ms"] <= a["p50_ms"] <= a["p90_ms"] <= a["p99_ms"]
    assert abs(result["ratio_p50"] - a["p50_ms"] / b["p50_ms"]) < 1e-9
    assert result["machine"]["cores"] >= 1 and "onnxruntime" in result["versions"]
    code, _, stderr = cli("bench", tmp_path / "missing.onnx")
    assert code == 2 and "no such ONNX file" in stderr
    code, _, stderr = cli("bench", tmp_path / "a.onnx", "--batch", "0")
    assert code == 2


def test_export_onnx_refuses_to_overwrite(tmp_path, cli):
    target = tmp_path / "m.onnx"
    target.write_text("keep me")
    code, _, stderr = cli("export-onnx", "zoo:cnn-tiny", "-o", target)
    assert code == 2 and "already exists" in stderr and target.read_text() == "keep me"


def test_demo_runs_end_to_end(tmp_path, cli_process):
    code, stdout, stderr = cli_process("demo", cwd=tmp_path)
    assert code == 0, stderr
    out = tmp_path / "hwact-demo"
    report = json.loads((out / "converted" / "report.json").read_text())
    assert report["passes"][0]["name"] == "gelu-to-relu" and report["passes"][0]["changed"] == 2
    assert (out / "original.onnx").stat().st_size > 0 and (out / "converted" / "model.onnx").stat().st_size > 0
    assert "ratio converted/original" in stdout and "Next:" in stdout
