"""Datasets given as files or in memory: .npz, CSV, image folders, as_splits, and their errors.

Every dataset here is made from 300 real MNIST training images (the first 30 of
each class in shared/datasets/mnist/mnist_5k.csv.gz), written to pytest's
tmp_path in the format under test.
"""

from __future__ import annotations

import ast
import dataclasses
import gzip
import inspect
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrank.data import DATASETS, DataConfig, Splits, as_splits, files, load_dataset
from lowrank.data import config as data_config
from lowrank.data.cache import array_cache_dir
from lowrank.errors import ConfigError, CorruptFileError

PER_CLASS = 30
N = 10 * PER_CLASS


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own array cache under tmp_path."""
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


@pytest.fixture(scope="module")
def digits(datasets_dir) -> tuple[np.ndarray, np.ndarray]:
    """300 real MNIST images, uint8 (300, 28, 28), and their labels, uint8 (300,), in class order."""
    path = datasets_dir / "mnist" / "mnist_5k.csv.gz"
    if not path.is_file():
        pytest.skip(f"{path} not found (set LOWRANK_DATA)")
    lines = gzip.decompress(path.read_bytes()).split(b"\n")
    # the file holds 500 images per class, in class order
    rows = [lines[c * 500 + i] for c in range(10) for i in range(PER_CLASS)]
    table = np.array([r.split(b",") for r in rows]).astype(np.int64)
    x, y = table[:, :784].astype(np.uint8).reshape(-1, 28, 28), table[:, 784].astype(np.uint8)
    assert np.array_equal(y, np.repeat(np.arange(10), PER_CLASS))
    assert len({img.tobytes() for img in x}) == N  # no duplicate images: rows can be matched by content
    return x, y


def pairs(s: Splits, part: str = "train", scale: float = 255.0) -> list[tuple[bytes, int]]:
    """(pixel bytes, label) of each sample of a split loaded with normalize=False."""
    ds = getattr(s, part)
    pix = (ds.x * scale).round().to(torch.uint8).numpy()
    return [(p.tobytes(), int(lab)) for p, lab in zip(pix, ds.y.tolist())]


def source_pairs(x: np.ndarray, y: np.ndarray) -> list[tuple[bytes, int]]:
    return [(img.reshape(-1).tobytes(), int(lab)) for img, lab in zip(x, y)]


def one_line(e: pytest.ExceptionInfo, *parts: object) -> str:
    msg = str(e.value)
    assert "\n" not in msg, msg
    for p in parts:
        assert str(p) in msg, msg
    return msg


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> Path:
    text = "\n".join(",".join(map(str, r)) for r in [header, *rows]) + "\n"
    data = text.encode()
    path.write_bytes(gzip.compress(data, mtime=0) if path.name.endswith(".gz") else data)
    return path


def digits_csv(path: Path, x: np.ndarray, y: np.ndarray, labels: list[object] | None = None) -> Path:
    header = [f"pixel{i}" for i in range(784)] + ["label"]
    labels = y.tolist() if labels is None else labels
    return write_csv(path, header, [img.reshape(-1).tolist() + [lab] for img, lab in zip(x, labels)])


def write_png_folder(root: Path, x: np.ndarray, y: np.ndarray, ext: str = ".png") -> Path:
    from PIL import Image

    for i, (img, lab) in enumerate(zip(x, y)):
        d = root / str(int(lab))
        d.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img, mode="L").save(d / f"{i:04d}{ext}")
    return root


def load(path: Path | str, **kw) -> Splits:
    seed = kw.pop("seed", 0)
    return load_dataset(DataConfig(dataset=str(path), **kw), seed=seed)


# --------------------------------------------------------------------------- DataConfig

def test_new_data_config_fields_defaults_and_docstrings():
    cfg = DataConfig()
    assert (cfg.test_fraction, cfg.label_column, cfg.split_column, cfg.task, cfg.image_mode, cfg.image_size) \
        == (0.2, "label", None, "auto", "auto", None)
    # one docstring right under every field: the CLI turns it into the flag's help
    body = ast.parse(inspect.getsource(data_config.DataConfig)).body[0].body
    docs = {a.target.id for a, b in zip(body, body[1:]) if isinstance(a, ast.AnnAssign)
            and isinstance(b, ast.Expr) and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)}
    assert docs == {f.name for f in dataclasses.fields(DataConfig)}


@pytest.mark.parametrize("field, value", [("test_fraction", 0.0), ("test_fraction", 1.0), ("task", "ranking"),
                                          ("image_mode", "CMYK"), ("image_size", 0), ("label_column", "")])
def test_impossible_options_are_config_errors(field, value, tmp_path):
    with pytest.raises(ConfigError, match=field) as e:
        load(tmp_path / "x.npz", **{field: value})
    one_line(e)


# --------------------------------------------------------------------------- .npz

def test_npz_with_both_splits(digits, tmp_path):
    x, y = digits
    p = tmp_path / "digits.npz"
    np.savez(p, x_train=x[::2], y_train=y[::2], x_test=x[1::2], y_test=y[1::2])
    s = load(p, normalize=False)
    assert (len(s.train), len(s.test), s.val) == (150, 150, None)
    assert s.train.x.shape == (150, 784) and s.train.x.dtype == torch.float32
    assert s.sample_shape == (1, 28, 28) and s.input_dim == 784
    assert s.num_classes == 10 and s.classes is None and s.task == "classification"
    assert s.train.y.dtype == torch.int64 and s.train.y.tolist() == y[::2].tolist()
    assert pairs(s, "train") == source_pairs(x[::2], y[::2])  # file order kept, pixels / 255
    assert pairs(s, "test") == source_pairs(x[1::2], y[1::2])
    assert s.sources == [str(p)] and s.name == str(p) and s.input_scale == 255.0
    # uint8 inputs keep one scalar mean/std over all pixels of the training split
    n = load(p, val_fraction=0.2, test_size=40, train_size=100, seed=5)
    assert (len(n.train), len(n.val), len(n.test)) == (80, 20, 40)
    assert isinstance(n.mean, float) and 0.05 < n.mean < 0.3 and 0.2 < n.std < 0.5
    assert n.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert torch.allclose(n.test.x, n.prepare_inputs(x[1::2][:40]), atol=1e-5)


def test_npz_pool_is_split_by_test_fraction_deterministically(digits, tmp_path):
    x, y = digits
    p = tmp_path / "pool.npz"
    np.savez(p, x=x.reshape(N, -1).astype(np.float32), y=y.astype(np.int64))
    a = load(p, normalize=False, seed=1)
    assert (len(a.train), len(a.test)) == (240, 60)
    assert a.sample_shape == (784,) and a.input_scale == 1.0
    # the two splits are disjoint and together are exactly the source rows, labels attached
    both = pairs(a, "train", 1.0) + pairs(a, "test", 1.0)
    assert sorted(both) == sorted(source_pairs(x, y))
    where = {pix: i for i, (pix, _) in enumerate(source_pairs(x, y))}
    for part in ("train", "test"):  # each split keeps the file's order
        rows = [where[pix] for pix, _ in pairs(a, part, 1.0)]
        assert rows == sorted(rows)
    again = load(p, normalize=False, seed=1)
    assert torch.equal(again.test.x, a.test.x) and torch.equal(again.train.y, a.train.y)
    other = load(p, normalize=False, seed=2)
    assert not torch.equal(other.test.y, a.test.y)
    c = load(p, normalize=False, seed=1, test_fraction=0.5)
    assert (len(c.train), len(c.test)) == (150, 150)


def test_npz_float_inputs_are_standardised_per_feature(digits, tmp_path):
    x, y = digits
    p = tmp_path / "pool.npz"
    flat = x.reshape(N, -1).astype(np.float32)
    np.savez(p, x=flat, y=y)
    s = load(p)  # normalize defaults to True
    assert isinstance(s.mean, list) and len(s.mean) == 784 and len(s.std) == 784
    raw = load(p, normalize=False)
    tr = raw.train.x.double()
    assert np.allclose(s.mean, tr.mean(0).numpy()) and s.mean[0] == 0.0
    constant = (tr.max(0).values == tr.min(0).values).numpy()
    assert constant[0] and np.all(np.array(s.std)[constant] == 1.0)  # blank corner pixel: std 1
    assert torch.all(s.train.x[:, 0] == 0)
    assert s.train.x[:, ~torch.from_numpy(constant)].std(0, correction=0).sub(1).abs().max() < 1e-4
    assert torch.allclose(s.test.x, (raw.test.x - torch.tensor(s.mean).float()) / torch.tensor(s.std).float(),
                          atol=1e-5)
    assert torch.allclose(s.prepare_inputs(raw.test.x), s.test.x, atol=1e-6)


@pytest.mark.parametrize("shift, classes", [(1, [str(i) for i in range(1, 11)]), (0, None)])
def test_npz_labels_are_renumbered_to_0_k(digits, tmp_path, shift, classes):
    x, y = digits
    p = tmp_path / "l.npz"
    np.savez(p, x_train=x[:200], y_train=y[:200].astype(np.int64) + shift,
             x_test=x[200:], y_test=y[200:].astype(np.int64) + shift)
    s = load(p, normalize=False)
    assert s.num_classes == 10 and s.classes == classes
    assert s.train.y.tolist() == y[:200].tolist() and s.test.y.tolist() == y[200:].tolist()


def test_npz_odd_labels_text_labels_and_float_targets(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    p = tmp_path / "t.npz"
    np.savez(p, x=x, y=np.where(np.arange(40) % 2, 7, -1))
    s = load(p, normalize=False)
    assert s.num_classes == 2 and s.classes == ["-1", "7"]
    assert sorted(set(s.train.y.tolist())) == [0, 1]
    np.savez(p, x=x, y=np.array(["dog", "cat", "emu", "cat"] * 10))
    s = load(p, normalize=False)
    assert s.classes == ["cat", "dog", "emu"] and s.num_classes == 3
    target = x.sum(1)
    np.savez(p, x=x, y=target)
    s = load(p, normalize=True)
    assert s.num_classes == 0 and s.classes is None and s.task == "regression"
    assert s.train.y.dtype == torch.float32
    got = sorted(s.train.y.tolist() + s.test.y.tolist())  # targets are not normalized
    assert np.allclose(got, np.sort(target.astype(np.float32)))
    s = load(p, task="regression", normalize=False)
    assert s.num_classes == 0
    np.savez(p, x=x, y=np.arange(40) % 4)
    assert load(p, task="regression").train.y.dtype == torch.float32


# --------------------------------------------------------------------------- CSV

@pytest.mark.parametrize("name", ["digits.csv", "digits.csv.gz"])
def test_csv_table_matches_the_source_and_the_npz_split(digits, tmp_path, name):
    x, y = digits
    p = digits_csv(tmp_path / name, x, y)
    s = load(p, normalize=False, seed=3)
    assert (len(s.train), len(s.test)) == (240, 60)
    assert s.sample_shape == (784,) and s.num_classes == 10 and s.classes is None
    assert s.train.x.max().item() == 255.0  # CSV values are taken as they are
    assert sorted(pairs(s, "train", 1.0) + pairs(s, "test", 1.0)) == sorted(source_pairs(x, y))
    # same rows, same seed: the same test set as the same data stored as .npz
    q = tmp_path / "same.npz"
    np.savez(q, x=x.reshape(N, -1).astype(np.float32), y=y)
    n = load(q, normalize=False, seed=3)
    assert torch.equal(n.test.x, s.test.x) and torch.equal(n.test.y, s.test.y)
    assert sorted(s.sources) == [str(p)]


def test_csv_split_column_text_labels_and_label_column(digits, tmp_path):
    x, y = digits
    names = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
    header = ["split"] + [f"p{i}" for i in range(784)] + ["digit"]
    split = ["test" if i % 5 == 0 else "train" for i in range(N)]
    rows = [[split[i]] + x[i].reshape(-1).tolist() + [names[y[i]]] for i in range(N)]
    p = write_csv(tmp_path / "named.csv", header, rows)
    s = load(p, label_column="digit", split_column="split", normalize=False)
    assert (len(s.train), len(s.test)) == (240, 60)
    assert s.classes == sorted(names) and s.num_classes == 10
    got = [s.classes[i] for i in s.test.y.tolist()]
    assert got == [names[v] for v in y[::5]]
    assert torch.equal(s.test.x, torch.from_numpy(x[::5].reshape(60, -1).astype(np.float32)))


def test_csv_regression_target(digits, tmp_path):
    x, y = digits
    target = x.reshape(N, -1).mean(1) / 255.0  # mean pixel intensity
    header = [f"p{i}" for i in range(784)] + ["ink"]
    rows = [img.reshape(-1).tolist() + [f"{t:.6f}"] for img, t in zip(x, target)]
    p = write_csv(tmp_path / "ink.csv", header, rows)
    s = load(p, label_column="ink", seed=4)
    assert s.num_classes == 0 and s.classes is None and s.task == "regression"
    assert s.train.y.dtype == torch.float32
    assert isinstance(s.mean, list) and len(s.mean) == 784
    got = np.sort(np.concatenate([s.train.y.numpy(), s.test.y.numpy()]))
    assert np.allclose(got, np.sort(target), atol=1e-6)  # never normalized
    assert load(p, label_column="ink", task="auto").train.y.dtype == torch.float32
    with pytest.raises(ConfigError, match="whole-number") as e:
        load(p, label_column="ink", task="classification")
    one_line(e, p)


# --------------------------------------------------------------------------- image folders

def test_image_folder_of_pngs(digits, tmp_path):
    x, y = digits
    root = write_png_folder(tmp_path / "digits", x, y)
    s = load(root, normalize=False, seed=0)
    assert s.classes == [str(i) for i in range(10)] and s.num_classes == 10
    assert s.sample_shape == (1, 28, 28) and s.input_dim == 784 and s.sources == [str(root)]
    assert (len(s.train), len(s.test)) == (240, 60)
    assert sorted(pairs(s, "train") + pairs(s, "test")) == sorted(source_pairs(x, y))
    # the same seed splits the folder like the same rows stored as .npz
    q = tmp_path / "same.npz"
    np.savez(q, x=x, y=y)
    assert torch.equal(load(q, normalize=False).test.x, s.test.x)
    n = load(root, val_fraction=0.25)
    assert (len(n.train), len(n.val), len(n.test)) == (180, 60, 60)
    assert isinstance(n.mean, float) and n.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)


def test_image_folder_with_train_and_test_folders(digits, tmp_path):
    x, y = digits
    root = tmp_path / "split"
    train = np.arange(N) % 3 != 0
    write_png_folder(root / "train", x[train], y[train])
    write_png_folder(root / "test", x[~train], y[~train])
    (root / "README.txt").write_text("not an image")
    (root / "train" / "3" / "notes.txt").write_text("ignored")
    s = load(root, normalize=False, test_size=50)
    assert (len(s.train), len(s.test)) == (200, 50)
    assert pairs(s, "train") == source_pairs(x[train], y[train])  # class order, then file order
    assert pairs(s, "test") == source_pairs(x[~train], y[~train])[:50]
    assert s.classes == [str(i) for i in range(10)]


def test_image_folder_modes_sizes_and_formats(digits, tmp_path):
    from PIL import Image

    x, y = digits
    root = tmp_path / "mixed"
    write_png_folder(root, x[:40], y[:40])                       # classes 0 and 1
    Image.fromarray(x[40]).save(root / "1" / "grey.gif")        # a palette GIF of greys
    Image.fromarray(x[41]).save(root / "1" / "grey.bmp")
    s = load(root, normalize=False)
    assert s.sample_shape == (1, 28, 28) and len(s.train) + len(s.test) == 42
    assert sorted(pairs(s, "train") + pairs(s, "test")) == sorted(source_pairs(x[:42], y[:40].tolist() + [1, 1]))
    colour = np.stack([x[42], x[42] // 2, 255 - x[42]], axis=-1)
    Image.fromarray(colour, mode="RGB").save(root / "0" / "colour.jpg", quality=100)
    rgb = load(root, normalize=False)
    assert rgb.sample_shape == (3, 28, 28) and rgb.input_dim == 3 * 784
    imgs = torch.cat([rgb.train.x, rgb.test.x]).reshape(-1, 3, 28, 28)
    grey = (imgs[:, 0] == imgs[:, 1]).all(-1).all(-1) & (imgs[:, 1] == imgs[:, 2]).all(-1).all(-1)
    assert grey.sum().item() == 42  # single-channel images repeated in R, G and B
    forced = load(root, normalize=False, image_mode="L")
    assert forced.sample_shape == (1, 28, 28)
    small = load(root, normalize=False, image_size=14)
    assert small.sample_shape == (3, 14, 14)
    Image.fromarray(x[43][:, :20]).save(root / "1" / "narrow.png")
    with pytest.raises(ConfigError) as e:
        load(root)
    msg = one_line(e, root / "1" / "narrow.png", "20x28", "28x28", "image_size")
    assert "first image" in msg
    assert load(root, image_size=28, normalize=False).sample_shape == (3, 28, 28)


def test_image_folder_cache(digits, tmp_path, monkeypatch):
    x, y = digits
    root = write_png_folder(tmp_path / "digits", x[:60], y[:60])
    first = load(root, normalize=False)
    entries = sorted(array_cache_dir().glob("*.npy"))
    assert len(entries) == 2

    def boom(*a, **k):
        raise AssertionError("images decoded although the cache holds them")

    monkeypatch.setattr(files, "decode_layout", boom)
    second = load(root, normalize=False)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert second.classes == first.classes and second.sample_shape == first.sample_shape
    monkeypatch.undo()
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    entries[0].write_bytes(b"\x93NUMPY damaged")               # damaged: decoded again
    third = load(root, normalize=False)
    assert torch.equal(first.train.x, third.train.x)
    np.save(entries[0], np.zeros((2, 3), np.uint8))            # wrong shape: decoded again
    assert torch.equal(load(root, normalize=False).test.x, first.test.x)
    # replacing an image changes the key
    from PIL import Image
    victim = root / "0" / "0000.png"
    Image.fromarray(255 - x[0]).save(victim)
    os.utime(victim, ns=(victim.stat().st_atime_ns, victim.stat().st_mtime_ns + 10 ** 9))
    changed = load(root, normalize=False)
    assert not torch.equal(torch.cat([changed.train.x, changed.test.x]), torch.cat([first.train.x, first.test.x]))
    assert len(list(array_cache_dir().glob("*.npy"))) == 4


def test_csv_cache(digits, tmp_path, monkeypatch):
    x, y = digits
    p = digits_csv(tmp_path / "d.csv", x[:50], y[:50])
    first = load(p, normalize=False)
    monkeypatch.setattr(files, "read_csv_table", lambda *a, **k: pytest.fail("CSV parsed again"))
    second = load(p, normalize=False)
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    # a different label column is a different decoding: not served from the same entry
    with pytest.raises(pytest.fail.Exception):
        load(p, label_column="pixel0")


# --------------------------------------------------------------------------- as_splits

def test_as_splits_tensors_and_datasets(digits):
    x, y = digits
    xt = torch.from_numpy(x).float().div(255).unsqueeze(1)      # (300, 1, 28, 28)
    s = as_splits((xt, torch.from_numpy(y).long()), seed=1)
    assert s.sample_shape == (1, 28, 28) and s.input_dim == 784 and s.name == "custom"
    assert (len(s.train), len(s.test)) == (240, 60) and s.num_classes == 10 and s.classes is None
    assert sorted(pairs(s, "train") + pairs(s, "test")) == sorted(source_pairs(x, y))
    assert torch.equal(as_splits((xt, torch.from_numpy(y).long()), seed=1).test.x, s.test.x)
    ds = torch.utils.data.TensorDataset(xt[:100], torch.from_numpy(y[:100]).long() + 5)
    test = torch.utils.data.TensorDataset(xt[100:150], torch.from_numpy(y[100:150]).long() + 5)
    d = as_splits(ds, test, val_fraction=0.2, name="digits", normalize=True)
    assert (len(d.train), len(d.val), len(d.test)) == (80, 20, 50) and d.name == "digits"
    # labels 5..9 (train has 5..8, test 8 and 9) are renumbered together: 0..4
    assert d.classes == ["5", "6", "7", "8", "9"] and d.test.y.tolist() == y[100:150].tolist()
    assert d.sample_shape == (1, 28, 28) and isinstance(d.mean, list)
    r = as_splits((np.random.default_rng(0).normal(size=(30, 4)), np.linspace(0, 1, 30)))
    assert r.num_classes == 0 and r.train.y.dtype == torch.float32 and r.sample_shape == (4,)
    u = as_splits((x, y))                                       # uint8: scaled to [0, 1] like images
    assert u.input_scale == 255.0 and u.train.x.max().item() == 1.0 and u.sample_shape == (28, 28)


def test_as_splits_bad_input():
    with pytest.raises(ConfigError, match="10 samples but y has 9") as e:
        as_splits((torch.zeros(10, 2), torch.zeros(9)))
    one_line(e)
    with pytest.raises(ConfigError, match="expected a torch Dataset"):
        as_splits("data")
    ragged = [(torch.zeros(3), 0), (torch.zeros(4), 1)]

    class Ragged(torch.utils.data.Dataset):
        def __len__(self):
            return 2

        def __getitem__(self, i):
            return ragged[i]

    with pytest.raises(ConfigError, match="item 1's x has shape"):
        as_splits(Ragged())


# --------------------------------------------------------------------------- bad input

def test_missing_paths_and_unknown_names(tmp_path):
    for missing in (tmp_path / "gone.npz", tmp_path / "gone.csv.gz", tmp_path / "no-folder"):
        with pytest.raises(ConfigError) as e:
            load(missing)
        msg = one_line(e, missing, "not found")
        assert all(name in msg for name in DATASETS)
    with pytest.raises(ConfigError) as e:
        load_dataset(DataConfig(dataset="digits-v2"))
    msg = one_line(e, "'digits-v2' is not one of the registered datasets")
    assert all(name in msg for name in DATASETS)
    other = tmp_path / "notes.txt"
    other.write_text("1,2,3")
    with pytest.raises(ConfigError, match=r"\.npz, \.csv or \.csv\.gz") as e:
        load(other)
    one_line(e, other)


def test_relative_path_is_found_in_data_dir(tmp_path, monkeypatch):
    np.savez(tmp_path / "rel.npz", x=np.arange(20.0).reshape(10, 2), y=np.arange(10) % 2)
    monkeypatch.chdir(tmp_path.parent)
    s = load_dataset(DataConfig(dataset="rel.npz", data_dir=str(tmp_path), normalize=False))
    assert s.sources == [str(tmp_path / "rel.npz")] and len(s.train) == 8


def test_npz_errors(tmp_path):
    p = tmp_path / "bad.npz"
    np.savez(p, images=np.zeros((3, 2)), targets=np.zeros(3))
    with pytest.raises(CorruptFileError) as e:
        load(p)
    one_line(e, p, "x_train, y_train, x_test, y_test or x, y", "images, targets")
    np.savez(p, x_train=np.zeros((3, 2)), y_train=np.zeros(3))
    with pytest.raises(CorruptFileError, match="the file has x_train, y_train"):
        load(p)
    np.savez(p, x=np.zeros((5, 2)), y=np.zeros(4, np.int64))
    with pytest.raises(CorruptFileError) as e:
        load(p)
    one_line(e, p, "5 samples", "4 targets")
    np.savez(p, x_train=np.zeros((3, 2)), y_train=np.zeros(3), x_test=np.zeros((2, 2)), y_test=np.zeros(3))
    with pytest.raises(CorruptFileError, match="'x_test' has 2 samples but 'y_test' has 3"):
        load(p)
    np.savez(p, x=np.array([{"a": 1}, None], dtype=object), y=np.zeros(2))  # would need unpickling
    with pytest.raises(CorruptFileError, match="never unpickled") as e:
        load(p)
    one_line(e, p, "'x'")
    p.write_bytes(b"just some text")
    with pytest.raises(CorruptFileError, match="not a .npz archive") as e:
        load(p)
    one_line(e, p)
    np.save(tmp_path / "single.npy", np.zeros(3))
    (tmp_path / "single.npy").rename(p)
    with pytest.raises(CorruptFileError, match="single .npy array"):
        load(p)
    np.savez(p, x=np.array([[1.0, np.nan], [0.0, 1.0]]), y=np.zeros(2))
    with pytest.raises(CorruptFileError, match="sample 0 holds a NaN"):
        load(p)


def test_csv_errors(digits, tmp_path):
    x, y = digits
    p = tmp_path / "bad.csv"
    digits_csv(p, x[:5], y[:5])
    with pytest.raises(ConfigError) as e:
        load(p, label_column="digit")
    one_line(e, p, "'digit'", "'pixel0', 'pixel1'", "785 columns in all", "label_column")
    rows = p.read_text().splitlines()
    cells = rows[3].split(",")
    cells[100] = "n/a"
    rows[3] = ",".join(cells)
    p.write_text("\n".join(rows) + "\n")
    with pytest.raises(CorruptFileError) as e:
        load(p)
    one_line(e, p, "line 4", "'pixel100'", "'n/a'")
    write_csv(p, ["a", "b", "label"], [[1, 2, 0], [3, "", 1]])
    with pytest.raises(CorruptFileError, match=r"line 3, column 'b' \(column 2\).*found ''"):
        load(p)
    write_csv(p, ["a", "b", "label"], [[1, 2, 0], [3, 4]])
    with pytest.raises(CorruptFileError, match="line 3: expected 3 comma-separated fields.*found 2"):
        load(p)
    write_csv(p, ["a", "b", "label"], [[1, "inf", 0]])
    with pytest.raises(CorruptFileError, match="line 2, column 'b'.*finite number"):
        load(p)
    write_csv(p, ["a", "split", "label"], [[1, "train", 0], [2, "tset", 1]])
    with pytest.raises(CorruptFileError, match="line 3, column 'split'.*train or test.*'tset'"):
        load(p, split_column="split")
    with pytest.raises(ConfigError, match="no column named 'fold'"):
        load(p, split_column="fold")
    p.write_bytes(b"")
    with pytest.raises(CorruptFileError, match="empty") as e:
        load(p)
    one_line(e, p)
    p.write_text("a,b,label\n\n")
    with pytest.raises(CorruptFileError, match="no data rows") as e:
        load(p)
    one_line(e, p)
    headerless = tmp_path / "headerless.csv"
    headerless.write_text("\n".join(",".join(map(str, img.reshape(-1).tolist() + [lab]))
                                    for img, lab in zip(x[:3], y[:3])))
    with pytest.raises(CorruptFileError, match="header") as e:
        load(headerless)
    one_line(e, headerless, "line 1")
    gz = tmp_path / "broken.csv.gz"
    gz.write_bytes(gzip.compress(b"a,label\n1,0\n" * 50)[:30])
    with pytest.raises(CorruptFileError, match="gzip") as e:
        load(gz)
    one_line(e, gz)


def test_image_folder_errors(digits, tmp_path):
    x, y = digits
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="no class sub-folders") as e:
        load(empty)
    one_line(e, empty)
    (empty / "cats").mkdir()
    (empty / "cats" / "readme.txt").write_text("no images here")
    with pytest.raises(ConfigError, match="holds no images") as e:
        load(empty)
    one_line(e, empty / "cats")
    root = write_png_folder(tmp_path / "digits", x[:20], y[:20])
    bad = root / "0" / "0003.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(CorruptFileError, match="cannot decode the image") as e:
        load(root)
    one_line(e, bad)
    good = (root / "0" / "0004.png").read_bytes()
    bad.write_bytes(good[: len(good) // 2])  # truncated
    with pytest.raises(CorruptFileError) as e:
        load(root)
    one_line(e, bad)
    split = tmp_path / "split"
    write_png_folder(split / "train", x[:40], y[:40])          # classes 0 and 1
    write_png_folder(split / "test", x[30:35], y[30:35])      # class 1 is in train too: fine
    (split / "test" / "7").mkdir()
    (split / "test" / "7" / "x.png").write_bytes(good)
    with pytest.raises(ConfigError, match="'7' has no counterpart") as e:
        load(split)
    one_line(e, split / "test")
    with pytest.raises(ConfigError, match="classification"):
        load(root, task="regression")


def test_registered_datasets_record_their_sample_shape(datasets_dir):
    if not (datasets_dir / "mnist" / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("real MNIST not found")
    s = load_dataset(DataConfig(dataset="mnist", test_size=10, train_size=20))
    assert s.sample_shape == (1, 28, 28) and s.classes is None and s.input_scale == 255.0
    assert isinstance(s.mean, float)
    with pytest.raises(ConfigError, match="sample_shape"):
        Splits(train=s.train, test=s.test, val=None, name="x", num_classes=10, input_dim=784,
               sample_shape=(1, 28, 27))
