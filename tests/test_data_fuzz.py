"""Property tests: every reader, fed any bytes, either succeeds or raises a LowRankError."""

from __future__ import annotations

import gzip
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lowrank.data import read_bytes, read_hoda, read_idx, read_mnist_csv
from lowrank.errors import LowRankError
from test_data_helpers import cdb_bytes, csv_bytes, idx_bytes

_rng = np.random.default_rng(0)
SEEDS = {
    "idx": idx_bytes(_rng.integers(0, 256, (3, 5, 4), dtype=np.uint8)),
    "idx1": idx_bytes(np.arange(7, dtype=np.uint8)),
    "csv": csv_bytes(_rng.integers(0, 256, (2, 28, 28), dtype=np.uint8), [1, 7]),
    "cdb": cdb_bytes([(_rng.random((h, w)) < 0.5).astype(np.uint8) for h, w in [(5, 3), (2, 7), (4, 4)]],
                     [0, 3, 9]),
}
READERS: dict[str, Callable[[Path], object]] = {
    "idx": read_idx,
    "csv": read_mnist_csv,
    "hoda": read_hoda,
    "raw": read_bytes,
}

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A valid file of some format, damaged: truncated, bytes overwritten, bytes inserted, gzipped."""
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    for _ in range(draw(st.integers(0, 4))):
        op = draw(st.sampled_from(["cut", "set", "insert", "delete"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "cut":
            del data[pos:]
        elif op == "set" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 8))]
    out = bytes(data)
    if draw(st.booleans()):
        out = gzip.compress(out, mtime=0)
        if draw(st.booleans()) and out:
            cut = draw(st.integers(0, len(out)))
            out = out[:cut] + draw(st.binary(max_size=4)) + out[cut + 1:]
    return out


def _feed(reader: str, data: bytes) -> None:
    with tempfile.TemporaryDirectory() as d:
        p = Path(d) / "input.bin"
        p.write_bytes(data)
        try:
            READERS[reader](p)
        except LowRankError as e:
            assert str(p) in str(e), f"error does not name the file: {e}"


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(data=st.binary(max_size=2048))
def test_arbitrary_bytes(reader, data):
    _feed(reader, data)


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(data=mutated())
def test_damaged_valid_files(reader, data):
    _feed(reader, data)


@pytest.mark.parametrize("reader", sorted(READERS))
@FUZZ
@given(prefix=st.sampled_from([b"\x00\x00\x08\x03", b"\x00\x00\x08\x01", b"\x1f\x8b\x08\x00", SEEDS["cdb"][:1024]]),
       rest=st.binary(max_size=512))
def test_plausible_headers_then_garbage(reader, prefix, rest):
    _feed(reader, prefix + rest)
