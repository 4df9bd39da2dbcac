"""Attack suite: closed forms on linear classifiers, constraints, determinism, BatchNorm in
inference mode, few classes, all-misclassified batches, explicit keys, registry."""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jsemi.attacks import (
    L2Ball, LinfBall, apgd, apgd_t, autoattack, cw_l2, fab_t, fgsm, get_attack, ifgsm, margin, pgd,
    robust_accuracy, robust_accuracy_eps_grid, square, ATTACK_NAMES, default_threat,
)
from jsemi.attacks import losses as L
from jsemi.attacks.apgd import apgd_schedule
from jsemi.attacks.fab import project_hyperplane_box
from jsemi.models import SmallCNN, init_model

TOL = 1e-6  # float32 rounding allowance for ||x_adv - x|| <= eps


# ------------------------------------------------------------------------------ helpers
_LINEAR: dict = {}


def linear_model(key, shape=(4, 4, 1), k=2, scale=1.0, shift=0.0):
    """(f, w, b); cached, so equal arguments give the same function object and the attacks
    reuse their compiled code across tests (a closure keys jit's cache by identity)."""
    cache_key = (np.asarray(jax.random.key_data(key)).tobytes(), tuple(shape), k, scale, shift)
    if cache_key not in _LINEAR:
        d = int(np.prod(shape))
        kw, kb = jax.random.split(key)
        w = jax.random.normal(kw, (d, k)) * scale
        b = jax.random.normal(kb, (k,)) * 0.1
        _LINEAR[cache_key] = (lambda x: x.reshape(x.shape[0], -1) @ w + b + shift), w, b
    return _LINEAR[cache_key]


# the model and batch of test_every_attack_respects_ball_box_and_is_deterministic; tests that
# loop over every attack use them too, so the attacks compile once for all of them
MULTI = dict(shape=(4, 4, 3), k=4, scale=0.5)


def interior_inputs(key, n, shape=(4, 4, 1)):
    return jax.random.uniform(key, (n, *shape), minval=0.3, maxval=0.7)


def check_constraints(threat, x_adv, x):
    x_adv, x = np.asarray(x_adv), np.asarray(x)
    assert x_adv.shape == x.shape and x_adv.dtype == np.float32
    assert np.all(x_adv >= 0.0) and np.all(x_adv <= 1.0)
    d = np.asarray(threat.dist(jnp.asarray(x_adv), jnp.asarray(x)))
    assert np.all(d <= threat.eps * (1 + TOL) + TOL), (d.max(), threat.eps)


ALL = {
    "fgsm": lambda f, x, y, k, th: fgsm(f, x, y, k, th),
    "ifgsm": lambda f, x, y, k, th: ifgsm(f, x, y, k, th, steps=3),
    "pgd": lambda f, x, y, k, th: pgd(f, x, y, k, th, steps=3, restarts=2),
    "pgd-margin": lambda f, x, y, k, th: pgd(f, x, y, k, th, steps=3, loss="margin"),
    "pgd-dlr": lambda f, x, y, k, th: pgd(f, x, y, k, th, steps=3, loss="dlr"),
    "cw": lambda f, x, y, k, th: cw_l2(f, x, y, k, th, steps=5, lr=0.1),
    "apgd-ce": lambda f, x, y, k, th: apgd(f, x, y, k, th, n_iter=5),
    "apgd-dlr": lambda f, x, y, k, th: apgd(f, x, y, k, th, n_iter=5, loss="dlr"),
    "apgd-t": lambda f, x, y, k, th: apgd_t(f, x, y, k, th, n_iter=5, n_targets=2),
    "fab-t": lambda f, x, y, k, th: fab_t(f, x, y, k, th, n_iter=5, n_targets=2),
    "square": lambda f, x, y, k, th: square(f, x, y, k, th, n_queries=20),
    # the members' settings equal the single attacks' above: on a 5-point batch AutoAttack's
    # remaining-points bucket is the batch itself, so it reuses their compiled code
    "autoattack": lambda f, x, y, k, th: autoattack(f, x, y, k, th, n_iter=5, n_targets=2, n_queries=20),
}


# -------------------------------------------------------------------- threat models
def test_threat_models_tie_eps_to_norm_and_validate():
    assert LinfBall(0.1) == LinfBall(0.1) and hash(LinfBall(0.1)) == hash(LinfBall(0.1))
    assert LinfBall(0.1) != L2Ball(0.1)
    for bad in (-0.1, float("nan"), float("inf")):
        with pytest.raises(ValueError):
            LinfBall(bad)
        with pytest.raises(ValueError):
            L2Ball(bad)
    f, _, _ = linear_model(jax.random.key(0))
    x = interior_inputs(jax.random.key(1), 2)
    y = jnp.zeros(2, jnp.int32)
    with pytest.raises(TypeError, match="LinfBall"):
        pgd(f, x, y, jax.random.key(0), 0.1)  # a bare float is not a threat
    with pytest.raises(ValueError, match="L2Ball"):
        get_attack("pgd-l2", LinfBall(0.5))
    assert isinstance(default_threat("pgd-l2", 0.5), L2Ball) and isinstance(default_threat("pgd", 0.5), LinfBall)
    assert isinstance(default_threat("cw", 0.5), L2Ball)
    # pytree with eps as leaf: vmap over eps works
    d = jax.vmap(lambda e: LinfBall(0.0).with_eps(e).project(x + 1.0, x))(jnp.array([0.0, 0.1]))
    np.testing.assert_allclose(np.asarray(LinfBall(1.0).dist(d[1], x)), 0.1, atol=1e-6)


def test_explicit_keys_required_and_deterministic():
    f, _, _ = linear_model(jax.random.key(0))
    x = interior_inputs(jax.random.key(1), 4)
    y = jnp.zeros(4, jnp.int32)
    th = LinfBall(0.1)
    with pytest.raises(TypeError, match="key"):
        pgd(f, x, y, None, th)
    with pytest.raises(TypeError, match="key"):
        pgd(f, x, y, 0, th)
    kw = dict(steps=1, step_size=0.01, keep_best=False)  # small steps: the random start still shows
    a = pgd(f, x, y, jax.random.key(3), th, **kw)
    b = pgd(f, x, y, jax.random.key(3), th, **kw)
    c = pgd(f, x, y, jax.random.key(4), th, **kw)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert not np.array_equal(np.asarray(a), np.asarray(c))
    pgd(f, x, y, jax.random.PRNGKey(3), th, steps=1)  # raw uint32 keys are accepted too


def test_input_validation():
    f, _, _ = linear_model(jax.random.key(0))
    x = interior_inputs(jax.random.key(1), 4)
    y = jnp.zeros(4, jnp.int32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        pgd(f, x * 3, y, jax.random.key(0), LinfBall(0.1))
    with pytest.raises(ValueError, match="labels"):
        pgd(f, x, y[:3], jax.random.key(0), LinfBall(0.1))
    with pytest.raises(ValueError, match="steps"):
        pgd(f, x, y, jax.random.key(0), LinfBall(0.1), steps=0)
    with pytest.raises(ValueError, match="loss"):
        pgd(f, x, y, jax.random.key(0), LinfBall(0.1), loss="hinge")


# ---------------------------------------------------------------------------- losses
def test_losses_correct_for_negative_logits():
    logits = jnp.array([[-5.0, -1.0, -3.0], [-2.0, -9.0, -4.0]])
    y = jnp.array([0, 0])
    np.testing.assert_allclose(np.asarray(margin(logits, y)), [-4.0, 2.0])
    np.testing.assert_allclose(np.asarray(L.cw(logits, y)), [-0.0, 2.0])
    np.testing.assert_allclose(np.asarray(L.cw(logits, y, kappa=1.0)), [-1.0, 2.0])
    # the peers' one-hot formula max((1 - onehot) * z) would give 0 for the best other class
    buggy_other = jnp.max((1 - jax.nn.one_hot(y, 3)) * logits, axis=1)
    assert not np.allclose(np.asarray(buggy_other), [-1.0, -4.0])
    np.testing.assert_allclose(np.asarray(L.ce(logits, y)), -np.asarray(jax.nn.log_softmax(logits))[:, 0], rtol=1e-6)


def test_dlr_matches_definition_and_few_class_fallbacks():
    z = jnp.array([[3.0, 1.0, 0.5, -2.0, 0.0]])
    y = jnp.array([1])
    # -(z_y - max_{k != y} z_k) / (z_pi1 - z_pi3)
    np.testing.assert_allclose(np.asarray(L.dlr(z, y)), [-(1.0 - 3.0) / (3.0 - 0.5)], rtol=1e-6)
    t = jnp.array([2])
    np.testing.assert_allclose(np.asarray(L.dlr_targeted(z, y, t)), [-(1.0 - 0.5) / (3.0 - 0.5 * (0.5 + 0.0))], rtol=1e-6)
    z2 = jnp.array([[1.0, 2.0]])
    np.testing.assert_allclose(np.asarray(L.dlr(z2, jnp.array([0]))), [1.0])  # unscaled fallback
    with pytest.raises(ValueError, match="3 classes"):
        L.dlr(z2, jnp.array([0]), strict=True)
    with pytest.raises(ValueError, match="4 classes"):
        L.dlr_targeted(z[:, :3], y, t, strict=True)
    assert np.isfinite(np.asarray(L.dlr_targeted(z[:, :3], y, t))).all()


# ---------------------------------------------------------------------- closed forms
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_fgsm_exact_on_binary_linear(norm):
    f, w, b = linear_model(jax.random.key(0))
    x = interior_inputs(jax.random.key(1), 8)
    y = jnp.argmax(f(x), 1)
    wd = (w[:, 1] - w[:, 0])[None, :] * jnp.where(y == 0, 1.0, -1.0)[:, None]  # d(z_other - z_y)/dx, (B, d)
    eps = 0.05
    th = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    xa = fgsm(f, x, y, jax.random.key(0), th)
    m0 = margin(f(x), y)
    dual = jnp.sum(jnp.abs(wd), 1) if norm == "linf" else jnp.linalg.norm(wd, axis=1)
    np.testing.assert_allclose(np.asarray(margin(f(xa), y)), np.asarray(m0 - eps * dual), atol=1e-5)
    if norm == "linf":
        np.testing.assert_allclose(np.asarray(xa).reshape(8, -1), np.asarray(x.reshape(8, -1) + eps * jnp.sign(wd)), atol=1e-6)


def test_fgsm_exact_with_active_box():
    f, w, b = linear_model(jax.random.key(0))
    x = jax.random.uniform(jax.random.key(2), (8, 4, 4, 1))  # many pixels near 0 / 1
    y = jnp.argmax(f(x), 1)
    eps = 0.3
    xa = fgsm(f, x, y, jax.random.key(0), LinfBall(eps))
    s = jnp.where(y == 0, 1.0, -1.0)[:, None]
    wd = (w[:, 1] - w[:, 0])[None, :] * s  # gradient of z_other - z_y
    xf = x.reshape(8, -1)
    cap = jnp.where(wd > 0, 1 - xf, xf)
    opt = margin(f(x), y) - jnp.sum(jnp.abs(wd) * jnp.minimum(eps, cap), 1)
    np.testing.assert_allclose(np.asarray(margin(f(xa), y)), np.asarray(opt), atol=1e-5)


@pytest.mark.parametrize("norm", ["linf", "l2"])
@pytest.mark.parametrize("which", ["pgd-ce", "pgd-margin", "apgd-ce", "apgd-dlr"])
def test_iterative_attacks_reach_optimal_margin_on_binary_linear(norm, which):
    f, w, b = linear_model(jax.random.key(0), scale=0.3)
    x = interior_inputs(jax.random.key(1), 8)
    y = jnp.argmax(f(x), 1)
    eps = 0.05
    th = LinfBall(eps) if norm == "linf" else L2Ball(eps)
    wd = ((w[:, 1] - w[:, 0])[None, :] * jnp.where(y == 0, 1.0, -1.0)[:, None])
    dual = jnp.sum(jnp.abs(wd), 1) if norm == "linf" else jnp.linalg.norm(wd, axis=1)
    opt = margin(f(x), y) - eps * dual
    key = jax.random.key(5)
    # 10 iterations (one compiled program each): measured worst gaps to the optimum 2.2e-5
    # (L2 PGD, whose iterates on the sphere converge geometrically with step eps / 2) and
    # <= 6e-7 for the rest, the same as with 30 PGD / 20 APGD iterations
    if which == "pgd-ce":
        xa = pgd(f, x, y, key, th, steps=10, step_size=eps / 2)
    elif which == "pgd-margin":
        xa = pgd(f, x, y, key, th, steps=10, step_size=eps / 2, loss="margin")
    elif which == "apgd-ce":
        xa = apgd(f, x, y, key, th, n_iter=10)
    else:
        xa = apgd(f, x, y, key, th, n_iter=10, loss="dlr")
    check_constraints(th, xa, x)
    got = np.asarray(margin(f(xa), y))
    # apgd returns the highest-loss point, or the last misclassified iterate: compare where not fooled
    np.testing.assert_allclose(got[np.asarray(opt) > 0], np.asarray(opt)[np.asarray(opt) > 0], atol=1e-4)
    assert np.all(got <= np.maximum(np.asarray(opt), 0) + 1e-4)
    assert np.all(got >= np.asarray(opt) - 1e-4)  # nothing beats the optimum


def test_pgd_multiclass_linear_never_beats_optimum_and_fgsm_dual_norm():
    f, w, b = linear_model(jax.random.key(0), k=5, scale=0.3)
    x = interior_inputs(jax.random.key(1), 16)
    y = jnp.argmax(f(x), 1)
    eps = 0.03
    z = f(x)
    # optimum over the L-inf ball (box inactive): min_k (z_y - z_k) - eps ||w_y - w_k||_1
    wy = w.T[y]  # (B, d)
    gaps = []
    for k in range(5):
        gk = (z[:, y].diagonal() - z[:, k]) - eps * jnp.sum(jnp.abs(wy - w.T[k]), 1)
        gaps.append(jnp.where(y == k, jnp.inf, gk))
    opt = jnp.min(jnp.stack(gaps), 0)
    xa = pgd(f, x, y, jax.random.key(0), LinfBall(eps), steps=10, loss="margin", restarts=3)
    got = margin(f(xa), y)
    assert np.all(np.asarray(got) >= np.asarray(opt) - 1e-4)
    # targeted PGD with the margin loss reaches, per target k, the linear optimum
    # (z_y - z_k) - eps ||w_y - w_k||_1; the best target gives the global optimum
    best = jnp.full(y.shape, jnp.inf)
    for k in range(5):
        tk = jnp.full(y.shape, k, jnp.int32)
        xk = pgd(f, x, y, jax.random.key(k), LinfBall(eps), steps=10, step_size=eps / 2, loss="margin", y_target=tk)
        zk = f(xk)
        best = jnp.where(y == k, best, jnp.minimum(best, zk[jnp.arange(16), y] - zk[:, k]))
    np.testing.assert_allclose(np.asarray(best), np.asarray(opt), atol=1e-4)
    # APGD-T (targeted DLR: a ratio, not the margin) cannot beat the optimum either
    xt = apgd_t(f, x, y, jax.random.key(0), LinfBall(eps), n_iter=10)
    assert np.all(np.asarray(margin(f(xt), y)) >= np.asarray(opt) - 1e-4)


# ------------------------------------------------------------------ FAB projections
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_hyperplane_box_projection_is_minimal(norm):
    from scipy.optimize import linprog, minimize

    rng = np.random.default_rng(0)
    n = 7
    for _ in range(6):
        p = rng.uniform(0, 1, (1, n))
        w = rng.normal(size=(1, n))
        b = np.array([w[0] @ p[0] + rng.normal() * 0.4])
        d = np.asarray(project_hyperplane_box(jnp.asarray(p, jnp.float32), jnp.asarray(w, jnp.float32),
                                              jnp.asarray(b, jnp.float32), norm), np.float64)[0]
        feasible_box = (p[0] + d >= -1e-6).all() and (p[0] + d <= 1 + 1e-6).all()
        assert feasible_box
        if norm == "linf":  # LP: min t s.t. |d_i| <= t, w.d = beta, box
            c = np.r_[np.zeros(n), 1.0]
            a_ub = np.block([[np.eye(n), -np.ones((n, 1))], [-np.eye(n), -np.ones((n, 1))]])
            res = linprog(c, A_ub=a_ub, b_ub=np.zeros(2 * n), A_eq=np.r_[w[0], 0.0][None],
                          b_eq=[b[0] - w[0] @ p[0]], bounds=[(-p[0, i], 1 - p[0, i]) for i in range(n)] + [(0, None)])
            if res.status == 0:
                assert abs(w[0] @ (p[0] + d) - b[0]) < 1e-4
                assert np.max(np.abs(d)) <= res.fun + 1e-5
        else:
            cons = [{"type": "eq", "fun": lambda dd: w[0] @ (p[0] + dd) - b[0]}]
            res = minimize(lambda dd: dd @ dd, np.zeros(n), constraints=cons, method="SLSQP",
                           bounds=[(-p[0, i], 1 - p[0, i]) for i in range(n)])
            if res.success:
                assert abs(w[0] @ (p[0] + d) - b[0]) < 1e-4
                assert d @ d <= res.fun + 1e-5


def test_apgd_checkpoint_schedule_matches_paper():
    is_check, _ = apgd_schedule(100)
    # p_0 = 0, p_1 = 0.22, p_{j+1} = p_j + max(p_j - p_{j-1} - 0.03, 0.06)
    assert list(np.nonzero(is_check)[0] + 1) == [22, 41, 57, 70, 80, 87, 93, 99]


# ----------------------------------------------------------- constraints, determinism
@pytest.mark.parametrize("name", sorted(ALL))
@pytest.mark.parametrize("norm", ["linf", "l2"])
def test_every_attack_respects_ball_box_and_is_deterministic(name, norm):
    if name == "square" and norm == "l2":
        pytest.skip("square is L-inf only")
    f, _, _ = linear_model(jax.random.key(0), **MULTI)
    x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 3))
    y = jnp.array([0, 1, 2, 3, 0], jnp.int32)
    th = LinfBall(0.1) if norm == "linf" else L2Ball(0.3)
    a = ALL[name](f, x, y, jax.random.key(7), th)
    b = ALL[name](f, x, y, jax.random.key(7), th)
    check_constraints(th, a, x)
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


def test_square_l2_is_a_clear_error():
    f, _, _ = linear_model(jax.random.key(0))
    x = interior_inputs(jax.random.key(1), 2)
    with pytest.raises(NotImplementedError, match="L-inf"):
        square(f, x, jnp.zeros(2, jnp.int32), jax.random.key(0), L2Ball(0.5))


def test_attacks_trace_inside_a_callers_jit_and_match_eager():
    f, _, _ = linear_model(jax.random.key(0), shape=(4, 4, 1), k=3)
    x = interior_inputs(jax.random.key(1), 6)
    y = jnp.argmax(f(x), 1)

    @jax.jit
    def step(x, y, key, threat):
        return pgd(f, x, y, key, threat, steps=4), apgd(f, x, y, key, threat, n_iter=4), fgsm(f, x, y, key, threat)

    th = LinfBall(0.05)
    got = step(x, y, jax.random.key(2), th)
    want = (pgd(f, x, y, jax.random.key(2), th, steps=4), apgd(f, x, y, jax.random.key(2), th, n_iter=4),
            fgsm(f, x, y, jax.random.key(2), th))
    for g, w_ in zip(got, want):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w_), atol=1e-6)
    # the same compiled step for another eps (threat is a pytree: no recompilation needed)
    check_constraints(LinfBall(0.01), step(x, y, jax.random.key(2), LinfBall(0.01))[0], x)


# ---------------------------------------------------------------------- few classes
@pytest.mark.parametrize("k", [2, 3])
def test_few_classes(k):
    f, _, _ = linear_model(jax.random.key(0), k=k, scale=0.5)
    x = interior_inputs(jax.random.key(1), 6)
    y = jnp.argmax(f(x), 1)
    th = LinfBall(0.2)
    for xa in (apgd_t(f, x, y, jax.random.key(0), th, n_iter=3), apgd(f, x, y, jax.random.key(0), th, n_iter=3, loss="dlr"),
               fab_t(f, x, y, jax.random.key(0), th, n_iter=3), pgd(f, x, y, jax.random.key(0), th, steps=3, loss="dlr"),
               autoattack(f, x, y, jax.random.key(0), th, n_iter=3, n_queries=10)):
        check_constraints(th, xa, x)
    with pytest.raises(ValueError, match="n_targets"):
        apgd_t(f, x, y, jax.random.key(0), th, n_targets=k)
    with pytest.raises(ValueError, match="n_targets"):
        fab_t(f, x, y, jax.random.key(0), th, n_targets=9)


# ------------------------------------------------------------- all misclassified batch
def test_all_misclassified_batch():
    f, _, _ = linear_model(jax.random.key(0), **MULTI)
    x = interior_inputs(jax.random.key(1), 5, shape=MULTI["shape"])
    wrong = (jnp.argmax(f(x), 1) + 1) % MULTI["k"]
    th = LinfBall(0.05)
    xa, info = autoattack(f, x, wrong, jax.random.key(0), th, n_iter=5, n_targets=2, n_queries=20, return_info=True)
    np.testing.assert_array_equal(np.asarray(xa), np.asarray(x))
    assert info["clean_acc"] == 0.0 and info["robust_acc"] == 0.0
    assert all(v == 0.0 for v in info["robust_acc_after"].values())
    for name in ALL:
        check_constraints(th, ALL[name](f, x, wrong, jax.random.key(0), th), x)
    assert robust_accuracy(f, x, wrong, jax.random.key(0), get_attack("pgd", th)) == 0.0


# --------------------------------------------------------------------- registry
def test_registry_builds_every_name():
    # ALL's model, batch size and settings: the registry's attacks reuse the compiled code of
    # test_every_attack_respects_ball_box_and_is_deterministic (threats are pytrees: eps is an argument)
    f, _, _ = linear_model(jax.random.key(0), **MULTI)
    x = interior_inputs(jax.random.key(1), 5, shape=MULTI["shape"])
    y = jnp.argmax(f(x), 1)
    fast = {"ifgsm": dict(steps=3), "pgd": dict(steps=3, restarts=2), "pgd-l2": dict(steps=3, restarts=2),
            "cw": dict(steps=5, lr=0.1), "apgd-ce": dict(n_iter=5), "apgd-dlr": dict(n_iter=5),
            "apgd-t": dict(n_iter=5, n_targets=2), "fab-t": dict(n_iter=5, n_targets=2), "square": dict(n_queries=20),
            "autoattack": dict(n_iter=5, n_targets=2, n_queries=20), "autoattack-rand": dict(n_iter=5),
            "autoattack-custom": dict(attacks=["fgsm", "apgd-ce"], n_iter=5)}
    for name in ATTACK_NAMES:
        th = default_threat(name, 0.1)
        atk = get_attack(name, th, **fast.get(name, {}))
        assert atk.__name__ == name
        check_constraints(th, atk(f, x, y, jax.random.key(0)), x)
    with pytest.raises(ValueError, match="unknown attack"):
        get_attack("deepfool", LinfBall(0.1))


# ------------------------------------------------------------ trained CNN fixtures
@pytest.fixture(scope="session")
def trained_cnn():
    """SmallCNN (BatchNorm) trained for a few seconds on sklearn digits (8x8, 10 classes)."""
    from sklearn.datasets import load_digits

    d = load_digits()
    x = (d.images.astype(np.float32) / 16.0)[..., None]
    y = d.target.astype(np.int32)
    rng = np.random.default_rng(0)
    perm = rng.permutation(len(y))
    x, y = x[perm], y[perm]
    xtr, ytr, xte, yte = x[:1500], y[:1500], x[1500:], y[1500:]
    model = SmallCNN(num_classes=10, widths=(8, 8, 16, 16, 16), hidden=32)
    variables = init_model(model, jax.random.key(0), (8, 8, 1))  # one compiled initialiser, not ~100 eager ops
    tx = optax.adam(3e-3)
    opt = tx.init(variables["params"])

    @jax.jit
    def step(params, bs, opt, xb, yb):
        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": bs}, xb, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new["batch_stats"]

        (_, bs), g = jax.value_and_grad(loss, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), bs, opt

    params, bs = variables["params"], variables["batch_stats"]
    for epoch in range(8):
        order = rng.permutation(1500)
        for s in range(0, 1500 - 127, 128):
            idx = order[s : s + 128]
            params, bs, opt = step(params, bs, opt, xtr[idx], ytr[idx])
    variables = {"params": params, "batch_stats": bs}
    f = lambda xx: model.apply(variables, xx, train=False)
    acc = float(np.mean(np.argmax(np.asarray(f(jnp.asarray(xte))), 1) == yte))
    assert acc > 0.85, acc
    return model, variables, f, jnp.asarray(xte[:96]), jnp.asarray(yte[:96])


def test_batchnorm_stays_in_inference_mode(trained_cnn):
    # AutoAttack on this BatchNorm model (variables unchanged, constraints) is checked in
    # test_autoattack_at_most_pgd_and_worst_case_per_point: one AutoAttack compilation for both
    model, variables, f, x, y = trained_cnn
    before = jax.tree_util.tree_map(np.array, variables)
    th = LinfBall(0.1)
    xa = pgd(f, x[:16], y[:16], jax.random.key(0), th, steps=3, keep_best=False)
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, variables))
    # per-example independence: attacking a single example alone gives the same result
    # (batch statistics would couple the examples)
    for i in (0, 5):
        one = fgsm(f, x[i : i + 1], y[i : i + 1], jax.random.key(0), th)
        np.testing.assert_allclose(np.asarray(one[0]), np.asarray(fgsm(f, x[:16], y[:16], jax.random.key(0), th)[i]), atol=1e-6)
    check_constraints(th, xa, x[:16])
    assert xa.shape == x[:16].shape


@pytest.mark.slow
def test_targeted_attacks_hit_their_targets(trained_cnn):
    _, _, f, x, y = trained_cnn
    x, y = x[:32], y[:32]
    th = LinfBall(0.3)
    # targeted PGD: argmax becomes the requested (random, != y) target
    tgt = (y + 1 + jax.random.randint(jax.random.key(3), y.shape, 0, 9)) % 10
    for loss, rate in (("ce", 0.95), ("margin", 0.75)):  # the margin loss is piecewise (plateaus)
        xt = pgd(f, x, y, jax.random.key(0), th, steps=20, loss=loss, y_target=tgt)
        check_constraints(th, xt, x)
        assert np.mean(np.asarray(jnp.argmax(f(xt), 1) == tgt)) >= rate
    # APGD-T / FAB-T (targeted DLR / targeted boundary) with one target, the 2nd most likely
    # clean class: the gap z_t - z_y grows for every point, and where the attack succeeds it
    # is the target that overtakes the true class
    target = jnp.argsort(-f(x), 1)[:, 1]

    def gap(xx):
        z = f(xx)
        return np.asarray(jnp.take_along_axis(z, target[:, None], 1)[:, 0] - jnp.take_along_axis(z, y[:, None], 1)[:, 0])

    ok = np.asarray(jnp.argmax(f(x), 1) == y)
    for xa in (apgd_t(f, x, y, jax.random.key(0), LinfBall(0.1), n_iter=20, n_targets=1),
               fab_t(f, x, y, jax.random.key(0), LinfBall(0.1), n_iter=20, n_targets=1)):
        assert np.mean((gap(xa) > gap(x))[ok]) >= 0.95
        fooled = ok & np.asarray(jnp.argmax(f(xa), 1) != y)
        assert fooled.sum() >= 0.3 * ok.sum()
        assert np.all(gap(xa)[fooled] > 0)


def test_robust_accuracy_non_increasing_in_eps_and_zero_at_large_eps(trained_cnn):
    _, _, f, x, y = trained_cnn
    grid = [0.0, 0.02, 0.05, 0.1, 0.2, 0.5]
    accs = robust_accuracy_eps_grid(f, x, y, jax.random.key(0), functools.partial(pgd, steps=10, loss="margin"),
                                    LinfBall(0.0), grid, batch_size=48)
    assert accs[0] > 0.85
    assert np.all(np.diff(accs) <= 1.0 / len(y) + 1e-9), accs
    assert accs[-1] <= 0.02
    # batched robust_accuracy agrees with the grid at one eps
    single = robust_accuracy(f, x, y, jax.random.key(0), get_attack("pgd", LinfBall(0.05), steps=10, loss="margin"),
                             batch_size=48)
    assert abs(single - accs[2]) < 1e-9


def test_autoattack_at_most_pgd_and_worst_case_per_point():
    # ALL's model, 5-point batch and settings: AutoAttack and PGD reuse the programs compiled by
    # test_every_attack_respects_ball_box_and_is_deterministic. At eps 0.05, 2 of the 5 points
    # stay robust. AutoAttack on a BatchNorm CNN: test_compile_counts (three weight sets) and,
    # with the standard settings, test_autoattack_standard_full_semantics (make test-slow).
    f, _, _ = linear_model(jax.random.key(0), **MULTI)
    x = jax.random.uniform(jax.random.key(1), (5, 4, 4, 3))
    y = jnp.argmax(f(x), 1)
    th = LinfBall(0.05)
    acc_pgd = robust_accuracy(f, x, y, jax.random.key(1), get_attack("pgd", th, steps=3, restarts=2), batch_size=5)
    xa, info = autoattack(f, x, y, jax.random.key(1), th, n_iter=5, n_targets=2, n_queries=20, return_info=True)
    check_constraints(th, xa, x)
    assert info["clean_acc"] == 1.0 and 0.0 < info["robust_acc"] < 1.0, info
    assert info["robust_acc"] <= acc_pgd
    after = list(info["robust_acc_after"].values())
    assert np.all(np.diff(after) <= 0) and after[-1] == info["robust_acc"]
    # final result is the per-point worst case: robust only if correct at x_adv
    pred_ok = np.asarray(jnp.argmax(f(xa), 1) == y)
    np.testing.assert_array_equal(info["robust"], pred_ok)


def test_attack_on_intermediate_layer_with_probe(trained_cnn):
    """G_j o F(j): attack a linear probe on the output of an intermediate weight layer."""
    from jsemi.models import layer_fn

    model, variables, f, x, y = trained_cnn
    feat = layer_fn(model, variables, 4)
    phi = feat(x).reshape(x.shape[0], -1)
    onehot = jax.nn.one_hot(y, 10)
    w = jnp.linalg.solve(phi.T @ phi + 1e-2 * jnp.eye(phi.shape[1]), phi.T @ onehot)
    probe = lambda xx: feat(xx).reshape(xx.shape[0], -1) @ w
    xa = pgd(probe, x, y, jax.random.key(0), LinfBall(0.1), steps=5)
    check_constraints(LinfBall(0.1), xa, x)
    assert float(jnp.mean(margin(probe(xa), y))) < float(jnp.mean(margin(probe(x), y)))


@pytest.mark.slow
def test_cw_unbounded_succeeds_and_is_minimal_in_ball(trained_cnn):
    _, _, f, x, y = trained_cnn
    th = L2Ball(math.sqrt(x[0].size))
    xa = cw_l2(f, x, y, jax.random.key(0), th, steps=100, lr=0.05)
    assert float(jnp.mean(jnp.argmax(f(xa), 1) == y)) < 0.2
    xb = cw_l2(f, x, y, jax.random.key(0), L2Ball(0.5), steps=100, lr=0.05)
    check_constraints(L2Ball(0.5), xb, x)


@pytest.mark.slow
def test_autoattack_standard_full_semantics(trained_cnn):
    _, variables, f, x, y = trained_cnn
    before = jax.tree_util.tree_map(np.array, variables)
    th = LinfBall(0.03)
    xa, info = autoattack(f, x, y, jax.random.key(0), th, return_info=True)
    assert info["attacks"] == ["apgd-ce", "apgd-t", "fab-t", "square"]
    acc_apgd = robust_accuracy(f, x, y, jax.random.key(0), get_attack("apgd-ce", th), batch_size=96)
    assert info["robust_acc"] <= acc_apgd
    # BatchNorm model: the variables are untouched and the result stays in the ball and the box
    jax.tree_util.tree_map(np.testing.assert_array_equal, before, jax.tree_util.tree_map(np.array, variables))
    check_constraints(th, xa, x)
    after = list(info["robust_acc_after"].values())
    assert np.all(np.diff(after) <= 0) and after[-1] == info["robust_acc"]
    pred_ok = np.asarray(jnp.argmax(f(xa), 1) == y)
    np.testing.assert_array_equal(info["robust"], pred_ok & np.asarray(jnp.argmax(f(x), 1) == y))


def test_autoattack_report_aggregates_batches():
    from jsemi.attacks import autoattack_report

    # ALL's model and settings in batches of 5: the programs of test_every_attack_... again
    f, _, _ = linear_model(jax.random.key(0), **MULTI)
    x = interior_inputs(jax.random.key(1), 10, shape=MULTI["shape"])
    y = jnp.argmax(f(x), 1)
    rep = autoattack_report(f, x, y, jax.random.key(0), LinfBall(0.05), batch_size=5, n_iter=5, n_targets=2,
                            n_queries=20)
    assert rep["n"] == 10 and rep["clean_acc"] == 1.0
    vals = list(rep["robust_acc_after"].values())
    assert vals == sorted(vals, reverse=True) and abs(vals[-1] - rep["robust_acc"]) < 1e-9
