"""Cache of decoded arrays as ``.npy`` files, so a dataset is decoded only once.

Entries live in ``$LOWRANK_CACHE/arrays/`` (default ``~/.cache/lowrank/arrays/``)
and are keyed by the source file's absolute path, size and modification time
plus a decoder tag, so editing or replacing a source file invalidates its entry.
Files are written atomically (temporary file + ``os.replace``) and read with
``np.load(allow_pickle=False)``. A cache entry that cannot be read (truncated,
garbage, wrong type) is ignored and rebuilt; a cache folder that cannot be
written only costs the speed-up. Nothing here ever prints.
"""

from __future__ import annotations

import hashlib
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

__all__ = ["cache_root", "array_cache_dir", "cache_key", "cached_arrays"]

_log = logging.getLogger(__name__)


def cache_root() -> Path:
    """``$LOWRANK_CACHE`` if set, else ``~/.cache/lowrank``."""
    env = os.environ.get("LOWRANK_CACHE")
    if env:
        return Path(env).expanduser()
    return Path.home() / ".cache" / "lowrank"


def array_cache_dir() -> Path:
    """Folder of the decoded-array cache: ``cache_root() / "arrays"``."""
    return cache_root() / "arrays"


def cache_key(sources: Sequence[str | os.PathLike[str]], tag: str) -> str:
    """A file-name-safe key from each source's absolute path, size and mtime, and ``tag``."""
    h = hashlib.sha256(tag.encode())
    for s in sources:
        p = Path(s).resolve()
        st = p.stat()
        h.update(f"\0{p}\0{st.st_size}\0{st.st_mtime_ns}".encode())
    stem = "".join(ch if ch.isalnum() or ch in "-_" else "_" for ch in Path(sources[0]).name)[:40]
    return f"{stem}-{h.hexdigest()[:20]}"


def _entry_paths(key: str, n: int) -> list[Path]:
    d = array_cache_dir()
    return [d / f"{key}.{i}.npy" for i in range(n)]


def _load(paths: list[Path]) -> tuple[np.ndarray, ...] | None:
    out = []
    for p in paths:
        try:
            a = np.load(p, allow_pickle=False)
        except FileNotFoundError:
            return None
        except Exception as e:  # any damage to a cache file means: rebuild it
            _log.debug("ignoring unreadable cache file %s: %s", p, e)
            return None
        if not isinstance(a, np.ndarray):
            return None
        out.append(a)
    return tuple(out)


def _save(paths: list[Path], arrays: Sequence[np.ndarray]) -> None:
    try:
        paths[0].parent.mkdir(parents=True, exist_ok=True)
        for p, a in zip(paths, arrays):
            fd, tmp = tempfile.mkstemp(prefix=p.name + ".", suffix=".tmp", dir=p.parent)
            try:
                with os.fdopen(fd, "wb") as f:
                    np.save(f, np.ascontiguousarray(a), allow_pickle=False)
                os.replace(tmp, p)
            except BaseException:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
                raise
    except OSError as e:
        _log.debug("could not write array cache %s: %s", paths[0], e)


def cached_arrays(sources: Sequence[str | os.PathLike[str]], tag: str, count: int,
                  decode: Callable[[], Sequence[np.ndarray]], *, use_cache: bool = True,
                  check: Callable[[Sequence[np.ndarray]], bool] | None = None) -> tuple[np.ndarray, ...]:
    """Return the ``count`` arrays of ``decode()``, from the cache when a valid entry exists.

    ``tag`` names the decoder and its parameters (change it whenever the decoded
    result would change). ``check``, when given, must accept the loaded arrays
    (dtype, shape); a rejected entry is rebuilt like a damaged one.
    """
    if not use_cache:
        return tuple(decode())
    try:
        key = cache_key(sources, tag)
    except OSError:
        return tuple(decode())  # the decoder reports the unreadable source
    paths = _entry_paths(key, count)
    arrays = _load(paths)
    if arrays is not None and check is not None:
        try:
            ok = bool(check(arrays))
        except Exception:
            ok = False
        if not ok:
            _log.debug("ignoring cache entry %s: its arrays fail the check", paths[0])
            arrays = None
    if arrays is not None:
        return arrays
    result = tuple(decode())
    if len(result) != count:
        raise ValueError(f"decoder returned {len(result)} arrays, expected {count}")
    _save(paths, result)
    return result
