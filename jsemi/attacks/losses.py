"""Per-example attack losses on logits (B, K) and integer labels (B,).

Conventions: ``ce`` and ``dlr`` / ``dlr_targeted`` are losses the attacker MAXIMISES;
``margin`` and ``cw`` are margins the attacker MINIMISES (negative = misclassified).
All of them treat "the best other class" with a mask set to -inf, never by multiplying
logits with a one-hot, so they are correct for negative logits (a known bug of peers'
C&W losses).

Few classes (DLR needs the 3rd largest logit, targeted DLR the 4th):
- ``dlr`` with K == 2 falls back to the unscaled loss ``-(z_y - z_other)`` (the
  denominator ``z_pi1 - z_pi3`` is undefined).
- ``dlr_targeted`` with K == 3 uses the denominator ``z_pi1 - z_pi3``; with K == 2 it is
  unscaled.  These fallbacks are documented behaviour, not errors; pass ``strict=True``
  to get a ValueError instead.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

__all__ = ["ce", "margin", "dlr", "dlr_targeted", "cw", "targeted_margin", "LOSSES"]

_DLR_EPS = 1e-12


def _num_classes(logits) -> int:
    if logits.ndim != 2:
        raise ValueError(f"logits must have shape (batch, classes), got {logits.shape}")
    return logits.shape[-1]


def _true_logit(logits, y):
    return jnp.take_along_axis(logits, y[:, None].astype(jnp.int32), axis=1)[:, 0]


def _best_other(logits, y):
    k = logits.shape[-1]
    mask = jax.nn.one_hot(y, k, dtype=bool)
    return jnp.max(jnp.where(mask, -jnp.inf, logits), axis=1)


def ce(logits, y):
    """Cross-entropy per example (maximise)."""
    _num_classes(logits)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
    return -_true_logit(logp, y)


def margin(logits, y):
    """z_y - max_{k != y} z_k per example (minimise; < 0 means misclassified)."""
    _num_classes(logits)
    logits = logits.astype(jnp.float32)
    return _true_logit(logits, y) - _best_other(logits, y)


def targeted_margin(logits, y_target):
    """max_{k != t} z_k - z_t per example (minimise; < 0 means classified as the target)."""
    return -margin(logits, y_target)


def dlr(logits, y, *, strict: bool = False):
    """Difference of Logits Ratio (Croce & Hein 2020), maximised by the attacker.

    -(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3 + 1e-12), z_pi sorted decreasingly.
    K == 2: unscaled fallback (see module doc), or ValueError when ``strict``.
    """
    k = _num_classes(logits)
    logits = logits.astype(jnp.float32)
    num = -margin(logits, y)
    if k < 3:
        if strict:
            raise ValueError(f"the DLR loss needs at least 3 classes, got {k}")
        return num
    top = jax.lax.top_k(logits, 3)[0]
    return num / (top[:, 0] - top[:, 2] + _DLR_EPS)


def dlr_targeted(logits, y, y_target, *, strict: bool = False):
    """Targeted DLR (Croce & Hein 2020), maximised by the attacker.

    -(z_y - z_t) / (z_pi1 - (z_pi3 + z_pi4) / 2 + 1e-12).
    K == 3: denominator z_pi1 - z_pi3; K == 2: unscaled (see module doc).
    """
    k = _num_classes(logits)
    logits = logits.astype(jnp.float32)
    num = -(_true_logit(logits, y) - _true_logit(logits, y_target))
    if k < 4 and strict:
        raise ValueError(f"the targeted DLR loss needs at least 4 classes, got {k}")
    if k >= 4:
        top = jax.lax.top_k(logits, 4)[0]
        return num / (top[:, 0] - 0.5 * (top[:, 2] + top[:, 3]) + _DLR_EPS)
    if k == 3:
        top = jax.lax.top_k(logits, 3)[0]
        return num / (top[:, 0] - top[:, 2] + _DLR_EPS)
    return num


def cw(logits, y, kappa: float = 0.0, y_target=None):
    """Carlini-Wagner f (minimise): max(z_y - max_{k != y} z_k, -kappa).

    Targeted (``y_target`` given): max(max_{k != t} z_k - z_t, -kappa).  Correct for
    negative logits (the best other class is found with a -inf mask).
    """
    m = margin(logits, y) if y_target is None else targeted_margin(logits, y_target)
    return jnp.maximum(m, -jnp.asarray(kappa, jnp.float32))


# name -> loss to MAXIMISE, as used by pgd / apgd
LOSSES = {
    "ce": ce,
    "margin": lambda logits, y: -margin(logits, y),
    "dlr": dlr,
}
