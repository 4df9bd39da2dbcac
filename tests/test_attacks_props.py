"""Hypothesis property tests for the attack suite (small linear models: fast to compile)."""

from __future__ import annotations

import pytest
import functools

import jax
import jax.numpy as jnp
import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

from jsemi.attacks import L2Ball, LinfBall, apgd, apgd_t, cw_l2, fab_t, fgsm, ifgsm, margin, pgd, square
from jsemi.attacks.autoattack import autoattack

SETTINGS = settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.too_slow])

ATTACKS = {
    "fgsm": lambda f, x, y, k, th: fgsm(f, x, y, k, th),
    "ifgsm": lambda f, x, y, k, th: ifgsm(f, x, y, k, th, steps=2),
    "pgd": lambda f, x, y, k, th: pgd(f, x, y, k, th, steps=2, restarts=2),
    "cw": lambda f, x, y, k, th: cw_l2(f, x, y, k, th, steps=3, lr=0.1),
    "apgd-ce": lambda f, x, y, k, th: apgd(f, x, y, k, th, n_iter=3),
    "apgd-t": lambda f, x, y, k, th: apgd_t(f, x, y, k, th, n_iter=3, n_targets=1),
    "fab-t": lambda f, x, y, k, th: fab_t(f, x, y, k, th, n_iter=3, n_targets=1),
    "square": lambda f, x, y, k, th: square(f, x, y, k, th, n_queries=5),
}


@functools.lru_cache(maxsize=None)
def _model(seed, d, k):
    """Cached: the same function object lets the attacks reuse their compiled code."""
    w = jax.random.normal(jax.random.key(seed), (d, k))
    return lambda x: x.reshape(x.shape[0], -1) @ w


shapes = st.sampled_from([(1, 2, 2, 1), (3, 4, 4, 1), (2, 3, 5, 3)])


@SETTINGS
@given(name=st.sampled_from(sorted(ATTACKS)), shape=shapes, linf=st.booleans(),
       eps=st.floats(0.0, 0.6), seed=st.integers(0, 2**16))
def test_ball_box_and_same_key_same_result(name, shape, linf, eps, seed):
    if name == "square":
        linf = True
    d = int(np.prod(shape[1:]))
    f = _model(seed % 7, d, 4)
    x = jax.random.uniform(jax.random.key(seed), shape)
    y = jax.random.randint(jax.random.key(seed + 1), (shape[0],), 0, 4)
    th = LinfBall(eps) if linf else L2Ball(eps)
    a = ATTACKS[name](f, x, y, jax.random.key(seed), th)
    b = ATTACKS[name](f, x, y, jax.random.key(seed), th)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.shape == x.shape
    assert float(jnp.min(a)) >= 0.0 and float(jnp.max(a)) <= 1.0
    assert np.all(np.asarray(th.dist(a, x)) <= eps * (1 + 1e-6) + 1e-6)


@SETTINGS
@given(e1=st.floats(0.0, 0.3), e2=st.floats(0.0, 0.3), seed=st.integers(0, 2**16), linf=st.booleans())
def test_robust_accuracy_non_increasing_in_eps(e1, e2, seed, linf):
    """FGSM is exact for a binary linear model, so robustness is monotone in eps point by point."""
    lo, hi = min(e1, e2), max(e1, e2)
    f = _model(seed % 5, 16, 2)
    x = jax.random.uniform(jax.random.key(seed), (32, 4, 4, 1))
    y = jnp.argmax(f(x), 1)
    ball = LinfBall if linf else L2Ball
    ok = lambda e: np.asarray(jnp.argmax(f(fgsm(f, x, y, jax.random.key(0), ball(e))), 1) == y)
    a_lo, a_hi = ok(lo), ok(hi)
    assert np.all(a_hi <= a_lo)  # robust at the larger eps implies robust at the smaller


@pytest.mark.slow
@settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 2**16))
def test_autoattack_accuracy_at_most_pgd(seed):
    f = _model(seed % 2, 16, 5)
    # 16 points: every remaining subset pads to the same 16-point bucket (one compilation)
    x = jax.random.uniform(jax.random.key(seed), (16, 4, 4, 1))
    y = jnp.argmax(f(x), 1)
    th = LinfBall(0.05)
    acc_pgd = float(jnp.mean(jnp.argmax(f(pgd(f, x, y, jax.random.key(1), th, steps=5)), 1) == y))
    _, info = autoattack(f, x, y, jax.random.key(1), th, n_iter=10, n_targets=2, n_queries=20, return_info=True)
    assert list(info["robust_acc_after"]) == ["apgd-ce", "apgd-t", "fab-t", "square"]
    assert info["robust_acc"] <= acc_pgd + 1e-9


@SETTINGS
@given(seed=st.integers(0, 2**16), t=st.integers(1, 4))
def test_targeted_pgd_hits_reachable_targets_on_linear_model(seed, t):
    """Where a linear program says the target class can be made the argmax by a margin of
    0.5 inside the box, targeted PGD reaches it."""
    from scipy.optimize import linprog

    f = _model(seed % 3, 16, 5)
    w = np.asarray(jax.random.normal(jax.random.key(seed % 3), (16, 5)), np.float64)
    x = jax.random.uniform(jax.random.key(seed), (8, 4, 4, 1), minval=0.2, maxval=0.8)
    y = jnp.argmax(f(x), 1)
    tgt = (y + t) % 5
    xa = pgd(f, x, y, jax.random.key(0), LinfBall(1.0), steps=20, step_size=0.1, y_target=tgt)
    pred = np.asarray(jnp.argmax(f(xa), 1))
    for i, ti in enumerate(np.asarray(tgt)):
        # min s  s.t.  (w_k - w_t) . x' <= s  for k != t,  x' in [0, 1]^16
        others = [k for k in range(5) if k != ti]
        a_ub = np.stack([np.r_[w[:, k] - w[:, ti], -1.0] for k in others])
        res = linprog(np.r_[np.zeros(16), 1.0], A_ub=a_ub, b_ub=np.zeros(len(others)),
                      bounds=[(0, 1)] * 16 + [(None, None)])
        if res.status == 0 and res.fun < -0.5:
            assert pred[i] == ti, (i, res.fun)
