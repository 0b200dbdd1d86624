"""Data intake: scikit-learn digits, .npz, ImageFolder via Pillow, validation, deterministic split."""

import numpy as np
import pytest
import torch
from PIL import Image

from hwact.errors import InputError
from hwact.train.data import check_dataset, load_dataset, split


def test_digits_is_the_real_dataset():
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 1, 8, 8) and ds.x.dtype == torch.float32
    assert ds.y.shape == (1797,) and ds.y.dtype == torch.int64
    assert float(ds.x.min()) == 0.0 and float(ds.x.max()) == 1.0
    assert sorted(set(ds.y.tolist())) == list(range(10)) and ds.classes == [str(i) for i in range(10)]
    assert int((ds.y == 0).sum()) == 178  # scikit-learn digits has 178 zeros


def test_split_is_deterministic_disjoint_and_complete():
    ds = load_dataset("digits")
    train, val = split(ds, 0.2, seed=3)
    again_train, again_val = split(ds, 0.2, seed=3)
    other_train, _ = split(ds, 0.2, seed=4)
    assert (len(train), len(val)) == (1438, 359)
    assert torch.equal(train.x, again_train.x) and torch.equal(val.y, again_val.y)
    assert not torch.equal(train.y, other_train.y)
    rows = {tuple(r.flatten().tolist()) + (int(y),) for r, y in zip(torch.cat([train.x, val.x]), torch.cat([train.y, val.y]))}
    assert len(rows) == len({tuple(r.flatten().tolist()) + (int(y),) for r, y in zip(ds.x, ds.y)})
    with pytest.raises(InputError, match="fraction"):
        split(ds, 1.5)


def test_npz_labeled_and_unlabeled(tmp_path):
    x = np.random.default_rng(0).normal(size=(12, 1, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=x, y=np.arange(12) % 10)
    np.savez(tmp_path / "b.npz", x=x)
    labeled, unlabeled = load_dataset(str(tmp_path / "a.npz")), load_dataset(str(tmp_path / "b.npz"))
    assert labeled.y.tolist() == [i % 10 for i in range(12)] and np.array_equal(labeled.x.numpy(), x)
    assert unlabeled.y is None and not unlabeled.labeled


@pytest.mark.parametrize("arrays, message", [
    ({"z": np.zeros((2, 3))}, "no array named 'x'"),
    ({"x": np.zeros((0, 1, 8, 8))}, "expected \\(N, ...\\) with N > 0"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": np.zeros(2, dtype=np.int64)}, "one label per sample"),
    ({"x": np.zeros((3, 1, 8, 8)), "y": np.zeros(3, dtype=np.float32)}, "integer class labels"),
])
def test_npz_errors(tmp_path, arrays, message):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(InputError, match=message):
        load_dataset(str(tmp_path / "bad.npz"))


def test_not_an_npz_and_missing(tmp_path):
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(InputError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))
    with pytest.raises(InputError, match="no such dataset"):
        load_dataset(str(tmp_path / "missing.npz"))


def _image_folder(root, size=(8, 8), mode="L", per_class=3, classes=("cat", "ant")):
    rng = np.random.default_rng(0)
    for name in classes:
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            channels = 1 if mode == "L" else 3
            pixels = rng.integers(0, 256, size=(size[1], size[0], channels), dtype=np.uint8)
            Image.fromarray(pixels[..., 0] if channels == 1 else pixels, mode).save(root / name / f"{i}.png")
    return root


def test_image_folder_grey_and_rgb(tmp_path):
    grey = load_dataset(str(_image_folder(tmp_path / "grey")))
    assert grey.x.shape == (6, 1, 8, 8) and grey.classes == ["ant", "cat"]
    assert grey.y.tolist() == [0, 0, 0, 1, 1, 1]
    assert 0.0 <= float(grey.x.min()) and float(grey.x.max()) <= 1.0
    first = np.asarray(Image.open(tmp_path / "grey" / "ant" / "0.png"), dtype=np.float32) / 255.0
    assert np.allclose(grey.x[0, 0].numpy(), first)
    rgb = load_dataset(str(_image_folder(tmp_path / "rgb", size=(6, 4), mode="RGB")))
    assert rgb.x.shape == (6, 3, 4, 6)


def test_image_folder_errors(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="empty image folder"):
        load_dataset(str(tmp_path / "empty"))
    (tmp_path / "noimages" / "a").mkdir(parents=True)
    with pytest.raises(InputError, match="no images"):
        load_dataset(str(tmp_path / "noimages"))
    mixed = _image_folder(tmp_path / "mixed")
    Image.fromarray(np.zeros((9, 9), np.uint8), "L").save(mixed / "cat" / "big.png")
    with pytest.raises(InputError, match="9x9 with 1 channel"):
        load_dataset(str(mixed))
    broken = _image_folder(tmp_path / "broken")
    (broken / "cat" / "z.png").write_bytes(b"nope")
    with pytest.raises(InputError, match="not a readable image"):
        load_dataset(str(broken))


def test_check_dataset_against_the_model(tmp_path):
    digits = load_dataset("digits")
    check_dataset(digits, (1, 1, 8, 8), 10)
    with pytest.raises(InputError, match="label 9 is out of range for a model with 5 classes"):
        check_dataset(digits, (1, 1, 8, 8), 5)
    with pytest.raises(InputError, match="1 channel\\(s\\), the model expects 3"):
        check_dataset(digits, (1, 3, 8, 8), 10)
    with pytest.raises(InputError, match="8x8 pixels, the model expects 32x32"):
        check_dataset(digits, (1, 1, 32, 32), 10)
    np.savez(tmp_path / "neg.npz", x=np.zeros((2, 1, 8, 8), np.float32), y=np.array([0, -1]))
    with pytest.raises(InputError, match="label -1 is out of range"):
        check_dataset(load_dataset(str(tmp_path / "neg.npz")), (1, 1, 8, 8), 10)
