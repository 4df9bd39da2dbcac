"""Closed-form checks of HSIC, CKA, connectivity and sensitivity."""

from __future__ import annotations

import numpy as np
import pytest

from jsemi.estimators import class_hsic_cka, cka, connectivity, hsic, sensitivity


def _orthogonal(d, seed=0):
    return np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))[0]


@pytest.mark.parametrize("n,d", [(200, 10), (40, 60)])  # feature-space and Gram-matrix paths
def test_linear_cka_invariant_to_orthogonal_maps_and_scaling(n, d):
    x = np.random.default_rng(1).normal(size=(n, d))
    q = _orthogonal(d)
    assert cka(x, x @ q) == pytest.approx(1.0, abs=1e-5)
    assert cka(x, 3.0 * x @ q + 2.0) == pytest.approx(1.0, abs=1e-5)
    assert cka(x, x @ q, "rbf") == pytest.approx(1.0, abs=1e-5)  # same distances, same kernel


def test_cka_closed_form_and_independence():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=(3000, 5)), rng.normal(size=(3000, 4))
    xc, yc = x - x.mean(0), y - y.mean(0)
    want = np.sum((xc.T @ yc) ** 2) / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc))
    assert cka(x, y) == pytest.approx(want, rel=1e-4)
    assert cka(x, y) < 0.02
    assert cka(x[:400], y[:400], "rbf") < 0.05
    assert cka(x, np.tanh(x[:, :4])) > 0.5


def test_hsic_closed_forms():
    rng = np.random.default_rng(3)
    m = 150
    x = rng.normal(size=(m, 4))
    y = x[:, :2] ** 2 + 0.1 * rng.normal(size=(m, 2))
    h = np.eye(m) - 1.0 / m
    kx, ky = h @ x @ x.T @ h, h @ y @ y.T @ h
    # plain biased HSIC: tr(Kx~ Ky~) / (m - 1)^2, in both computation paths
    plain = np.trace(kx @ ky) / (m - 1) ** 2
    assert hsic(x, y, normalized=False) == pytest.approx(plain, rel=1e-4)
    xw = np.concatenate([x, np.zeros((m, 200))], axis=1)  # width > m: Gram-matrix path
    assert hsic(xw, y, normalized=False) == pytest.approx(plain, rel=1e-4)
    # NOCCO: tr(Rx Ry), R = K~ (K~ + eps m I)^-1
    eps = 1e-5
    rx = kx @ np.linalg.inv(kx + eps * m * np.eye(m))
    ry = ky @ np.linalg.inv(ky + eps * m * np.eye(m))
    assert hsic(x, y) == pytest.approx(np.trace(rx @ ry), rel=1e-3)
    assert hsic(xw, y) == pytest.approx(np.trace(rx @ ry), rel=1e-3)
    # NOCCO of x with itself = sum (l / (l + eps m))^2 over the eigenvalues of K~
    lam = np.clip(np.linalg.eigvalsh(kx), 0, None)
    assert hsic(x, x) == pytest.approx(np.sum((lam / (lam + eps * m)) ** 2), rel=1e-3)
    # RBF with the authors' per-feature bandwidth
    d2 = ((x[:, None] - x[None]) ** 2).sum(-1)
    k = h @ np.exp(-d2 / (2 * 2.0**2 * 4)) @ h
    e2 = ((y[:, None] - y[None]) ** 2).sum(-1)
    l = h @ np.exp(-e2 / (2 * 2.0**2 * 2)) @ h
    assert hsic(x, y, "rbf", normalized=False, sigma=2.0) == pytest.approx(np.trace(k @ l) / (m - 1) ** 2, rel=1e-3)
    with pytest.raises(ValueError, match="kernel"):
        hsic(x, y, "poly")


def test_hsic_independent_small_dependent_large():
    rng = np.random.default_rng(4)
    x = rng.normal(size=(400, 3))
    y_ind = rng.normal(size=(400, 3))
    y_dep = np.sin(2 * x) + 0.05 * rng.normal(size=(400, 3))
    assert hsic(x, y_dep, "rbf", normalized=False) > 5 * hsic(x, y_ind, "rbf", normalized=False)
    # normalised (NOCCO, eps = 1e-5) sits near its ceiling either way, but still orders them
    assert hsic(x, y_dep, "rbf") > hsic(x, y_ind, "rbf")


def test_class_hsic_cka():
    rng = np.random.default_rng(5)
    labels = np.repeat(np.arange(3), 100)
    a = rng.normal(size=(300, 4, 4, 6))  # NHWC conv maps: averaged over space
    out = class_hsic_cka(a, a @ _orthogonal(6), labels)
    assert set(out) == {"hsic", "cka", "cka_sum", "per_class_hsic", "per_class_cka"}
    assert out["cka"] == pytest.approx(1.0, abs=1e-4)
    assert out["cka_sum"] == pytest.approx(3.0, abs=1e-3)


def test_connectivity_closed_form():
    rng = np.random.default_rng(6)
    labels = np.repeat(np.arange(2), 200)
    a = rng.normal(size=(400, 3))
    b = np.stack([a[:, 0] * (1 + labels), -a[:, 1], rng.normal(size=400)], axis=1)
    want = np.mean(
        [np.abs(np.corrcoef(a[labels == c], b[labels == c], rowvar=False)[:3, 3:]) for c in range(2)]
    )
    assert connectivity(a, b, labels) == pytest.approx(want, rel=1e-5)
    # invariant to the authors' per-class scalar standardisation
    a2 = (a - 5 * labels[:, None]) * (1 + labels[:, None])
    assert connectivity(a2, b, labels) == pytest.approx(want, rel=1e-5)
    # conv maps averaged over space; constant units are left out (NaN-mean)
    conv = np.repeat(np.repeat(a[:, None, None, :], 2, 1), 2, 2)
    b_dead = np.concatenate([b, np.zeros((400, 1))], axis=1)
    assert connectivity(conv, b_dead, labels) == pytest.approx(want, rel=1e-5)
    value, per = connectivity(a, b, labels, return_per_class=True)
    assert set(per) == {0, 1}


def test_sensitivity_closed_form():
    rng = np.random.default_rng(7)
    conv = rng.uniform(0.1, 1.0, size=(5, 4, 4, 3))
    dense = rng.uniform(0.1, 1.0, size=(5, 7))
    for a in (conv, dense):
        assert sensitivity(a, a) == 0.0
        assert sensitivity(a, 1.3 * a) == pytest.approx(0.3, rel=1e-5)
        assert sensitivity(a, 0.5 * a, per="image") == pytest.approx(0.5, rel=1e-5)
    assert sensitivity(conv, 1.3 * conv, norm="matrix") == pytest.approx(0.3, rel=1e-5)
    # one image changed by delta in one pixel of one channel: ratio delta / ||map||_1 there
    adv = conv.copy()
    adv[0, 1, 2, 0] += 0.7
    want = 0.7 / np.abs(conv[0, :, :, 0]).sum() / 3 / 5
    assert sensitivity(conv, adv) == pytest.approx(want, rel=1e-5)
    with pytest.raises(ValueError, match="same shape"):
        sensitivity(conv, dense)
