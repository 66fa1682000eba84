"""An image folder: one subfolder of images per class (``DIR/<class>/*.png``).

Classes are numbered in sorted order of the subfolder names; every image must have the
same size and channels. Read with Pillow (an optional dependency).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from potluck.core.errors import DataError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".pgm")


def image_files(folder: Path) -> list[Path]:
    return sorted(f for f in folder.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)


def read_image_folder(root: Path, class_dirs: list[Path]) -> tuple[np.ndarray, np.ndarray]:
    """The images of ``class_dirs`` (class k: the k-th folder) and their labels."""
    per_class = [image_files(c) for c in class_dirs]
    for folder, files in zip(class_dirs, per_class):
        if not files:
            raise DataError(
                f"{root}: class folder {folder.name!r} holds no images "
                f"({', '.join(IMAGE_SUFFIXES)})"
            )
    try:
        import PIL.Image  # noqa: F401  (optional dependency, checked before any reading)
    except ImportError as exc:
        raise DataError(f"{root}: reading an image folder needs Pillow: pip install pillow") from exc

    arrays: list[np.ndarray] = []
    labels: list[int] = []
    first: Path | None = None
    for label, files in enumerate(per_class):
        for f in files:
            a = _read_image(f)
            if first is None:
                first = f
            elif a.shape != arrays[0].shape:
                raise DataError(
                    f"{f}: image shape {a.shape} differs from {arrays[0].shape} of {first}; "
                    "all images must have the same size and channels"
                )
            arrays.append(a)
            labels.append(label)
    return np.stack(arrays), np.asarray(labels)


def _read_image(f: Path) -> np.ndarray:
    """One image as float32 in [0, 1]: (H, W) when stored grayscale, else (H, W, 3) RGB.

    Alpha channels and palettes are dropped/expanded, so a folder mixing PNG with and
    without transparency still has one shape.
    """
    from PIL import Image

    im: Image.Image
    try:
        with Image.open(f) as opened:
            if opened.mode in ("1", "L", "LA"):
                im = opened.convert("L")
            elif opened.mode == "F" or opened.mode.startswith("I"):  # float / 16-32 bit gray
                im = opened
            else:
                im = opened.convert("RGB")
            a = np.asarray(im)
    except (OSError, ValueError, Image.DecompressionBombError) as exc:
        raise DataError(f"{f}: cannot read image ({exc})") from exc
    if a.dtype == np.uint8:
        return a.astype(np.float32) / 255.0
    if a.dtype.kind in "iu":  # 16-bit PNG/PGM
        return np.clip(a.astype(np.float32) / 65535.0, 0.0, 1.0)
    return a.astype(np.float32)
