"""Square Attack (Andriushchenko et al., ECCV 2020), L-inf, score-based (no gradients).

Semantics as in AutoAttack's version: margin loss, start at vertical stripes of +-eps,
each query proposes a random square of side s (set by the fraction p of pixels, p_init =
0.8 halved after queries 10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000) filled with +-2 eps
per channel, projected back onto the ball and the box, and kept when the margin decreases;
an example stops once misclassified.  Squares are drawn independently per example.
``rescale_schedule=False`` (default, as the reference's "standard" AutoAttack,
``resc_schedule=False``) uses those query counts as they are, so with 5,000 queries p ends
at p_init / 128; ``True`` (the reference SquareAttack's own default) stretches the schedule
to the budget: query i counts as floor(i * 10,000 / n_queries).  The loop is a
``lax.while_loop`` that ends when every example is misclassified or the query budget is spent.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks import losses as L
from jsemi.attacks._common import check_setting_positive_int, dispatch, fn_jit, select, validate
from jsemi.attacks.threat import LinfBall

__all__ = ["square", "p_selection", "p_thresholds"]

_BOUNDS = np.array([10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000])


def p_thresholds(n_queries: int, rescale_schedule: bool = False) -> np.ndarray:
    """First query index (0-based) of each halving of p: ``_BOUNDS + 1`` as they are, or
    rescaled, the least i with floor(i * 10,000 / n_queries) > bound, i.e.
    ceil((bound + 1) * n_queries / 10,000), in exact integer arithmetic (no int32 overflow)."""
    if not rescale_schedule:
        return _BOUNDS + 1
    return np.array([-(-(int(b) + 1) * int(n_queries) // 10000) for b in _BOUNDS])


def p_selection(it, n_queries: int, p_init: float, rescale_schedule: bool = False):
    """Fraction of pixels changed at query ``it`` (0-based, traceable): p_init / 2**j with j
    the number of thresholds (:func:`p_thresholds`) that ``it`` has reached."""
    j = jnp.sum(it >= jnp.asarray(p_thresholds(n_queries, rescale_schedule)))
    return p_init / (2.0 ** j)


def _square_impl(logits_fn, x, y, key, threat, *, n_queries, p_init, rescale_schedule):
    if not isinstance(threat, LinfBall):
        raise NotImplementedError("square is implemented for LinfBall threats only")
    b, h, w, c = x.shape
    eps = jnp.asarray(threat.eps, x.dtype)
    k0, key = jax.random.split(key)
    stripes = jax.random.rademacher(k0, (b, 1, w, c), x.dtype)
    x_best = jnp.clip(x + eps * stripes, 0.0, 1.0)
    m_best = L.margin(logits_fn(x_best), y)
    n_feat = h * w * c
    hw_max = min(h, w)

    def cond(s):
        i, _, m, _ = s
        return (i < n_queries) & jnp.any(m > 0)

    def body(s):
        i, xb, m, k = s
        k, k1, k2, k3 = jax.random.split(k, 4)
        p = p_selection(i, n_queries, p_init, rescale_schedule)
        side = jnp.clip(jnp.round(jnp.sqrt(p * n_feat / c)).astype(jnp.int32), 1, hw_max)
        vh = jax.random.randint(k1, (b,), 0, h - side + 1)
        vw = jax.random.randint(k2, (b,), 0, w - side + 1)
        rows = jnp.arange(h)[None, :]
        cols = jnp.arange(w)[None, :]
        in_r = (rows >= vh[:, None]) & (rows < (vh + side)[:, None])  # (b, h)
        in_c = (cols >= vw[:, None]) & (cols < (vw + side)[:, None])  # (b, w)
        mask = (in_r[:, :, None] & in_c[:, None, :])[..., None]  # (b, h, w, 1)
        signs = jax.random.rademacher(k3, (b, 1, 1, c), x.dtype)
        xn = jnp.where(mask, xb + 2.0 * eps * signs, xb)
        xn = threat.project(xn, x)
        mn = L.margin(logits_fn(xn), y)
        active = m > 0
        better = active & (mn < m)
        return i + 1, select(better, xn, xb), jnp.where(better, mn, m), k

    _, x_best, _, _ = jax.lax.while_loop(cond, body, (jnp.int32(0), x_best, m_best, key))
    return x_best


_square_compiled = fn_jit(_square_impl)


def square(logits_fn, x, y, key, threat, *, n_queries=5000, p_init=0.8, rescale_schedule=False):
    """Square Attack, L-inf.  ``n_queries`` model evaluations at most per example (5,000 in
    AutoAttack "standard").  ``rescale_schedule``: stretch the p-schedule to ``n_queries``
    (see the module doc; False as in AutoAttack "standard").  Returns the point of lowest
    margin found (misclassified where the attack succeeded)."""
    validate(logits_fn, x, y, key, threat)
    if not isinstance(threat, LinfBall):
        raise NotImplementedError("square is implemented for LinfBall threats only; use L-inf or drop it from the composition")
    check_setting_positive_int(n_queries, "n_queries")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init must be in (0, 1], got {p_init}")
    if not isinstance(rescale_schedule, (bool, np.bool_)):
        raise TypeError(f"rescale_schedule must be a bool, got {rescale_schedule!r}")
    return dispatch(_square_compiled, logits_fn, x, y, key, threat, n_queries=int(n_queries), p_init=float(p_init),
                    rescale_schedule=bool(rescale_schedule))
