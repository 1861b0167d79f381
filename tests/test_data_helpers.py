"""Writers of small IDX, MNIST-CSV and Hoda .cdb files for the data tests (no tests here)."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np


def idx_bytes(a: np.ndarray) -> bytes:
    a = np.asarray(a, np.uint8)
    return bytes([0, 0, 8, a.ndim]) + struct.pack(f">{a.ndim}I", *a.shape) + a.tobytes()


def write_idx(path: Path, a: np.ndarray, gz: bool = True) -> Path:
    raw = idx_bytes(a)
    path.write_bytes(gzip.compress(raw, mtime=0) if gz else raw)
    return path


def csv_bytes(images: np.ndarray, labels: np.ndarray, header: bool = False) -> bytes:
    rows = [",".join(map(str, img.reshape(-1).tolist())) + f",{int(lab)}" for img, lab in zip(images, labels)]
    if header:
        rows.insert(0, ",".join([f"pixel{i}" for i in range(784)] + ["label"]))
    return ("\n".join(rows) + "\n").encode()


def rle_rows(img: np.ndarray) -> bytes:
    """Hoda run-length code of a 0/1 image: per row white, black, white... runs."""
    out = bytearray()
    for row in img:
        colour, run = 0, 0
        for v in row:
            if v == colour:
                run += 1
            else:
                out.append(run)
                colour, run = 1 - colour, 1
        out.append(run)
    return bytes(out)


def cdb_bytes(images: list[np.ndarray], labels: list[int], comment: bytes = b"test") -> bytes:
    counts = [0] * 128
    for lab in labels:
        counts[lab] += 1
    head = struct.pack("<HBBBBI128IB256s245s", 2005, 9, 6, 0, 0, len(images), *counts, 0,
                       comment, b"")
    body = bytearray()
    for img, lab in zip(images, labels):
        data = rle_rows(img)
        body += struct.pack("<BBBBH", 0xFF, lab, img.shape[1], img.shape[0], len(data)) + data
    return head + bytes(body)


def random_binary_images(rng: np.random.Generator, n: int, max_side: int = 40) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        h, w = rng.integers(1, max_side, size=2)
        out.append((rng.random((h, w)) < 0.4).astype(np.uint8))
    return out
