"""Robust accuracy over a dataset in batches, and over an eps grid in one compiled call.

Both use the batching of ``jsemi.evaluation`` (batches of min(batch_size, N), the last one
padded by repeating its last example, batch i attacked with ``fold_in(key, i)``) and take
the model function's arrays as jit arguments (``jsemi.models.bind``).
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.validation import check_images, check_key, check_labels

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
      logits_fn: x -> logits (eval mode); ``jsemi.models.bind(model, variables)`` reuses the
        compiled forward pass for new weights.
      x, y: the dataset (N, H, W, C) in [0, 1] and labels (N,) (numpy or jax arrays).
      key: jax PRNG key; batch i uses ``jax.random.fold_in(key, i)``, so results do not
        depend on anything but the key and the batch size.
      attack: ``callable(logits_fn, x, y, key) -> x_adv`` (e.g. from
        ``jsemi.attacks.get_attack``) or None for clean accuracy.  It is called on each
        concrete batch, exactly as a user calling it on that batch would.
      batch_size: the last batch is padded to this size (no recompilation).
      progress: show a tqdm progress bar.
      return_per_example: also return the boolean (N,) robust mask.
    """
    from jsemi.evaluation import evaluate

    check_images(x, "x")
    res = evaluate(logits_fn, x, y, key, attack, batch_size=batch_size, host=True, per_example=return_per_example,
                   progress=progress, desc=getattr(attack, "__name__", "attack"))
    acc = res["acc"] if attack is None else res["robust_acc"]
    if not return_per_example:
        return acc
    mask = res["correct"] if attack is None else res["correct"] & res["adv_correct"]
    return acc, mask


def _grid(arrays, x, y, key, eps, threat, fn, attack):
    from jsemi.attacks._common import join_fn

    f = join_fn(fn, arrays)
    clean = jnp.argmax(f(x), -1) == y

    def one(e):
        xa = attack(f, x, y, key, threat.with_eps(e))
        return clean & (jnp.argmax(f(xa), -1) == y)

    return jax.vmap(one)(eps)


_grid_compiled = jax.jit(_grid, static_argnums=(6, 7))


def robust_accuracy_eps_grid(logits_fn, x, y, key, attack, threat, eps_grid: Sequence[float],
                             batch_size: int = 256, progress: bool = False) -> np.ndarray:
    """Robust accuracy for every eps of ``eps_grid`` with one compiled call per batch.

    ``attack(logits_fn, x, y, key, threat)`` is any jsemi attack with its settings bound
    (e.g. ``functools.partial(pgd, steps=10)``; build it once to reuse the compiled program);
    it is vmapped over ``threat.with_eps(eps)`` for eps in the grid, with the same key for
    every eps.  Returns an array (len(eps_grid),).
    """
    from jsemi.attacks._common import split_fn
    from jsemi.attacks.threat import as_threat
    from jsemi.evaluation import _batches, _progress, batch_plan

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
    if n == 0:
        raise ValueError("robust_accuracy_eps_grid needs at least one example")
    fn, arrays = split_fn(logits_fn)
    bs, padded = batch_plan(n, batch_size)
    total = np.zeros(eps.size)
    for i, idx, _, m in _progress(_batches(n, bs, padded), -(-n // bs), progress, "eps grid"):
        ok = np.asarray(_grid_compiled(arrays, x[idx], y[idx], jax.random.fold_in(key, i), jnp.asarray(eps), threat,
                                       fn, attack))
        total += ok[:, :m].sum(axis=1)
    return total / n
