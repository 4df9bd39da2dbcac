"""Batching and device-side transforms of uint8 image datasets.

``unit_float`` (host) and ``to_float`` (device, jitted) turn uint8 pixels into float32 in
[0, 1]; :func:`iterate_batches` shuffles deterministically from ``(seed, epoch)``;
:func:`augment` is the jitted CIFAR-style random crop (zero padding, 4 pixels by default) and
horizontal flip.  Re-exported by ``jsemi.data``.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Iterator

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.validation import check_positive_int

if TYPE_CHECKING:
    from jsemi.data import Dataset


def unit_float(images) -> np.ndarray:
    """Host images as float32 in [0, 1]: uint8 pixels are divided by 255, float images are cast."""
    images = np.asarray(images)
    return images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32, copy=False)


@jax.jit
def to_float(images: jax.Array) -> jax.Array:
    """uint8 pixels -> float32 in [0, 1] (jitted; runs on the device)."""
    if images.dtype != jnp.uint8:
        raise TypeError(f"to_float expects uint8 images, got {images.dtype}")
    return images.astype(jnp.float32) / 255.0


@jax.jit
def _take(images: jax.Array, labels: jax.Array, idx: jax.Array) -> tuple[jax.Array, jax.Array]:
    return to_float(images[idx]), labels[idx]


def epoch_order(n: int, *, seed: int, epoch: int) -> np.ndarray:
    """The example order of one epoch: a permutation of range(n) fixed by (seed, epoch)."""
    return np.random.default_rng([seed, epoch, 2]).permutation(n)


def num_batches(ds: Dataset, batch_size: int, *, drop_remainder: bool = False) -> int:
    """How many batches :func:`iterate_batches` yields per epoch."""
    check_positive_int(batch_size, "batch_size")
    return len(ds) // batch_size if drop_remainder else math.ceil(len(ds) / batch_size)


def iterate_batches(
    ds: Dataset,
    batch_size: int,
    *,
    seed: int | None = None,
    epoch: int | None = None,
    shuffle: bool = True,
    drop_remainder: bool = False,
) -> Iterator[tuple[jax.Array, jax.Array]]:
    """Yields (images float32 (B, H, W, C) in [0, 1], labels int32 (B,)) on the device.

    The split is put on the device once (as uint8) and batches are gathered and
    converted there.  With ``shuffle`` the order is :func:`epoch_order` (seed, epoch),
    so the same (seed, epoch) always gives the same batches; ``seed`` and ``epoch``
    are then required.  Without ``drop_remainder`` the last batch may be smaller.
    """
    check_positive_int(batch_size, "batch_size")
    if shuffle:
        if seed is None or epoch is None:
            raise ValueError("iterate_batches(shuffle=True) needs both seed= and epoch=")
        order = epoch_order(len(ds), seed=seed, epoch=epoch)
    else:
        order = np.arange(len(ds))
    if drop_remainder and batch_size > len(ds):
        raise ValueError(
            f"batch_size={batch_size} exceeds the {len(ds)} examples with drop_remainder=True (no batch)"
        )
    images, labels = ds._device_arrays
    for b in range(num_batches(ds, batch_size, drop_remainder=drop_remainder)):
        idx = order[b * batch_size : (b + 1) * batch_size].astype(np.int32)
        yield _take(images, labels, idx)


@functools.partial(jax.jit, static_argnames=("n", "pad", "flip"))
def augment_params(key: jax.Array, n: int, *, pad: int = 4, flip: bool = True) -> tuple[jax.Array, jax.Array]:
    """The random choices :func:`augment` makes for ``key``.

    Returns (offsets int32 (n, 2): the (row, column) corner of each crop in the padded
    image, each in [0, 2 * pad]; flips bool (n,): whether the crop is mirrored
    left-right, all False when ``flip`` is off).
    """
    k_crop, k_flip = jax.random.split(key)
    offsets = jax.random.randint(k_crop, (n, 2), 0, 2 * pad + 1, dtype=jnp.int32)
    flips = jax.random.bernoulli(k_flip, 0.5, (n,)) if flip else jnp.zeros((n,), bool)
    return offsets, flips


def crop_flip(images: jax.Array, offsets: jax.Array, flips: jax.Array, *, pad: int) -> jax.Array:
    """Crops each zero-padded image at its corner ``offsets[i]`` and mirrors it where ``flips[i]``.

    The deterministic half of :func:`augment` (traceable; jit it or call it inside jit),
    for callers that must apply the same choices to several arrays (e.g. images and
    their perturbations).
    """
    b, h, w, c = images.shape
    padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
    crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, c)))(padded, offsets)
    return jnp.where(flips[:, None, None, None], crop[:, :, ::-1, :], crop)


@functools.partial(jax.jit, static_argnames=("pad", "flip"))
def augment(key: jax.Array, images: jax.Array, *, pad: int = 4, flip: bool = True) -> jax.Array:
    """CIFAR-style augmentation of a batch (B, H, W, C), jitted and vectorised.

    Each image is zero-padded by ``pad`` pixels on every side, a random H x W window
    is cropped from it, and (with ``flip``) it is mirrored left-right with probability
    1/2; the choices are :func:`augment_params` (key).  Shape, dtype and value range
    are kept.  Use ``flip=False`` for digit-like data where mirroring changes the class.
    """
    if isinstance(pad, bool) or not isinstance(pad, int) or pad < 0:
        raise ValueError(f"pad must be an int >= 0, got {pad!r}")
    if images.ndim != 4:
        raise ValueError(f"augment expects a batch (B, H, W, C), got shape {images.shape}")
    offsets, flips = augment_params(key, images.shape[0], pad=pad, flip=flip)
    return crop_flip(images, offsets, flips, pad=pad)
