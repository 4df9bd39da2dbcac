"""Shared low-dimensional reductions of layer activations (PCA of the within-class scatter or a
common random projection), fitted once and used before KSG / Gaussian MI so that per-class
values and permutation nulls are comparable."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.estimators.arrays import HIGHEST, as_2d, check_pair, float_dtype, is_host, project_rows, row_chunks, to_device
from jsemi.validation import check_labels

__all__ = ["Reduction", "fit_reduction", "reduce"]


class Reduction(NamedTuple):
    """A fitted linear map ``(z - mean) @ matrix``, then per-output scaling by ``scale``."""

    mean: jax.Array
    matrix: jax.Array | None  # None = identity (input already small enough)
    scale: jax.Array

    def apply(self, z):
        """Applies the reduction to (N, d) data (host arrays are streamed in row chunks)."""
        z = as_2d(z, "z")
        dtype = float_dtype(z)
        if self.matrix is None:
            return _shift_scale(to_device(z, dtype), self.mean, self.scale)
        if is_host(z) and len(row_chunks(z)) > 1:
            return _unshift_scale(project_rows(z, self.matrix, dtype), self.mean, self.matrix, self.scale)
        return _apply_map(to_device(z, dtype), self.mean, self.matrix, self.scale)


# Every step below is one compiled program (eager jnp ops would each compile a program per
# shape: the exact PCA alone was ~30 of them).

@jax.jit
def _shift_scale(z, mean, scale):
    return (z - mean) / scale


@jax.jit
def _apply_map(z, mean, matrix, scale):
    return (jnp.dot(z, matrix, precision=HIGHEST) - jnp.dot(mean, matrix, precision=HIGHEST)) / scale


@jax.jit
def _unshift_scale(zm, mean, matrix, scale):
    return (zm - jnp.dot(mean, matrix, precision=HIGHEST)) / scale


@partial(jax.jit, static_argnames=("num_classes",))
def _class_sums(x, labels, *, num_classes):
    return jax.ops.segment_sum(x, labels, num_segments=num_classes), jnp.bincount(labels, length=num_classes)


@jax.jit
def _means_from_sums(sums, counts):
    """(C, d) class means and the (d,) pooled mean from class sums and counts."""
    means = sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype)
    return means, jnp.sum(sums, axis=0) / jnp.sum(counts).astype(sums.dtype)


@partial(jax.jit, static_argnames=("num_classes",))
def _class_means_dev(x, labels, *, num_classes):
    return _means_from_sums(*_class_sums(x, labels, num_classes=num_classes))


def _class_means(x, labels, num_classes, dtype):
    """(C, d) per-class means (a single class when labels is None), the (d,) pooled mean and
    the int32 labels; streamed for host arrays."""
    n = x.shape[0]
    lab = jnp.asarray(np.zeros((n,), np.int32) if labels is None else np.asarray(labels, np.int32))
    C = 1 if labels is None else num_classes
    if is_host(x) and len(row_chunks(x)) > 1:
        sums, counts = None, None
        for sl in row_chunks(x):
            s, c = _class_sums(to_device(x[sl], dtype), lab[sl], num_classes=C)
            sums = s if sums is None else sums + s
            counts = c if counts is None else counts + c
        means, gmean = _means_from_sums(sums, counts)
    else:
        means, gmean = _class_means_dev(to_device(x, dtype), lab, num_classes=C)
    return means, gmean, lab


@jax.jit
def _centered_matmul(x, lab, means, w):
    """(x - means[lab]) @ w without forming the centered x."""
    return jnp.dot(x, w, precision=HIGHEST) - jnp.dot(means, w, precision=HIGHEST)[lab]


@jax.jit
def _centered_rmatmul(x, lab, means, u):
    """(x - means[lab])^T @ u."""
    su = jax.ops.segment_sum(u, lab, num_segments=means.shape[0])
    return jnp.dot(x.T, u, precision=HIGHEST) - jnp.dot(means.T, su, precision=HIGHEST)


@jax.jit
def _centered_scatter(x, lab, means):
    """(x - means[lab])^T (x - means[lab]): the (d, d) within-class scatter of a block of rows."""
    xc = x - means[lab]
    return jnp.dot(xc.T, xc, precision=HIGHEST)


@partial(jax.jit, static_argnames=("dim", "whiten"))
def _top_eigen(scatter, n, *, dim, whiten):
    """Top-``dim`` eigenvectors of a scatter matrix and the output scales (sqrt of the variances
    scatter / (n - 1), or ones; zero scales become 1)."""
    evals, evecs = jnp.linalg.eigh((scatter + scatter.T) / 2)
    order = jnp.argsort(-evals)[:dim]
    var = jnp.maximum(evals[order], 0.0) / jnp.maximum(n - 1, 1).astype(evals.dtype)
    return evecs[:, order], _scale(var, whiten)


def _scale(var, whiten):
    scale = jnp.sqrt(var) if whiten else jnp.ones_like(var)
    return jnp.where(scale > 0, scale, 1.0)


@partial(jax.jit, static_argnames=("dim", "whiten"))
def _svd_components(bt, n, *, dim, whiten):
    u, s, _ = jnp.linalg.svd(bt, full_matrices=False)
    return u[:, :dim], _scale((s[:dim] ** 2) / jnp.maximum(n - 1, 1).astype(s.dtype), whiten)


@jax.jit
def _qr(a):
    return jnp.linalg.qr(a)[0]


def _cmatmul(x, lab, means, w, dtype):
    if is_host(x) and len(row_chunks(x)) > 1:
        return jnp.concatenate(
            [_centered_matmul(to_device(x[sl], dtype), lab[sl], means, w) for sl in row_chunks(x)], axis=0
        )
    return _centered_matmul(to_device(x, dtype), lab, means, w)


def _crmatmul(x, lab, means, u, dtype):
    if is_host(x) and len(row_chunks(x)) > 1:
        acc = None
        for sl in row_chunks(x):
            part = _centered_rmatmul(to_device(x[sl], dtype), lab[sl], means, u[sl])
            acc = part if acc is None else acc + part
        return acc
    return _centered_rmatmul(to_device(x, dtype), lab, means, u)


def _pca_components(x, lab, means, dim: int, key, dtype, *, whiten: bool, exact_max_dim: int = 2048,
                    power_iters: int = 4):
    """Top-``dim`` principal directions of the (class-)centered data and the output scales
    (the square roots of their variances with ``whiten``, else ones).

    Exact (eigh of the d x d scatter) for d <= ``exact_max_dim``; otherwise randomized
    subspace iteration (Halko et al. 2011) with ``dim + 10`` columns and ``power_iters``
    QR-stabilised power steps, using only products with the data (never its centered copy).
    """
    n, d = x.shape
    if d <= exact_max_dim:
        if is_host(x) and len(row_chunks(x)) > 1:
            scatter = None
            for sl in row_chunks(x):
                part = _centered_scatter(to_device(x[sl], dtype), lab[sl], means)
                scatter = part if scatter is None else scatter + part
        else:
            scatter = _centered_scatter(to_device(x, dtype), lab, means)
        return _top_eigen(scatter, np.int32(n), dim=dim, whiten=whiten)
    l = min(d, dim + 10)
    omega = jax.random.normal(key, (d, l), dtype)
    q = _qr(_cmatmul(x, lab, means, omega, dtype))
    for _ in range(power_iters):
        z = _qr(_crmatmul(x, lab, means, q, dtype))
        q = _qr(_cmatmul(x, lab, means, z, dtype))
    bt = _crmatmul(x, lab, means, q, dtype)  # (d, l) = Xc^T Q
    return _svd_components(bt, np.int32(n), dim=dim, whiten=whiten)


@partial(jax.jit, static_argnames=("whiten",))
def _own_scales(x, lab, means, *, whiten):
    """Scales of an unprojected variable: its within-class std per column (or ones)."""
    return _scale(jnp.var(x - means[lab], axis=0), whiten)


@partial(jax.jit, static_argnames=("whiten",))
def _random_map(x, lab, means, g, *, whiten):
    """The common projection G / sqrt(d) and its output scales (root mean square of the
    class-centered projection, or ones)."""
    matrix = g / jnp.sqrt(jnp.asarray(g.shape[0], g.dtype))
    if not whiten:
        return matrix, jnp.ones((g.shape[1],), g.dtype)
    proj = _centered_matmul(x, lab, means, matrix)
    return matrix, _scale(jnp.mean(jnp.square(proj), axis=0), True)


def fit_reduction(
    x,
    key: jax.Array,
    *,
    method: str = "pca",
    dim: int = 8,
    labels=None,
    num_classes: int | None = None,
    whiten: bool = True,
    shared_matrix=None,
) -> Reduction:
    """Fits the reduction of one variable; see :func:`reduce` for the methods."""
    x = as_2d(x, "x")
    n, d = x.shape
    dtype = float_dtype(x)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if method not in ("pca", "random"):
        raise ValueError(f"method must be 'pca' or 'random', got {method!r}")
    if labels is not None:
        labels = np.asarray(labels)
        check_labels(labels, num_classes, "labels", batch=n)
        if num_classes is None:
            num_classes = int(np.max(labels)) + 1
    means, gmean, lab = _class_means(x, labels, num_classes, dtype)
    if d <= dim and method != "random":
        return Reduction(gmean, None, _own_scales(to_device(x, dtype), lab, means, whiten=whiten))
    if method == "pca":
        matrix, scale = _pca_components(x, lab, means, dim, key, dtype, whiten=whiten)
        return Reduction(gmean, matrix, scale)
    g = jax.random.normal(key, (d, dim), dtype) if shared_matrix is None else jnp.asarray(shared_matrix, dtype)[:d]
    if is_host(x) and len(row_chunks(x)) > 1:  # streamed: the projection in row chunks
        matrix = g / np.sqrt(d).astype(dtype)
        scale = jnp.ones((dim,), dtype)
        if whiten:
            proj = _cmatmul(x, lab, means, matrix, dtype)
            scale = _scale(jnp.mean(jnp.square(proj), axis=0), True)
        return Reduction(gmean, matrix, scale)
    matrix, scale = _random_map(to_device(x, dtype), lab, means, g, whiten=whiten)
    return Reduction(gmean, matrix, scale)


def reduce(
    x,
    y,
    key: jax.Array,
    *,
    method: str = "pca",
    dim: int = 8,
    labels=None,
    num_classes: int | None = None,
    whiten: bool = True,
    return_reductions: bool = False,
):
    """Shared low-dimensional reduction of two layers' activations, used before KSG / Gaussian.

    "Shared" means one reduction per variable for all classes and for the permutation null
    alike (so per-class values and nulls are comparable), and the same method and
    dimension for x and y.

    - ``method="pca"``: the top ``dim`` principal directions of each variable. With
      ``labels`` they are fitted on the *within-class* scatter (each class centered on its
      own mean), the variation that class-conditional MI is about; otherwise on the
      pooled scatter. Exact for d <= 2048, randomized subspace iteration above.
    - ``method="random"``: a *common* Gaussian projection: one (max(dx, dy), dim) N(0, 1)
      matrix G drawn once; x uses G[:dx] / sqrt(dx), y uses G[:dy] / sqrt(dy). When
      dx == dy the two variables go through the same map, so coordinate-wise
      dependence such as y = x + noise survives (EDGE's two independent projections
      destroy it).

    A variable with d <= dim is not projected under PCA (only centered/scaled).
    ``whiten`` scales every output coordinate to unit within-class variance.

    Returns:
      (x_reduced, y_reduced) as device arrays of shape (N, dim) (or (N, d) when d <= dim);
      with ``return_reductions`` also the two fitted :class:`Reduction` objects.
    """
    x, y = check_pair(x, y)
    kx, ky, kg = jax.random.split(key, 3)
    shared = None
    if method == "random":
        shared = jax.random.normal(kg, (max(x.shape[1], y.shape[1]), dim), float_dtype(x))
    rx = fit_reduction(x, kx, method=method, dim=dim, labels=labels, num_classes=num_classes, whiten=whiten, shared_matrix=shared)
    ry = fit_reduction(y, ky, method=method, dim=dim, labels=labels, num_classes=num_classes, whiten=whiten, shared_matrix=shared)
    xr, yr = rx.apply(x), ry.apply(y)
    if return_reductions:
        return xr, yr, rx, ry
    return xr, yr
