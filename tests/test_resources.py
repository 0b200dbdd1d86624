"""Bounded resources: sizes a user asks for are estimated up front and refused above hwact.limits' caps
(exit 2 with the estimate), before anything large is allocated or any long work starts."""

import os

import pytest

from hwact.limits import MAX_BATCH, MAX_EPOCHS, format_bytes, max_threads
from resource_helpers import PEAK_RSS_LIMIT, assert_one_line_error, run_measured


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory):
    from click.testing import CliRunner

    from hwact.cli import main

    path = tmp_path_factory.mktemp("bench") / "cnn.onnx"
    result = CliRunner().invoke(main, ["export-onnx", "zoo:cnn-tiny", "-o", str(path)])
    assert result.exit_code == 0, result.output
    return path


def test_format_bytes():
    assert format_bytes(9_600_000_000) == "9.6 GB" and format_bytes(512) == "512 bytes"


@pytest.mark.parametrize("args, message", [
    (["inspect", "zoo:cnn-tiny", "--input-shape", "1x3x20000x20000"],
     "the example inputs (x 1x3x20000x20000) at batch 2 would need 9.6 GB; the limit is 4 GB"),
    (["train-logic", "--data", "digits", "--levels", "100000", "-o", "{tmp}/lg"],
     "(64 features x 100000 levels), layers 2000,2000, batch 100 would need 32.1 GB; the limit is 16 GB"),
])
def test_huge_sizes_refused_up_front_with_bounded_memory(tmp_path, args, message):
    code, _, stderr, peak = run_measured(*[a.format(tmp=tmp_path) for a in args], timeout=300)
    assert_one_line_error(code, stderr, message)
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
    assert list(tmp_path.iterdir()) == []


def test_bench_batch_is_sized_before_inputs_are_built(small_onnx):
    code, _, stderr, peak = run_measured("bench", small_onnx, "--batch", "100000000", "--iterations", "1")
    assert_one_line_error(code, stderr, "--batch 100000000: the random inputs of")
    assert "would need 3.69 TB; the limit is 4 GB" in stderr and peak < PEAK_RSS_LIMIT


@pytest.mark.parametrize("args, message", [
    (["--threads", "2000"], f"--threads 2000: at most {max_threads()} here"),
    (["--threads", "100000"], f"--threads 100000: at most {max_threads()} here"),
    (["--duration", "inf"], "--duration inf: not a finite number"),
])
def test_bench_options_that_hung_are_bounded(small_onnx, args, message):
    # a subprocess with a timeout: these hung (2000 threads, an infinite duration) or crashed (100000 threads)
    code, _, stderr, _ = run_measured("bench", small_onnx, *args, timeout=120)
    assert_one_line_error(code, stderr, message)


@pytest.mark.parametrize("args, message", [
    (["--duration", "nan"], "--duration nan: not a finite number"),
    (["--duration", "0"], "--duration > 0"),
    (["--iterations", "0"], "--iterations must be >= 1, got 0"),
])
def test_bench_options_are_bounded(cli, small_onnx, args, message):
    code, _, stderr = cli("bench", small_onnx, *args)
    assert_one_line_error(code, stderr, message)


@pytest.mark.parametrize("args, message", [
    (["train-logic", "--data", "digits", "--layers", "1000000000,10"], "would need 32.3 TB; the limit is 16 GB"),
    (["train-logic", "--data", "digits", "--batch", str(MAX_BATCH + 1)], f"--batch must be <= {MAX_BATCH}"),
    (["train-logic", "--data", "digits", "--epochs", str(MAX_EPOCHS + 1)], f"--epochs must be <= {MAX_EPOCHS}"),
    (["train-logic", "--data", "digits", "--seed", "-1"], "--seed must be >= 0, got -1"),
    (["train-delta", "--hidden", "100000,100000"], "with hidden widths 100000,100000 would need 361 GB"),
    (["train-delta", "--per-word", "100000"], "training on 100000 utterances of each of 8 keywords"),
    (["train-delta", "--delta-epochs", "1000000000"], f"--delta-epochs must be <= {MAX_EPOCHS}"),
    (["finetune", "zoo:vit-digits", "--data", "digits", "--batch-size", "1000000000"],
     f"--batch-size must be <= {MAX_BATCH}"),
    (["finetune", "zoo:vit-digits", "--data", "digits", "--epochs", "1000000000"], f"--epochs must be <= {MAX_EPOCHS}"),
    (["convert", "zoo:vit-digits", "--recover", "kd", "--data", "digits", "--epochs", "1000000000"],
     f"--epochs must be <= {MAX_EPOCHS}"),
    (["convert", "zoo:vit-digits", "--key-interval", "4294967296"], "--key-interval must be <= 2147483647"),
])
def test_size_options_are_capped(cli, tmp_path, args, message):
    code, _, stderr = cli(*args, "-o", tmp_path / "out")
    assert_one_line_error(code, stderr, message)
    assert not (tmp_path / "out").exists()


def test_max_threads_follows_the_cpu_count():
    assert max_threads() == (os.cpu_count() or 1) * 4
