"""Reader for image datasets laid out as one sub-folder per class (torchvision's ``ImageFolder``).

Layout::

    root/<class name>/<any sub-folders>/<image>.png|.jpg|.jpeg|.bmp|.gif

The classes are the sorted names of root's sub-folders; class index ``i`` is
the ``i``-th name. Files with other extensions and names starting with ``.``
are ignored; images inside a class folder are taken in sorted path order.
When root has both a ``train`` and a ``test`` sub-folder, each of them is such
a layout and gives that split (other sub-folders are then ignored, and every
class folder of ``test`` must also exist in ``train``); otherwise root itself
is the layout and the test split is drawn from it later
(:mod:`lowrank.data.prepare`).

Images are decoded with Pillow and converted to 8-bit grey (``"L"``) or colour
(``"RGB"``, alpha dropped). ``image_mode="auto"`` picks ``"L"`` when every image
is single-channel (grey, or a palette holding only greys) and ``"RGB"``
otherwise. Every image must have the same width and height unless
``image_size`` is given, in which case each is resized (bilinear) to
``image_size x image_size``, aspect ratio not kept. The result is ``uint8``
(N, C, H, W) with C = 1 for ``"L"`` and 3 for ``"RGB"``.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import ConfigError, CorruptFileError

__all__ = ["IMAGE_EXTENSIONS", "ImageFolderLayout", "ImageFolderData", "scan_image_folder",
           "decode_images", "decode_layout", "read_image_folder"]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif")
"""File name endings (any case) read as images."""

_GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"})
"""Pillow modes with one colour channel (plus, for LA, an alpha channel that is dropped)."""


@dataclass
class ImageFolderLayout:
    """The image files of a class-per-folder dataset and their class indices, before decoding."""

    root: Path
    classes: list[str]
    train_files: list[Path]
    train_labels: np.ndarray
    """int64 class index of each training file."""
    test_files: list[Path] | None
    """Files of ``root/test`` when root has ``train/`` and ``test/``; else None."""
    test_labels: np.ndarray | None

    def fingerprint(self) -> str:
        """A digest of every file's path, size and modification time (changes when any image does)."""
        h = hashlib.sha256("\0".join(self.classes).encode())
        for files in (self.train_files, self.test_files or []):
            h.update(b"\1")
            for f in files:
                st = f.stat()
                h.update(f"\0{f.relative_to(self.root)}\0{st.st_size}\0{st.st_mtime_ns}".encode())
        return h.hexdigest()[:24]


@dataclass
class ImageFolderData:
    """Decoded images of a class-per-folder dataset."""

    x_train: np.ndarray
    """uint8 (N, C, H, W)."""
    y_train: np.ndarray
    """int64 (N,) class indices."""
    x_test: np.ndarray | None
    """uint8 (M, C, H, W) from ``root/test``, or None."""
    y_test: np.ndarray | None
    classes: list[str]


def _visible(name: str) -> bool:
    return not name.startswith(".")


def _class_names(folder: Path) -> list[str]:
    try:
        entries = sorted(e.name for e in os.scandir(folder) if e.is_dir() and _visible(e.name))
    except OSError as e:
        raise ConfigError(f"{folder}: cannot list the image folder: {e.strerror or e}") from None
    return entries


def _images_in(folder: Path) -> list[Path]:
    out = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a linked folder met again: do not loop
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = sorted(d for d in dirnames if _visible(d))
        for f in sorted(filenames):
            if _visible(f) and f.lower().endswith(IMAGE_EXTENSIONS):
                out.append(Path(dirpath) / f)
    return out


def _no_classes(folder: Path) -> ConfigError:
    return ConfigError(f"{folder}: no class sub-folders; expected an image folder laid out as "
                       f"{folder}/<class name>/<image>{'|'.join(IMAGE_EXTENSIONS)} "
                       f"(optionally inside train/ and test/)")


def _collect(folder: Path, classes: list[str], allow_empty: bool) -> tuple[list[Path], np.ndarray]:
    files: list[Path] = []
    labels: list[int] = []
    for i, c in enumerate(classes):
        found = _images_in(folder / c)
        if not found and not allow_empty:
            raise ConfigError(f"{folder / c}: class folder holds no images "
                              f"({', '.join(IMAGE_EXTENSIONS)}); add images or remove the folder")
        files += found
        labels += [i] * len(found)
    return files, np.asarray(labels, dtype=np.int64)


def scan_image_folder(root: str | os.PathLike[str]) -> ImageFolderLayout:
    """List the classes and image files of ``root`` (see the module docstring); decodes nothing.

    Raises :class:`~lowrank.errors.ConfigError` naming the folder when there are
    no class folders, a class folder holds no images, or ``test/`` has a class
    that ``train/`` lacks.
    """
    root = Path(root)
    if not root.is_dir():
        raise ConfigError(f"{root}: not a folder; expected an image folder root/<class name>/<image>.png")
    top = _class_names(root)
    if "train" in top and "test" in top:
        train_dir, test_dir = root / "train", root / "test"
        classes = _class_names(train_dir)
        if not classes:
            raise _no_classes(train_dir)
        extra = sorted(set(_class_names(test_dir)) - set(classes))
        if extra:
            raise ConfigError(f"{test_dir}: class folder {extra[0]!r} has no counterpart in {train_dir} "
                              f"(train classes: {', '.join(classes)}); both splits must use the same classes")
        train_files, train_labels = _collect(train_dir, classes, allow_empty=False)
        test_files, test_labels = _collect(test_dir, classes, allow_empty=True)
        if not test_files:
            raise ConfigError(f"{test_dir}: holds no images ({', '.join(IMAGE_EXTENSIONS)}) in its "
                              f"class folders; expected {test_dir}/<class name>/<image>.png")
        return ImageFolderLayout(root, classes, train_files, train_labels, test_files, test_labels)
    if not top:
        raise _no_classes(root)
    train_files, train_labels = _collect(root, top, allow_empty=False)
    return ImageFolderLayout(root, top, train_files, train_labels, None, None)


def _decode_one(path: Path, mode: str, size: int | None) -> np.ndarray:
    """One image as uint8 (H, W) (grey) or (H, W, 3) (colour); ``mode`` "auto", "L" or "RGB"."""
    from PIL import Image  # Pillow is needed only for image folders

    try:
        with Image.open(path) as im:
            im.load()
            img: Any = im
            if mode == "auto":
                if im.mode in _GREY_MODES:
                    img = im.convert("L")
                else:
                    img = im.convert("RGB")
                    if im.mode in ("P", "PA"):  # a palette of greys is single-channel
                        a = np.asarray(img)
                        if (a[..., 0] == a[..., 1]).all() and (a[..., 0] == a[..., 2]).all():
                            img = img.convert("L")
            else:
                img = im.convert(mode)
            if size is not None and img.size != (size, size):
                img = img.resize((size, size), Image.Resampling.BILINEAR)
            return np.array(img, dtype=np.uint8)
    except Exception as e:  # Pillow raises many types for damaged files; each means: cannot decode
        msg = " ".join(str(e).split()) or type(e).__name__
        raise CorruptFileError(f"{path}: cannot decode the image ({msg}); replace or remove the file") from None


def decode_images(files: list[Path], image_mode: str = "auto", image_size: int | None = None) -> np.ndarray:
    """Decode ``files`` into one uint8 (N, C, H, W) array (see the module docstring for the modes).

    Raises :class:`~lowrank.errors.CorruptFileError` naming an image that
    cannot be decoded, and :class:`~lowrank.errors.ConfigError` naming the first
    image whose size differs from the first image's (when ``image_size`` is None).
    """
    if image_mode not in ("auto", "L", "RGB"):
        raise ConfigError(f"image_mode {image_mode!r} is not one of auto, L, RGB")
    if not files:
        raise ConfigError("no image files to decode")
    images = []
    first_shape: tuple[int, int] | None = None
    for f in files:
        a = _decode_one(f, image_mode, image_size)
        hw = (int(a.shape[0]), int(a.shape[1]))
        if first_shape is None:
            first_shape = hw
        elif hw != first_shape:
            raise ConfigError(
                f"{f}: image is {hw[1]}x{hw[0]} (width x height) but the first image, {files[0]}, is "
                f"{first_shape[1]}x{first_shape[0]}; every image must have the same size, or set "
                f"image_size to resize them all to NxN")
        images.append(a)
    colour = any(a.ndim == 3 for a in images)
    n = len(images)
    h, w = first_shape  # type: ignore[misc]
    out = np.empty((n, 3 if colour else 1, h, w), np.uint8)
    for i, a in enumerate(images):
        if a.ndim == 3:
            out[i] = a.transpose(2, 0, 1)
        else:
            out[i] = a  # a grey image among colour ones: the same value in all three channels
    return out


def read_image_folder(root: str | os.PathLike[str], image_mode: str = "auto",
                      image_size: int | None = None) -> ImageFolderData:
    """Scan and decode the image folder ``root`` (see :func:`scan_image_folder`, :func:`decode_images`).

    With ``image_mode="auto"`` the training and test images are decoded
    together, so both get the same number of channels.
    """
    layout = scan_image_folder(root)
    return decode_layout(layout, image_mode, image_size)


def decode_layout(layout: ImageFolderLayout, image_mode: str = "auto",
                  image_size: int | None = None) -> ImageFolderData:
    """Decode the files of a scanned ``layout``."""
    files = layout.train_files + (layout.test_files or [])
    x = decode_images(files, image_mode, image_size)
    n = len(layout.train_files)
    if layout.test_files is None:
        return ImageFolderData(x, layout.train_labels, None, None, list(layout.classes))
    return ImageFolderData(x[:n], layout.train_labels, x[n:], layout.test_labels, list(layout.classes))
