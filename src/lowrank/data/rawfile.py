"""Read a data file's bytes, transparently un-gzipping it when it starts with ``1f 8b``.

Every reader in :mod:`lowrank.data` goes through :func:`read_bytes`, so a corrupt
gzip stream is reported the same way everywhere: as a
:class:`~lowrank.errors.CorruptFileError` naming the file and the compressed
byte offset near which decompression failed.

A gzip file may expand to at most :data:`MAX_EXPANSION` times its size (and never less
than :data:`MIN_LIMIT` bytes): data sets compress 2-10x, a decompression bomb 1000x, so
one is refused after reading that much, long before it fills the memory.
"""

from __future__ import annotations

import os
import zlib
from pathlib import Path

from ..errors import CorruptFileError

__all__ = ["GZIP_MAGIC", "MAX_EXPANSION", "MIN_LIMIT", "is_gzip", "read_bytes"]

GZIP_MAGIC = b"\x1f\x8b"
"""The first two bytes of every gzip member."""

_CHUNK = 1 << 20

MAX_EXPANSION = 100
"""Largest accepted ratio of decompressed to compressed size."""

MIN_LIMIT = 64 << 20
"""Decompressed bytes always accepted, whatever the ratio (small, very regular files)."""


def is_gzip(raw: bytes) -> bool:
    """True when ``raw`` starts with the gzip magic bytes."""
    return raw[:2] == GZIP_MAGIC


def read_bytes(path: str | os.PathLike[str]) -> bytes:
    """Return the content of ``path``, decompressed when it is gzip.

    Gzip is detected by its magic bytes, not by the file name. Several
    concatenated gzip members are joined (as ``gzip`` does); zero padding after
    the last member is ignored. Raises :class:`CorruptFileError` for a file
    that cannot be read, a damaged or truncated gzip stream, or foreign bytes
    after it.
    """
    p = Path(path)
    try:
        raw = p.read_bytes()
    except OSError as e:
        raise CorruptFileError(f"{p}: cannot read file: {e.strerror or e}") from None
    if not is_gzip(raw):
        return raw
    return _gunzip(raw, p)


def _gunzip(raw: bytes, path: Path) -> bytes:
    out: list[bytes] = []
    pos = 0
    n = len(raw)
    limit = max(MIN_LIMIT, MAX_EXPANSION * n)
    total = 0

    def keep(piece: bytes) -> None:
        nonlocal total
        total += len(piece)
        if total > limit:
            raise CorruptFileError(
                f"{path}: gzip data expands beyond {limit} bytes, over {MAX_EXPANSION}x its {n} compressed "
                f"bytes (a decompression bomb?); if the file is genuine, gunzip it and pass the plain file")
        out.append(piece)

    while True:
        d = zlib.decompressobj(wbits=31)
        member_start = pos
        while not d.eof and pos < n:
            chunk = buf = raw[pos:pos + _CHUNK]
            while True:  # at most what the limit leaves, so a bomb never fills the memory
                try:
                    keep(d.decompress(buf, limit - total + 1))
                except zlib.error as e:
                    raise CorruptFileError(
                        f"{path}: corrupt gzip stream (member starting at byte {member_start}) "
                        f"in compressed bytes {pos}..{pos + len(chunk)}: {e}"
                    ) from None
                buf = d.unconsumed_tail
                if not buf or d.eof:
                    break
            pos += len(chunk) - len(d.unused_data)
        if not d.eof:
            raise CorruptFileError(
                f"{path}: gzip stream is truncated: ended at byte {n} before the end of the "
                f"compressed member starting at byte {member_start} (file cut short?)"
            )
        keep(d.flush())
        if pos >= n:
            break
        rest = raw[pos:]
        if rest[:2] == GZIP_MAGIC:
            continue
        if rest.count(0) == len(rest):
            break
        raise CorruptFileError(
            f"{path}: byte {pos}: expected end of file or another gzip member after the "
            f"gzip stream, found {len(rest)} other bytes"
        )
    return b"".join(out)
