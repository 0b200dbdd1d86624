"""train-logic -> convert (cpu, fpga-lut6, xc7, cuda-sm80) -> bench through the CLI, and bad input (exit 2)."""

import json

import numpy as np
import pytest
import torch

from hwact.errors import ToolMissingError
from hwact.ir.logic_ops import LogicNetlistModule
from hwact.ir.netlist import Netlist

# measured: digits, layers 500,500, 10 epochs, seed 0 -> discrete held-out accuracy 0.778 (soft 0.831)
DIGITS_DISCRETE_FLOOR = 0.65


def _train(tmp_path_factory, name, *args):
    from click.testing import CliRunner

    from hwact.cli import main

    out = tmp_path_factory.mktemp("logic") / name
    result = CliRunner().invoke(main, ["train-logic", "-o", str(out), *args])
    assert result.exit_code == 0, result.output
    return out


@pytest.fixture(scope="module")
def digits_model(tmp_path_factory):
    return _train(tmp_path_factory, "digits", "--data", "digits", "--layers", "500,500", "--epochs", "10")


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    # breast cancer, iwp parametrization, unique wiring: a small net for the RTL and CUDA flows
    return _train(tmp_path_factory, "bc", "--data", "breast-cancer", "--layers", "64,40", "--epochs", "5",
                  "--parametrization", "iwp", "--connections", "unique", "--levels", "2")


def test_train_logic_writes_model_and_report(digits_model):
    from hwact.load import load

    assert sorted(p.name for p in digits_model.iterdir()) == ["logic_model.pt2", "report.json", "report.md", "test.npz"]
    report = json.loads((digits_model / "report.json").read_text())
    assert report["data"] == "digits" and report["classes"] == 10 and report["test_samples"] == 450
    assert report["input_bits"] == 64 * 3 and report["gates"] == 1000 and report["depth"] == 2
    assert report["discrete_accuracy"] >= DIGITS_DISCRETE_FLOOR, report
    assert 0 < report["soft_accuracy"] <= 1 and report["seed"] == 0 and report["wall_seconds"] > 0
    assert "discrete accuracy (held out)" in (digits_model / "report.md").read_text()
    # the archive loads with hwact.load, runs in PyTorch and reproduces the discrete accuracy exactly
    loaded = load(str(digits_model / "logic_model.pt2"))
    test = np.load(digits_model / "test.npz")
    counts = loaded.graph(torch.as_tensor(test["x"]))
    assert counts.dtype == torch.int32 and counts.shape == (450, 10)
    assert float((counts.argmax(1).numpy() == test["y"]).mean()) == report["discrete_accuracy"]


def test_convert_cpu_and_bench(cli, digits_model, tmp_path):
    out = tmp_path / "cpu"
    code, _, err = cli("convert", digits_model / "logic_model.pt2", "--target", "cpu", "-o", out)
    assert code == 0, err
    report = json.loads((out / "report.json").read_text())
    logic = report["logic"]
    assert report["model"] == "logic" and logic["gates_before"] == 1000
    assert 0 < logic["gates_after"] < logic["gates_before"] and logic["depth_after"] <= 2
    assert logic["cpu"]["mismatches"] == 0 and logic["cpu"]["checked_samples"] == 4096
    assert logic["cpu"]["samples_per_s"] > 0
    trained = json.loads((digits_model / "report.json").read_text())
    assert logic["accuracy"] == {"soft": trained["soft_accuracy"], "discrete": trained["discrete_accuracy"]}
    for name in ("netlist.npz", "thermometer.npz", "logic_net.c", "logic_net.so", "report.md"):
        assert (out / name).is_file(), name
    # the shipped netlist + thresholds reproduce the model's predictions on the held-out data
    netlist = Netlist.from_bytes((out / "netlist.npz").read_bytes())
    assert netlist.num_gates == logic["gates_after"]
    test = np.load(digits_model / "test.npz")
    thresholds = np.load(out / "thermometer.npz")["thresholds"]
    bits = (test["x"][:, :, None] > thresholds).reshape(len(test["x"]), -1).astype(np.uint8)
    assert float((netlist.class_counts(bits).argmax(1) == test["y"]).mean()) == trained["discrete_accuracy"]

    code, out_text, err = cli("bench", out, "--iterations", "1")
    assert code == 0, err
    result = json.loads(out_text)
    assert result["backend"] == "logic-c" and result["gates"] == logic["gates_after"] and result["c_samples_per_s"] > 0


@pytest.mark.parametrize("target,pipeline", [("fpga-lut6", 1), ("xc7", 0)])
def test_convert_fpga(cli, small_model, tmp_path, target, pipeline):
    out = tmp_path / target
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", target, "-o", out,
                       "--pipeline-every", pipeline)
    assert code == 0, err
    fpga = json.loads((out / "report.json").read_text())["logic"]["fpga"]
    assert fpga["simulation"]["samples"] == 10000 and fpga["simulation"]["mismatches"] == 0
    assert fpga["luts"] > 0 and fpga["lut_budget"] in (53200, 63400)
    assert (fpga["ffs"] > 0) == (pipeline > 0) and fpga["latency_cycles"] >= (1 if pipeline else 0)
    estimate = fpga["throughput_estimate"]
    assert estimate["clock_mhz"] == 200 and estimate["samples_per_s"] == 200e6
    assert estimate["latency_ns"] == fpga["latency_cycles"] * 5.0
    assert (out / "logic_net.v").is_file() and (out / fpga["flavor"].join(["logic_net_", "_yosys.log"])).is_file()


def _have_nvcc() -> bool:
    from hwact.backends.toolchain import nvcc

    try:
        nvcc()
        return True
    except ToolMissingError:
        return False


@pytest.mark.skipif(not _have_nvcc(), reason="nvcc is not installed")
def test_convert_cuda_compiles(cli, small_model, tmp_path):
    out = tmp_path / "cuda"
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", "cuda-sm80", "-o", out)
    assert code == 0, err
    cuda = json.loads((out / "report.json").read_text())["logic"]["cuda"]
    assert cuda["arch"] == "sm_80" and (out / "logic_net.cubin").stat().st_size > 0 and (out / "logic_net.cu").is_file()


def test_lut_budget_and_missing_yosys(small_model, tmp_path, monkeypatch, cli):
    """A target defined only by a TOML file in a temp folder (existing backends, no code) deploys a logic
    model: here a tiny fabric whose LUT budget the netlist exceeds."""
    from importlib import resources

    toml = resources.files("hwact.targets").joinpath("fpga-lut6.toml").read_text()
    (tmp_path / "tiny-fpga.toml").write_text(toml.replace('name = "fpga-lut6"', 'name = "tiny-fpga"')
                                             .replace("lut_budget = 53200", "lut_budget = 5"))
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", tmp_path / "tiny-fpga.toml",
                       "-o", tmp_path / "budget")
    assert code == 2 and "5-LUT budget" in err and "tiny-fpga" in err and not (tmp_path / "budget").exists()
    (tmp_path / "typo.toml").write_text(toml.replace("lut_budget = 53200", "lut_budjet = 53200"))
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", tmp_path / "typo.toml", "-o", tmp_path / "t")
    assert code == 2 and "[backend.verilog] sets lut_budjet, which the verilog backend does not take" in err
    empty = tmp_path / "empty_path"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", "fpga-lut6", "-o", tmp_path / "noyosys")
    assert code == 2 and "yosys" in err and "apt" in err
    assert not (tmp_path / "noyosys").exists()


def _save(module, example, path):
    torch.export.save(torch.export.export(module, (example,)), str(path))


def test_bad_input_exit_2(cli, small_model, tmp_path):
    np.savez(tmp_path / "neg.npz", x=np.ones((10, 3)), y=np.array([0, 1, 0, 1, 0, 1, 0, 1, 0, -1]))
    np.savez(tmp_path / "gap.npz", x=np.ones((10, 3)), y=np.array([0, 2] * 5))
    np.savez(tmp_path / "rows.npz", x=np.ones((10, 3)), y=np.array([0, 1] * 4))
    np.savez(tmp_path / "empty.npz", x=np.ones((0, 3)), y=np.zeros(0, dtype=np.int64))
    np.savez(tmp_path / "nox.npz", y=np.zeros(3))
    cases = [("neg.npz", "out of range"), ("gap.npz", "class 1 has no sample"), ("rows.npz", "y must be"),
             ("empty.npz", "non-empty"), ("nox.npz", "needs arrays 'x'"), ("missing.npz", "no such file")]
    for name, message in cases:
        code, _, err = cli("train-logic", "--data", tmp_path / name, "-o", tmp_path / "o")
        assert code == 2 and message in err, (name, err)
        assert "Traceback" not in err
    code, _, err = cli("train-logic", "--data", "digits", "--layers", "64,33", "-o", tmp_path / "o")
    assert code == 2 and "multiple of the 10 classes" in err
    code, _, err = cli("convert", small_model / "logic_model.pt2", "--target", "npu-int8", "-o", tmp_path / "npu")
    assert code == 2 and "cpu, cuda-sm80, fpga-lut6, xc7" in err
    # a netlist fed real values (no thresholding) is refused at lowering
    netlist = Netlist(4, [1, 6], [0, 2], [1, 3], [4, 5], 2)
    _save(LogicNetlistModule(netlist), torch.zeros(2, 4), tmp_path / "float_in.pt2")
    code, _, err = cli("convert", tmp_path / "float_in.pt2", "--target", "cpu", "-o", tmp_path / "f")
    assert code == 2 and "binary" in err and not (tmp_path / "f").exists()
    (tmp_path / "notlogic").mkdir()
    (tmp_path / "notlogic" / "report.json").write_text(json.dumps({"backends": ["logic-c"]}))
    code, _, err = cli("bench", tmp_path / "notlogic", "--iterations", "1")
    assert code == 2 and "no netlist.npz" in err
