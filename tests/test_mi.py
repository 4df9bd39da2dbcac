"""Tests of the mutual-information estimators (EDGE, KSG, Gaussian), the shared reductions and
the class-conditional rho with its permutation null. Values in bits throughout."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi.estimators import (
    conditional_mi,
    conditional_mi_with_null,
    edge_dims,
    edge_k,
    edge_mi,
    edge_randomness,
    gaussian_mi,
    ksg_mi,
    reduce,
)
from jsemi.estimators import arrays as arrays_mod
from jsemi.estimators import edge as edge_mod
from jsemi.estimators.edge_kernels import group_counts, knn_bandwidth

# ---------------------------------------------------------------------------------------------
# An independent plain-NumPy EDGE (brute-force k-NN, tuple-keyed dict hashing), for agreement.
# ---------------------------------------------------------------------------------------------


def numpy_edge(x, y, gx, gy, queries, ux, uy, *, U=10.0, gamma=0.4, eps_range=0.1, shift_scale=0.1):
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    n = x.shape[0]

    def project(z, g):
        if g is None:
            return z
        d = z.shape[1]
        std = np.array([np.std(z[:, i]) for i in range(d)])
        std[std < 1e-4] = 1.0
        return z @ (np.asarray(g, np.float64) / (std[:, None] * np.sqrt(d)))

    def k_of(dp):
        k = math.floor(0.43 * n ** (2 / 3 + 0.17 * dp / (dp + 1)) * math.exp(-1 / max(10000, dp**4)))
        return min(max(k, 1), n)

    def bandwidth(z):
        k = k_of(z.shape[1])
        q = np.arange(n) if queries is None else np.asarray(queries)
        return np.array([np.mean([np.sort(np.abs(z[:, c] - z[i, c]))[k - 1] for i in q]) for c in range(z.shape[1])]) + 1e-4

    xw, yv = project(x, gx), project(y, gy)
    ex0 = bandwidth(xw) * 18 * xw.shape[1] / max(1 + math.log(x.shape[1]), 1) * gamma
    ey0 = bandwidth(yv) * 18 * yv.shape[1] / max(1 + math.log(y.shape[1]), 1) * gamma
    L = np.shape(ux)[0]
    T = np.linspace(1, 1 + eps_range, L) if L > 1 else [1.0]
    vals = []
    for j in range(L):
        ex, ey = ex0 * T[j], ey0 * T[j]
        hx = [tuple(r) for r in np.floor((xw + shift_scale * np.asarray(ux[j], np.float64) * ex) / ex)]
        hy = [tuple(r) for r in np.floor((yv + shift_scale * np.asarray(uy[j], np.float64) * ey) / ey)]
        cx, cy, cxy = {}, {}, {}
        for a, b in zip(hx, hy):
            cx[a] = cx.get(a, 0) + 1
            cy[b] = cy.get(b, 0) + 1
            cxy[(a, b)] = cxy.get((a, b), 0) + 1
        total = sum(nij * min(max(math.log2(nij * n / (cx[a] * cy[b])), 0.001), U) for (a, b), nij in cxy.items())
        vals.append(total / n)
    return float(np.median(vals))


def _np(v):
    return None if v is None else np.asarray(v)


def correlated(n, d, r, seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d))
    y = r * x + np.sqrt(1 - r * r) * rng.normal(size=(n, d))
    return x.astype(dtype), y.astype(dtype), -0.5 * math.log2(1 - r * r) * d


# ---------------------------------------------------------------------------------------------
# EDGE
# ---------------------------------------------------------------------------------------------


# unprojected floor hashing is also checked against the reference by the ties test below, so
# its two cases run in make test-slow (each case compiles its own EDGE programs, ~5 CPU-s)
@pytest.mark.parametrize(
    "n,dx,dy,L,queries,project",
    [
        pytest.param(400, 3, 2, 1, None, "joint", marks=pytest.mark.slow),  # floor hashing, no projection
        (600, 40, 20, 3, 100, "joint"),  # both projected, median of 3 hashes, 100 query rows
        (300, 9, 4, 5, 500, "joint"),  # the small one projected too (authors' rule)
        (300, 9, 4, 2, None, "each"),  # only x projected
        pytest.param(250, 1, 1, 1, None, "joint", marks=pytest.mark.slow),
    ],
)
def test_edge_matches_numpy_reference(n, dx, dy, L, queries, project):
    rng = np.random.default_rng(n + dx)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x[:, :1]) + 0.5 * rng.normal(size=(n, dy))
    with jax.enable_x64(True):
        r = edge_randomness(jax.random.key(3), n, dx, dy, L=L, knn_queries=queries, project=project)
        got = edge_mi(x, y, randomness=r, project=project)
    want = numpy_edge(x, y, _np(r.gx), _np(r.gy), _np(r.queries), np.asarray(r.ux), np.asarray(r.uy))
    assert abs(got - want) < 1e-6, (got, want)
    # float32 (the default precision) agrees up to rare bucket-boundary flips
    got32 = edge_mi(x.astype(np.float32), y.astype(np.float32), randomness=r, project=project)
    assert abs(got32 - want) < 1e-3


def test_edge_matches_reference_with_ties_and_nondefault_settings():
    """Integer-valued data (many tied values) and non-default U, gamma, shifts."""
    rng = np.random.default_rng(7)
    n = 500
    x = rng.integers(0, 4, size=(n, 2)).astype(np.float64)
    y = (x[:, :1] + rng.integers(0, 2, size=(n, 1))).astype(np.float64)
    kw = dict(U=3.0, gamma=0.7, eps_range=0.3, shift_scale=0.5)
    with jax.enable_x64(True):
        r = edge_randomness(jax.random.key(0), n, 2, 1, L=4, knn_queries=64)
        got = edge_mi(x, y, randomness=r, **kw)
    want = numpy_edge(x, y, None, None, np.asarray(r.queries), np.asarray(r.ux), np.asarray(r.uy), **kw)
    assert abs(got - want) < 1e-6


def test_knn_bandwidth_sort_equals_bruteforce():
    rng = np.random.default_rng(0)
    z = np.concatenate([rng.normal(size=(300, 2)), np.round(rng.normal(size=(300, 2)), 1)], axis=0)  # ties
    for k in (1, 2, 7, 150, 600):
        got = np.asarray(jax.jit(lambda a: knn_bandwidth(a, None, k))(jnp.asarray(z, jnp.float32)))
        want = [np.mean([np.sort(np.abs(z[:, c] - z[i, c]))[k - 1] for i in range(len(z))]) for c in range(2)]
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_group_counts_equal_unique():
    rng = np.random.default_rng(1)
    codes = rng.integers(-2, 3, size=(500, 3)).astype(np.float32)
    gid, cnt = jax.jit(lambda c: group_counts(tuple(c[:, i] for i in range(3))))(jnp.asarray(codes))
    _, inv, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    np.testing.assert_array_equal(np.asarray(cnt), counts[inv.ravel()])
    # same group id <=> same code row
    g = np.asarray(gid)
    assert all(len(set(g[inv.ravel() == u])) == 1 for u in range(len(counts)))
    assert len(set(g)) == len(counts)


def test_edge_dims_and_k_follow_the_authors():
    assert edge_dims(1000, 4096, 4096) == (6, 6, True, True)  # floor(log2(100)) = 6
    assert edge_dims(50_000, 16_384, 512) == (12, 12, True, True)
    assert edge_dims(1000, 3, 5) == (3, 5, False, False)  # both <= 6: floor hashing
    assert edge_dims(1000, 3, 50) == (3, 6, True, True)  # authors: both projected
    assert edge_dims(1000, 3, 50, "each") == (3, 6, False, True)
    assert edge_k(1000, 6) == math.floor(0.43 * 1000 ** (2 / 3 + 0.17 * 6 / 7) * math.exp(-1 / 10000))
    assert edge_k(5, 1) >= 1 and edge_k(10**6, 12) < 10**6
    with pytest.raises(ValueError):
        edge_dims(10, 1, 1, "sometimes")


def test_edge_projection_paths_agree(monkeypatch):
    """Three ways to the projections give the same estimate: raw rows padded to the size
    bucket (small inputs), unpadded projection then padding (large inputs), and row-chunk
    streaming (host arrays larger than one chunk)."""
    rng = np.random.default_rng(2)
    x = rng.normal(size=(700, 64))
    y = x[:, :32] + rng.normal(size=(700, 32))
    with jax.enable_x64(True):
        r = edge_randomness(jax.random.key(0), 700, 64, 32)
        padded = edge_mi(x, y, randomness=r)
        monkeypatch.setattr(edge_mod, "PAD_RAW_MAX", 0)
        unpadded = edge_mi(x, y, randomness=r)
        monkeypatch.setattr(arrays_mod, "ROW_CHUNK_BYTES", 64 * 4 * 100)  # 100 rows per chunk
        streamed = edge_mi(x, y, randomness=r)
    assert abs(padded - unpadded) < 1e-9 and abs(padded - streamed) < 1e-9


def authors_edge(x, y, ux, uy, *, U=10.0, gamma=0.4):
    """The authors' EDGE (final call: L = 1, p-stable, stochastic shifts) in NumPy, with their
    fixed draws made here: NumPy re-seeded with 3334 before gen_W (W, then V, from
    np.random.normal(0, sigma)) and before each column's find_knn (np.random.choice of 500
    values, k-NN distances with the query counted); only the shifts b = 0.1 * u * eps are
    given (the authors draw them from a fresh OS seed)."""
    n, dx = x.shape
    dy = y.shape[1]
    if dx <= 6 and dy <= 6:
        xw, yv = x, y
    else:
        np.random.seed(3334)
        mats = []
        for z in (x, y):
            d = z.shape[1]
            dp = min(d, math.floor(math.log(n / 10, 2)))
            std = np.tile(np.std(z, axis=0)[:, None], (1, dp))
            std[std < 1e-4] = 1
            mats.append(np.random.normal(np.zeros((d, dp)), 1.0 / (std * np.sqrt(d)), (d, dp)))
        xw, yv = x @ mats[0], y @ mats[1]

    def bandwidth(z):
        dp = z.shape[1]
        k = math.floor(0.43 * n ** (2 / 3 + 0.17 * (dp / (dp + 1))) * math.exp(-1.0 / max(10000, dp**4)))
        out = []
        for c in range(dp):
            np.random.seed(3334)
            t = np.random.choice(z[:, c], size=500)
            out.append(np.mean([np.sort(np.abs(z[:, c] - v))[k - 1] for v in t]))
        return np.array(out) + 1e-4

    ex = bandwidth(xw) * 18 * xw.shape[1] / max(1 + math.log(dx), 1) * gamma
    ey = bandwidth(yv) * 18 * yv.shape[1] / max(1 + math.log(dy), 1) * gamma
    hx = [tuple(r) for r in np.floor((xw + 0.1 * np.asarray(ux, np.float64) * ex) / ex)]
    hy = [tuple(r) for r in np.floor((yv + 0.1 * np.asarray(uy, np.float64) * ey) / ey)]
    cx, cy, cxy = {}, {}, {}
    for a, b in zip(hx, hy):
        cx[a], cy[b], cxy[(a, b)] = cx.get(a, 0) + 1, cy.get(b, 0) + 1, cxy.get((a, b), 0) + 1
    return sum(m * max(min(math.log2(m * n / (cx[a] * cy[b])), U), 0.001) for (a, b), m in cxy.items()) / n


@pytest.mark.parametrize("n,dx,dy", [(600, 40, 20), (400, 3, 2)])
def test_edge_paper_draws_match_the_authors_call_for_call(n, dx, dy):
    rng = np.random.default_rng(n)
    x = rng.normal(size=(n, dx))
    y = np.tanh(x[:, :dy]) + 0.5 * rng.normal(size=(n, dy))
    state = np.random.get_state()
    try:
        for seed in (0, 1):
            key = jax.random.key(seed)
            with jax.enable_x64(True):
                r = edge_randomness(key, n, dx, dy, draws="paper")
                got = edge_mi(x, y, key, draws="paper")
            want = authors_edge(x, y, r.ux[0], r.uy[0])
            assert abs(got - want) < 1e-6, (got, want)
    finally:
        np.random.set_state(state)
    # only the shifts depend on the key; the projections and bandwidth rows are the authors'
    r0, r1 = (edge_randomness(jax.random.key(s), n, dx, dy, draws="paper") for s in (0, 1))
    assert np.array_equal(r0.queries, r1.queries) and len(r0.queries) == 500
    assert (r0.gx is None) == (dx <= 6 and dy <= 6) and (r0.gx is None or np.array_equal(r0.gx, r1.gx))
    assert not np.array_equal(np.asarray(r0.ux), np.asarray(r1.ux))
    with pytest.raises(ValueError, match="authors"):
        edge_randomness(jax.random.key(0), n, dx, dy, draws="paper", knn_queries=100)
    with pytest.raises(ValueError, match="draws"):
        edge_randomness(jax.random.key(0), n, dx, dy, draws="sometimes")


# d = 2 and 4 take the same unprojected path as 1 and 6: make test-slow
@pytest.mark.parametrize("d", [1, pytest.param(2, marks=pytest.mark.slow), pytest.param(4, marks=pytest.mark.slow), 6])
def test_edge_rises_with_correlation(d):
    vals = []
    for r in (0.0, 0.3, 0.6, 0.9, 0.99):
        x, y, _ = correlated(2000, d, r, seed=1)
        vals.append(edge_mi(x, y, jax.random.key(0)))
    assert all(b > a for a, b in zip(vals, vals[1:])), vals


def test_edge_details_and_validation():
    x, y, _ = correlated(300, 8, 0.5)
    det = edge_mi(x, y, jax.random.key(0), L=3, return_details=True)
    assert det["dims"] == (4, 4) and det["projected"] == (True, True) and len(det["values"]) == 3
    assert det["mi"] == pytest.approx(float(np.median(det["values"])))
    assert 0.001 <= det["mi"] <= 10.0
    with pytest.raises(ValueError, match="same number of samples"):
        edge_mi(x, y[:10], jax.random.key(0))
    with pytest.raises(ValueError, match="finite"):
        edge_mi(np.where(x > 2, np.nan, x), y, jax.random.key(0))
    with pytest.raises(ValueError, match="key"):
        edge_mi(x, y)
    r = edge_randomness(jax.random.key(0), 300, 8, 8)
    with pytest.raises(ValueError, match="shape"):
        edge_mi(x[:, :7], y, randomness=r)


# ---------------------------------------------------------------------------------------------
# KSG and Gaussian
# ---------------------------------------------------------------------------------------------


def test_ksg_matches_scipy_kdtree_reference():
    """Same estimator computed with scipy's k-d tree (independent implementation)."""
    scipy_spatial = pytest.importorskip("scipy.spatial")
    from scipy.special import digamma

    x, y, _ = correlated(1500, 2, 0.8, seed=4, dtype=np.float64)
    k = 3
    xs, ys = (x - x.mean(0)) / x.std(0), (y - y.mean(0)) / y.std(0)
    z = np.hstack([xs, ys])
    eps = scipy_spatial.cKDTree(z).query(z, k + 1, p=np.inf)[0][:, -1]
    tx, ty = scipy_spatial.cKDTree(xs), scipy_spatial.cKDTree(ys)
    nx = np.array([len(tx.query_ball_point(xs[i], np.nextafter(eps[i], 0), p=np.inf)) - 1 for i in range(len(z))])
    ny = np.array([len(ty.query_ball_point(ys[i], np.nextafter(eps[i], 0), p=np.inf)) - 1 for i in range(len(z))])
    want = (digamma(k) + digamma(len(z)) - np.mean(digamma(nx + 1) + digamma(ny + 1))) / np.log(2)
    with jax.enable_x64(True):
        got = ksg_mi(x, y, k=k)
    assert abs(got - want) < 1e-9


@pytest.mark.parametrize("d,r", [(1, 0.9), (2, 0.7), (2, 0.9)])
def test_ksg_close_to_truth_fast(d, r):
    x, y, truth = correlated(4000, d, r, seed=0)
    est = ksg_mi(x, y)
    assert abs(est - truth) / truth < 0.05, (est, truth)


def _ksg_mean_of_3(d, r, n=10_000):
    est, truth = [], None
    for seed in range(3):
        x, y, truth = correlated(n, d, r, seed=seed)
        est.append(ksg_mi(x, y))
    return float(np.mean(est)), truth, est


@pytest.mark.slow
@pytest.mark.parametrize("d,r", [(1, 0.7), (1, 0.9), (2, 0.5), (2, 0.7), (2, 0.9), (3, 0.5), (3, 0.7), (3, 0.9)])
def test_ksg_within_5pct_n10000(d, r):
    """Mean of 3 independent samples of 10,000 points within 5% of the truth (0.42 to 3.6
    bits here; measured |error| <= 3.3%). A single estimate scatters by 0.01-0.02 bits
    (1 sd), so below ~0.4 bits the relative error is noise-dominated (next test)."""
    mean, truth, est = _ksg_mean_of_3(d, r)
    assert abs(mean - truth) / truth < 0.05, (est, truth)


@pytest.mark.slow
def test_ksg_small_truth_absolute():
    """d = 1, r = 0.5, truth 0.21 bits: estimates 0.210 / 0.230 / 0.223 (+6.5% on average,
    0.014 bits): within 0.03 bits, not within 5%."""
    mean, truth, est = _ksg_mean_of_3(1, 0.5)
    assert abs(mean - truth) < 0.03, (est, truth)


@pytest.mark.slow
@pytest.mark.parametrize("r,lo,hi", [(0.5, -0.09, 0.0), (0.7, -0.10, -0.03), (0.9, -0.13, -0.08)])
def test_ksg_bias_at_d4_n10000_documented(r, lo, hi):
    """d = 4 per side (8-dim joint space): KSG-1 with k = 3 is biased LOW by 5.5-10.6%
    (mean of 3 seeds: -5.5% at r=0.5, -7.2% at 0.7, -10.6% at 0.9, truth 0.83 / 1.94 / 4.79
    bits; the same numbers come out of a scipy k-d tree implementation), so the 5% target
    holds only up to d = 3. This test pins the documented bias."""
    mean, truth, _ = _ksg_mean_of_3(4, r)
    rel = (mean - truth) / truth
    assert lo < rel < hi, rel


def test_ksg_saturates_above_log2_n():
    """No sample estimator sees much beyond log2 N: truth 22.6 bits, N = 2000 (log2 N = 11)."""
    x, y, truth = correlated(2000, 8, 0.99, seed=0)
    est = ksg_mi(x, y)
    assert truth > 22 and est < math.log2(2000)


def test_gaussian_mi_exact_on_gaussians():
    for d, r in [(1, 0.5), (4, 0.9), (8, 0.7)]:
        x, y, truth = correlated(20_000, d, r, seed=1)
        est = gaussian_mi(x, y)
        assert abs(est - truth) < 0.02 * truth + 0.01, (d, r, est, truth)
    # invariant to invertible linear maps of each side
    x, y, truth = correlated(5000, 3, 0.8, seed=2)
    A = np.random.default_rng(0).normal(size=(3, 3))
    assert gaussian_mi(x @ A, y) == pytest.approx(gaussian_mi(x, y), abs=1e-3)
    mi, rho = gaussian_mi(x, y, return_correlations=True)
    np.testing.assert_allclose(rho, 0.8, atol=0.02)


def test_ksg_validation():
    x, y, _ = correlated(50, 1, 0.5)
    with pytest.raises(ValueError):
        ksg_mi(x, y, k=50)
    with pytest.raises(ValueError, match="finite"):
        ksg_mi(np.full_like(x, np.inf), y)
    with pytest.raises(ValueError, match="key"):
        ksg_mi(x, y, jitter=1e-6)


# ---------------------------------------------------------------------------------------------
# reductions
# ---------------------------------------------------------------------------------------------


def test_reduce_pca_within_class_and_random_common():
    rng = np.random.default_rng(0)
    n, d = 1200, 50
    labels = np.repeat(np.arange(3), n // 3)
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    within = rng.normal(size=(n, 2)) * np.array([5.0, 3.0])
    x = within @ basis[:, :2].T + 0.1 * rng.normal(size=(n, d)) + 40.0 * labels[:, None] * basis[:, 2]
    # pooled PCA would pick the class-mean direction basis[:, 2]; within-class PCA must not
    xr, yr, rx, _ = reduce(x, x, jax.random.key(0), dim=2, labels=labels, return_reductions=True)
    comp = np.asarray(rx.matrix)
    overlap = np.linalg.svd(comp.T @ basis[:, :2], compute_uv=False)
    assert overlap.min() > 0.99
    # whitened: unit within-class variance
    centered = np.asarray(xr) - np.stack([np.asarray(xr)[labels == c].mean(0) for c in range(3)])[labels]
    np.testing.assert_allclose(centered.std(0), 1.0, rtol=0.02)
    # randomized PCA branch (d > 2048) finds the same subspace
    big = np.concatenate([x, 0.01 * rng.normal(size=(n, 2100))], axis=1).astype(np.float32)
    _, _, rb, _ = reduce(big, big, jax.random.key(1), dim=2, labels=labels, return_reductions=True)
    ov = np.linalg.svd(np.asarray(rb.matrix)[:d].T @ basis[:, :2], compute_uv=False)
    assert ov.min() > 0.99
    # common random projection: same map for both when dims agree
    _, _, r1, r2 = reduce(x, x + 1.0, jax.random.key(2), method="random", dim=4, return_reductions=True)
    np.testing.assert_allclose(np.asarray(r1.matrix), np.asarray(r2.matrix))
    # a variable already smaller than dim is only centred / scaled
    xs, _ = reduce(x[:, :3], x, jax.random.key(0), dim=8)
    assert xs.shape == (n, 3)
    with pytest.raises(ValueError):
        reduce(x, x, jax.random.key(0), method="tsne")


def test_reduce_streamed_host_rows_equal_in_memory(monkeypatch):
    """Host arrays larger than one row chunk are reduced chunk by chunk (class sums, scatter,
    projections): the same maps and outputs as the in-memory path, for both methods."""
    rng = np.random.default_rng(3)
    n, d = 300, 12
    labels = np.repeat(np.arange(3), n // 3)
    x = (rng.normal(size=(n, d)) @ rng.normal(size=(d, d)) + labels[:, None]).astype(np.float32)
    y = (x[:, :5] + rng.normal(size=(n, 5))).astype(np.float32)
    cases = [dict(method="pca", dim=3, labels=labels), dict(method="random", dim=4, labels=labels)]
    whole = [reduce(x, y, jax.random.key(4), **kw) for kw in cases]
    monkeypatch.setattr(arrays_mod, "ROW_CHUNK_BYTES", d * 4 * 64)  # 64 rows of x per chunk
    assert len(arrays_mod.row_chunks(x)) == 5
    for kw, (xa, ya) in zip(cases, whole):
        xb, yb = reduce(x, y, jax.random.key(4), **kw)
        np.testing.assert_allclose(np.abs(np.asarray(xb)), np.abs(np.asarray(xa)), rtol=1e-4, atol=1e-4)
        np.testing.assert_allclose(np.abs(np.asarray(yb)), np.abs(np.asarray(ya)), rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------------------------------------
# conditional MI and the null
# ---------------------------------------------------------------------------------------------


def _independent_layers(seed, C=4, m=400, d=8):
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), m)
    a = rng.normal(size=(C * m, d)).astype(np.float32) + labels[:, None]
    b = rng.normal(size=(C * m, d)).astype(np.float32) - labels[:, None]  # dependent only through y
    return a, b, labels


@pytest.mark.parametrize("estimator", ["edge", "ksg", "gaussian"])
def test_independent_given_class_excess_near_zero(estimator):
    """Measured over 8 seeds (4 classes x 400, 8-dim layers, 10 permutations): |excess| <=
    0.038 (EDGE), 0.046 (KSG), 0.015 (Gaussian) bits, centred on 0."""
    a, b, labels = _independent_layers(100)
    r = conditional_mi_with_null(a, b, labels, jax.random.key(0), estimator=estimator, permutations=10)
    assert abs(r["excess"]) < 0.1, r
    assert r["p_value"] > 0.05
    assert set(r) >= {"rho", "null", "excess", "p_value", "per_class", "estimator", "settings"}
    assert r["settings"]["units"] == "bits" and r["estimator"] == estimator
    assert r["rho"] == pytest.approx(float(np.nansum(r["per_class"] * np.bincount(labels) / len(labels))))


@pytest.mark.parametrize("estimator", ["edge", "ksg", "gaussian"])
def test_joint_permutation_changes_nothing(estimator):
    rng = np.random.default_rng(5)
    a, _, labels = _independent_layers(5)
    b = np.tanh(a @ rng.normal(size=(8, 8))) + 0.3 * rng.normal(size=a.shape)
    perm = rng.permutation(len(labels))
    key = jax.random.key(1)
    with jax.enable_x64(True):
        r1, p1 = conditional_mi(a.astype(np.float64), b, labels, key, estimator=estimator)
        r2, p2 = conditional_mi(a[perm].astype(np.float64), b[perm], labels[perm], key, estimator=estimator)
    assert abs(r1 - r2) < 1e-6
    np.testing.assert_allclose(p1, p2, atol=1e-6)


def test_conditional_mi_per_class_and_validation():
    a, b, labels = _independent_layers(1, C=3, m=200)
    labels = labels.copy()
    labels[labels == 1] = 2  # class 1 absent
    rho, per = conditional_mi(a, b, labels, jax.random.key(0), estimator="gaussian", num_classes=4)
    assert per.shape == (4,) and np.isnan(per[1]) and np.isnan(per[3])
    assert rho == pytest.approx(float(np.nansum(per * np.bincount(labels, minlength=4) / len(labels))))
    with pytest.raises(ValueError, match="estimator"):
        conditional_mi(a, b, labels, jax.random.key(0), estimator="mine")
    with pytest.raises(ValueError, match="examples"):
        conditional_mi(a, b[:-1], labels, jax.random.key(0))
    small = labels.copy()
    small[:598] = 0
    small[598:] = 1  # class 1 has 2 examples
    with pytest.raises(ValueError, match="class 1 has 2"):
        conditional_mi(a, b, small, jax.random.key(0), estimator="ksg")
    with pytest.raises(ValueError, match="finite"):
        conditional_mi(np.where(a > 3, np.nan, a), b, labels, jax.random.key(0))
    # conv-shaped activations are flattened per example
    r1, _ = conditional_mi(a.reshape(-1, 2, 2, 2), b, labels, jax.random.key(0), estimator="gaussian")
    assert r1 == pytest.approx(rho)


def test_dependent_layers_detected_by_every_estimator():
    rng = np.random.default_rng(9)
    a, _, labels = _independent_layers(9)
    b = a + 0.5 * rng.normal(size=a.shape).astype(np.float32)
    for est in ("edge", "ksg", "gaussian"):
        r = conditional_mi_with_null(a, b, labels, jax.random.key(2), estimator=est, permutations=5)
        assert r["excess"] > 0.3 and r["p_value"] == pytest.approx(1 / 6), (est, r)


def _paper_sized_layers(C, m, d=4096, seed=0):
    """Activations with low-rank structure (like real layers): y = x + noise in 4,096 dims."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(C), m)
    z = rng.standard_normal((C * m, 8), dtype=np.float32)
    A = rng.standard_normal((8, d), dtype=np.float32) / np.sqrt(8)
    x = z @ A + 0.3 * rng.standard_normal((C * m, d), dtype=np.float32) + labels[:, None].astype(np.float32)
    y = x + 0.3 * rng.standard_normal((C * m, d), dtype=np.float32)
    y_shuf = y.copy()
    for c in range(C):
        idx = np.nonzero(labels == c)[0]
        y_shuf[idx] = y[rng.permutation(idx)]
    return x, y, y_shuf, labels


def test_edge_saturates_at_4096_dims_fast():
    """1,000 points, 4,096-dim layers: EDGE cannot tell y = x + noise from y shuffled (its two
    independent projections to 6 dims erase the dependence); KSG on a 4-dim PCA can."""
    x, y, y_shuf, labels = _paper_sized_layers(1, 1000)
    key = jax.random.key(0)
    e_dep, _ = conditional_mi(x, y, labels, key, estimator="edge")
    e_shuf, _ = conditional_mi(x, y_shuf, labels, key, estimator="edge")
    k_dep, _ = conditional_mi(x, y, labels, key, estimator="ksg")
    k_shuf, _ = conditional_mi(x, y_shuf, labels, key, estimator="ksg")
    assert abs(e_dep - e_shuf) < 0.1, (e_dep, e_shuf)
    assert e_dep > 5.0  # a large "rho" that says nothing about the dependence
    assert k_dep - k_shuf > 3.0 and abs(k_shuf) < 0.2, (k_dep, k_shuf)


@pytest.mark.slow
def test_null_exposes_edge_saturation_at_4096_dims():
    """2 classes x 1,000 points, 4,096 dims. Measured: EDGE rho 7.02 (dependent) vs 7.00
    (shuffled), null 7.00, excess 0.02; KSG-on-PCA(4) 7.9 vs null 0.0; Gaussian-on-PCA(16)
    50 vs null 0.2."""
    x, y, y_shuf, labels = _paper_sized_layers(2, 1000)
    key = jax.random.key(0)
    e = conditional_mi_with_null(x, y, labels, key, estimator="edge", permutations=5)
    e_shuf = conditional_mi_with_null(x, y_shuf, labels, key, estimator="edge", permutations=5)
    k = conditional_mi_with_null(x, y, labels, key, estimator="ksg", permutations=5)
    k_shuf = conditional_mi_with_null(x, y_shuf, labels, key, estimator="ksg", permutations=5)
    g = conditional_mi_with_null(x, y, labels, key, estimator="gaussian", permutations=5)
    assert abs(e["rho"] - e_shuf["rho"]) < 0.1 and e["rho"] > 5.0
    assert abs(e["excess"]) < 0.1 and abs(e["rho"] - e["null"]) < 0.02 * e["rho"]
    assert k["excess"] > 3.0 and abs(k_shuf["excess"]) < 0.1
    assert g["excess"] > 3.0
