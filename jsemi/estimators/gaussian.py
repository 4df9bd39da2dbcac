"""Gaussian (log-det / CCA) mutual-information estimate in bits, bias-corrected by default.

The plug-in estimate 0.5 log2(det Sxx det Syy / det S) of jointly Gaussian data is biased up
by exactly 0.5 [B(dx) + B(dy) - B(dx + dy)] / ln 2 bits, B(d) = sum_{i=1..d} psi((N - i) / 2)
(the expectation of the log-determinant of a Wishart matrix: Goodman 1963; the unbiased
Gaussian entropy estimator of Misra, Singh & Demchuk 2005), about dx*dy / (2 N ln 2) bits.
:func:`gaussian_mi` subtracts it (``bias_correction=True``), which makes the estimate
unbiased for Gaussian data at every N > dx + dy (it can then be slightly negative when the
dependence is small). On other data it measures the linearly-carried dependence only.
Numbers before and after the correction: ``docs/calibration.md``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import digamma

from jsemi.estimators.arrays import HIGHEST, check_pair, float_dtype, to_device

__all__ = ["gaussian_bias_bits", "gaussian_mi"]


@jax.jit
def _joint_cov(x, y):
    n = x.shape[0]
    xc = x - jnp.mean(x, axis=0)
    yc = y - jnp.mean(y, axis=0)
    den = n - 1
    cxx = jnp.dot(xc.T, xc, precision=HIGHEST) / den
    cyy = jnp.dot(yc.T, yc, precision=HIGHEST) / den
    cxy = jnp.dot(xc.T, yc, precision=HIGHEST) / den
    return cxx, cyy, cxy, jnp.all(jnp.isfinite(cxy))


def _inv_sqrt_psd(c, ridge):
    c = np.asarray(c, np.float64)
    d = c.shape[0]
    tr = float(np.trace(c)) / max(d, 1)
    c = c + ridge * (tr if tr > 0 else 1.0) * np.eye(d)
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-300)
    return (v / np.sqrt(w)) @ v.T


def gaussian_bias_bits(n: int, dx: int, dy: int) -> float:
    """Expected excess (bits) of the plug-in Gaussian MI over the truth, N samples of jointly
    Gaussian (dx + dy)-dim data: 0.5 [B(dx) + B(dy) - B(dx + dy)] / ln 2 with
    B(d) = sum_{i=1..d} psi((N - i) / 2). Independent of the covariance; needs N > dx + dy."""
    if n <= dx + dy:
        raise ValueError(f"the Gaussian bias correction needs N > dx + dy, got N = {n}, dx + dy = {dx + dy}")
    psi = digamma((n - np.arange(1, dx + dy + 1)) / 2.0)
    return float(0.5 * (psi[:dx].sum() + psi[:dy].sum() - psi.sum()) / math.log(2.0))


def gaussian_mi(
    x,
    y,
    *,
    bias_correction: bool = True,
    ridge: float = 1e-6,
    max_rho2: float = 1.0 - 1e-9,
    return_correlations: bool = False,
):
    """Gaussian mutual information in **bits** from the sample covariance.

    I = 0.5 log2(det Cxx det Cyy / det C) = -0.5 sum_i log2(1 - rho_i^2) with rho_i the
    canonical correlations (singular values of Cxx^{-1/2} Cxy Cyy^{-1/2}). Exact MI for
    jointly Gaussian data; for other data it is the MI of the Gaussian with the same
    covariance (the information carried by linear correlations). Covariances are
    computed in JAX; the small whitening/SVD in float64 NumPy. ``ridge`` adds
    ridge * mean eigenvalue to Cxx and Cyy; rho^2 is capped at ``max_rho2`` so an exact
    linear relation gives a large finite value (~15 bits per pair) instead of inf.
    With ``bias_correction`` (default) the exact finite-sample bias of the plug-in
    estimate on Gaussian data, :func:`gaussian_bias_bits` (about dx*dy/(2 N ln 2) bits),
    is subtracted, so the result is unbiased on Gaussians and near 0 on independent data
    (it can be slightly negative); it needs N > dx + dy. Without it, the plug-in value.
    """
    x, y = check_pair(x, y)
    (n, dx), dy = x.shape, y.shape[1]
    bias = gaussian_bias_bits(n, dx, dy) if bias_correction else 0.0
    dtype = np.promote_types(float_dtype(x), float_dtype(y))
    cxx, cyy, cxy, finite = _joint_cov(to_device(x, dtype), to_device(y, dtype))
    if not bool(finite):
        raise ValueError("x and y must be finite (found NaN or inf)")
    wx = _inv_sqrt_psd(cxx, ridge)
    wy = _inv_sqrt_psd(cyy, ridge)
    m = wx @ np.asarray(cxy, np.float64) @ wy
    rho = np.linalg.svd(m, compute_uv=False)
    rho2 = np.minimum(rho**2, max_rho2)
    mi = float(-0.5 * np.sum(np.log2(1.0 - rho2))) - bias
    if return_correlations:
        return mi, rho
    return mi
