"""Semirobustness gamma_j: closed-form probes and the attacked margin against exact linear answers."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi.attacks import L2Ball, LinfBall, pgd
from jsemi.estimators.semirobust import fit_probe, layer_gamma, layer_gammas, ridge_solve
from jsemi.models import get_model, init_model
from jsemi.models.base import layer_name, sow_layer


class LinearNet(nn.Module):
    """Weight layers of plain dense maps (no activation): layer ``depth`` gives the logits."""

    num_classes: int = 2
    hidden: tuple = ()

    @nn.compact
    def __call__(self, x, train=False, frozen=()):
        h = x.reshape(x.shape[0], -1)
        for j, width in enumerate(tuple(self.hidden) + (self.num_classes,), start=1):
            h = nn.Dense(width, name=layer_name(j, "dense"))(h)
            sow_layer(self, j, h)
        return h


def _linear_setup(num_classes, hidden=(), n=48, lo=0.0, hi=1.0, seed=0):
    model = LinearNet(num_classes, tuple(hidden))
    k1, k2 = jax.random.split(jax.random.PRNGKey(seed))
    x = np.asarray(jax.random.uniform(k1, (n, 4, 4, 1), minval=lo, maxval=hi))
    variables = {"params": model.init(k2, jnp.asarray(x))["params"]}
    y = np.asarray(jax.random.randint(jax.random.fold_in(k1, 1), (n,), 0, num_classes), np.int32)
    return model, variables, x, y


def _dense(variables, j):
    p = variables["params"][layer_name(j, "dense")]
    return np.asarray(p["kernel"], np.float64), np.asarray(p["bias"], np.float64)


def exact_linf_margin(w, b, x, y, eps):
    """min over {||d||_inf <= eps, x + d in [0, 1]} of z_y - max_{k!=y} z_k for z = (x+d) w + b.

    The min over the ball of a minimum over k is the minimum over k of linear programs over a
    box, each solved coordinate-wise at an endpoint: enumerate k.
    """
    xf = x.reshape(len(x), -1).astype(np.float64)
    lo, hi = np.maximum(-eps, -xf), np.minimum(eps, 1.0 - xf)
    out = np.full(len(x), np.inf)
    for k in range(w.shape[1]):
        v = w[:, y] - w[:, [k]]  # (D, N)
        val = np.einsum("nd,dn->n", xf, v) + b[y] - b[k] + np.sum(np.minimum(v.T * lo, v.T * hi), axis=1)
        out = np.where(y == k, out, np.minimum(out, val))
    return out


def exact_l2_margin(w, b, x, y, eps):
    """min over {||d||_2 <= eps} of the K-class margin (the ball lies inside [0, 1]^D here)."""
    xf = x.reshape(len(x), -1).astype(np.float64)
    out = np.full(len(x), np.inf)
    for k in range(w.shape[1]):
        v = w[:, y] - w[:, [k]]
        val = np.einsum("nd,dn->n", xf, v) + b[y] - b[k] - eps * np.linalg.norm(v, axis=0)
        out = np.where(y == k, out, np.minimum(out, val))
    return out


# ----------------------------------------------------------------------------- probes


@pytest.mark.parametrize("d", [6, 40])  # primal (D <= N) and dual (D > N) solves
def test_ridge_solve_matches_numpy_closed_form(d):
    rng = np.random.default_rng(d)
    n, k, ridge = 20, 3, 1e-2
    a = rng.normal(size=(n, d)) * rng.uniform(0.5, 3.0, size=d)
    z = rng.normal(size=(n, k))
    w, b = ridge_solve(jnp.asarray(a, jnp.float32), jnp.asarray(z, jnp.float32), ridge, fit_intercept=True)
    ac, zc = a - a.mean(0), z - z.mean(0)
    lam = ridge * np.sum(ac**2) / min(n, d)
    w_ref = np.linalg.solve(ac.T @ ac + lam * np.eye(d), ac.T @ zc)
    b_ref = z.mean(0) - a.mean(0) @ w_ref
    np.testing.assert_allclose(np.asarray(w), w_ref, rtol=2e-3, atol=2e-4)
    np.testing.assert_allclose(np.asarray(b), b_ref, rtol=2e-3, atol=2e-4)


def test_fit_probe_separates_separable_features_and_validates():
    rng = np.random.default_rng(0)
    y = np.arange(60) % 3
    feats = np.eye(3)[y][:, :, None] * 5.0 + 0.1 * rng.normal(size=(60, 3, 2))  # (N, 3, 2): flattened inside
    w, b = fit_probe(feats, y.astype(np.int32), 3)
    assert w.shape == (6, 3) and b.shape == (3,)
    scores = feats.reshape(60, -1) @ np.asarray(w) + np.asarray(b)
    assert np.mean(np.argmax(scores, -1) == y) == 1.0
    with pytest.raises(ValueError, match="ridge"):
        fit_probe(feats, y.astype(np.int32), 3, ridge=0.0)
    with pytest.raises(ValueError):
        fit_probe(feats, np.full(60, 3, np.int32), 3)


# ----------------------------------------------------------------------------- gamma, closed forms


def test_gamma_binary_linear_classifier_linf_matches_closed_form():
    model, variables, x, y = _linear_setup(2)
    eps = 0.05
    w, b = _dense(variables, 1)
    exact = exact_linf_margin(w, b, x, y, eps)  # includes the [0, 1] box
    r = layer_gamma(model, variables, 1, x, y, jax.random.PRNGKey(1), threat=LinfBall(eps), attack=pgd,
                    attack_settings={"steps": 5, "restarts": 1}, batch_size=20, per_example=True)
    assert r["probe"] == "identity"
    # binary margin is linear in x: PGD's sign steps reach the exact minimiser (a vertex of box ∩ ball)
    np.testing.assert_allclose(r["attacked_margins"], np.minimum(exact, r["clean_margins"]), atol=1e-4)
    assert r["attacked_margin"] == pytest.approx(float(np.mean(exact)), abs=1e-4)
    # without the box: margin - eps * ||w_y - w_k||_1
    inner = (x.reshape(len(x), -1) > eps) & (x.reshape(len(x), -1) < 1 - eps)
    rows = inner.all(1)
    m = r["clean_margins"][rows] - eps * np.abs(w[:, 0] - w[:, 1]).sum()
    np.testing.assert_allclose(r["attacked_margins"][rows], m, atol=1e-4)
    assert "UPPER" in r["note"] and r["threat"] == {"norm": "linf", "eps": eps}


def test_gamma_multiclass_linear_linf_exact_with_targets_upper_without():
    model, variables, x, y = _linear_setup(4, seed=3)
    eps = 0.04
    w, b = _dense(variables, 1)
    exact = exact_linf_margin(w, b, x, y, eps)
    key = jax.random.PRNGKey(2)
    untargeted = layer_gamma(model, variables, 1, x, y, key, threat=LinfBall(eps), attack=pgd,
                             attack_settings={"steps": 5, "restarts": 2}, per_example=True)
    # an attack can only find a delta, never beat the infimum: the estimate is an upper estimate
    assert np.all(untargeted["attacked_margins"] >= exact - 1e-4)
    targeted = layer_gamma(model, variables, 1, x, y, key, threat=LinfBall(eps), attack=pgd,
                           attack_settings={"steps": 5, "restarts": 1}, targets=3, per_example=True)
    np.testing.assert_allclose(targeted["attacked_margins"], exact, atol=1e-4)
    assert targeted["attacked_acc"] == pytest.approx(float(np.mean(exact > 0)))


@pytest.mark.parametrize("num_classes,targets", [(2, 0), (3, 2)])
def test_gamma_linear_l2_matches_closed_form(num_classes, targets):
    model, variables, x, y = _linear_setup(num_classes, lo=0.3, hi=0.7, seed=num_classes)
    eps = 0.2  # ||d||_2 <= 0.2 keeps every pixel of [0.3, 0.7] inside [0, 1]
    w, b = _dense(variables, 1)
    exact = exact_l2_margin(w, b, x, y, eps)
    r = layer_gamma(model, variables, 1, x, y, jax.random.PRNGKey(0), threat=L2Ball(eps), attack=pgd,
                    attack_settings={"steps": 5, "random_start": False}, targets=targets, per_example=True)
    np.testing.assert_allclose(r["attacked_margins"], exact, atol=2e-4)
    assert r["threat"]["norm"] == "l2"


def test_gamma_of_probe_on_linear_layer_matches_closed_form():
    """A ridge probe on a linear layer keeps G_j o F(j) linear: compare with its exact margin."""
    model, variables, x, y = _linear_setup(3, hidden=(5,), n=60, seed=5)
    eps = 0.03
    w1, b1 = _dense(variables, 1)
    feats = x.reshape(len(x), -1) @ w1 + b1
    wp, bp = fit_probe(feats.astype(np.float32), y, 3, ridge=1e-3)
    wp, bp = np.asarray(wp, np.float64), np.asarray(bp, np.float64)
    exact = exact_linf_margin(w1 @ wp, b1 @ wp + bp, x, y, eps)
    r = layer_gamma(model, variables, 1, x, y, jax.random.PRNGKey(4), threat=LinfBall(eps), attack=pgd,
                    attack_settings={"steps": 5, "restarts": 1}, targets=2, per_example=True)
    assert r["probe"] == "ridge" and r["feature_dim"] == 5
    np.testing.assert_allclose(r["attacked_margins"], exact, atol=1e-3)
    assert r["clean_margin"] >= r["attacked_margin"]
    # identity_last=False: the logits (layer 2) get a ridge probe too, same closed form
    w2, b2 = _dense(variables, 2)
    wq, bq = fit_probe((feats @ w2 + b2).astype(np.float32), y, 3, ridge=1e-3)
    wq, bq = np.asarray(wq, np.float64), np.asarray(bq, np.float64)
    exact2 = exact_linf_margin(w1 @ w2 @ wq, (b1 @ w2 + b2) @ wq + bq, x, y, eps)
    r2 = layer_gamma(model, variables, 2, x, y, jax.random.PRNGKey(4), threat=LinfBall(eps), attack=pgd,
                     attack_settings={"steps": 5, "restarts": 1}, targets=2, identity_last=False, per_example=True)
    assert r2["probe"] == "ridge" and r2["units"].startswith("probe")
    np.testing.assert_allclose(r2["attacked_margins"], exact2, atol=1e-3)


# ----------------------------------------------------------------------------- all layers of a CNN


def test_layer_gammas_compiles_attack_once_per_layer():
    model = get_model("small_cnn", num_classes=3, widths=(4, 4, 4, 4, 4), hidden=8)
    variables = init_model(model, jax.random.PRNGKey(0), (8, 8, 1))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (22, 8, 8, 1)))
    y = (np.arange(22) % 3).astype(np.int32)
    traces = []

    def counting_pgd(logits_fn, x, y, key, threat, **kw):
        traces.append(x.shape)
        return pgd(logits_fn, x, y, key, threat, **kw)

    rows = layer_gammas(model, variables, x, y, jax.random.PRNGKey(2), threat=LinfBall(0.05), attack=counting_pgd,
                        attack_settings={"steps": 2, "restarts": 1}, batch_size=8, layers=[7, 2])
    assert [r["layer"] for r in rows] == [2, 7]
    assert len(traces) == 2  # 3 batches per layer (the last padded), one trace per layer
    assert rows[-1]["probe"] == "identity" and all(r["probe"] == "ridge" for r in rows[:-1])
    for r in rows:
        assert r["attacked_margin"] <= r["clean_margin"] + 1e-6
        assert 0.0 <= r["attacked_acc"] <= r["clean_acc"] <= 1.0
        assert r["num_examples"] == 22 and r["attack"] == "counting_pgd"
    with pytest.raises(ValueError, match="out of range"):
        layer_gammas(model, variables, x, y, jax.random.PRNGKey(2), threat=LinfBall(0.05), layers=[8])
