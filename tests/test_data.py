"""Tests of jsemi.data: IDX reader, TFDS path (mocked and a real offline array_record
dataset), Tiny ImageNet directory reader, digits, synthetic data, subsets, batching and
augmentation."""

from __future__ import annotations

import gzip
import json
import struct
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from jsemi import data

# ---------------------------------------------------------------------------------------
# IDX files written here, independently of the reader
# ---------------------------------------------------------------------------------------

_CODES = {np.dtype(np.uint8): 0x08, np.dtype(np.int8): 0x09, np.dtype(np.int16): 0x0B,
          np.dtype(np.int32): 0x0C, np.dtype(np.float32): 0x0D, np.dtype(np.float64): 0x0E}


def idx_bytes(arr: np.ndarray) -> bytes:
    arr = np.asarray(arr)
    header = bytes([0, 0, _CODES[arr.dtype], arr.ndim]) + struct.pack(f">{arr.ndim}I", *arr.shape)
    return header + arr.astype(arr.dtype.newbyteorder(">")).tobytes()


def write_idx(path, arr, compress=False):
    raw = idx_bytes(arr)
    path.write_bytes(gzip.compress(raw) if compress else raw)
    return path


def write_mnist_folder(folder, n_train=30, n_test=20, compress=True, dotted=False, seed=0):
    """Writes an MNIST-layout IDX folder; returns {split: (images, labels)}."""
    rng = np.random.default_rng(seed)
    out = {}
    for split, prefix, n in (("train", "train", n_train), ("test", "t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        suffix = ".gz" if compress else ""
        img_name = f"{prefix}-images.idx3-ubyte" if dotted else f"{prefix}-images-idx3-ubyte"
        write_idx(folder / f"{img_name}{suffix}", images, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels, compress)
        out[split] = (images, labels)
    return out


@pytest.mark.parametrize("compress", [False, True])
@pytest.mark.parametrize(
    "arr",
    [
        np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4),
        np.array([-5, 0, 7], np.int8),
        np.array([[-300, 2], [3, 30000]], np.int16),
        np.array([1, -2, 2**31 - 1], np.int32),
        np.array([[0.5, -1.25e-3]], np.float32),
        np.array([np.pi, -np.e], np.float64),
    ],
    ids=["uint8", "int8", "int16", "int32", "float32", "float64"],
)
def test_read_idx_round_trip(tmp_path, arr, compress):
    path = write_idx(tmp_path / "a.idx", arr, compress)
    got = data.read_idx(path)
    assert got.shape == arr.shape
    assert got.dtype == arr.dtype and got.dtype.isnative
    np.testing.assert_array_equal(got, arr)


def test_read_idx_corrupt_files(tmp_path):
    good = idx_bytes(np.arange(24, dtype=np.uint8).reshape(2, 3, 4))
    cases = {
        "short": (good[:3], "too short"),
        "magic": (b"\x01\x02" + good[2:], "not an IDX file"),
        "dtype": (good[:2] + b"\x0a" + good[3:], "unknown IDX data type code 0x0A"),
        "zero_dims": (b"\x00\x00\x08\x00", "0 dimensions"),
        "header": (good[:10], "truncated IDX header"),
        "data": (good[:-1], "truncated IDX data"),
        "trailing": (good + b"\x00\x00", "2 unexpected bytes"),
    }
    for name, (raw, message) in cases.items():
        path = tmp_path / name
        path.write_bytes(raw)
        with pytest.raises(data.IDXFormatError, match=message):
            data.read_idx(path)
    # A gzip stream cut short and one with damaged contents.
    gz = gzip.compress(good)
    (tmp_path / "cut.gz").write_bytes(gz[: len(gz) // 2])
    with pytest.raises(data.IDXFormatError, match="corrupt or truncated gzip"):
        data.read_idx(tmp_path / "cut.gz")
    bad = bytearray(gz)
    bad[-8] ^= 0xFF  # CRC no longer matches
    (tmp_path / "crc.gz").write_bytes(bytes(bad))
    with pytest.raises(data.IDXFormatError, match="corrupt or truncated gzip"):
        data.read_idx(tmp_path / "crc.gz")
    # A truncated IDX inside a valid gzip stream.
    (tmp_path / "inner.gz").write_bytes(gzip.compress(good[:-3]))
    with pytest.raises(data.IDXFormatError, match="truncated IDX data"):
        data.read_idx(tmp_path / "inner.gz")


@pytest.mark.parametrize("compress,dotted", [(True, False), (False, False), (False, True)])
def test_fashion_mnist_from_idx_folder(tmp_path, compress, dotted):
    written = write_mnist_folder(tmp_path, compress=compress, dotted=dotted)
    for split in ("train", "test"):
        ds = data.load_dataset("fashion_mnist", split, data_dir=tmp_path)
        images, labels = written[split]
        assert ds.images.shape == (len(images), 28, 28, 1) and ds.images.dtype == np.uint8
        assert ds.labels.dtype == np.int32 and ds.input_shape == (28, 28, 1)
        np.testing.assert_array_equal(ds.images[..., 0], images)
        np.testing.assert_array_equal(ds.labels, labels)
        assert ds.num_classes == 10 and ds.class_names[0] == "T-shirt/top"
    # The same folder serves MNIST too.
    assert len(data.load_dataset("mnist", "test", data_dir=tmp_path)) == 20


def test_idx_folder_with_half_a_split_is_an_error(tmp_path):
    write_mnist_folder(tmp_path)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(data.DatasetNotFoundError, match="t10k-labels-idx1-ubyte"):
        data.load_dataset("fashion_mnist", "test", data_dir=tmp_path)


def test_idx_labels_out_of_range_are_an_error(tmp_path):
    write_mnist_folder(tmp_path, compress=False)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.full(30, 12, np.uint8))
    with pytest.raises(data.IDXFormatError, match="out of range"):
        data.load_dataset("fashion_mnist", "train", data_dir=tmp_path)


@pytest.mark.skipif(not data.FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="dataset-fashion-mnist not installed")
def test_fashion_mnist_debian_package():
    ds = data.load_dataset("fashion_mnist", "test")
    assert ds.images.shape == (10000, 28, 28, 1) and ds.images.dtype == np.uint8
    assert data.input_shape_of("fashion_mnist") == ds.input_shape
    np.testing.assert_array_equal(np.bincount(ds.labels), np.full(10, 1000))


# ---------------------------------------------------------------------------------------
# tensorflow-datasets
# ---------------------------------------------------------------------------------------

@pytest.mark.parametrize(
    "name,shape,classes",
    [("mnist", (28, 28, 1), 10), ("fashion_mnist", (28, 28, 1), 10),
     ("cifar10", (32, 32, 3), 10), ("cifar100", (32, 32, 3), 100)],
)
def test_tfds_path_with_mock_data(tmp_path, name, shape, classes):
    # An empty data_dir: no IDX files there, so fashion_mnist / mnist go through TFDS too.
    calls = []
    real = tfds.data_source

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    with tfds.testing.mock_data(num_examples=12), pytest.MonkeyPatch.context() as mp:
        mp.setattr(tfds, "data_source", spy)
        ds = data.load_dataset(name, "test", data_dir=tmp_path)
        small = data.load_dataset(name, "train", data_dir=tmp_path, subset=5)
    assert calls and calls[0][1]["download"] is False
    assert ds.name == name and len(ds) == 12 and len(small) == 5
    assert ds.images.shape == (12, *shape) and ds.images.dtype == np.uint8
    assert ds.labels.dtype == np.int32 and ds.labels.min() >= 0 and ds.labels.max() < classes
    assert ds.num_classes == classes and len(ds.class_names) == classes
    assert data.input_shape_of(name) == shape  # the shape known before any file is read


class _FakeMNIST(tfds.image_classification.MNIST, skip_registration=True):
    """MNIST's real builder and metadata, with a few known images instead of the download."""

    name = "mnist"
    images = np.random.default_rng(7).integers(0, 256, (9, 28, 28), dtype=np.uint8)

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(), "test": self._generate_examples()}

    def _generate_examples(self):
        from PIL import Image

        for i, im in enumerate(self.images):
            yield i, {"image": Image.fromarray(im), "label": i % 10}


@pytest.fixture(scope="module")
def prepared_mnist(tmp_path_factory):
    """A real array_record MNIST prepared offline (PIL encodes the images: no TensorFlow)."""
    root = tmp_path_factory.mktemp("tfds")
    _FakeMNIST(data_dir=str(root), file_format="array_record").download_and_prepare()
    return root


def test_tfds_real_array_record_without_tensorflow(prepared_mnist):
    ds = data.load_dataset("mnist", "test", data_dir=prepared_mnist)
    assert ds.images.shape == (9, 28, 28, 1)
    # array_record shards are shuffled on write: compare as sets of (image, label) pairs.
    got = {(ds.images[i, ..., 0].tobytes(), int(ds.labels[i])) for i in range(9)}
    want = {(im.tobytes(), i % 10) for i, im in enumerate(_FakeMNIST.images)}
    assert got == want
    if not data._tensorflow_importable():
        assert "tensorflow" not in sys.modules


@pytest.mark.skipif(data._tensorflow_importable(), reason="TensorFlow installed: the tfds.load fallback applies")
def test_tfds_tfrecord_without_tensorflow_says_how_to_fix(prepared_mnist, tmp_path):
    import shutil

    root = tmp_path / "tfds"
    shutil.copytree(prepared_mnist, root)
    info = root / "mnist" / "3.0.1" / "dataset_info.json"
    meta = json.loads(info.read_text())
    meta["fileFormat"] = "tfrecord"  # as prepared by TFDS' default
    info.write_text(json.dumps(meta))
    with pytest.raises(data.DatasetNotFoundError, match=r"as tfrecord.*install tensorflow.*--file_format=array_record"):
        data.load_dataset("mnist", "train", data_dir=root)


# download=True: tfds' own builder prepares the dataset (stubbed here: nothing leaves the machine)


class _CountingFakeMNIST(_FakeMNIST, skip_registration=True):
    name = "mnist"
    prepared_calls = 0

    def download_and_prepare(self, *args, **kwargs):
        type(self).prepared_calls += 1
        return super().download_and_prepare(*args, **kwargs)


def test_download_prepares_with_the_tfds_builder_once(tmp_path, monkeypatch):
    """A stub tfds.builder (MNIST's real builder, known images, no download) behind load_dataset(download=True):
    the dataset is prepared as array_record under data_dir, read back exactly, and not prepared again."""
    made = []

    def builder(name, *, data_dir, file_format=None):
        made.append((name, data_dir, file_format))
        return _CountingFakeMNIST(data_dir=data_dir, file_format=file_format)

    monkeypatch.setattr(tfds, "builder", builder)
    with pytest.raises(data.DatasetNotFoundError, match=r"pass download=True \(the --download flag of jsemi\)"):
        data.load_dataset("mnist", "test", data_dir=tmp_path)  # not prepared, download=False: nothing fetched
    assert _CountingFakeMNIST.prepared_calls == 0
    ds = data.load_dataset("mnist", "test", data_dir=tmp_path, download=True)
    assert made[-1] == ("mnist", str(tmp_path), "array_record") and _CountingFakeMNIST.prepared_calls == 1
    assert (tmp_path / "mnist" / "3.0.1" / "dataset_info.json").is_file()
    got = {(ds.images[i, ..., 0].tobytes(), int(ds.labels[i])) for i in range(len(ds))}
    assert got == {(im.tobytes(), i % 10) for i, im in enumerate(_FakeMNIST.images)}
    again = data.load_dataset("mnist", "train", data_dir=tmp_path, download=True, subset=5)
    assert len(again) == 5 and _CountingFakeMNIST.prepared_calls == 1  # prepared already: no second download
    assert data.prepare_tfds("mnist", tmp_path) == tmp_path / "mnist" / "3.0.1"


@pytest.mark.parametrize("name", ["cifar10", "fashion_mnist"])
def test_download_under_mock_data(tmp_path, monkeypatch, name):
    """The real builders under tfds.testing.mock_data (download_and_prepare is a no-op there)."""
    real, calls = tfds.builder, []

    def spy(*args, **kwargs):
        calls.append((args, kwargs))
        return real(*args, **kwargs)

    monkeypatch.setattr(tfds, "builder", spy)
    with tfds.testing.mock_data(num_examples=10):
        ds = data.load_dataset(name, "test", data_dir=tmp_path, download=True)
    assert len(ds) == 10 and calls[0] == ((name,), {"data_dir": str(tmp_path), "file_format": "array_record"})


def test_download_offline_names_the_command(tmp_path, monkeypatch):
    class Offline:
        def is_prepared(self):
            return False

        def download_and_prepare(self):
            raise ConnectionError("Failed to establish a new connection: [Errno -3] name resolution")

    monkeypatch.setattr(tfds, "builder", lambda name, **kw: Offline())
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("cifar10", "train", data_dir=tmp_path, download=True)
    msg = str(err.value)
    assert "could not download and prepare 'cifar10'" in msg and "ConnectionError" in msg and "offline" in msg
    assert f"tfds build cifar10 --file_format=array_record --data_dir={tmp_path}" in msg


def test_download_argument_checks_and_non_tfds_datasets(monkeypatch):
    monkeypatch.setattr(tfds, "builder", lambda *a, **k: pytest.fail("no TFDS builder for bundled data"))
    assert len(data.load_dataset("digits", "test", download=True)) == 360
    assert len(data.load_dataset("synthetic", "test", num_examples=8, download=True)) == 8
    with pytest.raises(ValueError, match="download must be True or False"):
        data.load_dataset("digits", "test", download="yes")
    with pytest.raises(ValueError, match="not a tensorflow-datasets dataset"):
        data.prepare_tfds("tiny_imagenet")


@pytest.mark.parametrize("name", ["mnist", "cifar10", "cifar100"])
def test_missing_tfds_dataset_names_the_fetch_command(tmp_path, name):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset(name, data_dir=tmp_path)
    message = str(err.value)
    assert "not available offline" in message
    assert f"tfds build {name} --file_format=array_record --data_dir={tmp_path}" in message


def test_missing_fashion_mnist_mentions_apt_and_tfds(tmp_path):
    with pytest.raises(data.DatasetNotFoundError) as err:
        data.load_dataset("fashion_mnist", "test", data_dir=tmp_path)
    message = str(err.value)
    assert "apt-get install dataset-fashion-mnist" in message
    assert "t10k-images-idx3-ubyte" in message and "tfds build fashion_mnist" in message


def test_fetch_command():
    assert data.fetch_command("cifar10") == "pip install tensorflow && tfds build cifar10 --file_format=array_record"
    assert "apt-get install dataset-fashion-mnist" in data.fetch_command("fashion_mnist")
    assert "tiny-imagenet-200.zip" in data.fetch_command("tiny_imagenet", "/x")
    assert "/x" in data.fetch_command("tiny_imagenet", "/x")
    assert "nothing to fetch" in data.fetch_command("digits")
    with pytest.raises(ValueError, match="unknown dataset 'imagenet'"):
        data.fetch_command("imagenet")


# ---------------------------------------------------------------------------------------
# Tiny ImageNet directory layout
# ---------------------------------------------------------------------------------------


def _solid(color, mode="RGB"):
    from PIL import Image

    return Image.new(mode, (64, 64), color)


def test_tiny_imagenet_directory(tmp_path):
    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n03", "n01", "n02"]  # unsorted on purpose: class index follows sorted order
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (root / "words.txt").write_text("n01\tgoldfish, Carassius auratus\nn02\tsalamander\nn03\tbullfrog\n")
    for k, w in enumerate(sorted(wnids)):
        folder = root / "train" / w / "images"
        folder.mkdir(parents=True)
        for i in range(3):
            _solid((40 * k, 10 * i, 200)).save(folder / f"{w}_{i}.JPEG", quality=95)
    _solid(128, mode="L").save(root / "train" / "n02" / "images" / "n02_9.JPEG")  # grayscale -> RGB
    lines = []
    for i, w in enumerate(["n02", "n03", "n01", "n03"]):
        _solid((0, 60 * i, 0)).save(root / "val" / "images" / f"val_{i}.JPEG", quality=95)
        lines.append(f"val_{i}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")

    train = data.load_dataset("tiny_imagenet", "train", data_dir=tmp_path)
    assert train.images.shape == (10, 64, 64, 3) and train.images.dtype == np.uint8
    assert data.input_shape_of("tiny_imagenet") == train.input_shape
    np.testing.assert_array_equal(np.bincount(train.labels), [3, 4, 3])
    assert train.num_classes == 3 and train.class_names == ("goldfish", "salamander", "bullfrog")
    k0 = train.images[train.labels == 0]
    assert np.all(np.abs(k0[..., 2].astype(int) - 200) <= 3)  # JPEG is lossy
    test = data.load_dataset("tiny_imagenet", "test", data_dir=root)  # the folder itself works too
    np.testing.assert_array_equal(test.labels, [1, 2, 0, 2])
    assert np.all(np.abs(test.images[2, ..., 1].astype(int) - 120) <= 3)


def test_tiny_imagenet_missing(tmp_path):
    with pytest.raises(data.DatasetNotFoundError, match=r"curl -L -o .*tiny-imagenet-200.zip"):
        data.load_dataset("tiny_imagenet", data_dir=tmp_path)


# ---------------------------------------------------------------------------------------
# digits, synthetic, subsets, argument errors
# ---------------------------------------------------------------------------------------


def test_digits():
    train, test = data.load_dataset("digits"), data.load_dataset("digits", "test")
    assert (len(train), len(test)) == (1437, 360)
    for ds in (train, test):
        assert ds.images.shape[1:] == (8, 8, 1) and ds.images.dtype == np.uint8
        assert ds.images.min() == 0 and ds.images.max() == 255
        assert ds.labels.dtype == np.int32 and set(np.unique(ds.labels)) == set(range(10))
    assert np.all(np.abs(np.bincount(test.labels) - 36) <= 1)  # stratified fixed split
    # The split does not depend on the seed.
    np.testing.assert_array_equal(data.load_dataset("digits", "test", seed=5).images, test.images)
    big = data.load_dataset("digits", "test", image_size=28, pad=4)
    assert big.images.shape == (360, 28, 28, 1) and big.images.dtype == np.uint8
    assert big.images[:, :4].max() == 0 and big.images[:, :, -4:].max() == 0  # zero border
    assert big.images[:, 4:24, 4:24].max() > 200
    assert data.load_dataset("digits", image_size=16).input_shape == (16, 16, 1)
    assert data.input_shape_of("digits") == test.input_shape
    assert data.input_shape_of("digits", image_size=16, pad=2) == (16, 16, 1)
    with pytest.raises(ValueError, match="pad"):
        data.load_dataset("digits", image_size=8, pad=4)


def test_synthetic_shapes_determinism_and_learnability():
    kw = dict(image_shape=(16, 12, 3), num_classes=7, num_examples=140)
    a = data.load_dataset("synthetic", seed=1, **kw)
    b = data.load_dataset("synthetic", seed=1, **kw)
    c = data.load_dataset("synthetic", seed=2, **kw)
    assert a.images.shape == (140, 16, 12, 3) and a.images.dtype == np.uint8 and a.num_classes == 7
    assert a.labels.dtype == np.int32
    np.testing.assert_array_equal(np.bincount(a.labels), np.full(7, 20))
    np.testing.assert_array_equal(a.images, b.images)
    np.testing.assert_array_equal(a.labels, b.labels)
    assert not np.array_equal(a.images, c.images)
    default = data.load_dataset("synthetic")
    assert default.images.shape == (2048, 28, 28, 1) and len(data.load_dataset("synthetic", "test")) == 512
    assert data.input_shape_of("synthetic") == default.input_shape
    assert data.input_shape_of("synthetic", **kw) == a.input_shape
    with pytest.raises(ValueError, match="unknown dataset"):
        data.input_shape_of("imagenet")
    # Learnable: nearest class mean from train classifies test well.
    train = data.load_dataset("synthetic", seed=3, num_classes=10)
    test = data.load_dataset("synthetic", "test", seed=3, num_classes=10)
    assert not np.array_equal(train.images[:10], test.images[:10])
    xtr = train.images.reshape(len(train), -1) / 255.0
    xte = test.images.reshape(len(test), -1) / 255.0
    means = np.stack([xtr[train.labels == k].mean(0) for k in range(10)])
    pred = np.argmin(((xte[:, None] - means[None]) ** 2).sum(-1), axis=1)
    assert (pred == test.labels).mean() > 0.9


def test_subset_sizes_stratified_and_deterministic():
    full = data.load_dataset("synthetic", num_examples=1000, num_classes=4)
    for n in (1, 10, 37, 1000):
        ds = data.load_dataset("synthetic", num_examples=1000, num_classes=4, subset=n)
        assert len(ds) == n and ds.images.shape[0] == n
    ds = data.load_dataset("synthetic", num_examples=1000, num_classes=4, subset=100, seed=0)
    np.testing.assert_array_equal(np.bincount(ds.labels), [25, 25, 25, 25])
    again = data.load_dataset("synthetic", num_examples=1000, num_classes=4, subset=100, seed=0)
    np.testing.assert_array_equal(ds.images, again.images)
    # Subset rows are rows of the full split; another seed picks other rows.
    idx_a = data.stratified_indices(full.labels, 100, seed=0)
    idx_b = data.stratified_indices(full.labels, 100, seed=1)
    np.testing.assert_array_equal(np.sort(idx_a), np.sort(np.unique(idx_a)))
    assert set(idx_a.tolist()) != set(idx_b.tolist())
    # Unbalanced classes keep their proportions.
    labels = np.repeat([0, 1, 2], [600, 300, 100])
    np.testing.assert_array_equal(np.bincount(labels[data.stratified_indices(labels, 100, seed=3)]), [60, 30, 10])
    with pytest.raises(ValueError, match="exceeds"):
        data.load_dataset("synthetic", num_examples=10, subset=11)
    with pytest.raises(ValueError, match="subset"):
        data.load_dataset("synthetic", subset=0)


def test_argument_errors():
    with pytest.raises(ValueError, match="unknown dataset 'svhn'; available: fashion_mnist"):
        data.load_dataset("svhn")
    with pytest.raises(ValueError, match="split must be one of"):
        data.load_dataset("digits", "validation")
    with pytest.raises(ValueError, match=r"unknown options \['size'\]; accepted: image_size, pad"):
        data.load_dataset("digits", size=28)
    with pytest.raises(ValueError, match="unknown options"):
        data.load_dataset("cifar10", image_size=28)
    with pytest.raises(ValueError, match="image_shape"):
        data.load_dataset("synthetic", image_shape=(28, 28))


def test_dataset_is_read_only_and_validated():
    ds = data.load_dataset("synthetic", num_examples=20)
    with pytest.raises(ValueError):
        ds.images[0, 0, 0, 0] = 1
    with pytest.raises(ValueError, match="uint8"):
        data.Dataset("x", "train", np.zeros((2, 4, 4, 1), np.float32), np.zeros(2, np.int32), 2)
    with pytest.raises(ValueError, match="labels must lie"):
        data.Dataset("x", "train", np.zeros((2, 4, 4, 1), np.uint8), np.array([0, 2]), 2)
    assert "n=20" in repr(ds)


# ---------------------------------------------------------------------------------------
# Batching, to_float, augmentation
# ---------------------------------------------------------------------------------------


def _batches(ds, **kw):
    return [(np.asarray(x), np.asarray(y)) for x, y in data.iterate_batches(ds, **kw)]


def test_iterate_batches_deterministic_and_complete():
    ds = data.load_dataset("synthetic", num_examples=50, image_shape=(6, 5, 2), num_classes=5)
    a = _batches(ds, batch_size=16, seed=3, epoch=1)
    b = _batches(ds, batch_size=16, seed=3, epoch=1)
    c = _batches(ds, batch_size=16, seed=3, epoch=2)
    d = _batches(ds, batch_size=16, seed=4, epoch=1)
    assert [x.shape[0] for x, _ in a] == [16, 16, 16, 2]
    assert data.num_batches(ds, 16) == 4 and data.num_batches(ds, 16, drop_remainder=True) == 3
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    ya, yc, yd = (np.concatenate([y for _, y in z]) for z in (a, c, d))
    assert not np.array_equal(ya, yc) and not np.array_equal(ya, yd)
    # Each epoch visits every example once, in the order epoch_order gives.
    order = data.epoch_order(50, seed=3, epoch=1)
    xs = np.concatenate([x for x, _ in a])
    np.testing.assert_array_equal(ya, ds.labels[order])
    np.testing.assert_allclose(xs, ds.images[order] / np.float32(255.0), rtol=1e-6)
    assert xs.dtype == np.float32 and xs.min() >= 0.0 and xs.max() <= 1.0
    # drop_remainder and no shuffling.
    assert [x.shape[0] for x, _ in _batches(ds, batch_size=16, seed=0, epoch=0, drop_remainder=True)] == [16] * 3
    plain = _batches(ds, batch_size=20, shuffle=False)
    np.testing.assert_array_equal(np.concatenate([y for _, y in plain]), ds.labels)


def test_iterate_batches_errors():
    ds = data.load_dataset("synthetic", num_examples=10)
    with pytest.raises(ValueError, match="seed= and epoch="):
        next(data.iterate_batches(ds, 4, seed=0))
    with pytest.raises(ValueError, match="batch_size"):
        next(data.iterate_batches(ds, 0, shuffle=False))
    with pytest.raises(ValueError, match="drop_remainder"):
        next(data.iterate_batches(ds, 11, shuffle=False, drop_remainder=True))


def test_to_float():
    x = np.array([[[[0], [128], [255]]]], np.uint8)
    y = data.to_float(x)
    assert y.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(y).ravel(), [0.0, 128 / 255, 1.0], rtol=1e-6)
    with pytest.raises(TypeError, match="uint8"):
        data.to_float(np.zeros((1, 2, 2, 1), np.float32))


def numpy_crop_flip(images, offsets, flips, pad):
    """Reference: zero-pad, crop at the given corners, mirror where flips is set."""
    b, h, w, _ = images.shape
    padded = np.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    out = np.stack([padded[i, r : r + h, c : c + w] for i, (r, c) in enumerate(offsets)])
    out[flips] = out[flips][:, :, ::-1]
    return out


def test_augment_matches_numpy_reference():
    rng = np.random.default_rng(0)
    x = rng.uniform(0.05, 1.0, (64, 8, 10, 3)).astype(np.float32)  # no zeros: padding is visible
    key = jax.random.key(42)
    out = np.asarray(data.augment(key, jnp.asarray(x)))
    assert out.shape == x.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    offsets, flips = (np.asarray(a) for a in data.augment_params(key, 64, pad=4))
    assert offsets.min() >= 0 and offsets.max() <= 8
    # It really crops and flips: varied offsets, some shifted, some mirrored.
    assert len({tuple(o) for o in offsets}) > 10 and np.any(offsets != 4)
    assert 0 < flips.sum() < 64
    np.testing.assert_array_equal(out, numpy_crop_flip(x, offsets, flips, 4))
    np.testing.assert_array_equal(np.asarray(data.crop_flip(jnp.asarray(x), offsets, flips, pad=4)), out)
    assert not np.array_equal(out, x)
    # Same key, same output; another key, another output.
    np.testing.assert_array_equal(out, np.asarray(data.augment(key, jnp.asarray(x))))
    assert not np.array_equal(out, np.asarray(data.augment(jax.random.key(43), jnp.asarray(x))))


def test_augment_without_flip_and_with_other_padding():
    x = jnp.asarray(np.random.default_rng(1).uniform(0.1, 1.0, (32, 28, 28, 1)).astype(np.float32))
    key = jax.random.key(7)
    out = np.asarray(data.augment(key, x, pad=2, flip=False))
    offsets, flips = (np.asarray(a) for a in data.augment_params(key, 32, pad=2, flip=False))
    assert not flips.any() and offsets.max() <= 4
    np.testing.assert_array_equal(out, numpy_crop_flip(np.asarray(x), offsets, flips, 2))
    np.testing.assert_array_equal(np.asarray(data.augment(key, x, pad=0, flip=False)), np.asarray(x))
    with pytest.raises(ValueError, match="pad"):
        data.augment(key, x, pad=-1)


def test_augment_inside_a_callers_jit_on_batches():
    ds = data.load_dataset("synthetic", num_examples=40, image_shape=(32, 32, 3))

    @jax.jit
    def step(key, x):
        return data.augment(key, x).mean()

    for i, (x, _) in enumerate(data.iterate_batches(ds, 16, seed=0, epoch=0, drop_remainder=True)):
        v = float(step(jax.random.key(i), x))
        assert 0.0 <= v <= 1.0
