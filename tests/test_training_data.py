"""Dataset loaders on the real MNIST files, and the errors bad files give (made in tmp_path)."""

from __future__ import annotations

import gzip
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest

from digitreader.errors import DatasetError, ExitCode
from training.data import (
    KNOWN_SHA256,
    load_image_folder,
    load_kaggle_csv,
    load_mnist,
    read_idx,
    train_val_split,
)


def test_mnist_test_split_loads_and_verifies(data_dir: Path) -> None:
    ds = load_mnist("test", data_dir)
    assert ds.images.shape == (10000, 28, 28) and ds.images.dtype == np.uint8
    assert ds.labels is not None and ds.labels.shape == (10000,)
    # Class counts published with the files (README of the dataset).
    assert np.bincount(ds.labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert ds.checksums["t10k-images-idx3-ubyte.gz"] == KNOWN_SHA256["t10k-images-idx3-ubyte.gz"]


def test_mnist_train_split_and_fixed_validation(data_dir: Path) -> None:
    ds = load_mnist("train", data_dir)
    assert len(ds) == 60000 and int(ds.images.max()) == 255
    tr, val = train_val_split(len(ds), 5000, seed=1)
    tr2, val2 = train_val_split(len(ds), 5000, seed=1)
    assert np.array_equal(val, val2) and np.array_equal(tr, tr2)
    assert len(val) == 5000 and len(tr) == 55000
    assert not set(tr.tolist()) & set(val.tolist())
    _, val3 = train_val_split(len(ds), 5000, seed=2)
    assert not np.array_equal(val, val3)


def _copy_mnist(data_dir: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "mnist"
    dst.mkdir()
    for f in ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"):
        shutil.copyfile(data_dir / "mnist" / f, dst / f)
    return dst


def test_missing_file_is_dataset_error(tmp_path: Path) -> None:
    (tmp_path / "mnist").mkdir()
    with pytest.raises(DatasetError) as e:
        load_mnist("test", tmp_path)
    assert e.value.code == "missing" and e.value.exit_code == ExitCode.DATASET
    assert "t10k-images-idx3-ubyte.gz" in str(e.value) and e.value.hint


def test_truncated_file_is_dataset_error(data_dir: Path, tmp_path: Path) -> None:
    dst = _copy_mnist(data_dir, tmp_path)
    f = dst / "t10k-images-idx3-ubyte.gz"
    f.write_bytes(f.read_bytes()[:400_000])
    with pytest.raises(DatasetError) as e:
        load_mnist("test", tmp_path)
    assert e.value.code == "truncated"


def test_checksum_failure_is_dataset_error(data_dir: Path, tmp_path: Path) -> None:
    dst = _copy_mnist(data_dir, tmp_path)
    # A complete, well-formed IDX file with one changed pixel: only the checksum can tell.
    raw = bytearray(gzip.decompress((dst / "t10k-images-idx3-ubyte.gz").read_bytes()))
    raw[5000] ^= 0xFF
    (dst / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(bytes(raw)))
    with pytest.raises(DatasetError) as e:
        load_mnist("test", tmp_path)
    assert e.value.code == "checksum" and "SHA-256" in str(e.value)


def test_read_idx_rejects_bad_magic(tmp_path: Path) -> None:
    f = tmp_path / "x.gz"
    f.write_bytes(gzip.compress(b"\x01\x02\x03\x04" + b"\0" * 20))
    with pytest.raises(DatasetError) as e:
        read_idx(f)
    assert e.value.code == "malformed"


def _write_kaggle(path: Path, images: np.ndarray, labels: np.ndarray | None) -> None:
    header = ([] if labels is None else ["label"]) + [f"pixel{i}" for i in range(784)]
    rows = images.reshape(len(images), -1).astype(int)
    if labels is not None:
        rows = np.column_stack([labels, rows])
    np.savetxt(path, rows, fmt="%d", delimiter=",", header=",".join(header), comments="")


def test_kaggle_csv_train_and_test_layouts(data_dir: Path, tmp_path: Path) -> None:
    ds = load_mnist("test", data_dir)
    assert ds.labels is not None
    _write_kaggle(tmp_path / "train.csv", ds.images[:50], ds.labels[:50])
    _write_kaggle(tmp_path / "test.csv", ds.images[50:80], None)
    tr = load_kaggle_csv(tmp_path / "train.csv")
    te = load_kaggle_csv(tmp_path / "test.csv")
    assert tr.labels is not None
    assert np.array_equal(tr.images, ds.images[:50]) and np.array_equal(tr.labels, ds.labels[:50])
    assert te.labels is None and np.array_equal(te.images, ds.images[50:80])


def test_kaggle_csv_bad_header_and_short_rows(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("id,value\n1,2\n")
    with pytest.raises(DatasetError, match="header"):
        load_kaggle_csv(tmp_path / "a.csv")
    header = ",".join(["label"] + [f"pixel{i}" for i in range(784)])
    (tmp_path / "b.csv").write_text(header + "\n3," + ",".join(["0"] * 100) + "\n")
    with pytest.raises(DatasetError):
        load_kaggle_csv(tmp_path / "b.csv")
    with pytest.raises(DatasetError) as e:
        load_kaggle_csv(tmp_path / "missing.csv")
    assert e.value.code == "missing"


def test_image_folder_loader_normalizes_both_polarities(data_dir: Path, tmp_path: Path) -> None:
    ds = load_mnist("test", data_dir)
    assert ds.labels is not None
    for i in range(6):
        d = tmp_path / str(int(ds.labels[i]))
        d.mkdir(exist_ok=True)
        big = cv2.resize(ds.images[i], (84, 84), interpolation=cv2.INTER_CUBIC)
        img = 255 - big if i % 2 else big  # dark-on-light and light-on-dark
        cv2.imwrite(str(d / f"{i}.png"), img)
    (tmp_path / "x").mkdir()
    cv2.imwrite(str(tmp_path / "x" / "blank.png"), np.full((40, 40), 255, np.uint8))
    out = load_image_folder(tmp_path)
    assert len(out) == 7 and out.images.shape[1:] == (28, 28)
    assert out.labels is not None
    assert sorted(out.labels.tolist()) == sorted([*ds.labels[:6].tolist(), 10])
    assert out.images[out.labels == 10].max() == 0  # a blank image normalizes to an empty crop
    assert out.images[out.labels != 10].max(axis=(1, 2)).min() > 200  # ink high in every digit


def test_download_verifies_and_falls_back_to_the_next_mirror(data_dir: Path, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    """The download path over real HTTP (a local server standing in for the internet): a mirror
    serving a corrupt file is skipped, the good one's files are verified and loaded; a file no
    mirror serves intact is a clear DatasetError and leaves nothing behind."""
    import functools
    import http.server
    import threading

    from training.data import MNIST_FILES, download_mnist

    bad, good = tmp_path / "bad", tmp_path / "good"
    bad.mkdir()
    good.mkdir()
    for name in MNIST_FILES["test"]:
        shutil.copy(data_dir / "mnist" / name, good / name)
        (bad / name).write_bytes((data_dir / "mnist" / name).read_bytes()[:-100])  # truncated
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a, **k: None  # type: ignore[attr-defined]
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    base = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        monkeypatch.setenv("DIGITREADER_MNIST_MIRROR", f"{base}/bad/,{base}/good/")
        ds = load_mnist("test", tmp_path / "fresh", download=True)
        assert len(ds) == 10_000 and ds.labels is not None and ds.labels[:3].tolist() == [7, 2, 1]
        for name in MNIST_FILES["test"]:
            assert (tmp_path / "fresh" / "mnist" / name).read_bytes() == (good / name).read_bytes()
        with pytest.raises(DatasetError) as err:
            download_mnist(tmp_path / "only-bad", MNIST_FILES["test"], mirrors=[f"{base}/bad"])
        assert err.value.code == "missing" and "SHA-256" in str(err.value)
        assert not [p for p in (tmp_path / "only-bad").iterdir()]  # no partial file left
    finally:
        server.shutdown()
