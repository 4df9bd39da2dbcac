"""Layer-to-layer dependency rho_j and layer sensitivity of a whole network (PAPER_NOTES 2-3).

- ``adversarial_examples``: attacked inputs x_adv = attack on the full network F (batched,
  the attack compiled once), the data on which the paper measures rho.
- ``network_rhos``: for every consecutive weight-layer pair (j-1, j),
  rho_j = sum_y pi(y) I(f(j-1)(X+delta) ; f(j)(X+delta) | y) in bits on x_adv, through
  ``jsemi.estimators.conditional.conditional_mi_with_null``, so every rho comes with its
  null (same estimator with one layer permuted within each class), the excess over the
  null and a permutation p-value.
- ``layer_sensitivities``: Zhang et al. (2019) sensitivity of each layer,
  ``jsemi.estimators.dependence.sensitivity(F(j)(x), F(j)(x_adv))``.

Activations are gathered with one jitted forward pass per batch through
``jsemi.models.layer_outputs`` (every requested layer at once, flattened per example) and
held on the host as float32; memory is N x (sum of the requested layers' sizes).
"""

from __future__ import annotations

from typing import Any, Callable, Iterable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.estimators.semirobust import collect_layer_outputs, map_batches, network_info, bind_attack
from jsemi.models import logits_fn as _logits_fn
from jsemi.validation import check_images, check_labels


def adversarial_examples(model, variables, x, y, key, *, threat, attack: str | Callable = "pgd",
                         attack_settings: Mapping[str, Any] | None = None, batch_size: int = 256) -> np.ndarray:
    """x_adv from ``attack`` against the full network (eval mode), in padded batches.

    The attack is called with concrete batches and one ``logits_fn`` object, so it compiles
    once and can use its host-side machinery (AutoAttack's compaction of still-robust
    points, PGD's compiled step chunks).  ``attack_settings`` are passed to the attack as
    given (the attack's own defaults apply otherwise).  Returns a host float32 array
    shaped like ``x``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    check_images(x, "x")
    check_labels(y, None, "y", batch=x.shape[0])
    bound = bind_attack(attack, threat, attack_settings, defaults=False)[0]
    lf = _logits_fn(model, variables)
    run = lambda xb, yb, kb: bound(lf, jnp.asarray(xb), jnp.asarray(yb), kb)
    return map_batches(run, [x, y], batch_size, key)[0].astype(np.float32, copy=False)


def _pairs(n: int, layers: Iterable[int] | None) -> list[int]:
    js = list(range(2, n + 1)) if layers is None else sorted(set(int(j) for j in layers))
    bad = [j for j in js if not 2 <= j <= n]
    if bad:
        raise ValueError(f"rho_j needs 2 <= j <= n = {n} (pair j-1, j); got {bad}")
    if not js:
        raise ValueError("no layer pairs requested")
    return js


def network_rhos(model, variables, x_adv, y, key, layers: Iterable[int] | None = None, estimator: str = "edge", *,
                 batch_size: int = 256, **estimator_kwargs) -> list[dict]:
    """rho_j with its null control for the pairs (j-1, j), j in ``layers`` (default 2..n).

    ``x_adv``: attacked images (e.g. from ``adversarial_examples``); ``y``: their true labels
    (the conditioning classes).  ``estimator`` and ``estimator_kwargs`` (``permutations``,
    ``reduce_dim``, ...) go to ``conditional_mi_with_null``.  Returns one dict per pair:
    ``layer`` (= j), ``pair`` ([j-1, j]), ``rho``, ``null``, ``excess`` (bits), ``p_value``,
    ``per_class``, ``estimator``, ``settings``, ``units`` ("bits").
    """
    from jsemi.estimators.conditional import conditional_mi_with_null

    x_adv = np.asarray(x_adv)
    y = np.asarray(y)
    check_images(x_adv, "x_adv")
    n, num_classes = network_info(model, variables, x_adv)
    check_labels(y, num_classes, "y", batch=x_adv.shape[0])
    js = _pairs(n, layers)
    acts = collect_layer_outputs(model, variables, x_adv, sorted(set(js) | {j - 1 for j in js}), batch_size=batch_size)
    out = []
    for j in js:
        res = dict(conditional_mi_with_null(acts[j - 1], acts[j], y, jax.random.fold_in(key, j),
                                            estimator=estimator, **estimator_kwargs))
        res.update(layer=j, pair=[j - 1, j], units="bits")
        out.append(res)
    return out


def layer_sensitivities(model, variables, x, x_adv, layers: Iterable[int] | None = None, *,
                        batch_size: int = 256) -> list[dict]:
    """Sensitivity of each weight layer (default all) on F(j)(x) and F(j)(x_adv).

    Returns [{'layer': j, 'sensitivity': float, 'sensitivity_image': float}]:
    ``sensitivity`` is ``jsemi.estimators.dependence.sensitivity`` with its defaults, the
    authors' form (per channel for conv maps, per unit for dense outputs, then the mean
    over images); a channel or unit that is exactly zero on the clean image but not on
    the attacked one contributes |d| / 1e-8, so after ReLU it can reach 1e6 and more.
    ``sensitivity_image`` is the per-image ratio ||a - a_adv||_1 / ||a||_1 over the whole
    activation (``per="image"``), which stays finite.
    """
    from jsemi.estimators.dependence import sensitivity

    x = np.asarray(x)
    x_adv = np.asarray(x_adv)
    check_images(x, "x")
    check_images(x_adv, "x_adv")
    if x.shape != x_adv.shape:
        raise ValueError(f"x and x_adv must have the same shape, got {x.shape} and {x_adv.shape}")
    n, _ = network_info(model, variables, x)
    js = list(range(1, n + 1)) if layers is None else sorted(set(int(j) for j in layers))
    bad = [j for j in js if not 1 <= j <= n]
    if bad:
        raise ValueError(f"layer indices {bad} out of range 1..{n}")
    # unflattened: conv maps (N, H, W, C) are compared per channel, dense outputs per unit
    acts = collect_layer_outputs(model, variables, np.concatenate([x, x_adv]), js, batch_size=batch_size, flatten=False)
    m = x.shape[0]
    return [{"layer": j, "sensitivity": float(sensitivity(acts[j][:m], acts[j][m:])),
             "sensitivity_image": float(sensitivity(acts[j][:m], acts[j][m:], per="image"))} for j in js]
