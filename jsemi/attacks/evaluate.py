"""Robust accuracy over a dataset in batches, and over an eps grid in one compiled call."""

from __future__ import annotations

from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks._common import check_key
from jsemi.validation import check_images, check_labels

__all__ = ["robust_accuracy", "robust_correct", "robust_accuracy_eps_grid"]


@jax.jit
def _correct(logits, y):
    return jnp.argmax(logits, axis=-1) == y


def robust_correct(logits_fn, x, x_adv, y):
    """Per-example robustness: correct on x AND on x_adv (the worst of the two counts)."""
    return _correct(logits_fn(x), y) & _correct(logits_fn(x_adv), y)


def robust_accuracy(logits_fn, x, y, key, attack, batch_size: int = 256, progress: bool = False,
                    return_per_example: bool = False):
    """Fraction of examples still classified correctly on x and on attack(x).

    Args:
      logits_fn: x -> logits (eval mode).
      x, y: the dataset (N, H, W, C) in [0, 1] and labels (N,) (numpy or jax arrays).
      key: jax PRNG key; batch i uses ``jax.random.fold_in(key, i)``, so results do not
        depend on anything but the key and the batch size.
      attack: ``callable(logits_fn, x, y, key) -> x_adv`` (e.g. from
        ``jsemi.attacks.get_attack``) or None for clean accuracy.
      batch_size: the last batch is padded to this size (no recompilation).
      progress: show a tqdm progress bar.
      return_per_example: also return the boolean (N,) robust mask.
    """
    check_images(x, "x")
    check_labels(y, name="y", batch=x.shape[0])
    check_key(key)
    if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    n = x.shape[0]
    if n == 0:
        raise ValueError("robust_accuracy needs at least one example")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    fwd = _cached_forward(logits_fn)
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-n // batch_size), desc=getattr(attack, "__name__", "attack"), unit="batch")
    out = np.zeros((n,), bool)
    for i, s in enumerate(starts):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        m = xb.shape[0]
        if m < batch_size and n > batch_size:  # pad the tail to the common shape
            reps = batch_size - m
            xb = np.concatenate([xb, np.repeat(xb[-1:], reps, 0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], reps, 0)])
        xb, yb = jnp.asarray(xb), jnp.asarray(yb)
        ok = fwd(xb, yb)
        if attack is not None:
            xa = attack(logits_fn, xb, yb, jax.random.fold_in(key, i))
            ok = ok & fwd(xa, yb)
        out[s : s + m] = np.asarray(ok)[:m]
    acc = float(out.mean())
    return (acc, out) if return_per_example else acc


_FWD_CACHE: dict = {}


def _cached_forward(logits_fn):
    f = _FWD_CACHE.get(id(logits_fn))
    if f is None or f[0] is not logits_fn:
        f = (logits_fn, jax.jit(lambda xb, yb: jnp.argmax(logits_fn(xb), -1) == yb))
        if len(_FWD_CACHE) > 64:
            _FWD_CACHE.clear()
        _FWD_CACHE[id(logits_fn)] = f
    return f[1]


def robust_accuracy_eps_grid(logits_fn, x, y, key, attack, threat, eps_grid: Sequence[float],
                             batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Robust accuracy for every eps of ``eps_grid`` with one compiled call per batch.

    ``attack(logits_fn, x, y, key, threat)`` is any jsemi attack with its settings bound
    (e.g. ``functools.partial(pgd, steps=10)``); it is vmapped over ``threat.with_eps(eps)``
    for eps in the grid, with the same key for every eps.  Returns an array (len(eps_grid),).
    """
    from jsemi.attacks.threat import as_threat

    threat = as_threat(threat)
    check_images(x, "x")
    check_labels(y, name="y", batch=x.shape[0])
    check_key(key)
    eps = np.asarray(eps_grid, np.float32)
    if eps.ndim != 1 or eps.size == 0 or np.any(eps < 0) or not np.all(np.isfinite(eps)):
        raise ValueError(f"eps_grid must be a non-empty 1-d sequence of finite values >= 0, got {eps_grid}")
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = x.shape[0]

    @jax.jit
    def grid_correct(xb, yb, kb, eps_arr):
        clean = jnp.argmax(logits_fn(xb), -1) == yb

        def one(e):
            xa = attack(logits_fn, xb, yb, kb, threat.with_eps(e))
            return clean & (jnp.argmax(logits_fn(xa), -1) == yb)

        return jax.vmap(one)(eps_arr)

    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-n // batch_size), desc="eps grid", unit="batch")
    total = np.zeros(eps.size)
    for i, s in enumerate(starts):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        m = xb.shape[0]
        if m < batch_size and n > batch_size:
            reps = batch_size - m
            xb = np.concatenate([xb, np.repeat(xb[-1:], reps, 0)])
            yb = np.concatenate([yb, np.repeat(yb[-1:], reps, 0)])
        ok = np.asarray(grid_correct(jnp.asarray(xb), jnp.asarray(yb), jax.random.fold_in(key, i), jnp.asarray(eps)))
        total += ok[:, :m].sum(axis=1)
    return total / n
