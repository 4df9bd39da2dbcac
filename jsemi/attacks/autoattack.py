"""AutoAttack compositions (Croce & Hein, ICML 2020): "standard", "rand" and "custom".

Attacks run in order, each only on the points still classified correctly; a point counts
as robust only if no attack fools it (the per-point worst case, not an average).  The
returned x_adv is, per point, the first adversarial example found, else the candidate with
the lowest margin; points misclassified on clean inputs keep x.

With concrete inputs the still-robust points are gathered on the host and padded to a
bucket size (16, 32, 64, then multiples of 32: ``attacks._common.remaining_bucket``), so each
attack compiles once per bucket and architecture, whatever the weights; inside a caller's
trace every attack runs on the whole batch and the results are masked.

Versions (L-inf and L2):
- "standard": APGD-CE (100 iterations), APGD-T (100 iterations, min(9, K-1) targets),
  FAB-T (100 iterations, min(9, K-1) targets), Square (5,000 queries, p-schedule not
  rescaled to the budget, as the reference's ``resc_schedule=False``; L-inf only: jsemi
  has no L2 Square, so the L2 composition runs the first three).
- "rand": APGD-CE and APGD-DLR.  The reference averages gradients over 20 draws (EOT) for
  randomised defences; jsemi's ``logits_fn`` is deterministic (no key), for which EOT
  equals one gradient, so it is omitted.
- "custom": ``attacks=[...]`` any of "apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square",
  "pgd", "fgsm", "cw" with the shared settings n_iter / n_targets / n_queries.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks import losses as L
from jsemi.attacks._common import attack_remaining, fooled_and_margin, is_traced, select, validate
from jsemi.attacks.threat import LinfBall

__all__ = ["autoattack", "autoattack_attacks", "autoattack_report", "VERSIONS"]

VERSIONS = ("standard", "rand", "custom")
_KNOWN = ("apgd-ce", "apgd-dlr", "apgd-t", "fab-t", "square", "pgd", "fgsm", "cw")


def autoattack_attacks(version: str, threat, attacks=None) -> list[str]:
    if version == "standard":
        names = ["apgd-ce", "apgd-t", "fab-t"] + (["square"] if isinstance(threat, LinfBall) else [])
    elif version == "rand":
        names = ["apgd-ce", "apgd-dlr"]
    elif version == "custom":
        if not attacks:
            raise ValueError("version='custom' needs attacks=[...] (names from %s)" % (_KNOWN,))
        names = list(attacks)
    else:
        raise ValueError(f"version must be one of {VERSIONS}, got {version!r}")
    for n in names:
        if n not in _KNOWN:
            raise ValueError(f"unknown attack {n!r} in the AutoAttack composition; known: {_KNOWN}")
    if "square" in names and not isinstance(threat, LinfBall):
        raise ValueError("square is L-inf only; remove it from the composition for an L2 threat")
    return names


def _component(name, threat, n_iter, n_targets, n_queries):
    """Composition member ``name`` bound from the attack registry with the shared settings."""
    from jsemi.attacks.registry import get_attack  # the registry lists autoattack itself

    if name == "square":  # the reference's composition builds SquareAttack with resc_schedule=False
        kw = {"n_queries": n_queries, "rescale_schedule": False}
    else:
        kw = {} if name == "fgsm" else {"steps": n_iter}  # steps = n_iter for APGD / FAB (registry alias)
    if name in ("apgd-t", "fab-t"):
        kw["n_targets"] = n_targets
    return get_attack(name, threat, **kw)


def autoattack(logits_fn, x, y, key, threat, *, version="standard", attacks=None, n_iter=100, n_targets=None,
               n_queries=5000, return_info=False):
    """Runs the AutoAttack composition; returns x_adv, or (x_adv, info) with
    info = {"attacks": [...], "clean_acc": float, "robust_acc_after": {name: float},
    "robust_acc": float, "robust": bool (B,)} (accuracies over this batch)."""
    validate(logits_fn, x, y, key, threat)
    names = autoattack_attacks(version, threat, attacks)
    fns = [_component(n, threat, n_iter, n_targets, n_queries) for n in names]
    if is_traced(logits_fn, x, y, key, threat):
        return _autoattack_traced(logits_fn, x, y, key, threat, names, fns, return_info)
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    fooled0, m0 = fooled_and_margin(logits_fn, x, y)
    robust = ~np.asarray(fooled0)
    clean_acc = float(robust.mean())
    x_np = np.array(x)
    y_np = np.asarray(y)
    x_adv = x_np.copy()
    m_best = np.asarray(m0).copy()
    after = {}
    for j, (name, fn) in enumerate(zip(names, fns)):
        attack_remaining(lambda xs, ys, kr: fn(logits_fn, xs, ys, kr), logits_fn, x_np, y_np,
                         jax.random.fold_in(key, j), robust, x_adv, m_best)
        after[name] = float(robust.mean())
    out = jnp.asarray(x_adv)
    if return_info:
        return out, {"attacks": names, "clean_acc": clean_acc, "robust_acc_after": after,
                     "robust_acc": float(robust.mean()), "robust": robust}
    return out


def _autoattack_traced(logits_fn, x, y, key, threat, names, fns, return_info):
    logits = logits_fn(x)
    robust = jnp.argmax(logits, 1) == y
    m_best = L.margin(logits, y)
    x_adv = x
    after = {}
    clean_acc = jnp.mean(robust)
    for j, (name, fn) in enumerate(zip(names, fns)):
        xa = fn(logits_fn, x, y, jax.random.fold_in(key, j))
        la = logits_fn(xa)
        fooled = (jnp.argmax(la, 1) != y) & robust
        m = L.margin(la, y)
        upd = robust & (fooled | (m < m_best))
        x_adv = select(upd, xa, x_adv)
        m_best = jnp.where(upd, m, m_best)
        robust = robust & ~fooled
        after[name] = jnp.mean(robust)
    if return_info:
        return x_adv, {"attacks": names, "clean_acc": clean_acc, "robust_acc_after": after,
                       "robust_acc": jnp.mean(robust), "robust": robust}
    return x_adv


def autoattack_report(logits_fn, x, y, key, threat, *, batch_size=256, progress=False, **settings) -> dict:
    """AutoAttack over a dataset in batches: {"attacks", "n", "clean_acc",
    "robust_acc_after": {name: acc after that attack}, "robust_acc", "robust": bool (N,)}.

    Batch i uses ``jax.random.fold_in(key, i)``; ``settings`` go to ``autoattack``.
    """
    from jsemi.attacks._common import check_key
    from jsemi.validation import check_images, check_labels

    check_images(x, "x")
    check_labels(y, name="y", batch=x.shape[0])
    check_key(key)
    x = np.asarray(x, np.float32)
    y = np.asarray(y, np.int32)
    n = x.shape[0]
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm

        starts = tqdm(starts, total=-(-n // batch_size), desc="autoattack", unit="batch")
    robust = np.zeros(n, bool)
    clean = 0.0
    after = None
    names = None
    for i, s in enumerate(starts):
        xb, yb = x[s : s + batch_size], y[s : s + batch_size]
        _, info = autoattack(logits_fn, jnp.asarray(xb), jnp.asarray(yb), jax.random.fold_in(key, i), threat,
                             return_info=True, **settings)
        m = len(yb)
        names = info["attacks"]
        clean += info["clean_acc"] * m
        if after is None:
            after = {k: 0.0 for k in names}
        for k in names:
            after[k] += info["robust_acc_after"][k] * m
        robust[s : s + m] = info["robust"]
    return {"attacks": names, "n": n, "clean_acc": clean / n,
            "robust_acc_after": {k: v / n for k, v in after.items()}, "robust_acc": float(robust.mean()),
            "robust": robust}
