"""Datasets: one loader, in-memory uint8 images, device-side batching and augmentation.

``load_dataset(name, split)`` returns a :class:`Dataset` holding the whole split in
host memory as uint8 NHWC images and int32 labels.  Batches go to the device as
uint8 and become float32 pixels in [0, 1] there (:func:`to_float`); the models
normalise internally, so callers always work in pixel space [0, 1].

Where each dataset comes from
-----------------------------
``fashion_mnist``
    Local IDX files first: ``{train,t10k}-{images-idx3,labels-idx1}-ubyte`` (plain or
    ``.gz``; the ``train-images.idx3-ubyte`` spelling is accepted too) in ``data_dir``,
    else in ``/usr/share/datasets/fashion-mnist`` where Debian's package
    ``dataset-fashion-mnist`` installs them (``apt-get install dataset-fashion-mnist``).
    Without IDX files it falls back to tensorflow-datasets' ``fashion_mnist`` (with
    ``data_dir`` as the TFDS data directory).
``mnist``
    IDX files in ``data_dir`` when present (same file names), else tensorflow-datasets.
``cifar10``, ``cifar100``
    tensorflow-datasets (``cifar100`` uses the 100 fine labels).
TFDS reading
    Through ``tfds.data_source`` (random access to ``array_record`` files), which needs
    neither TensorFlow nor a network.  Preparing a TFDS dataset does need TensorFlow
    once: ``pip install tensorflow && tfds build cifar10 --file_format=array_record``
    (see :func:`fetch_command`).  A dataset prepared earlier in TFDS' default
    ``tfrecord`` format cannot be read by ``tfds.data_source``; it is then read with
    ``tfds.load`` if TensorFlow is importable (a warning says so), else the error says
    how to rebuild it.  ``data_dir=None`` means TFDS' default (``$TFDS_DATA_DIR`` or
    ``~/tensorflow_datasets``).  Nothing is ever downloaded implicitly: on a networked
    machine ``load_dataset(..., download=True)`` (the ``--download`` flag of the jsemi
    subcommands) prepares a missing TFDS dataset with tfds' own builder as array_record
    (:func:`prepare_tfds`); offline it fails with the command to run elsewhere.
``tiny_imagenet``
    Not a builder in tensorflow-datasets 4.9; read from the standard
    ``tiny-imagenet-200`` directory (as unpacked from the cs231n zip) found at
    ``data_dir``, ``data_dir/tiny-imagenet-200`` or ``./data/tiny-imagenet-200``::

        tiny-imagenet-200/wnids.txt                     200 WordNet ids
        tiny-imagenet-200/words.txt                     wnid -> names (optional)
        tiny-imagenet-200/train/<wnid>/images/*.JPEG    500 per class -> split "train"
        tiny-imagenet-200/val/val_annotations.txt       "<file>\\t<wnid>\\t..." lines
        tiny-imagenet-200/val/images/*.JPEG             10,000 -> split "test"

    The official test images carry no labels, so ``split="test"`` is the labelled
    validation set.  Class index = position of the wnid in sorted order.
``digits``
    scikit-learn's bundled 8x8 digits (1,797 images, values 0..16 scaled to uint8).
    A fixed stratified split (independent of ``seed``): 360 test images, 1,437 train.
    Options ``image_size`` (default 8) and ``pad`` (default 0): the digit is resized
    (bilinear) to ``image_size - 2 * pad`` and zero-padded to ``image_size``;
    ``image_size=28, pad=4`` gives MNIST-like 28x28 images (20x20 digit, 4-pixel border).
``synthetic``
    Deterministic from ``seed``, learnable: each class has a fixed random blocky
    pattern (shared by both splits); an example is its class pattern plus Gaussian
    noise, clipped to [0, 1].  Options: ``num_examples`` (default 2,048 train /
    512 test), ``image_shape`` (default (28, 28, 1)), ``num_classes`` (default 10),
    ``noise`` (default 0.25).

``subset=n`` keeps a deterministic, stratified (class-proportional) subset of n
examples chosen with ``seed``.  :func:`iterate_batches` shuffles deterministically
from ``(seed, epoch)``; :func:`augment` is the jitted CIFAR-style random crop (zero
padding, 4 pixels by default) and horizontal flip (``flip=False`` for digit-like data).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import shlex
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import jax
import numpy as np

from jsemi.batching import (  # noqa: F401  (re-exported: jsemi.data is the public home)
    augment, augment_params, crop_flip, epoch_order, iterate_batches, num_batches, to_float, unit_float,
)
from jsemi.idx import IDXFormatError, parse_idx, read_idx, _idx_file  # noqa: F401
from jsemi.validation import check_positive_int

DATASETS = ("fashion_mnist", "mnist", "cifar10", "cifar100", "tiny_imagenet", "digits", "synthetic")
SPLITS = ("train", "test")

FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")
TINY_IMAGENET_DEFAULT_DIR = Path("data")

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
_DIGIT_CLASSES = tuple(str(i) for i in range(10))

# Which TFDS builder serves which dataset name.
_TFDS_NAMES = {"fashion_mnist": "fashion_mnist", "mnist": "mnist", "cifar10": "cifar10", "cifar100": "cifar100"}

_TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"

# (H, W, C) of every named dataset at its default options: known without reading any file, so a
# run / dataset mismatch is refused before the data is looked for (``synthetic`` defaults to
# 28x28x1; ``digits`` is 8x8x1 unless ``image_size`` says otherwise)
INPUT_SHAPES = {
    "fashion_mnist": (28, 28, 1), "mnist": (28, 28, 1), "cifar10": (32, 32, 3), "cifar100": (32, 32, 3),
    "tiny_imagenet": (64, 64, 3), "digits": (8, 8, 1), "synthetic": (28, 28, 1),
}


class DatasetNotFoundError(FileNotFoundError):
    """A dataset is not available locally; the message says which command fetches it."""


# --------------------------------------------------------------------------------------
# Dataset container
# --------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, eq=False, repr=False)
class Dataset:
    """One split of a dataset, held in host memory.

    ``images``: uint8 array (N, H, W, C); ``labels``: int32 array (N,) with values in
    [0, num_classes).  Both are read-only.  ``input_shape`` is (H, W, C).
    """

    name: str
    split: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...] | None = None

    def __post_init__(self):
        images, labels = np.asarray(self.images), np.asarray(self.labels)
        if images.dtype != np.uint8 or images.ndim != 4:
            raise ValueError(
                f"Dataset images must be a uint8 array (N, H, W, C), got {images.dtype} {images.shape}"
            )
        if labels.ndim != 1 or not np.issubdtype(labels.dtype, np.integer):
            raise ValueError(f"Dataset labels must be a rank-1 integer array, got {labels.dtype} {labels.shape}")
        if len(labels) != len(images):
            raise ValueError(f"Dataset has {len(images)} images but {len(labels)} labels")
        if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(
                f"Dataset labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]"
            )
        if self.class_names is not None and len(self.class_names) != self.num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {self.num_classes} classes")
        images = np.ascontiguousarray(images)
        labels = np.ascontiguousarray(labels, dtype=np.int32)
        images.flags.writeable = False
        labels.flags.writeable = False
        object.__setattr__(self, "images", images)
        object.__setattr__(self, "labels", labels)

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"Dataset(name={self.name!r}, split={self.split!r}, n={len(self)}, "
            f"input_shape={self.input_shape}, num_classes={self.num_classes})"
        )

    @functools.cached_property
    def _device_arrays(self) -> tuple[jax.Array, jax.Array]:
        """The whole split on the default device (uint8 images, int32 labels), put once."""
        return jax.device_put(self.images), jax.device_put(self.labels)


# --------------------------------------------------------------------------------------
# Public loader
# --------------------------------------------------------------------------------------


def load_dataset(
    name: str,
    split: str = "train",
    *,
    data_dir: str | os.PathLike | None = None,
    subset: int | None = None,
    seed: int = 0,
    download: bool = False,
    **options: Any,
) -> Dataset:
    """Loads one split of ``name`` (see the module docstring for the sources).

    Args:
      name: one of :data:`DATASETS`.
      split: "train" or "test".
      data_dir: where to look for the files (IDX folder, TFDS data directory or the
        folder holding ``tiny-imagenet-200``); None means each source's default.
      subset: keep a deterministic, class-stratified subset of this many examples.
      seed: seeds the subset choice and the synthetic data.
      download: prepare a TFDS-backed dataset (``fashion_mnist`` without IDX files,
        ``mnist``, ``cifar10``, ``cifar100``) with :func:`prepare_tfds` if it is not
        prepared yet (needs network); no effect on the other datasets.
      **options: source-specific options (``digits``: image_size, pad; ``synthetic``:
        num_examples, image_shape, num_classes, noise).

    Raises:
      ValueError: unknown name, split, option or a bad subset size.
      DatasetNotFoundError: the data is not available locally, or ``download=True`` failed
        (the message says which command fetches it).
      IDXFormatError: a corrupt IDX file.
    """
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    loader, allowed = _LOADERS[name]
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        accepted = ", ".join(allowed) if allowed else "none"
        raise ValueError(f"dataset {name!r} got unknown options {unknown}; accepted: {accepted}")
    if not isinstance(download, bool):
        raise ValueError(f"download must be True or False, got {download!r}")
    data_dir = None if data_dir is None else Path(data_dir).expanduser()
    if name in _TFDS_NAMES:
        options = {**options, "download": download}
    ds = loader(split, data_dir=data_dir, seed=seed, **options)
    if subset is not None:
        check_positive_int(subset, "subset")
        if subset > len(ds):
            raise ValueError(f"subset={subset} exceeds the {len(ds)} examples of {name} ({split})")
        keep = np.sort(stratified_indices(ds.labels, subset, seed=seed))
        ds = dataclasses.replace(ds, images=ds.images[keep], labels=ds.labels[keep])
    return ds


def input_shape_of(name: str, **options: Any) -> tuple[int, int, int]:
    """(H, W, C) of dataset ``name``'s images under ``options`` (as :func:`load_dataset` takes
    them), without loading anything; ValueError for an unknown name."""
    if name not in INPUT_SHAPES:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if name == "digits" and "image_size" in options:
        return (int(options["image_size"]),) * 2 + (1,)
    if name == "synthetic" and "image_shape" in options:
        return tuple(int(d) for d in options["image_shape"])
    return INPUT_SHAPES[name]


def fetch_command(name: str, data_dir: str | os.PathLike | None = None) -> str:
    """The shell command that makes dataset ``name`` available locally."""
    if name not in _LOADERS:
        raise ValueError(f"unknown dataset {name!r}; available: {', '.join(DATASETS)}")
    if name in ("digits", "synthetic"):
        return "nothing to fetch (bundled with scikit-learn / generated)"
    if name == "tiny_imagenet":
        dest = shlex.quote(str(data_dir if data_dir is not None else TINY_IMAGENET_DEFAULT_DIR))
        return (
            f"mkdir -p {dest} && curl -L -o {dest}/tiny-imagenet-200.zip {_TINY_IMAGENET_URL}"
            f" && unzip -q {dest}/tiny-imagenet-200.zip -d {dest}"
        )
    tfds_cmd = f"pip install tensorflow && tfds build {_TFDS_NAMES[name]} --file_format=array_record"
    if data_dir is not None:
        tfds_cmd += f" --data_dir={shlex.quote(str(data_dir))}"
    if name == "fashion_mnist":
        return f"sudo apt-get install dataset-fashion-mnist  (or: {tfds_cmd})"
    return tfds_cmd


def prepare_tfds(name: str, data_dir: str | os.PathLike | None = None) -> Path:
    """Downloads and prepares the TFDS dataset behind ``name`` with tfds' own builder
    (``tfds.builder(..., file_format="array_record").download_and_prepare()``, the format
    ``tfds.data_source`` reads), unless it is prepared already; returns the builder's data
    directory.  Needs network (and, for some builders, TensorFlow).

    Raises:
      ValueError: ``name`` is not served by tensorflow-datasets.
      DatasetNotFoundError: the download or preparation failed (offline, say); the
        message names the command to run on a machine with network.
    """
    if name not in _TFDS_NAMES:
        raise ValueError(f"{name!r} is not a tensorflow-datasets dataset; these are: {', '.join(_TFDS_NAMES)}")
    import tensorflow_datasets as tfds

    tfds_dir = None if data_dir is None else os.fspath(Path(data_dir).expanduser())
    builder = tfds.builder(_TFDS_NAMES[name], data_dir=tfds_dir, file_format="array_record")
    if not builder.is_prepared():
        try:
            builder.download_and_prepare()
        except Exception as err:  # network, TensorFlow or disk: all leave the dataset unprepared
            first = (str(err).strip().splitlines() or [""])[0][:300]
            raise DatasetNotFoundError(
                f"could not download and prepare {name!r} with tensorflow-datasets ({type(err).__name__}: {first}). "
                f"Is this machine offline? On one with network run: {fetch_command(name, data_dir)} "
                f"-- then copy the prepared directory here and pass its parent as data_dir"
            ) from err
    return Path(os.fspath(builder.data_dir))


def stratified_indices(labels: np.ndarray, n: int, *, seed: int) -> np.ndarray:
    """Indices of n examples, class-proportional, chosen deterministically from ``seed``.

    Each class contributes round-robin in proportion to its size (a class with a
    fraction p of the data gets p * n examples, up to rounding), in a seeded order.
    """
    labels = np.asarray(labels)
    perm = np.random.default_rng([seed, 1]).permutation(len(labels))
    lab = labels[perm]
    _, inverse, counts = np.unique(lab, return_inverse=True, return_counts=True)
    # rank of each permuted example within its class
    order = np.argsort(inverse, kind="stable")
    rank = np.empty(len(lab), np.int64)
    rank[order] = np.arange(len(lab)) - np.repeat(np.cumsum(counts) - counts, counts)
    key = (rank + 0.5) / counts[inverse]
    return perm[np.argsort(key, kind="stable")[:n]]


def _load_idx_pair(folder: Path, split: str, num_classes: int, source: str) -> tuple[np.ndarray, np.ndarray] | None:
    """(images uint8 (N, H, W, 1), labels) from a folder of MNIST-layout IDX files, or None."""
    prefix = "train" if split == "train" else "t10k"
    img_path = _idx_file(folder, f"{prefix}-images-idx3")
    lab_path = _idx_file(folder, f"{prefix}-labels-idx1")
    if img_path is None and lab_path is None:
        return None
    if img_path is None or lab_path is None:
        missing = f"{prefix}-images-idx3-ubyte" if img_path is None else f"{prefix}-labels-idx1-ubyte"
        raise DatasetNotFoundError(f"{source}: {folder} has only half of the {split} split: {missing}[.gz] is missing")
    images, labels = read_idx(img_path), read_idx(lab_path)
    if images.ndim != 3 or images.dtype != np.uint8:
        raise IDXFormatError(f"{img_path}: expected uint8 images (N, H, W), got {images.dtype} {images.shape}")
    if labels.ndim != 1:
        raise IDXFormatError(f"{lab_path}: expected labels (N,), got shape {labels.shape}")
    if len(images) != len(labels):
        raise IDXFormatError(f"{img_path} has {len(images)} images but {lab_path} has {len(labels)} labels")
    if labels.size and labels.max() >= num_classes:
        raise IDXFormatError(f"{lab_path}: label {labels.max()} out of range for {num_classes} classes")
    return images[..., None], labels.astype(np.int32)


# --------------------------------------------------------------------------------------
# Sources
# --------------------------------------------------------------------------------------


def _load_mnist_like(name: str, split: str, *, data_dir: Path | None, seed: int, system_dir: Path | None,
                     download: bool = False) -> Dataset:
    del seed
    class_names = FASHION_MNIST_CLASSES if name == "fashion_mnist" else _DIGIT_CLASSES
    folder = data_dir if data_dir is not None else system_dir
    if folder is not None and folder.is_dir():
        found = _load_idx_pair(folder, split, 10, name)
        if found is not None:
            return Dataset(name, split, *found, num_classes=10, class_names=class_names)
    idx_note = (
        f"no {name} IDX files ({'train' if split == 'train' else 't10k'}-images-idx3-ubyte[.gz], ...) in {folder}"
        if folder is not None
        else None
    )
    return _load_tfds(name, split, data_dir=data_dir, note=idx_note, download=download)


def _load_fashion_mnist(split, *, data_dir, seed, download=False):
    return _load_mnist_like("fashion_mnist", split, data_dir=data_dir, seed=seed, system_dir=FASHION_MNIST_SYSTEM_DIR,
                            download=download)


def _load_mnist(split, *, data_dir, seed, download=False):
    return _load_mnist_like("mnist", split, data_dir=data_dir, seed=seed, system_dir=None, download=download)


def _load_cifar10(split, *, data_dir, seed, download=False):
    return _load_tfds("cifar10", split, data_dir=data_dir, download=download)


def _load_cifar100(split, *, data_dir, seed, download=False):
    return _load_tfds("cifar100", split, data_dir=data_dir, download=download)


def _tensorflow_importable() -> bool:
    try:
        import tensorflow  # noqa: F401
    except ImportError:
        return False
    return True


def _load_tfds(name: str, split: str, *, data_dir: Path | None, note: str | None = None,
               download: bool = False) -> Dataset:
    """Reads a prepared TFDS dataset into memory with ``tfds.data_source`` (no TensorFlow),
    preparing it first with :func:`prepare_tfds` when ``download``.

    This is the only TFDS entry point, so ``tfds.testing.mock_data`` exercises exactly
    the code used with real data.
    """
    import tensorflow_datasets as tfds

    if download:
        prepare_tfds(name, data_dir)
    tfds_name = _TFDS_NAMES[name]
    tfds_dir = None if data_dir is None else os.fspath(data_dir)
    try:
        source = tfds.data_source(tfds_name, split=split, data_dir=tfds_dir, download=False)
    except Exception as err:  # diagnosed below: missing, or prepared in a format it cannot read
        builder = tfds.builder(tfds_name, data_dir=tfds_dir)
        fmt = builder.info.file_format
        prepared = builder.is_prepared()
        if prepared and fmt == tfds.core.FileFormat.ARRAY_RECORD:
            raise  # the data are there: a real read error, not a missing dataset
        if prepared and _tensorflow_importable():
            warnings.warn(
                f"{tfds_name} is prepared at {builder.data_dir} as {fmt.value}, which tfds.data_source "
                "cannot read; reading it with tfds.load (TensorFlow) instead",
                stacklevel=3,
            )
            arrays = tfds.as_numpy(tfds.load(tfds_name, split=split, data_dir=tfds_dir, download=False, batch_size=-1))
            label = builder.info.features["label"]
            return Dataset(
                name, split, np.asarray(arrays["image"], np.uint8), np.asarray(arrays["label"], np.int32),
                num_classes=label.num_classes, class_names=tuple(label.names),
            )
        where = f"prepared at {builder.data_dir} as {fmt.value}" if prepared else f"not prepared under {builder.data_dir}"
        why = f"{note}; and " if note else ""
        extra = (
            " (tfds.data_source reads only array_record; install tensorflow to read it as is, or rebuild it)"
            if prepared
            else ""
        )
        raise DatasetNotFoundError(
            f"dataset {name!r} ({split}) is not available offline: {why}tensorflow-datasets' {tfds_name!r} is "
            f"{where}{extra}. Fetch it with: {fetch_command(name, data_dir)}"
            + ("" if prepared else " -- or, with network, pass download=True (the --download flag of jsemi)")
        ) from err

    label = source.dataset_info.features["label"]
    n = len(source)
    first = source[0]["image"] if n else np.zeros((0, 0, 0), np.uint8)
    images = np.empty((n, *np.shape(first)), np.uint8)
    labels = np.empty((n,), np.int32)
    for i in range(n):  # per-record access: the same path real files and mock_data take
        example = source[i]
        images[i] = example["image"]
        labels[i] = example["label"]
    return Dataset(name, split, images, labels, num_classes=label.num_classes, class_names=tuple(label.names))


def _tiny_imagenet_root(data_dir: Path | None) -> Path:
    base = data_dir if data_dir is not None else TINY_IMAGENET_DEFAULT_DIR
    for root in (base, base / "tiny-imagenet-200"):
        if (root / "wnids.txt").is_file():
            return root
    raise DatasetNotFoundError(
        f"dataset 'tiny_imagenet' is not available offline: no tiny-imagenet-200 directory (with wnids.txt) "
        f"at {base.resolve()} or {base.resolve() / 'tiny-imagenet-200'}. Fetch it with: {fetch_command('tiny_imagenet', data_dir)}"
    )


def _read_rgb(path: Path) -> np.ndarray:
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"), dtype=np.uint8)


def _load_tiny_imagenet(split, *, data_dir, seed):
    del seed
    root = _tiny_imagenet_root(data_dir)
    wnids = sorted(line.strip() for line in (root / "wnids.txt").read_text().splitlines() if line.strip())
    index = {w: i for i, w in enumerate(wnids)}
    if split == "train":
        files, labels = [], []
        for w in wnids:
            found = sorted((root / "train" / w / "images").glob("*.JPEG"))
            if not found:
                raise DatasetNotFoundError(f"tiny_imagenet: no images in {root / 'train' / w / 'images'}")
            files += found
            labels += [index[w]] * len(found)
    else:
        ann = root / "val" / "val_annotations.txt"
        if not ann.is_file():
            raise DatasetNotFoundError(f"tiny_imagenet: {ann} is missing (labels of the validation images)")
        files, labels = [], []
        for line in ann.read_text().splitlines():
            parts = line.split("\t")
            if len(parts) < 2:
                continue
            if parts[1] not in index:
                raise ValueError(f"tiny_imagenet: {ann} names class {parts[1]!r}, which is not in wnids.txt")
            files.append(root / "val" / "images" / parts[0])
            labels.append(index[parts[1]])
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        images = list(pool.map(_read_rgb, files, chunksize=256))
    shapes = {im.shape for im in images}
    if len(shapes) > 1:
        raise ValueError(f"tiny_imagenet: images of different shapes {sorted(shapes)[:3]} in {root}")
    names = {}
    if (root / "words.txt").is_file():
        for line in (root / "words.txt").read_text().splitlines():
            w, _, text = line.partition("\t")
            names[w] = text.split(",")[0].strip()
    return Dataset(
        "tiny_imagenet", split, np.stack(images), np.asarray(labels, np.int32),
        num_classes=len(wnids), class_names=tuple(names.get(w, w) for w in wnids),
    )


_DIGITS_TEST_SIZE = 360


@functools.lru_cache(maxsize=1)
def _digits_arrays() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """scikit-learn's digits as read-only (1797, 8, 8) float32 in [0, 1], int32 labels and the
    fixed test mask; parsed once per process (sklearn re-reads its CSV at every call, ~0.25 s)."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = bunch.images.astype(np.float32) / 16.0
    y = bunch.target.astype(np.int32)
    test = np.zeros(len(y), bool)
    test[stratified_indices(y, _DIGITS_TEST_SIZE, seed=0)] = True  # fixed split, independent of seed
    for a in (x, y, test):
        a.flags.writeable = False
    return x, y, test


def _load_digits(split, *, data_dir, seed, image_size: int = 8, pad: int = 0):
    del data_dir, seed
    check_positive_int(image_size, "image_size")
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0 or image_size - 2 * pad < 1:
        raise ValueError(f"pad must be an int in [0, (image_size - 1) / 2], got pad={pad!r}, image_size={image_size}")
    x, y, test = _digits_arrays()
    keep = test if split == "test" else ~test
    x, y = x[keep], y[keep]
    inner = image_size - 2 * pad
    if inner != 8:
        x = np.asarray(jax.image.resize(x, (len(x), inner, inner), method="linear"))
    x = np.pad(x, ((0, 0), (pad, pad), (pad, pad)))
    images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)[..., None]
    return Dataset("digits", split, images, y, num_classes=10, class_names=_DIGIT_CLASSES)


def _load_synthetic(
    split, *, data_dir, seed, num_examples: int | None = None, image_shape=(28, 28, 1),
    num_classes: int = 10, noise: float = 0.25,
):
    del data_dir
    n = num_examples if num_examples is not None else (2048 if split == "train" else 512)
    check_positive_int(n, "num_examples")
    check_positive_int(num_classes, "num_classes")
    image_shape = tuple(image_shape)
    if len(image_shape) != 3 or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in image_shape):
        raise ValueError(f"image_shape must be (height, width, channels) of positive ints, got {image_shape}")
    if not noise >= 0:
        raise ValueError(f"noise must be >= 0, got {noise}")
    h, w, c = image_shape
    # Class patterns: a 4x4 grid of random levels per channel, upsampled to (h, w) blocks.
    grid = np.random.default_rng([seed, 3]).uniform(0.1, 0.9, (num_classes, 4, 4, c))
    rows = np.minimum(np.arange(h) * 4 // h, 3)
    cols = np.minimum(np.arange(w) * 4 // w, 3)
    patterns = grid[:, rows][:, :, cols]  # (K, h, w, c)
    rng = np.random.default_rng([seed, 4, SPLITS.index(split)])
    labels = rng.permutation(np.arange(n) % num_classes).astype(np.int32)
    x = patterns[labels] + noise * rng.standard_normal((n, h, w, c))
    images = np.round(np.clip(x, 0.0, 1.0) * 255.0).astype(np.uint8)
    return Dataset("synthetic", split, images, labels, num_classes=num_classes)


# name -> (loader(split, *, data_dir, seed, **options), accepted option names); the TFDS-backed
# loaders also take ``download``
_LOADERS = {
    "fashion_mnist": (_load_fashion_mnist, ()),
    "mnist": (_load_mnist, ()),
    "cifar10": (_load_cifar10, ()),
    "cifar100": (_load_cifar100, ()),
    "tiny_imagenet": (_load_tiny_imagenet, ()),
    "digits": (_load_digits, ("image_size", "pad")),
    "synthetic": (_load_synthetic, ("num_examples", "image_shape", "num_classes", "noise")),
}
