"""hwact.npz, the one reader of user .npz files: hostile archives end in one InputError line (exit 2 in the
CLI), only the rows used are read, and memory stays bounded whatever an archive claims."""

import json
import os
import zipfile

import numpy as np
import pytest

from hwact.errors import InputError
from hwact.npz import INTEGER, load_arrays, open_npz
from resource_helpers import PEAK_RSS_LIMIT, assert_one_line_error, npy_header, run_measured


def write_zip(path, members: dict):
    with zipfile.ZipFile(path, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return path


# ----------------------------------------------------------------------------------------- the reader
def test_reads_only_the_rows_asked_for(tmp_path):
    x = np.arange(6 * 4, dtype=">f4").reshape(6, 4)   # big-endian on disk: native in memory
    np.savez_compressed(tmp_path / "a.npz", x=x, f=np.asfortranarray(x), y=np.arange(6))
    with open_npz(tmp_path / "a.npz") as archive:
        assert archive.files == ["x", "f", "y"] and archive.info("x").shape == (6, 4)
        head = archive.read("x", rows=2)
        assert head.dtype == np.float32 and head.dtype.isnative and np.array_equal(head, x[:2])
        assert np.array_equal(archive.read("f", rows=3), x[:3])
        assert [part.shape[0] for part in archive.rows("x", 4)] == [4, 2]
        assert np.array_equal(np.concatenate(list(archive.rows("x", 4, limit=5))), x[:5])
        assert archive.read("y", kinds=INTEGER).tolist() == list(range(6))


@pytest.mark.parametrize("make, message", [
    (lambda p: write_zip(p, {"x.txt": b"hello"}), "member 'x.txt' is not a .npy array"),
    (lambda p: write_zip(p, {"x.npy": b"\x93NUMPY garbage"}), "member 'x.npy' is not a valid .npy array"),
    (lambda p: write_zip(p, {"x.npy": npy_header((250_000, 3, 224, 224)) + b"\0" * 64}),
     "declares (250000, 3, 224, 224) float32 = 151 GB of data, but holds 64 bytes"),
    (lambda p: p.write_bytes(b"not a zip"), "not a readable .npz archive"),
    (lambda p: np.savez(p, x=np.zeros(3, np.complex64)), "complex64, expected real numbers (the imaginary part"),
    (lambda p: np.savez(p, x=np.float32(3)), "array 'x' is a single value (0-d)"),
    (lambda p: np.savez(p, x=np.array([{"payload": 1}], dtype=object)), "arrays of Python objects are never loaded"),
    (lambda p: np.savez(p, x=np.array(["a", "b"])), "has dtype <U1, expected real numbers"),
])
def test_hostile_archives_are_input_errors(tmp_path, make, message):
    path = tmp_path / "bad.npz"
    make(path)
    with pytest.raises(InputError) as caught:
        with open_npz(path) as archive:
            archive.read("x", rows=2)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_reading_more_than_the_cap_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr("hwact.npz.MAX_ARRAY_BYTES", 1000)
    np.savez(tmp_path / "a.npz", x=np.zeros((100, 4), np.float32))   # 1600 bytes
    with open_npz(tmp_path / "a.npz") as archive:
        assert archive.read("x", rows=50).shape == (50, 4)            # 800 bytes: fine
        with pytest.raises(InputError, match=r"reading 100 rows would need 1.6 kB; the limit is 1 kB per array"):
            archive.read("x")


def test_truncated_compressed_member(tmp_path):
    np.savez_compressed(tmp_path / "ok.npz", x=np.random.default_rng(0).standard_normal((64, 64)))
    data = (tmp_path / "ok.npz").read_bytes()
    with zipfile.ZipFile(tmp_path / "ok.npz") as archive:
        member = archive.infolist()[0]
    # cut the compressed stream of x.npy short, keep the directory (as a damaged download would)
    start = member.header_offset + 30 + len(member.filename) + len(member.extra)
    broken = bytearray(data)
    broken[start + member.compress_size // 2:start + member.compress_size] = b"\0" * (member.compress_size
                                                                                   - member.compress_size // 2)
    (tmp_path / "broken.npz").write_bytes(bytes(broken))
    with pytest.raises(InputError, match="broken.npz: member 'x.npy'"):
        with open_npz(tmp_path / "broken.npz") as archive:
            archive.read("x")


def test_not_a_regular_file_never_blocks(tmp_path):
    os.mkfifo(tmp_path / "fifo.npz")   # nobody writes: reading it would block forever
    with pytest.raises(InputError, match="not a regular file"):
        open_npz(tmp_path / "fifo.npz")
    with pytest.raises(InputError, match="is a folder"):
        open_npz(tmp_path)
    with pytest.raises(InputError, match="no such file"):
        open_npz(tmp_path / "missing.npz")


def test_load_arrays_takes_0d_and_strings(tmp_path):
    np.savez(tmp_path / "state.npz", state=np.zeros((2, 3), np.int32), fingerprint=np.array("abc"))
    arrays = load_arrays(tmp_path / "state.npz")
    assert str(arrays["fingerprint"]) == "abc" and arrays["state"].shape == (2, 3)


# ------------------------------------------------------------------------------ every reader, via the CLI
def _with_text_member(path):
    np.savez(path, x=np.zeros((4, 3, 32, 32), np.float32))
    with zipfile.ZipFile(path, "a") as archive:
        archive.writestr("notes.txt", "hi")


@pytest.mark.parametrize("make, message", [
    (_with_text_member, "member 'notes.txt' is not a .npy array"),
    (lambda p: np.savez(p, x=np.zeros((4, 3, 32, 32), np.complex64)), "the imaginary part would be dropped"),
    (lambda p: np.savez(p, x=np.array([None] * 4, dtype=object)), "never loaded"),
    (lambda p: write_zip(p, {"x.npy": npy_header((250_000, 3, 32, 32)) + b"\0" * 64}), "but holds 64 bytes"),
])
def test_calibration_refusals_exit_2(tmp_path, cli, make, message):
    make(tmp_path / "calib.npz")
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "--calib", tmp_path / "calib.npz",
                          "-o", tmp_path / "out")
    assert_one_line_error(code, stderr, message)
    assert "calib.npz" in stderr and not (tmp_path / "out").exists()


def test_extra_0d_array_beside_the_inputs_is_fine(tmp_path, cli):
    x = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=x, extra=np.float32(1.0), y=np.arange(8) % 4)   # the 0-d array used to crash
    code, _, stderr = cli("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "--calib", tmp_path / "calib.npz",
                          "-o", tmp_path / "out")
    assert code == 0, stderr
    assert 0 <= json.loads((tmp_path / "out" / "report.json").read_text())["accuracy"]["before"] <= 1


def test_fifo_calibration_returns_at_once(tmp_path):
    os.mkfifo(tmp_path / "calib.npz")
    code, _, stderr, _ = run_measured("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "--calib",
                                      tmp_path / "calib.npz", "-o", tmp_path / "out", timeout=120)
    assert_one_line_error(code, stderr, "not a regular file")
    assert not (tmp_path / "out").exists()


def test_huge_calibration_file_is_read_partially(tmp_path):
    # 250,000 images of 3x32x32 float32: 3.07 GB declared, 3 MB on disk; convert reads the first 64
    path = tmp_path / "calib.npz"
    row = 3 * 32 * 32 * 4
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED, compresslevel=1) as archive:
        with archive.open("x.npy", "w", force_zip64=True) as member:
            member.write(npy_header((250_000, 3, 32, 32)))
            block = bytes(row * 5000)
            for _ in range(50):
                member.write(block)
    code, stdout, stderr, peak = run_measured("convert", "zoo:cnn-tiny", "--passes", "fold-bn", "--calib", path,
                                              "-o", tmp_path / "out")
    assert code == 0, stderr
    assert peak < PEAK_RSS_LIMIT, f"peak RSS {peak / 1e9:.2f} GB"
    assert (tmp_path / "out" / "model.onnx").exists()


def test_training_data_and_streams_go_through_the_reader(tmp_path, cli):
    np.savez(tmp_path / "complex.npz", x=np.zeros((10, 3), np.complex64), y=np.arange(10) % 2)
    code, _, stderr = cli("train-logic", "--data", tmp_path / "complex.npz", "-o", tmp_path / "o")
    assert code == 2 and "imaginary part" in stderr and not (tmp_path / "o").exists()
    np.savez(tmp_path / "zero_d.npz", x=np.float32(1))
    code, _, stderr = cli("finetune", "zoo:vit-digits", "--data", tmp_path / "zero_d.npz", "-o", tmp_path / "o")
    assert code == 2 and "array 'x' has shape ()" in stderr and not (tmp_path / "o").exists()
