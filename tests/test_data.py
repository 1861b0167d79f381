"""The dataset layer: IDX, MNIST-CSV and Hoda readers, the registry, the array cache."""

from __future__ import annotations

import dataclasses
import gzip
import os
import re
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrank.config import DataConfig
from lowrank.data import (DATASETS, ArrayDataset, Splits, decode_hoda, find_dataset, list_datasets,
                          load_dataset, read_bytes, read_hoda, read_idx, read_idx_images,
                          read_idx_labels, read_mnist_csv, search_places)
from lowrank.data import registry
from lowrank.data.cache import array_cache_dir
from lowrank.errors import ConfigError, CorruptFileError, DatasetNotFoundError
from test_data_helpers import cdb_bytes, csv_bytes, idx_bytes, random_binary_images, rle_rows, write_idx

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
needs_fashion = pytest.mark.skipif(
    not (FASHION_SYSTEM / "train-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed at /usr/share/datasets/fashion-mnist "
           "(apt-get install dataset-fashion-mnist)",
)


@pytest.fixture(autouse=True)
def _isolated_cache(tmp_path, monkeypatch):
    """Every test gets its own array cache under tmp_path; ~/.cache is never touched."""
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))


@pytest.fixture
def mnist_dir(datasets_dir) -> Path:
    d = datasets_dir / "mnist"
    if not (d / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"real MNIST files not found in {d} (set LOWRANK_DATA)")
    return d


@pytest.fixture
def hoda_dir(datasets_dir) -> Path:
    d = datasets_dir / "hoda"
    if not (d / "RemainingSamples.cdb").is_file():
        pytest.skip(f"real Hoda files not found in {d} (set LOWRANK_DATA)")
    return d


def names_file_and_offset(err: pytest.ExceptionInfo, path: Path, offset: int | None = None) -> None:
    msg = str(err.value)
    assert str(path) in msg, msg
    if offset is None:
        assert re.search(r"byte \d+", msg), msg
    else:
        assert f"byte {offset}" in msg, msg


# --------------------------------------------------------------------------- IDX

def test_idx_reads_real_mnist_test_set_gzip_and_plain(mnist_dir, tmp_path):
    x = read_idx_images(mnist_dir / "t10k-images-idx3-ubyte.gz")
    y = read_idx_labels(mnist_dir / "t10k-labels-idx1-ubyte.gz")
    assert x.shape == (10000, 28, 28) and x.dtype == np.uint8
    assert y.shape == (10000,) and y.dtype == np.uint8
    assert y.min() == 0 and y.max() == 9
    counts = np.bincount(y, minlength=10)
    assert counts.sum() == 10000 and counts.min() > 800
    assert x.max() == 255 and x[:, 0, 0].max() == 0  # white digits on black, empty corners
    plain = tmp_path / "t10k-labels-idx1-ubyte"
    plain.write_bytes(gzip.decompress((mnist_dir / "t10k-labels-idx1-ubyte.gz").read_bytes()))
    assert np.array_equal(read_idx(plain, ndim=1), y)
    assert x.flags.writeable  # read_idx returns a copy, not a view of the file's bytes


@pytest.mark.parametrize("gz", [False, True])
def test_idx_round_trip(tmp_path, gz):
    a = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    p = write_idx(tmp_path / "a.idx", a, gz)
    assert np.array_equal(read_idx(p), a)
    assert np.array_equal(read_idx_images(p), a)


def test_idx_wrong_magic(tmp_path):
    p = tmp_path / "labels"
    p.write_bytes(idx_bytes(np.zeros(5, np.uint8)))
    with pytest.raises(CorruptFileError, match="expected IDX magic 0x00000803") as e:
        read_idx_images(p)
    names_file_and_offset(e, p, 0)
    p.write_bytes(b"\x00\x00\x0d\x01" + bytes(8))
    with pytest.raises(CorruptFileError, match="found 0x00000d01") as e:
        read_idx(p)
    names_file_and_offset(e, p, 0)


def test_idx_truncated_header(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(bytes([0, 0, 8, 3]) + b"\x00\x00\x00\x02\x00\x00")
    with pytest.raises(CorruptFileError, match="truncated header") as e:
        read_idx(p)
    names_file_and_offset(e, p, 10)
    p.write_bytes(b"\x00\x00")
    with pytest.raises(CorruptFileError, match="magic") as e:
        read_idx(p)
    names_file_and_offset(e, p, 0)


def test_idx_short_and_long_data(tmp_path):
    raw = idx_bytes(np.ones((3, 4, 4), np.uint8))
    p = tmp_path / "x.gz"
    p.write_bytes(gzip.compress(raw[:-5]))
    with pytest.raises(CorruptFileError, match="data too short.*need 48 bytes from byte 16 to byte 64") as e:
        read_idx(p)
    names_file_and_offset(e, p, 59)
    p.write_bytes(raw + b"xyz")
    with pytest.raises(CorruptFileError, match="3 extra bytes") as e:
        read_idx(p)
    names_file_and_offset(e, p, 64)


def test_idx_bad_and_truncated_gzip(tmp_path):
    good = gzip.compress(idx_bytes(np.arange(4000, dtype=np.int64).astype(np.uint8)))
    p = tmp_path / "x.gz"
    bad = bytearray(good)
    bad[len(bad) // 2] ^= 0xFF
    bad[len(bad) // 2 + 1] ^= 0x5A
    p.write_bytes(bytes(bad))
    with pytest.raises(CorruptFileError, match="corrupt gzip stream") as e:
        read_idx(p)
    names_file_and_offset(e, p)
    p.write_bytes(good[: len(good) // 2])
    with pytest.raises(CorruptFileError, match="truncated") as e:
        read_idx(p)
    names_file_and_offset(e, p, len(good) // 2)
    p.write_bytes(good + b"junk")
    with pytest.raises(CorruptFileError, match="after the gzip stream") as e:
        read_idx(p)
    names_file_and_offset(e, p, len(good))
    p.write_bytes(good + good[:0] + bytes(16))  # zero padding after the stream is accepted
    assert len(read_idx(p)) == 4000


def test_read_bytes_concatenated_gzip_members(tmp_path):
    p = tmp_path / "x"
    p.write_bytes(gzip.compress(b"abc") + gzip.compress(b"def"))
    assert read_bytes(p) == b"abcdef"


def test_missing_file_is_corrupt_file_error(tmp_path):
    with pytest.raises(CorruptFileError, match="cannot read"):
        read_idx(tmp_path / "nope")


# --------------------------------------------------------------------------- MNIST CSV

def test_mnist_csv_real_file(mnist_dir):
    x, y = read_mnist_csv(mnist_dir / "mnist_5k.csv.gz")
    assert x.shape == (5000, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 500))
    assert x.max() == 255 and x[:, 0, 0].max() == 0


@pytest.mark.parametrize("header", [False, True])
def test_mnist_csv_round_trip_plain(tmp_path, header):
    rng = np.random.default_rng(0)
    imgs = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    labs = np.array([3, 0, 9], np.uint8)
    p = tmp_path / "m.csv"
    p.write_bytes(csv_bytes(imgs, labs, header=header))
    x, y = read_mnist_csv(p)
    assert np.array_equal(x, imgs) and np.array_equal(y, labs)


@pytest.mark.parametrize("line, edit, pattern", [
    (2, lambda r: r[:-2], r"line 2: expected 785 comma-separated fields .* found 784"),
    (3, lambda r: r.replace("0,", "x,", 1), r"line 3, field 1: expected an integer pixel 0-255, found 'x'"),
    (1, lambda r: "300," + r.split(",", 1)[1], r"line 1, field 1: expected an integer pixel 0-255, found 300"),
    (2, lambda r: r.rsplit(",", 1)[0] + ",12", r"line 2, field 785: expected an integer label 0-9, found 12"),
    (3, lambda r: r.replace("0,", ",", 1), r"line 3, field 1: expected an integer pixel"),
])
def test_mnist_csv_errors_name_file_and_line(tmp_path, line, edit, pattern):
    imgs = np.zeros((3, 28, 28), np.uint8)
    rows = csv_bytes(imgs, [1, 2, 3]).decode().splitlines()
    rows[line - 1] = edit(rows[line - 1])
    p = tmp_path / "bad.csv.gz"
    p.write_bytes(gzip.compress("\n".join(rows).encode()))
    with pytest.raises(CorruptFileError, match=pattern) as e:
        read_mnist_csv(p)
    assert str(p) in str(e.value)


def test_mnist_csv_empty_and_bad_gzip(tmp_path):
    p = tmp_path / "e.csv"
    p.write_bytes(b"\n\n")
    with pytest.raises(CorruptFileError, match="line 1") as e:
        read_mnist_csv(p)
    assert str(p) in str(e.value)
    p.write_bytes(b"\x1f\x8b\x08\x00garbagegarbage")
    with pytest.raises(CorruptFileError, match="gzip") as e:
        read_mnist_csv(p)
    names_file_and_offset(e, p)


# --------------------------------------------------------------------------- Hoda

def test_hoda_real_files(hoda_dir):
    t = time.perf_counter()
    head, rec = decode_hoda(read_bytes(hoda_dir / "RemainingSamples.cdb"))
    x, y = read_hoda(hoda_dir / "Test 20000.cdb")
    elapsed = time.perf_counter() - t
    assert head.count == 22352 and len(rec) == 22352
    assert (head.year, head.month, head.day, head.width, head.height) == (2005, 9, 6, 0, 0)
    assert np.array_equal(np.bincount(rec.labels, minlength=10), head.letter_counts[:10])
    assert rec.labels.max() == 9
    assert x.shape == (20000, 28, 28) and x.dtype == np.uint8
    assert np.array_equal(np.bincount(y, minlength=10), np.full(10, 2000))
    assert x.max() == 255 and x.min() == 0
    # white digit on black: the ink covers well under half of the picture
    assert 0.05 < (x > 127).mean() < 0.5
    assert elapsed < 10, f"decoding 42k Hoda images took {elapsed:.1f} s"


def test_hoda_first_record_is_a_farsi_four(hoda_dir):
    _, rec = decode_hoda(read_bytes(hoda_dir / "RemainingSamples.cdb"))
    img = rec.image(0)
    assert rec.labels[0] == 4 and img.shape == (38, 20)
    # the file's first row is runs 0 white, 2 black, 12 white, 6 black
    assert img[0].tolist() == [1] * 2 + [0] * 12 + [1] * 6


def test_hoda_round_trip_synthetic(tmp_path):
    rng = np.random.default_rng(1)
    imgs = random_binary_images(rng, 40)
    imgs.append(np.ones((5, 5), np.uint8))   # rows starting with a 0-long white run
    imgs.append(np.zeros((7, 2), np.uint8))  # no ink at all
    labels = [i % 10 for i in range(len(imgs))]
    data = cdb_bytes(imgs, labels)
    _, rec = decode_hoda(data, "mem")
    for i, img in enumerate(imgs):
        assert np.array_equal(rec.image(i), img), i
    assert rec.labels.tolist() == labels
    p = tmp_path / "s.cdb"
    p.write_bytes(data)
    x, y = read_hoda(p)
    assert x.shape == (len(imgs), 28, 28)
    assert x[-2].min() == 255 and x[-1].max() == 0
    x20, _ = read_hoda(p, size=28, margin=4)
    assert x20[:, :4].max() == 0 and x20[:, :, -4:].max() == 0


def test_hoda_resize_keeps_aspect_and_centres(tmp_path):
    tall = np.ones((28, 14), np.uint8)  # a 28x14 bar fills the middle half of the canvas
    p = tmp_path / "t.cdb"
    p.write_bytes(cdb_bytes([tall], [1]))
    x, _ = read_hoda(p)
    assert x[0, :, 7:21].min() == 255 and x[0, :, :7].max() == 0 and x[0, :, 21:].max() == 0


def _cdb_file(tmp_path: Path, data: bytes) -> Path:
    p = tmp_path / "bad.cdb"
    p.write_bytes(data)
    return p


def test_hoda_errors_name_file_and_offset(tmp_path):
    imgs = [np.eye(4, dtype=np.uint8), np.ones((2, 3), np.uint8)]
    good = cdb_bytes(imgs, [1, 2])
    first = 1024
    second = first + 6 + len(rle_rows(imgs[0]))  # start of record 1
    assert good[second] == 0xFF
    cases = [
        (good[:500], "truncated header", 500),
        (good[:first] + b"\xfe" + good[first + 1:], "expected record start byte 0xff, found 0xfe", first),
        (good[:second + 3], "expected a 6-byte record header", second),
        (good[:-1], "expected 4 bytes of pixel data", second + 6),
        (good + b"\x00", "1 extra bytes", len(good)),
        (good[:2] + b"\x0d" + good[3:], "month 13", 2),
        (good[:522] + b"\x01" + good[523:], "image type 0", 522),
    ]
    for data, pattern, offset in cases:
        p = _cdb_file(tmp_path, data)
        with pytest.raises(CorruptFileError, match=re.escape(pattern)) as e:
            read_hoda(p)
        names_file_and_offset(e, p, offset)


def test_hoda_bad_runs(tmp_path):
    head = cdb_bytes([np.ones((2, 4), np.uint8)], [1])[:1024]
    runs = bytes([0, 1, 5, 1, 1])  # 2x4 image, row 0: 0 + 1 + 5 = 6 > width 4; 8 pixels in all
    p = _cdb_file(tmp_path, head + bytes([0xFF, 1, 4, 2, len(runs), 0]) + runs)
    with pytest.raises(CorruptFileError, match="crosses the end of row 0") as e:
        read_hoda(p)
    names_file_and_offset(e, p, 1032)
    img = np.eye(4, dtype=np.uint8)
    good = cdb_bytes([img], [1])
    runs = bytearray(good[1030:])
    runs[-1] = 0  # last row adds to 3, not 4
    p = _cdb_file(tmp_path, good[:1030] + bytes(runs))
    with pytest.raises(CorruptFileError, match="add up to 15") as e:
        read_hoda(p)
    names_file_and_offset(e, p, 1030)


def test_hoda_corrupt_header_count(tmp_path):
    good = cdb_bytes([np.eye(4, dtype=np.uint8)], [1])
    data = good[:6] + (10 ** 6).to_bytes(4, "little") + good[10:]
    p = _cdb_file(tmp_path, data)
    with pytest.raises(CorruptFileError, match="claims 1000000 records") as e:
        read_hoda(p)
    names_file_and_offset(e, p, 6)


# --------------------------------------------------------------------------- registry

def _fake_fashion(folder: Path, n_train: int, label: int) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    imgs = np.full((n_train, 28, 28), label * 20, np.uint8)
    write_idx(folder / "train-images-idx3-ubyte.gz", imgs)
    write_idx(folder / "train-labels-idx1-ubyte.gz", np.full(n_train, label, np.uint8))
    write_idx(folder / "t10k-images-idx3-ubyte.gz", imgs[:2])
    write_idx(folder / "t10k-labels-idx1-ubyte.gz", np.full(2, label, np.uint8))
    return folder


@pytest.fixture
def fake_system(tmp_path, monkeypatch):
    """Make fashion-mnist's system folder a temporary one."""
    system = tmp_path / "system" / "fashion-mnist"
    spec = dataclasses.replace(DATASETS["fashion-mnist"], system_dirs=(system,))
    monkeypatch.setitem(DATASETS, "fashion-mnist", spec)
    return system


def test_search_order_explicit_then_env_then_system_then_cache(tmp_path, monkeypatch, fake_system):
    explicit = _fake_fashion(tmp_path / "explicit" / "fashion-mnist", 3, 1)
    env_root = tmp_path / "env"
    env = _fake_fashion(env_root / "fashion-mnist", 4, 2)
    _fake_fashion(fake_system, 5, 3)
    cache = _fake_fashion(tmp_path / "cache" / "datasets" / "fashion-mnist", 6, 4)
    monkeypatch.setenv("LOWRANK_DATA", str(env_root))
    assert find_dataset("fashion-mnist", tmp_path / "explicit")[0] == explicit
    assert find_dataset("fashion-mnist", explicit)[0] == explicit  # the folder itself
    (tmp_path / "elsewhere").mkdir()  # a data_dir without the files: the search goes on
    assert find_dataset("fashion-mnist", tmp_path / "elsewhere")[0] == env
    with pytest.raises(ConfigError, match=r"data_dir '.*missing' is not a folder"):  # never silently skipped
        find_dataset("fashion-mnist", tmp_path / "missing")
    assert find_dataset("fashion-mnist")[0] == env
    monkeypatch.setenv("LOWRANK_DATA", str(env))  # pointing straight at the dataset folder
    assert find_dataset("fashion-mnist")[0] == env
    monkeypatch.delenv("LOWRANK_DATA")
    assert find_dataset("fashion-mnist")[0] == fake_system
    splits = load_dataset(DataConfig(dataset="fashion-mnist", normalize=False))
    assert len(splits.train) == 5 and splits.train.y.tolist() == [3] * 5
    for f in fake_system.iterdir():
        f.unlink()
    assert find_dataset("fashion-mnist")[0] == cache
    splits = load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(explicit), normalize=False))
    assert len(splits.train) == 3
    assert splits.train.x.max().item() == pytest.approx(20 / 255)


def test_missing_dataset_lists_every_place(tmp_path, monkeypatch, fake_system):
    monkeypatch.setenv("LOWRANK_DATA", str(tmp_path / "env"))
    (tmp_path / "given").mkdir()
    with pytest.raises(DatasetNotFoundError) as e:
        load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "given")))
    msg = str(e.value)
    places = search_places("fashion-mnist", tmp_path / "given")
    for _, p in places:
        assert str(p) in msg
    paths = [str(p) for _, p in places]
    for want in [tmp_path / "given" / "fashion-mnist", tmp_path / "given", tmp_path / "env" / "fashion-mnist",
                 tmp_path / "env", fake_system, tmp_path / "cache" / "datasets" / "fashion-mnist"]:
        assert str(want) in paths
    order = [msg.index(str(p) + " ") for p in (tmp_path / "given", tmp_path / "env", fake_system)]
    assert order == sorted(order)
    assert "apt-get install dataset-fashion-mnist" in msg
    assert "LOWRANK_DATA" in msg and "--data-dir" in msg


def test_mnist_falls_back_to_csv_and_prefers_full_idx(tmp_path, mnist_dir, monkeypatch):
    monkeypatch.delenv("LOWRANK_DATA", raising=False)
    d = tmp_path / "mnist"
    d.mkdir()
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        (d / name).symlink_to(mnist_dir / name)
    with pytest.raises(DatasetNotFoundError, match="mnist_5k.csv.gz"):
        find_dataset("mnist", tmp_path)
    (d / "mnist_5k.csv.gz").symlink_to(mnist_dir / "mnist_5k.csv.gz")
    assert "train_csv" in find_dataset("mnist", tmp_path)[1]
    write_idx(d / "train-images-idx3-ubyte.gz", np.zeros((7, 28, 28), np.uint8))
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(7, np.uint8))
    s = load_dataset(DataConfig(dataset="mnist", data_dir=str(tmp_path), test_size=10, normalize=False))
    assert len(s.train) == 7 and len(s.test) == 10
    assert str((d / "train-images-idx3-ubyte.gz").absolute()) in s.sources


def test_unknown_dataset_and_bad_config():
    with pytest.raises(ConfigError, match="'nope' is not one of"):
        load_dataset(DataConfig(dataset="nope"))
    with pytest.raises(ConfigError, match="val_fraction"):
        load_dataset(DataConfig(dataset="mnist", val_fraction=1.0))
    with pytest.raises(ConfigError, match="train_size"):
        load_dataset(DataConfig(dataset="mnist", train_size=0))


def test_image_label_count_mismatch(tmp_path, fake_system):
    d = _fake_fashion(tmp_path / "f", 3, 1)
    write_idx(d / "train-labels-idx1-ubyte.gz", np.zeros(2, np.uint8))
    with pytest.raises(CorruptFileError, match="3 images but .* 2 labels"):
        load_dataset(DataConfig(dataset="fashion-mnist", data_dir=str(d)))


def test_list_datasets(tmp_path, mnist_dir, monkeypatch):
    infos = {i.name: i for i in list_datasets()}
    assert {"fashion-mnist", "mnist", "hoda"} <= set(infos)
    assert Path(infos["mnist"].found).resolve() == mnist_dir.resolve()
    empty = tmp_path / "empty"
    monkeypatch.setenv("LOWRANK_DATA", str(empty))
    info = {i.name: i for i in list_datasets(tmp_path)}["hoda"]
    assert info.found is None
    assert str(tmp_path / "hoda") in info.searched and str(empty) in info.searched
    assert info.how_to_get


# --------------------------------------------------------------------------- load_dataset

def test_load_mnist_splits(mnist_dir):
    cfg = DataConfig(dataset="mnist", train_size=1000, test_size=300, val_fraction=0.2)
    s = load_dataset(cfg, seed=3)
    assert isinstance(s, Splits) and isinstance(s.train, ArrayDataset)
    assert (len(s.train), len(s.val), len(s.test)) == (800, 200, 300)
    assert s.train.x.dtype == torch.float32 and s.train.x.shape == (800, 784)
    assert s.train.y.dtype == torch.int64 and s.input_dim == 784 and s.num_classes == 10
    assert s.train.x.mean().item() == pytest.approx(0.0, abs=1e-5)
    assert s.train.x.std().item() == pytest.approx(1.0, abs=1e-3)
    assert 0.05 < s.mean < 0.3 and 0.2 < s.std < 0.5
    assert len(s.sources) == 3 and all(Path(p).is_absolute() for p in s.sources)
    again = load_dataset(cfg, seed=3)
    assert torch.equal(again.train.x, s.train.x) and torch.equal(again.val.y, s.val.y)
    other = load_dataset(cfg, seed=4)
    assert not torch.equal(other.train.x, s.train.x)
    # train and validation samples are disjoint
    rows = {bytes(r.numpy()) for r in (s.train.x * 255 * s.std + 255 * s.mean).round().to(torch.uint8)}
    vrows = {bytes(r.numpy()) for r in (s.val.x * 255 * s.std + 255 * s.mean).round().to(torch.uint8)}
    assert len(rows & vrows) <= 2  # MNIST holds a few exact duplicates at most
    raw = load_dataset(DataConfig(dataset="mnist", test_size=300, normalize=False))
    assert (raw.mean, raw.std) == (0.0, 1.0) and len(raw.train) == 5000 and raw.val is None
    assert raw.train.x.min().item() == 0.0 and raw.train.x.max().item() == 1.0
    # the test set is the first test_size samples, normalized with the training statistics
    assert torch.allclose(s.test.x, (raw.test.x - s.mean) / s.std, atol=1e-5)


def test_hoda_dataset_and_cache(hoda_dir, tmp_path, monkeypatch):
    cfg = DataConfig(dataset="hoda", normalize=False)
    t0 = time.perf_counter()
    first = load_dataset(cfg)
    t1 = time.perf_counter()
    assert (len(first.train), len(first.test)) == (22352, 20000)
    assert first.train.y.min().item() == 0 and first.train.y.max().item() == 9
    cached = sorted(p.name for p in array_cache_dir().glob("*.npy"))
    assert len(cached) == 4 and array_cache_dir().parent == tmp_path / "cache"

    def boom(*a, **k):
        raise AssertionError("decoder called although the cache should be used")

    monkeypatch.setattr(registry, "read_hoda", boom)
    t2 = time.perf_counter()
    second = load_dataset(cfg)
    t3 = time.perf_counter()
    assert torch.equal(first.train.x, second.train.x) and torch.equal(first.test.y, second.test.y)
    assert t3 - t2 < t1 - t0
    monkeypatch.undo()
    monkeypatch.setenv("LOWRANK_CACHE", str(tmp_path / "cache"))
    # a damaged cache file is ignored and rebuilt
    victim = next(iter(array_cache_dir().glob("*.0.npy")))
    victim.write_bytes(b"\x93NUMPY garbage")
    third = load_dataset(cfg)
    assert torch.equal(first.train.x, third.train.x) and torch.equal(first.test.x, third.test.x)
    assert np.load(victim, allow_pickle=False).dtype == np.uint8
    # a cache entry of the wrong shape is rejected too
    np.save(victim, np.zeros((2, 3), np.uint8))
    fourth = load_dataset(cfg)
    assert torch.equal(first.test.x, fourth.test.x)


def test_cache_key_follows_file_changes(tmp_path, fake_system):
    d = _fake_fashion(tmp_path / "f", 3, 1)
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(d), normalize=False)
    assert load_dataset(cfg).train.y.tolist() == [1, 1, 1]
    p = write_idx(d / "train-labels-idx1-ubyte.gz", np.array([4, 5, 6], np.uint8))
    st = p.stat()
    os.utime(p, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))  # same size: the mtime tells
    assert load_dataset(cfg).train.y.tolist() == [4, 5, 6]


@needs_fashion
def test_fashion_mnist_from_system_folder(monkeypatch):
    monkeypatch.delenv("LOWRANK_DATA", raising=False)
    s = load_dataset(DataConfig(dataset="fashion-mnist", val_fraction=0.1), seed=0)
    assert (len(s.train), len(s.val), len(s.test)) == (54000, 6000, 10000)
    assert str(FASHION_SYSTEM / "train-images-idx3-ubyte.gz") in s.sources
    assert s.mean == pytest.approx(0.286, abs=2e-3) and s.std == pytest.approx(0.353, abs=2e-3)
    labels = torch.cat([s.train.y, s.val.y])
    assert torch.equal(torch.bincount(labels), torch.full((10,), 6000))
