"""Other layer-dependence measures the paper records beside EDGE.

- :func:`hsic`: normalised HSIC (Fukumizu et al. 2008 "NOCCO", the ``hsic_normalized_cca`` of
  the authors' script) or plain biased HSIC (Gretton et al. 2005), linear or RBF kernel.
- :func:`cka`: centered kernel alignment (Kornblith et al. 2019), linear or RBF.
- :func:`class_hsic_cka`: the class-wise HSIC / CKA the authors record (conv maps averaged
  over space, per-class values weighted by the class prior).
- :func:`connectivity`: class-standardised connectivity (mean |correlation| between the units
  of two layers within a class, averaged over classes), as the authors' ``calc_conn``.
- :func:`sensitivity`: layer sensitivity of Zhang et al. 2019 (arXiv:1909.06978).

All return Python floats (or dicts of floats); inputs are (N, ...) activations, NHWC for
conv layers.
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["hsic", "cka", "class_hsic_cka", "connectivity", "sensitivity"]

_HIGHEST = jax.lax.Precision.HIGHEST
_KERNELS = ("linear", "rbf")


def _pair(x, y):
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.ndim < 1 or y.ndim < 1 or x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y need the same leading (example) axis, got shapes {x.shape} and {y.shape}")
    if x.shape[0] < 2:
        raise ValueError("need at least 2 examples")
    x = x.reshape(x.shape[0], -1)
    y = y.reshape(y.shape[0], -1)
    f = jnp.promote_types(jnp.result_type(x, y), jnp.float32)
    return x.astype(f), y.astype(f)


def _check_kernel(kernel):
    if kernel not in _KERNELS:
        raise ValueError(f"kernel must be one of {_KERNELS}, got {kernel!r}")


@partial(jax.jit, static_argnames=("kernel", "median"))
def _centered_gram(x, sigma, *, kernel: str, median: bool):
    """H K H for the linear or RBF kernel.

    RBF: K = exp(-||xi - xj||^2 / (2 s^2)) with s = median pairwise distance when
    ``median`` (the usual median heuristic), else s^2 = sigma^2 * d (the authors'
    ``kernelmat``: a per-feature bandwidth sigma).
    """
    m, d = x.shape
    if kernel == "linear":
        k = jnp.dot(x, x.T, precision=_HIGHEST)
    else:
        sq = jnp.sum(x * x, axis=1)
        d2 = jnp.maximum(sq[:, None] + sq[None, :] - 2.0 * jnp.dot(x, x.T, precision=_HIGHEST), 0.0)
        if median:
            iu = jnp.triu_indices(m, 1)
            s2 = jnp.median(d2[iu])
            s2 = jnp.where(s2 > 0, s2, 1.0)
        else:
            s2 = sigma**2 * d
        k = jnp.exp(-d2 / (2.0 * s2))
    rm = jnp.mean(k, axis=0)
    return k - rm[None, :] - rm[:, None] + jnp.mean(rm)


def _centered_gram_f64(x, sigma, *, kernel: str, median: bool):
    """Float64 NumPy twin of :func:`_centered_gram`, for NOCCO (whose eps m = 1e-5 m is
    below the float32 noise of a Gram matrix's null-space eigenvalues)."""
    x = np.asarray(x, np.float64)
    m, d = x.shape
    if kernel == "linear":
        k = x @ x.T
    else:
        sq = np.sum(x * x, axis=1)
        d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * x @ x.T, 0.0)
        if median:
            s2 = float(np.median(d2[np.triu_indices(m, 1)]))
            s2 = s2 if s2 > 0 else 1.0
        else:
            s2 = sigma**2 * d
        k = np.exp(-d2 / (2.0 * s2))
    rm = k.mean(axis=0)
    return k - rm[None, :] - rm[:, None] + rm.mean()


def _nocco(kx, ky, eps):
    """tr(Rx Ry), R = K~ (K~ + eps m I)^{-1}, by a float64 eigendecomposition.

    eps m is tiny next to the largest kernel eigenvalues (condition numbers ~1e6 and more),
    so the kernels and this regularised step run in float64 NumPy.
    Rx = U diag(l / (l + eps m)) U^T, so tr(Rx Ry) = sum_ij (Ux^T Uy)_ij^2 fx_i fy_j.
    """
    m = kx.shape[0]
    lx, ux = np.linalg.eigh(np.asarray(kx, np.float64))
    ly, uy = np.linalg.eigh(np.asarray(ky, np.float64))
    fx = np.clip(lx, 0, None) / (np.clip(lx, 0, None) + eps * m)
    fy = np.clip(ly, 0, None) / (np.clip(ly, 0, None) + eps * m)
    c = ux.T @ uy
    return float(np.sum(c * c * fx[:, None] * fy[None, :]))


@jax.jit
def _linear_feature_stats(x, y):
    xc = x - jnp.mean(x, axis=0)
    yc = y - jnp.mean(y, axis=0)
    cxy = jnp.dot(xc.T, yc, precision=_HIGHEST)
    cxx = jnp.dot(xc.T, xc, precision=_HIGHEST)
    cyy = jnp.dot(yc.T, yc, precision=_HIGHEST)
    return cxy, cxx, cyy


def _linear_nocco_features(cxy, cxx, cyy, eps, m):
    """tr(Rx Ry) for linear kernels in feature space: tr(A C B C^T), A = (Cxx + eps m I)^-1
    (float64 NumPy for the small d x d solves)."""
    cxy, cxx, cyy = (np.asarray(v, np.float64) for v in (cxy, cxx, cyy))
    ac = np.linalg.solve(cxx + eps * m * np.eye(cxx.shape[0]), cxy)
    cb = np.linalg.solve(cyy + eps * m * np.eye(cyy.shape[0]), cxy.T).T
    return float(np.sum(ac * cb))


def hsic(x, y, kernel: str = "linear", *, normalized: bool = True, sigma: float | None = None, eps: float = 1e-5) -> float:
    """Normalised (default) or plain HSIC between two sets of activations.

    - ``normalized=True``: NOCCO, tr(Rx Ry) with Rx = K~x (K~x + eps m I)^{-1}, K~ = H K H
      the centered kernel, eps = 1e-5 (the authors' ``hsic_normalized_cca``; they center
      one-sidedly, K H, which leaves plain HSIC unchanged; we use the symmetric H K H). It
      lies in [0, min(rank)]. With eps = 1e-5 and an RBF kernel, R is close to a projection
      on most of the sample space, so NOCCO sits near its ceiling for dependent and
      independent data alike (400 points, 3 dims: 6.8 independent vs 7.9 dependent);
      plain HSIC separates them far better (tests/test_dependence.py).
    - ``normalized=False``: the biased HSIC estimate tr(K~x K~y) / (m - 1)^2.

    Kernels: "linear" (x x^T; computed in feature space when both widths are below m) or
    "rbf" (``sigma=None``: median heuristic; a number: the authors' per-feature bandwidth,
    K = exp(-||xi - xj||^2 / (2 sigma^2 d))). Activations are flattened per example.
    """
    _check_kernel(kernel)
    x, y = _pair(x, y)
    m = x.shape[0]
    if kernel == "linear" and max(x.shape[1], y.shape[1]) < m:
        cxy, cxx, cyy = _linear_feature_stats(x, y)
        if normalized:
            return float(_linear_nocco_features(cxy, cxx, cyy, eps, m))
        return float(jnp.sum(cxy * cxy)) / (m - 1) ** 2
    med = sigma is None
    s = 1.0 if med else float(sigma)
    if normalized:
        kx = _centered_gram_f64(x, s, kernel=kernel, median=med)
        ky = _centered_gram_f64(y, s, kernel=kernel, median=med)
        return _nocco(kx, ky, eps)
    kx = _centered_gram(x, s, kernel=kernel, median=med)
    ky = _centered_gram(y, s, kernel=kernel, median=med)
    return float(jnp.sum(kx * ky)) / (m - 1) ** 2


def cka(x, y, kernel: str = "linear", *, sigma: float | None = None, normalized_hsic: bool = False) -> float:
    """Centered kernel alignment HSIC(x, y) / sqrt(HSIC(x, x) HSIC(y, y)).

    With plain HSIC (default) this is Kornblith et al.'s CKA: in [0, 1], invariant to
    orthogonal transforms and isotropic scaling of either argument (linear kernel: exactly
    ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)). ``normalized_hsic=True`` builds it from
    NOCCO instead, as the authors' ``calc_HSIC_CKA`` does.
    """
    _check_kernel(kernel)
    x, y = _pair(x, y)
    m = x.shape[0]
    if kernel == "linear" and not normalized_hsic and max(x.shape[1], y.shape[1]) < m:
        cxy, cxx, cyy = _linear_feature_stats(x, y)
        num = jnp.sum(cxy * cxy)
        den = jnp.sqrt(jnp.sum(cxx * cxx) * jnp.sum(cyy * cyy))
        return float(jnp.where(den > 0, num / den, 0.0))
    kw = dict(kernel=kernel, normalized=normalized_hsic, sigma=sigma)
    hxy = hsic(x, y, **kw)
    hxx = hsic(x, x, **kw)
    hyy = hsic(y, y, **kw)
    den = np.sqrt(hxx * hyy)
    return float(hxy / den) if den > 0 else 0.0


def _spatial_mean(a):
    """Conv maps (N, H, W, C) -> (N, C) by the spatial mean; tokens (N, T, D) -> (N, D)."""
    a = jnp.asarray(a)
    if a.ndim == 4:
        return jnp.mean(a, axis=(1, 2))
    if a.ndim == 3:
        return jnp.mean(a, axis=1)
    if a.ndim == 1:
        return a[:, None]
    return a


def _class_split(labels, n, num_classes):
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must be a rank-1 array of {n} class indices, got shape {lab.shape}")
    if num_classes is None:
        num_classes = int(lab.max()) + 1
    counts = np.bincount(lab, minlength=num_classes)
    present = [int(c) for c in np.nonzero(counts)[0]]
    return lab, counts / n, present


def class_hsic_cka(
    a, b, labels, *, kernel: str = "rbf", sigma: float | None = None, normalized: bool = True, num_classes=None
) -> dict:
    """Class-wise HSIC and CKA as the authors record them (``calc_HSIC_CKA``).

    Conv maps are averaged over space (NHWC -> (N, C)); within each class the normalised
    HSIC (NOCCO, ``normalized=True``) and CKA = HSIC(a, b) / sqrt(HSIC(a, a) HSIC(b, b)) built
    from the same HSIC are computed with the RBF kernel (median heuristic when ``sigma`` is
    None, as their recorded runs). Both are weighted by the class prior pi(y) here; the
    authors' script weights HSIC by pi(y) but *sums* CKA over classes (so their CKA grows
    with the number of classes); ``cka_sum`` reports that sum too.

    Returns dict(hsic, cka, cka_sum, per_class_hsic, per_class_cka).
    """
    a = _spatial_mean(a)
    b = _spatial_mean(b)
    lab, pi, present = _class_split(labels, a.shape[0], num_classes)
    ph, pc = {}, {}
    for c in present:
        idx = np.nonzero(lab == c)[0]
        if len(idx) < 2:
            continue
        ac, bc = a[idx], b[idx]
        h = hsic(ac, bc, kernel, normalized=normalized, sigma=sigma)
        hx = hsic(ac, ac, kernel, normalized=normalized, sigma=sigma)
        hy = hsic(bc, bc, kernel, normalized=normalized, sigma=sigma)
        ph[c] = h
        pc[c] = h / np.sqrt(hx * hy) if hx * hy > 0 else 0.0
    return dict(
        hsic=float(sum(pi[c] * ph[c] for c in ph)),
        cka=float(sum(pi[c] * pc[c] for c in pc)),
        cka_sum=float(sum(pc.values())),
        per_class_hsic=ph,
        per_class_cka=pc,
    )


@jax.jit
def _abs_corr(a, b):
    """|corr| between every column of a and of b; NaN where a column is constant."""
    ac = a - jnp.mean(a, axis=0)
    bc = b - jnp.mean(b, axis=0)
    sa = jnp.sqrt(jnp.sum(ac * ac, axis=0))
    sb = jnp.sqrt(jnp.sum(bc * bc, axis=0))
    c = jnp.dot(ac.T, bc, precision=_HIGHEST) / (sa[:, None] * sb[None, :])
    ok = (sa[:, None] > 0) & (sb[None, :] > 0)
    return jnp.where(ok, jnp.abs(c), jnp.nan)


def connectivity(a, b, labels, *, num_classes: int | None = None, return_per_class: bool = False):
    """Class-standardised connectivity between two layers (the authors' ``calc_conn``).

    Conv maps are averaged over space (NHWC -> (N, C); tokens (N, T, D) -> (N, D)). Within
    each class, the absolute Pearson correlation between every unit of ``a`` and every
    unit of ``b`` is taken; the result is the mean over all classes and unit pairs, units
    that are constant within a class left out (NaN-mean, as their ``np.nanmean``).

    The authors first standardise each class's block of activations by one scalar mean and
    std; a correlation is invariant to that, so it is not repeated here.
    """
    a = _spatial_mean(a)
    b = _spatial_mean(b)
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"a and b must have the same number of examples, got {a.shape[0]} and {b.shape[0]}")
    lab, _, present = _class_split(labels, a.shape[0], num_classes)
    mats = []
    per = {}
    for c in present:
        idx = np.nonzero(lab == c)[0]
        if len(idx) < 2:
            continue
        m = np.asarray(_abs_corr(a[idx].astype(jnp.float32), b[idx].astype(jnp.float32)), np.float64)
        mats.append(m)
        per[c] = float(np.nanmean(m)) if np.isfinite(m).any() else float("nan")
    allv = np.concatenate([m.ravel() for m in mats]) if mats else np.array([np.nan])
    value = float(np.nanmean(allv)) if np.isfinite(allv).any() else float("nan")
    return (value, per) if return_per_class else value


def sensitivity(a_clean, a_adv, *, per: str = "channel", norm: str = "entrywise", eps: float = 1e-8) -> float:
    """Layer sensitivity (Zhang et al. 2019): mean over images of ||a - a_adv||_1 / ||a||_1.

    - Conv maps (N, H, W, C), ``per="channel"`` (default, as the authors' script): for every
      image and channel, the L1 norm over the H x W map of the difference divided by that of
      the clean map (+ eps); mean over channels, then over images.
    - Dense (N, D) (and token) activations, ``per="channel"``: |a - a_adv| / (|a| + eps) per
      unit, mean over units, then images (the authors' dense branch). Units that are exactly
      zero on the clean image and not on the attacked one dominate this ratio.
    - ``per="image"``: one ratio per image over the whole flattened activation.
    - ``norm="matrix"`` (conv, per channel): the induced matrix 1-norm (max over columns of
      the column's absolute sum) of each H x W map, which is what the authors'
      ``torch.linalg.matrix_norm(ord=1)`` computes; the default is the entrywise L1 norm of
      the formula.
    """
    a = jnp.asarray(a_clean)
    b = jnp.asarray(a_adv)
    if a.shape != b.shape:
        raise ValueError(f"a_clean and a_adv must have the same shape, got {a.shape} and {b.shape}")
    if a.ndim < 2:
        raise ValueError(f"activations need an example axis and features, got shape {a.shape}")
    if per not in ("channel", "image"):
        raise ValueError(f"per must be 'channel' or 'image', got {per!r}")
    if norm not in ("entrywise", "matrix"):
        raise ValueError(f"norm must be 'entrywise' or 'matrix', got {norm!r}")
    return float(_sensitivity(a, b, per=per, norm=norm, eps=float(eps)))


@partial(jax.jit, static_argnames=("per", "norm", "eps"))
def _sensitivity(a, b, *, per: str, norm: str, eps: float):
    """:func:`sensitivity` as one compiled program (a scalar)."""
    a = a.astype(jnp.promote_types(a.dtype, jnp.float32))
    b = b.astype(a.dtype)
    d = jnp.abs(a - b)
    if per == "image":
        num = jnp.sum(d.reshape(d.shape[0], -1), axis=1)
        den = jnp.sum(jnp.abs(a).reshape(a.shape[0], -1), axis=1)
        return jnp.mean(num / (den + eps))
    if a.ndim == 4:
        if norm == "entrywise":
            num = jnp.sum(d, axis=(1, 2))
            den = jnp.sum(jnp.abs(a), axis=(1, 2))
        else:  # NHWC: matrix (H, W) per channel; column sums over H, max over W
            num = jnp.max(jnp.sum(d, axis=1), axis=1)
            den = jnp.max(jnp.sum(jnp.abs(a), axis=1), axis=1)
        ratio = num / (den + eps)  # (N, C)
    else:
        ratio = (d / (jnp.abs(a) + eps)).reshape(a.shape[0], -1)
    return jnp.mean(jnp.mean(ratio, axis=1))
