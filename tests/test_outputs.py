"""Output rules (hwact/outputs.py, issue 12 class 3): no output replaced without --force, not even by a
concurrent run; nothing left behind by an error, SIGTERM or a killed run; bad outputs refused before any
work; a full disk, a read-only folder, a long name or a closed stdout pipe end in one line, exit 2
(a closed pipe: quietly, 141)."""

import json
import os
import signal
import subprocess
import sys
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from hwact import outputs
from hwact.errors import InputError

HWACT = os.path.join(os.path.dirname(sys.executable), "hwact")


def run(*args, cwd=None, timeout=300):
    """The installed CLI as a subprocess: (exit code, stdout, stderr)."""
    done = subprocess.run([HWACT, *map(str, args)], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    return done.returncode, done.stdout, done.stderr


def one_error(stderr: str) -> str:
    """The single stderr line of a clean failure (asserts there is exactly one, and no traceback)."""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hwact: error:"), stderr
    return lines[0]


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".tmp-" in p.name or p.name.endswith(".old"))


def refused_fast(*args, cwd=None) -> str:
    """Run a command that must be refused before any work: exit 2, one line, well under the time to load torch."""
    start = time.perf_counter()
    code, _, stderr = run(*args, cwd=cwd)
    assert code == 2, stderr
    assert time.perf_counter() - start < 3.0   # loading torch alone takes longer; the check itself < 1 s
    return one_error(stderr)


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


# ------------------------------------------------------------------------------------------ existing outputs
def test_demo_refuses_an_existing_folder_and_keeps_its_files(tmp_path):
    mine = tmp_path / "hwact-demo"
    (mine / "converted").mkdir(parents=True)
    (mine / "original.onnx").write_bytes(b"my own file\x00\xff")
    (mine / "converted" / "notes.txt").write_text("keep")
    line = refused_fast("demo", cwd=tmp_path)   # the default folder
    assert "hwact-demo: already exists" in line and "--force" in line
    line = refused_fast("demo", "-o", mine)
    assert "already exists" in line
    assert (mine / "original.onnx").read_bytes() == b"my own file\x00\xff"
    assert (mine / "converted" / "notes.txt").read_text() == "keep"
    assert sorted(p.name for p in mine.iterdir()) == ["converted", "original.onnx"] and not leftovers(tmp_path)


@pytest.mark.parametrize("command", [["convert", "zoo:cnn-tiny"], ["train-delta"],
                                     ["train-logic", "--data", "digits"], ["finetune", "zoo:vit-digits", "--data", "digits"]])
def test_every_folder_command_refuses_an_existing_folder_first(tmp_path, command):
    (tmp_path / "out").mkdir()
    assert "out: already exists" in refused_fast(*command, "-o", tmp_path / "out")


def test_export_onnx_refuses_an_existing_file_first(tmp_path):
    (tmp_path / "m.onnx").write_text("keep me")
    assert "already exists" in refused_fast("export-onnx", "zoo:cnn-tiny", "-o", tmp_path / "m.onnx")
    assert (tmp_path / "m.onnx").read_text() == "keep me"


# ------------------------------------------------------------------------------------------------- races
def test_two_concurrent_converts_to_one_folder(tmp_path):
    out = tmp_path / "out"
    runs = [subprocess.Popen([HWACT, "convert", "zoo:cnn-tiny", "-o", str(out)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [(p.wait(timeout=300), p.stderr.read()) for p in runs]
    for p in runs:
        p.stdout.close()
        p.stderr.close()
    assert sorted(code for code, _ in results) == [0, 2], results
    line = one_error(next(err for code, err in results if code == 2))
    # normally both pass the early check and the second one loses the final rename
    assert "appeared while this run was writing it (another run?)" in line or "already exists" in line
    report = json.loads((out / "report.json").read_text())
    assert sorted(p.name for p in out.iterdir()) == report["artifacts"] == ["model.onnx", "report.json", "report.md"]
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("renameat2", [True, False], ids=["renameat2", "fallback"])
def test_the_final_rename_never_replaces_without_force(tmp_path, monkeypatch, renameat2):
    if not renameat2:   # a C library or file system without renameat2: link(2) / rename(2)
        monkeypatch.setattr(outputs, "_renameat2", lambda source, path, flags: False)
    out, single = tmp_path / "out", tmp_path / "m.onnx"
    with pytest.raises(InputError, match="appeared while this run was writing it"):
        with outputs.atomic_dir(out, force=False) as tmp:
            (tmp / "mine").write_text("loser")
            out.mkdir()                                  # another run finished first
            (out / "theirs").write_text("winner")
    with pytest.raises(InputError, match="appeared while this run was writing it"):
        with outputs.atomic_file(single, force=False) as staged:
            staged.write_text("loser")
            single.write_text("winner")
    assert [p.name for p in out.iterdir()] == ["theirs"] and single.read_text() == "winner"
    with outputs.atomic_dir(out, force=True) as tmp:     # --force replaces, in one step
        (tmp / "new").write_text("new")
    with outputs.atomic_file(single, force=True) as staged:
        staged.write_text("new")
    assert [p.name for p in out.iterdir()] == ["new"] and single.read_text() == "new"
    assert leftovers(tmp_path) == []


# ---------------------------------------------------------------------------------- signals, stale temporaries
def test_sigterm_during_a_convert_removes_the_temporary(tmp_path):
    out = tmp_path / "out"
    run_ = subprocess.Popen([HWACT, "convert", "zoo:vit-tiny", "--recipe", "relu", "-o", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not leftovers(tmp_path) and run_.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert leftovers(tmp_path), "no temporary folder appeared"
    run_.send_signal(signal.SIGTERM)
    code, stderr = run_.wait(timeout=60), run_.stderr.read()
    run_.stderr.close()
    assert code == 143 and stderr.strip() == "hwact: terminated (SIGTERM)", stderr
    assert list(tmp_path.iterdir()) == []


def test_stale_temporaries_of_dead_runs_are_removed_by_the_next_run(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "old.txt").write_text("old")
    dead, alive = tmp_path / f".out.tmp-{dead_pid()}-abcd1234", tmp_path / f".out.tmp-{os.getpid()}-abcd1234"
    stale_file = tmp_path / f".out.tmp-{dead_pid()}-efgh5678"
    other = tmp_path / f".other.tmp-{dead_pid()}-abcd1234"   # not this output's: left alone
    for folder in (dead, alive, other):
        folder.mkdir()
        (folder / "model.onnx").write_bytes(b"partial")
    stale_file.write_bytes(b"partial")
    code, _, stderr = run("convert", "zoo:cnn-tiny", "-o", out, "--force")
    assert code == 0, stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([alive.name, other.name, "out"])
    assert sorted(p.name for p in out.iterdir()) == ["model.onnx", "report.json", "report.md"]


# ---------------------------------------------------------------------------------- what --force may replace
def test_force_refuses_a_symlinked_output_and_leaves_nothing_behind(tmp_path):
    real = tmp_path / "real"
    real.mkdir()
    (real / "keep.txt").write_text("keep")
    (tmp_path / "link").symlink_to(real)
    (tmp_path / "dangling").symlink_to(tmp_path / "nowhere")
    for _ in range(2):
        line = refused_fast("convert", "zoo:cnn-tiny", "-o", tmp_path / "link", "--force")
        assert "is a symbolic link" in line
    assert "is a symbolic link" in refused_fast("convert", "zoo:cnn-tiny", "-o", tmp_path / "dangling")
    assert "is a symbolic link" in refused_fast("export-onnx", "zoo:cnn-tiny", "-o", tmp_path / "dangling", "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dangling", "link", "real"]
    assert (tmp_path / "link").resolve() == real and [p.name for p in real.iterdir()] == ["keep.txt"]


@pytest.mark.parametrize("where", [".", ".."])
def test_force_refuses_the_current_folder_and_its_parents(tmp_path, where):
    cwd = tmp_path / "work"
    cwd.mkdir()
    (cwd / "data.txt").write_text("keep")
    for extra in ([], ["--force"]):
        line = refused_fast("convert", "zoo:cnn-tiny", "-o", where, *extra, cwd=cwd)
        assert "would delete the current folder" in line
    assert (cwd / "data.txt").read_text() == "keep" and not leftovers(tmp_path) and not leftovers(cwd)


def test_force_refuses_an_output_holding_an_input(tmp_path):
    out = tmp_path / "out"
    (out / "deep").mkdir(parents=True)
    model, calib = out / "deep" / "model.pt2", out / "calib.npz"
    model.write_bytes(b"PK\x03\x04 the user's model")
    calib.write_bytes(b"calibration")
    line = refused_fast("convert", model, "-o", out, "--force")
    assert f"would delete the input {model}" in line
    line = refused_fast("convert", "zoo:cnn-tiny", "--calib", calib, "-o", out, "--force")
    assert f"would delete the input {calib}" in line
    single = tmp_path / "m.onnx"
    single.write_bytes(b"the user's model")
    assert f"would delete the input {single}" in refused_fast("export-onnx", single, "-o", single, "--force")
    assert single.read_bytes() == b"the user's model"
    assert model.read_bytes() == b"PK\x03\x04 the user's model" and calib.read_bytes() == b"calibration"


# ------------------------------------------------------------------------------ unwritable outputs, up front
def test_outputs_that_cannot_be_written_are_refused_before_any_work(tmp_path):
    (tmp_path / "file").write_text("a regular file")
    line = refused_fast("convert", "zoo:cnn-tiny", "-o", tmp_path / "file" / "sub" / "out")
    assert "is not a folder" in line
    line = refused_fast("export-onnx", "zoo:cnn-tiny", "-o", tmp_path / ("m" * 250 + ".onnx"))
    assert "file name too long" in line
    line = refused_fast("train-delta", "-o", tmp_path / ("d" * 300) / "out")
    assert "file name too long" in line.lower()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]


@contextmanager
def tmpfs(folder: Path, options: str):
    """A small tmpfs at `folder` (root only); skips the test where mounting is not allowed."""
    folder.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "hwact-test", str(folder)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=False)


@pytest.mark.skipif(os.geteuid() != 0 or sys.platform != "linux", reason="needs root to mount a tmpfs")
def test_read_only_and_full_file_systems(tmp_path):
    with tmpfs(tmp_path / "ro", "ro,size=64k") as ro:
        line = refused_fast("convert", "zoo:cnn-tiny", "-o", ro / "out")
        assert "cannot write (Read-only file system)" in line
    with tmpfs(tmp_path / "small", "size=64k") as small:   # cnn-tiny's model.onnx needs ~100 kB
        code, _, stderr = run("convert", "zoo:cnn-tiny", "-o", small / "out")
        assert code == 2 and "small/out: cannot write" in one_error(stderr) and "disk" in stderr
        assert list(small.iterdir()) == []


def test_write_errors_name_the_output_not_the_temporary(tmp_path):
    with pytest.raises(InputError, match=r"out: cannot write \(No space left on device\)") as caught:
        with outputs.atomic_dir(tmp_path / "out", force=False):
            with open("/dev/full", "w") as full:
                full.write("x")
                full.flush()
    assert ".tmp-" not in str(caught.value)
    with pytest.raises(InputError, match=r"out: cannot write report.json \(Permission denied\)"):
        with outputs.atomic_dir(tmp_path / "out", force=False) as tmp:
            raise PermissionError(13, "Permission denied", str(tmp / "report.json"))
    with pytest.raises(FileNotFoundError):   # not about the output: left to the caller
        with outputs.atomic_dir(tmp_path / "out", force=False):
            open(tmp_path / "missing-input")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------------------------------------------- stdout pipe
def test_a_closed_stdout_pipe_ends_quietly(tmp_path):
    read_end, write_end = os.pipe()
    os.close(read_end)   # the reader is gone before hwact writes a byte (like `| head -1` done early)
    with open(tmp_path / "stderr", "w") as stderr:
        code = subprocess.run([HWACT, "inspect", "zoo:cnn-tiny"], stdout=write_end, stderr=stderr, timeout=300).returncode
    os.close(write_end)
    assert code == 141 and (tmp_path / "stderr").read_text() == ""
