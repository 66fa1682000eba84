"""load_dataset / read_idx against files written by hand into tmp_path, and real MNIST."""

from __future__ import annotations

import gzip
import struct
import sys
from pathlib import Path

import numpy as np
import pytest

from potluck.core.errors import ConfigError, DataError
from potluck.tasks.data import Dataset, load_dataset, read_idx

MNIST = Path(__file__).resolve().parents[3] / ".." / "shared" / "data" / "mnist"

IDX_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(a: np.ndarray) -> bytes:
    """The IDX encoding of ``a``, built from the format description."""
    header = struct.pack(">BBBB", 0, 0, IDX_CODES[a.dtype], a.ndim)
    header += struct.pack(f">{a.ndim}I", *a.shape)
    return header + a.astype(a.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, a: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(a)
    path.write_bytes(gzip.compress(data) if gz else data)
    return path


def write_text(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def check_types(ds: Dataset) -> None:
    assert ds.x.dtype == np.float32 and ds.x.flags.c_contiguous
    assert ds.y.dtype == np.int64 and ds.y.flags.c_contiguous


# --- CSV ---------------------------------------------------------------------------


def test_csv_string_labels_and_group_column(tmp_path: Path) -> None:
    f = write_text(
        tmp_path / "data.csv",
        "f1,species,site,f2\n"
        "1.5,dog,b,2\n"
        "0,cat,a,-1e3\n"
        "\n"  # blank lines are skipped
        "3,emu,b,4.25\n"
        "2,cat,c,0\n",
    )
    ds = load_dataset(f, label_column="species", group_column="site")
    check_types(ds)
    np.testing.assert_array_equal(
        ds.x, np.array([[1.5, 2], [0, -1000], [3, 4.25], [2, 0]], dtype=np.float32)
    )
    # sorted distinct label texts: cat=0, dog=1, emu=2
    np.testing.assert_array_equal(ds.y, [1, 0, 2, 0])
    assert ds.groups is not None and list(ds.groups) == ["b", "a", "b", "c"]
    assert ds.source == str(f)


def test_csv_integer_labels_and_groups_stay_integers(tmp_path: Path) -> None:
    f = write_text(tmp_path / "d.csv", "a,label,user\n0.5,10,7\n1,2,3\n1,2.0,7\n")
    ds = load_dataset(f, group_column="user")
    np.testing.assert_array_equal(ds.y, [10, 2, 2])  # integers kept, not ranked
    assert ds.groups is not None and ds.groups.dtype == np.int64
    np.testing.assert_array_equal(ds.groups, [7, 3, 7])
    assert ds.x.shape == (3, 1)


def test_csv_ragged_row_names_file_line_and_counts(tmp_path: Path) -> None:
    rows = "".join(f"{i},{i},{i},{i},0\n" for i in range(5))
    f = write_text(tmp_path / "data.csv", "a,b,c,d,label\n" + rows + "1,2,3\n")
    with pytest.raises(DataError, match="data.csv line 7: 3 fields, header has 5"):
        load_dataset(f)


def test_csv_missing_label_column_lists_columns(tmp_path: Path) -> None:
    f = write_text(tmp_path / "data.csv", "a,b,target\n1,2,0\n")
    with pytest.raises(DataError) as err:
        load_dataset(f)
    msg = str(err.value)
    assert "data.csv" in msg and "'label'" in msg and "a, b, target" in msg


def test_csv_missing_group_column_lists_columns(tmp_path: Path) -> None:
    f = write_text(tmp_path / "data.csv", "a,label\n1,0\n")
    with pytest.raises(DataError, match=r"data.csv: no group column 'site'.*a, label"):
        load_dataset(f, group_column="site")


def test_csv_non_numeric_feature_names_column_and_line(tmp_path: Path) -> None:
    f = write_text(tmp_path / "data.csv", "a,b,label\n1,2,0\n3,oops,1\n")
    with pytest.raises(DataError, match=r"data.csv line 3: column 'b' value 'oops' is not a number"):
        load_dataset(f)


@pytest.mark.parametrize(
    ("text", "problem"),
    [("", "empty file"), ("a,label\n", "header only, no data rows"), ("a,label\n\n\n", "header only")],
)
def test_csv_empty_or_header_only(tmp_path: Path, text: str, problem: str) -> None:
    f = write_text(tmp_path / "data.csv", text)
    with pytest.raises(DataError, match=problem) as err:
        load_dataset(f)
    assert "data.csv" in str(err.value)


def test_csv_empty_label_and_no_feature_columns(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data.csv line 3: empty label"):
        load_dataset(write_text(tmp_path / "data.csv", "a,label\n1,0\n2,\n"))
    with pytest.raises(DataError, match="no feature columns"):
        load_dataset(write_text(tmp_path / "only.csv", "label\n1\n"))


def test_csv_group_equal_to_label_is_a_config_error(tmp_path: Path) -> None:
    f = write_text(tmp_path / "data.csv", "a,label\n1,0\n")
    with pytest.raises(ConfigError):
        load_dataset(f, group_column="label")


# --- NPZ ---------------------------------------------------------------------------


def test_npz_round_trip(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 3, 2))  # float64, trailing shape kept
    y = rng.integers(0, 4, size=20).astype(np.uint8)
    groups = np.array([f"u{i % 3}" for i in range(20)])
    np.savez(tmp_path / "d.npz", x=x, y=y, groups=groups)
    ds = load_dataset(tmp_path / "d.npz")
    check_types(ds)
    np.testing.assert_array_equal(ds.x, x.astype(np.float32))
    np.testing.assert_array_equal(ds.y, y)
    assert ds.groups is not None and list(ds.groups) == list(groups)


def test_npz_without_groups(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((4, 2), np.float32), y=np.arange(4))
    assert load_dataset(tmp_path / "d.npz").groups is None


def test_npz_missing_key_names_present_keys(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", features=np.ones((4, 2)), y=np.arange(4))
    with pytest.raises(DataError, match=r"d.npz: no array 'x'; the arrays present are: features, y"):
        load_dataset(tmp_path / "d.npz")


def test_npz_length_mismatch(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((5, 2)), y=np.arange(4))
    with pytest.raises(DataError, match="d.npz: x has 5 rows but y has 4 labels"):
        load_dataset(tmp_path / "d.npz")


def test_npz_corrupt_file(tmp_path: Path) -> None:
    (tmp_path / "d.npz").write_bytes(b"not a zip at all")
    with pytest.raises(DataError, match="d.npz: cannot read"):
        load_dataset(tmp_path / "d.npz")


# --- IDX ---------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("dtype", list(IDX_CODES))
def test_read_idx_round_trip(tmp_path: Path, dtype: np.dtype, gz: bool) -> None:
    a = (np.arange(2 * 3 * 4) - 7).reshape(2, 3, 4).astype(dtype)
    got = read_idx(write_idx(tmp_path / "a-idx3-ubyte", a, gz=gz))
    assert got.dtype == dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, a)


def test_read_idx_truncated_says_expected_and_found(tmp_path: Path) -> None:
    data = idx_bytes(np.zeros((10, 28, 28), np.uint8))
    f = tmp_path / "x-images-idx3-ubyte"
    f.write_bytes(data[:-100])
    with pytest.raises(DataError, match=rf"truncated: expected {len(data)} bytes .* found {len(data) - 100}"):
        read_idx(f)


def test_read_idx_truncated_gzip_stream(tmp_path: Path) -> None:
    data = idx_bytes(np.arange(5000, dtype=np.int32))
    f = tmp_path / "x-labels-idx1-ubyte.gz"
    f.write_bytes(gzip.compress(data)[:-200])
    with pytest.raises(DataError, match=rf"x-labels-idx1-ubyte.gz: IDX file truncated: expected {len(data)} bytes"):
        read_idx(f)


def test_read_idx_bad_magic_and_type(tmp_path: Path) -> None:
    f = tmp_path / "bad-idx3-ubyte"
    f.write_bytes(b"\x01\x02\x08\x01" + b"\x00" * 8)
    with pytest.raises(DataError, match="bad-idx3-ubyte: not an IDX file"):
        read_idx(f)
    f.write_bytes(b"\x00\x00\x07\x01\x00\x00\x00\x01\x00")
    with pytest.raises(DataError, match="unknown IDX type byte 0x07"):
        read_idx(f)
    f.write_bytes(b"\x00\x00\x08\x03\x00\x00")
    with pytest.raises(DataError, match="truncated in its header"):
        read_idx(f)


def write_mnist_like(folder: Path, prefix: str, n: int, *, gz: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=n).astype(np.uint8)
    ext = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{ext}", images, gz=gz)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{ext}", labels, gz=gz)
    return images, labels


@pytest.mark.parametrize("gz", [False, True])
def test_idx_folder_prefers_train(tmp_path: Path, gz: bool) -> None:
    images, labels = write_mnist_like(tmp_path, "train", 12, gz=gz)
    write_mnist_like(tmp_path, "t10k", 5, gz=gz, seed=1)
    ds = load_dataset(tmp_path)
    check_types(ds)
    assert ds.x.shape == (12, 28, 28)
    np.testing.assert_allclose(ds.x, images / 255.0, atol=1e-7)
    np.testing.assert_array_equal(ds.y, labels)


@pytest.mark.parametrize("gz", [False, True])
def test_idx_set_by_prefix_reads_the_test_files(tmp_path: Path, gz: bool) -> None:
    write_mnist_like(tmp_path, "train", 12, gz=gz)
    images, labels = write_mnist_like(tmp_path, "t10k", 5, gz=gz, seed=1)
    ds = load_dataset(tmp_path / "t10k")
    assert ds.x.shape == (5, 28, 28)
    np.testing.assert_array_equal(ds.y, labels)
    assert len(load_dataset(tmp_path / "train")) == 12
    with pytest.raises(ConfigError, match="does not exist"):
        load_dataset(tmp_path / "t10")  # a prefix must be the whole name before '-'


def test_idx_images_file_finds_labels_beside_it(tmp_path: Path) -> None:
    _, labels = write_mnist_like(tmp_path, "t10k", 5, gz=True)
    ds = load_dataset(tmp_path / "t10k-images-idx3-ubyte.gz")
    assert ds.x.shape == (5, 28, 28) and 0.0 <= ds.x.min() and ds.x.max() <= 1.0
    np.testing.assert_array_equal(ds.y, labels)


def test_idx_labels_file_missing(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte: no matching labels file .*train-labels-idx1-ubyte"):
        load_dataset(tmp_path / "train-images-idx3-ubyte")


def test_idx_count_mismatch(tmp_path: Path) -> None:
    write_idx(tmp_path / "train-images-idx3-ubyte", np.zeros((3, 2, 2), np.uint8))
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(4, np.uint8))
    with pytest.raises(DataError, match="has 3 images but .*train-labels-idx1-ubyte has 4 labels"):
        load_dataset(tmp_path)


@pytest.mark.skipif(not MNIST.is_dir(), reason=f"MNIST files not found at {MNIST}")
def test_real_mnist() -> None:
    ds = load_dataset(MNIST)
    check_types(ds)
    assert ds.x.shape == (60000, 28, 28)
    assert ds.x.min() == 0.0 and ds.x.max() == 1.0
    counts = np.bincount(ds.y, minlength=10)
    assert counts.tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


# --- image folders -----------------------------------------------------------------


def make_image_folder(root: Path, mode: str, size: tuple[int, int] = (4, 3)) -> dict[str, list[np.ndarray]]:
    Image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(0)
    written: dict[str, list[np.ndarray]] = {}
    shape = (size[1], size[0]) + ((3,) if mode == "RGB" else ())
    for cls, count, ext in (("cat", 2, ".png"), ("ant", 3, ".bmp"), ("dog", 1, ".pgm" if mode == "L" else ".png")):
        (root / cls).mkdir(parents=True)
        written[cls] = []
        for i in range(count):
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a).save(root / cls / f"{i}{ext}")
            written[cls].append(a)
    (root / "cat" / "notes.txt").write_text("ignored")
    return written


@pytest.mark.parametrize("mode", ["L", "RGB"])
def test_image_folder_round_trip(tmp_path: Path, mode: str) -> None:
    written = make_image_folder(tmp_path / "imgs", mode)
    ds = load_dataset(tmp_path / "imgs")
    check_types(ds)
    expected_x = np.stack([a for cls in sorted(written) for a in written[cls]]) / 255.0
    expected_y = [label for label, cls in enumerate(sorted(written)) for _ in written[cls]]
    assert ds.x.shape == expected_x.shape  # (N, 3, 4) or (N, 3, 4, 3)
    np.testing.assert_allclose(ds.x, expected_x, atol=1e-6)
    np.testing.assert_array_equal(ds.y, expected_y)  # ant=0, cat=1, dog=2


def test_image_folder_size_mismatch_names_file(tmp_path: Path) -> None:
    Image = pytest.importorskip("PIL.Image")
    make_image_folder(tmp_path, "L")
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "dog" / "9.png")
    with pytest.raises(DataError, match=r"dog/9.png: image shape \(5, 5\) differs from \(3, 4\)"):
        load_dataset(tmp_path)


def test_image_folder_empty_class(tmp_path: Path) -> None:
    make_image_folder(tmp_path, "L")
    (tmp_path / "eel").mkdir()
    with pytest.raises(DataError, match="class folder 'eel' holds no images"):
        load_dataset(tmp_path)


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"whatever")
    monkeypatch.setitem(sys.modules, "PIL", None)
    monkeypatch.setitem(sys.modules, "PIL.Image", None)
    with pytest.raises(DataError, match="pip install pillow"):
        load_dataset(tmp_path)


def test_image_folder_unreadable_image(tmp_path: Path) -> None:
    pytest.importorskip("PIL.Image")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "0.png").write_bytes(b"not a png")
    with pytest.raises(DataError, match="0.png: cannot read image"):
        load_dataset(tmp_path)


# --- dispatch ----------------------------------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope"
    with pytest.raises(ConfigError, match=f"data path {missing} does not exist"):
        load_dataset(missing)


def test_unknown_file_type_lists_formats(tmp_path: Path) -> None:
    f = write_text(tmp_path / "data.json", "{}")
    with pytest.raises(DataError) as err:
        load_dataset(f)
    msg = str(err.value)
    assert "data.json: unsupported data file type" in msg
    assert all(fmt in msg for fmt in (".csv", ".npz", "IDX", "subfolder"))


def test_directory_that_is_not_data_says_what_was_found(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="found nothing"):
        load_dataset(tmp_path)
    write_text(tmp_path / "readme.txt", "hi")
    with pytest.raises(DataError, match=r"found 1 file\(s\) \(readme.txt\) and no subfolders"):
        load_dataset(tmp_path)
    (tmp_path / "sub").mkdir()
    with pytest.raises(DataError, match=r"subfolder\(s\) without images \(sub\)"):
        load_dataset(tmp_path)
