"""IMDB: the reader (folder and tar.gz, unsafe members refused), the WordPiece tokenizer, text splits.

Real reviews: a few dozen members copied out of the shared archive into a small archive or
folder of the test's own."""

from __future__ import annotations

import dataclasses
import io
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch

from lowrank.data import DataConfig, load_dataset
from lowrank.data.imdb import load_imdb, locate_imdb, read_imdb_folder, read_imdb_tar
from lowrank.data.prepare import Prepared, build_splits
from lowrank.data.text import text_splits
from lowrank.data.tokenize import (PAD_ID, encode, load_tokenizer, normalized_words, tokenizer_from_json,
                                    train_tokenizer)
from lowrank.errors import ConfigError, CorruptFileError

PER_CLASS = 12


@pytest.fixture(scope="module")
def members(datasets_dir: Path) -> list[tuple[str, bytes]]:
    """The first PER_CLASS reviews of each split and class of the real archive: (name, bytes)."""
    want = {(s, c): PER_CLASS for s in ("train", "test") for c in ("pos", "neg")}
    out: list[tuple[str, bytes]] = []
    with tarfile.open(datasets_dir / "imdb" / "aclImdb_v1_labeled.tar.gz", "r:gz") as tf:
        for m in tf:
            parts = m.name.split("/")
            if len(parts) == 4 and m.isfile() and want.get((parts[1], parts[2]), 0) > 0:
                want[(parts[1], parts[2])] -= 1
                out.append((m.name, tf.extractfile(m).read()))
                if not any(want.values()):
                    break
    assert len(out) == 4 * PER_CLASS
    return out


def write_tar(path: Path, members: list[tuple[str, bytes]], extra: list[tarfile.TarInfo] = ()) -> Path:
    with tarfile.open(path, "w:gz") as tf:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
        for info in extra:
            tf.addfile(info, io.BytesIO(b"x" * info.size) if info.isfile() else None)
    return path


def test_tarball_and_folder_read_the_same_reviews(members, tmp_path):
    tar = write_tar(tmp_path / "aclImdb_v1.tar.gz", members)
    from_tar = read_imdb_tar(tar)
    root = tmp_path / "unpacked"
    for name, data in members:   # the folder layout, written by the test
        p = root / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    from_folder = read_imdb_folder(root / "aclImdb")
    assert locate_imdb(root) == {"folder": root / "aclImdb"}
    assert locate_imdb(tmp_path) == {"archive": tar}
    for a, b in ((from_tar.train, from_folder.train), (from_tar.test, from_folder.test)):
        assert len(a) == 2 * PER_CLASS and a.texts == b.texts
        assert a.labels.tolist() == b.labels.tolist() and sorted(a.labels.tolist()) == [0] * PER_CLASS + [1] * PER_CLASS
        assert a.labels[:PER_CLASS].tolist() != [0] * PER_CLASS    # a fixed shuffle: both classes come early
    pos = dict(members)[next(n for n, _ in members if "/train/pos/" in n)].decode()
    assert pos in [t for t, y in zip(from_tar.train.texts, from_tar.train.labels) if y == 1]
    cached = load_imdb({"archive": tar})            # through the array cache: the same texts
    assert load_imdb({"archive": tar}).train.texts == cached.train.texts == from_tar.train.texts


@pytest.mark.parametrize("bad", ["../evil.txt", "aclImdb/../../evil.txt", "/etc/evil.txt", "link"])
def test_unsafe_member_is_refused(members, tmp_path, bad):
    if bad == "link":
        info = tarfile.TarInfo("aclImdb/train/pos/99999_9.txt")
        info.type, info.linkname = tarfile.SYMTYPE, "/etc/passwd"
    else:
        info = tarfile.TarInfo(bad)
        info.size = 3
    tar = write_tar(tmp_path / "aclImdb_v1.tar.gz", members[:4], [info])
    with pytest.raises(CorruptFileError, match="refused") as e:
        read_imdb_tar(tar)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path.parent / "evil.txt").exists()


def test_truncated_archive_is_one_error(members, tmp_path):
    tar = write_tar(tmp_path / "a.tar.gz", members)
    tar.write_bytes(tar.read_bytes()[:2000])
    with pytest.raises(CorruptFileError, match="cannot be read"):
        read_imdb_tar(tar)


def test_tokenizer_round_trip_on_real_reviews(members, tmp_path):
    texts = [d.decode() for n, d in members if "/train/" in n]
    tok = train_tokenizer(texts, 600)
    assert tok.token_to_id("[PAD]") == PAD_ID and tok.get_vocab_size() <= 600
    vocab = tok.get_vocab()
    assert sorted(vocab, key=vocab.get)[2:] == sorted(set(vocab) - {"[PAD]", "[UNK]"})   # ids in sorted order
    ids = encode(tok, texts, 4096)
    for text, row in zip(texts[:6], ids):
        pieces = [tok.id_to_token(int(i)) for i in row if i != PAD_ID]
        words: list[str] = []
        for p in pieces:   # word pieces back to words: "##" continues the previous word
            if p.startswith("##"):
                words[-1] += p[2:]
            else:
                words.append(p)
        assert words == normalized_words(tok, text)   # nothing lost
        assert "<br" not in tok.decode([int(i) for i in row]) and "[UNK]" not in pieces
    short = encode(tok, texts, 16)
    assert short.shape == (len(texts), 16) and (short != PAD_ID).all()   # long reviews: truncated to 16
    assert (ids[:, :16] == short).all()
    path = tmp_path / "tokenizer.json"
    path.write_text(tok.to_str())
    assert (encode(load_tokenizer(path), texts, 64) == encode(tok, texts, 64)).all()
    path.write_text("{not json")
    with pytest.raises(CorruptFileError, match="not a tokenizers JSON"):
        load_tokenizer(path)


def test_text_splits_train_the_tokenizer_on_the_training_split_only(members):
    train = [(d.decode(), int("/pos/" in n)) for n, d in members if "/train/" in n]
    test = [(d.decode(), int("/pos/" in n)) for n, d in members if "/test/" in n]
    labels, test_labels = np.array([y for _, y in train]), np.array([y for _, y in test])
    cfg = DataConfig(dataset="imdb", val_fraction=0.25, max_length=48, vocab_size=400)
    rows = Prepared(np.arange(len(train), dtype=np.float64)[:, None], labels, np.zeros((len(test), 1)), test_labels,
                    name="rows", num_classes=2)
    val_rows = set(build_splits(rows, dataclasses.replace(cfg, normalize=False), 0).val.x[:, 0].long().tolist())
    marker = "zyxxyzmarker "

    def vocab(marked: set[int], marked_test: bool) -> dict[str, int]:
        texts = [marker * 30 + t if i in marked else t for i, (t, _) in enumerate(train)]
        tests = [marker * 30 + t if marked_test else t for t, _ in test]
        s = text_splits(texts, labels, tests, test_labels, cfg, seed=0, name="imdb", classes=["neg", "pos"],
                        sources=[])
        assert (len(s.train), len(s.val), len(s.test)) == (18, 6, 24)
        assert s.sample_shape == (48,) and s.train.x.dtype == torch.float32 and s.vocab_size == 400
        assert float(s.train.x.max()) < 400 and (s.train.x == torch.round(s.train.x)).all()
        return tokenizer_from_json(s.tokenizer).get_vocab()

    assert "zyxxyzmarker" not in vocab(val_rows, True)                    # in every validation and test text
    train_rows = set(range(len(train))) - val_rows
    assert "zyxxyzmarker" in vocab({min(train_rows), max(train_rows)}, False)   # in two training texts


def test_registered_imdb_loads_from_a_data_dir(members, tmp_path):
    (tmp_path / "imdb").mkdir()
    write_tar(tmp_path / "imdb" / "aclImdb_v1.tar.gz", members)
    s = load_dataset(DataConfig(dataset="imdb", data_dir=str(tmp_path), max_length=32, vocab_size=300,
                                train_size=16, test_size=10))
    assert (len(s.train), len(s.test), s.num_classes, s.classes) == (16, 10, 2, ["neg", "pos"])
    assert s.tokenizer is not None and s.input_scale == 1.0 and s.mean == 0.0
    for bad in ({"max_length": 0}, {"max_length": 9000}, {"vocab_size": 5}, {"tokenizer": ""}):
        with pytest.raises(ConfigError, match=next(iter(bad))):
            DataConfig(dataset="imdb", **bad)
    with pytest.raises(ConfigError, match="more than vocab_size"):
        path = tmp_path / "tok.json"
        path.write_text(s.tokenizer)
        load_dataset(DataConfig(dataset="imdb", data_dir=str(tmp_path), vocab_size=100, tokenizer=str(path)))
