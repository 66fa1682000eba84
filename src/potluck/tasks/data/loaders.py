"""Load a labelled data set from a path: CSV, NPZ, IDX (MNIST) files or an image folder.

:func:`load_dataset` looks at what the path is and picks the reader. Every reader
returns ``x`` as C-contiguous float32 and ``y`` as int64 labels ``>= 0``, and raises
:class:`~potluck.core.errors.DataError` with the file (and line, where there is one)
for every problem with the data itself; a path that does not exist is a
:class:`~potluck.core.errors.ConfigError` (the setting that named it is wrong).
"""

from __future__ import annotations

import csv
import gzip
import math
import re
import struct
import zipfile
import zlib
from pathlib import Path
from typing import TextIO

import numpy as np

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data.dataset import Dataset
from potluck.tasks.data.images import image_files, read_image_folder

SUPPORTED_FORMATS = (
    "a .csv file with a header row, a .npz file with arrays x and y, "
    "an IDX images file (*-images-idx3-ubyte[.gz]) with its labels file beside it, "
    "a folder holding such IDX files, or a folder with one subfolder of images per class"
)

# IDX type byte -> element type; multi-byte values are big-endian on disk.
_IDX_DTYPES: dict[int, np.dtype] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_IDX_NAME = re.compile(r"idx\d", re.IGNORECASE)


def load_dataset(
    path: str | Path, *, label_column: str = "label", group_column: str | None = None
) -> Dataset:
    """Read the data set at ``path``, choosing the reader from what the path is.

    ======================  ==================================================
    ``data.csv``            header row; ``label_column`` holds the labels, every
                            other column (but ``group_column``) is a numeric feature
    ``data.npz``            arrays ``x``, ``y`` and optionally ``groups``
    ``*-images-idx3-ubyte`` IDX images (``.gz`` or not); the labels file is found
                            beside it (``images`` -> ``labels``, ``idx3`` -> ``idx1``)
    folder of IDX files     an images and a labels IDX file; ``train`` files win
                            over ``t10k``/test files when both are present
    ``folder/t10k``         the IDX pair in ``folder`` whose names start with
                            ``t10k`` (or ``train``, or any other prefix): MNIST's
                            test set is ``mnist/t10k``
    folder of folders       one subfolder per class (sorted names = class 0, 1, ...)
                            of .png/.jpg/.jpeg/.bmp/.pgm images, read with Pillow
    ======================  ==================================================

    String labels (CSV, NPZ) become ``0..K-1`` in sorted order of their text. uint8
    images (IDX, image folders) are scaled to ``[0, 1]``; IDX images keep their
    ``(N, rows, cols)`` shape. ``label_column`` and ``group_column`` apply to CSV only.

    >>> ds = load_dataset("data/mnist")  # doctest: +SKIP
    >>> ds.x.shape, ds.y.dtype  # doctest: +SKIP
    ((60000, 28, 28), dtype('int64'))
    """
    p = Path(path)
    if not p.exists():
        named = _idx_set(p)
        if named is not None:
            return _load_idx_pair(*_idx_pair(named))
        raise ConfigError(f"data path {p} does not exist")  # a setting names it: exit code 2
    if p.is_dir():
        return _load_directory(p)
    name = p.name.lower()
    if name.endswith(".csv"):
        return _load_csv(p, label_column, group_column)
    if name.endswith(".npz"):
        return _load_npz(p)
    if _IDX_NAME.search(name):
        return _load_idx_pair(*_idx_pair(p))
    raise DataError(f"{p}: unsupported data file type; supported are {SUPPORTED_FORMATS}")


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (the MNIST format), gzipped or not, into a native-endian array.

    The header is two zero bytes, a type byte (0x08 uint8, 0x09 int8, 0x0B int16,
    0x0C int32, 0x0D float32, 0x0E float64), a dimension count, then one big-endian
    uint32 per dimension. Raises DataError for a bad magic, an unknown type, or a
    payload whose length does not match the dimensions (saying both byte counts).
    """
    p = Path(path)
    raw, note = _read_maybe_gzip(p)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0:
        raise DataError(
            f"{p}: not an IDX file (magic bytes 0x{raw[:4].hex()}, "
            "expected 0x0000 then a type and a dimension byte, e.g. 0x00000803)"
        )
    code, ndim = raw[2], raw[3]
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(f"{p}: unknown IDX type byte 0x{code:02X} (known: {known})")
    if ndim == 0:
        raise DataError(f"{p}: IDX header declares 0 dimensions")
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(
            f"{p}: IDX file truncated in its header: expected at least {header} bytes, "
            f"found {len(raw)}{note}"
        )
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = _IDX_DTYPES[code]
    count = math.prod(dims)
    expected = header + count * dtype.itemsize
    if len(raw) != expected:
        problem = "truncated" if len(raw) < expected else "longer than its header says"
        raise DataError(
            f"{p}: IDX file {problem}: expected {expected} bytes for dimensions {dims} "
            f"of {dtype.name}, found {len(raw)}{note}"
        )
    native = dtype.newbyteorder("=")
    if count == 0:
        return np.empty(dims, dtype=native)
    return np.frombuffer(raw, dtype=dtype, count=count, offset=header).reshape(dims).astype(native)


def _read_maybe_gzip(p: Path) -> tuple[bytes, str]:
    """Return the file's bytes, decompressed if gzipped, and a note if the stream was cut."""
    try:
        data = p.read_bytes()
    except OSError as exc:
        raise DataError(f"{p}: cannot read ({exc.strerror or exc})") from exc
    if data[:2] != b"\x1f\x8b":
        return data, ""
    try:
        return gzip.decompress(data), ""
    except EOFError:
        # A cut-off download: keep what decompresses so the size check can say how much.
        partial = zlib.decompressobj(wbits=31)
        try:
            return partial.decompress(data), " (the gzip stream ends early)"
        except zlib.error as exc:
            raise DataError(f"{p}: corrupt gzip data ({exc})") from exc
    except (OSError, zlib.error) as exc:
        raise DataError(f"{p}: corrupt gzip data ({exc})") from exc


def _idx_pair(path: Path) -> tuple[Path, Path]:
    """Given either file of an IDX pair, return (images, labels), finding the other beside it."""
    name = path.name
    if "images" in name:
        want = name.replace("images", "labels").replace("idx3", "idx1")
    elif "labels" in name:
        want = name.replace("labels", "images").replace("idx1", "idx3")
    else:
        raise DataError(
            f"{path}: cannot tell whether this IDX file holds images or labels "
            "(expected 'images' or 'labels' in its name)"
        )
    # The partner may be gzipped when this file is not, or the other way round.
    alt = want[:-3] if want.endswith(".gz") else want + ".gz"
    for candidate in (path.parent / want, path.parent / alt):
        if candidate.is_file():
            return (path, candidate) if "images" in name else (candidate, path)
    kind = "labels" if "images" in name else "images"
    raise DataError(f"{path}: no matching {kind} file beside it (looked for {want} and {alt})")


def _load_idx_pair(images_path: Path, labels_path: Path) -> Dataset:
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim < 2:
        raise DataError(
            f"{images_path}: images IDX file has shape {images.shape}; expected (N, rows, cols)"
        )
    if labels.ndim != 1 or labels.dtype.kind not in "iu":
        raise DataError(
            f"{labels_path}: labels IDX file must be one integer per example, "
            f"got shape {labels.shape} of {labels.dtype}"
        )
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} labels"
        )
    x = images.astype(np.float32)
    if images.dtype == np.uint8:
        x /= 255.0
    return _make_dataset(x, labels, None, str(images_path))


def _idx_set(p: Path) -> Path | None:
    """``mnist/t10k`` → ``mnist/t10k-images-idx3-ubyte.gz``: the images IDX file in ``p``'s
    folder named ``p.name`` followed by ``-`` or ``.``, when exactly one is; else None."""
    if not p.name or not p.parent.is_dir():
        return None
    found = sorted(f for f in p.parent.iterdir() if f.is_file() and _IDX_NAME.search(f.name) and "images" in f.name
                   and f.name.startswith((p.name + "-", p.name + ".")))
    return found[0] if len(found) == 1 else None


def _load_directory(d: Path) -> Dataset:
    entries = sorted(e for e in d.iterdir() if not e.name.startswith("."))
    files = [e for e in entries if e.is_file()]
    idx_files = [f for f in files if _IDX_NAME.search(f.name)]
    image_idx = [f for f in idx_files if "images" in f.name]
    if image_idx:
        train = [f for f in image_idx if "train" in f.name.lower()]
        return _load_idx_pair(*_idx_pair((train or image_idx)[0]))
    if idx_files:
        names = ", ".join(f.name for f in idx_files)
        raise DataError(f"{d}: found IDX file(s) {names} but no images IDX file (*-images-idx3-ubyte)")
    subdirs = [e for e in entries if e.is_dir()]
    if any(image_files(s) for s in subdirs):
        x, y = read_image_folder(d, subdirs)
        return _make_dataset(x, y, None, str(d))
    if subdirs:
        found = f"{len(subdirs)} subfolder(s) without images ({_some(subdirs)})"
    elif files:
        found = f"{len(files)} file(s) ({_some(files)}) and no subfolders"
    else:
        found = "nothing (the folder is empty)"
    raise DataError(
        f"{d}: not a data folder: expected IDX images and labels files, or one subfolder "
        f"of images per class; found {found}"
    )


def _some(paths: list[Path], limit: int = 5) -> str:
    names = ", ".join(p.name for p in paths[:limit])
    return names + (", ..." if len(paths) > limit else "")


def _load_csv(p: Path, label_column: str, group_column: str | None) -> Dataset:
    if group_column is not None and group_column == label_column:
        raise ConfigError(f"the group column and the label column are both {label_column!r}")
    try:
        with p.open(newline="", encoding="utf-8-sig") as fh:
            return _parse_csv(p, fh, label_column, group_column)
    except UnicodeDecodeError as exc:
        raise DataError(f"{p}: not UTF-8 text ({exc.reason} at byte {exc.start})") from exc


def _parse_csv(p: Path, fh: TextIO, label_column: str, group_column: str | None) -> Dataset:
    src = str(p)
    reader = csv.reader(fh)
    try:
        header = next(reader, None)
        if not header:
            raise DataError(f"{src}: empty file; expected a header row and data rows")
        header = [h.strip() for h in header]
        for i, h in enumerate(header):
            if h in header[:i]:
                raise DataError(f"{src} line 1: column {h!r} appears more than once in the header")
        label_at, group_at, feature_at = csv_columns(src, header, label_column, group_column)

        rows: list[list[float]] = []
        labels: list[str] = []
        groups: list[str] = []
        for fields in reader:
            if not fields:  # blank line
                continue
            line = reader.line_num
            if len(fields) != len(header):
                raise DataError(f"{src} line {line}: {len(fields)} fields, header has {len(header)}")
            try:
                rows.append([float(fields[i]) for i in feature_at])
            except ValueError:
                bad = next(i for i in feature_at if not _is_float(fields[i]))
                raise DataError(
                    f"{src} line {line}: column {header[bad]!r} value {fields[bad]!r} is not a number"
                ) from None
            label = fields[label_at].strip()
            if not label:
                raise DataError(f"{src} line {line}: empty label in column {label_column!r}")
            labels.append(label)
            if group_at >= 0:
                group = fields[group_at].strip()
                if not group:
                    raise DataError(f"{src} line {line}: empty value in group column {group_column!r}")
                groups.append(group)
    except csv.Error as exc:
        raise DataError(f"{src} line {reader.line_num}: malformed CSV ({exc})") from exc
    if not rows:
        raise DataError(f"{src}: header only, no data rows")
    y = _encode_labels(np.asarray(labels), src)
    g = None
    if group_at >= 0:
        as_ints = [_as_int(v) for v in groups]
        g = np.asarray(as_ints, dtype=np.int64) if None not in as_ints else np.asarray(groups)
    return _make_dataset(np.asarray(rows, dtype=np.float32), y, g, src)


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _as_int(text: str) -> int | None:
    """The integer a label or group text spells ("3", "3.0"), or None if it is not one."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        value = float(text)
    except ValueError:
        return None
    return int(value) if value.is_integer() else None


def _encode_labels(values: np.ndarray, src: str) -> np.ndarray:
    """Integer labels as int64; text labels as their rank among the sorted distinct texts."""
    if values.dtype.kind in "iub":
        return values.astype(np.int64)
    if values.dtype.kind == "f":
        if not np.all(np.isfinite(values)) or np.any(values != np.round(values)):
            raise DataError(f"{src}: labels must be integers or text, got non-integer numbers")
        return values.astype(np.int64)
    if values.dtype.kind in "US":
        as_ints = [_as_int(str(v)) for v in values]
        if None not in as_ints:
            return np.asarray(as_ints, dtype=np.int64)
        _, codes = np.unique(values, return_inverse=True)
        return codes.reshape(-1).astype(np.int64)
    raise DataError(f"{src}: labels must be integers or text, got {values.dtype}")


def _load_npz(p: Path) -> Dataset:
    src = str(p)
    try:
        with np.load(p, allow_pickle=False) as z:
            present = list(z.files)
            for key in ("x", "y"):
                if key not in present:
                    shown = ", ".join(present) or "none"
                    raise DataError(f"{src}: no array {key!r}; the arrays present are: {shown}")
            x, y = z["x"], z["y"]
            groups = z["groups"] if "groups" in present else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{src}: cannot read as .npz ({exc})") from exc
    if x.ndim < 1 or x.dtype.kind not in "biuf":
        raise DataError(f"{src}: x must be a numeric array with one row per example, got {x.dtype} {x.shape}")
    if y.ndim != 1:
        raise DataError(f"{src}: y must be one label per example, got shape {y.shape}")
    if len(x) != len(y):
        raise DataError(f"{src}: x has {len(x)} rows but y has {len(y)} labels")
    if groups is not None and (groups.ndim != 1 or len(groups) != len(y)):
        raise DataError(f"{src}: groups has shape {groups.shape} but y has {len(y)} labels")
    return _make_dataset(x, _encode_labels(y, src), groups, src)


def _make_dataset(x: np.ndarray, y: np.ndarray, groups: np.ndarray | None, src: str) -> Dataset:
    if len(y) == 0:
        raise DataError(f"{src}: no examples")
    if int(y.min()) < 0:
        raise DataError(f"{src}: labels must be >= 0, found {int(y.min())}")
    return Dataset(
        np.ascontiguousarray(x, dtype=np.float32),
        np.ascontiguousarray(y, dtype=np.int64),
        groups,
        src,
    )


def csv_columns(src: object, header: list[str], label_column: str, group_column: str | None,
                kind: str = "label") -> tuple[int, int, list[int]]:
    """Where the ``kind`` (label or target) column and the group column stand in
    ``header`` (-1: no group), and the feature columns: every other one; DataError
    naming the columns when one is missing or no feature is left."""
    cols = ", ".join(header)
    for name, what in ((label_column, kind), (group_column, "group")):
        if name is not None and name not in header:
            raise DataError(f"{src}: no {what} column {name!r}; the columns are: {cols}")
    label_at = header.index(label_column)
    group_at = header.index(group_column) if group_column is not None else -1
    feature_at = [i for i in range(len(header)) if i not in (label_at, group_at)]
    if not feature_at:
        raise DataError(f"{src}: no feature columns besides {cols}")
    return label_at, group_at, feature_at
