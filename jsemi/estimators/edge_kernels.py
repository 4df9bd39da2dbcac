"""Compiled kernels of EDGE (see :mod:`jsemi.estimators.edge` for the estimator and its
options): the random draws, the p-stable projection, the 1-D k-NN bandwidths from one sort per
column, sort-based bucket counting and the hashed MI sum. Arrays hold n valid rows followed by
zero padding (n traced), so one compilation serves every n of a size bucket."""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp

from jsemi.estimators.arrays import HIGHEST, is_host, project_rows, row_chunks, to_device

__all__ = [
    "draw_edge",
    "edge_from_projected",
    "group_counts",
    "knn_bandwidth",
    "project_pair",
    "project_streamed",
]


@partial(jax.jit, static_argnames=("dx", "dy", "dpx", "dpy", "px", "py", "L", "nq"))
def draw_edge(key, n, fold, *, dx, dy, dpx, dpy, px, py, L, nq):
    """All of :func:`edge_randomness`'s draws in one compiled call."""
    if fold is not None:
        key = jax.random.fold_in(key, fold)
    kgx, kgy, kq, kux, kuy = jax.random.split(key, 5)
    gx = jax.random.normal(kgx, (dx, dpx), jnp.float32) if px else None
    gy = jax.random.normal(kgy, (dy, dpy), jnp.float32) if py else None
    # with replacement, as the authors' np.random.choice
    queries = None if nq is None else jax.random.randint(kq, (nq,), 0, n)
    ux = jax.random.uniform(kux, (L, dpx), jnp.float32)
    uy = jax.random.uniform(kuy, (L, dpy), jnp.float32)
    return gx, gy, queries, ux, uy


@jax.jit
def _column_moments_dev(x):
    """Per-column mean and population std (ddof 0, two-pass) of a device array, and finiteness."""
    mean = jnp.mean(x, axis=0)
    std = jnp.sqrt(jnp.mean(jnp.square(x - mean), axis=0))
    return mean, std, jnp.all(jnp.isfinite(mean))


@jax.jit
def _chunk_sums(x):
    return jnp.sum(x, axis=0), jnp.all(jnp.isfinite(x))


@jax.jit
def _chunk_m2(x, mean):
    return jnp.sum(jnp.square(x - mean), axis=0)


def _column_moments(x, dtype):
    """Column means and population stds; streams host arrays in row chunks (bounded memory)."""
    if not is_host(x):
        return _column_moments_dev(to_device(x, dtype))
    chunks = row_chunks(x)
    if len(chunks) == 1:
        return _column_moments_dev(to_device(x, dtype))
    n = x.shape[0]
    total, finite = None, True
    for sl in chunks:
        s, f = _chunk_sums(to_device(x[sl], dtype))
        total = s if total is None else total + s
        finite = finite & f
    mean = total / n
    m2 = None
    for sl in chunks:
        s = _chunk_m2(to_device(x[sl], dtype), mean)
        m2 = s if m2 is None else m2 + s
    return mean, jnp.sqrt(m2 / n), finite


@jax.jit
def _projection_matrix(g, std):
    """W = g / (std * sqrt(d)) row-wise; columns with std < 1e-4 use scale 1 (authors' guard)."""
    d = g.shape[0]
    std = jnp.where(std < 1e-4, jnp.ones_like(std), std)
    return g.astype(std.dtype) / (std[:, None] * jnp.sqrt(jnp.asarray(d, std.dtype)))



def _project_inline(x, g, n):
    """Traceable p-stable projection (``gen_W``) of one variable: (x @ W or x, finite flag).

    ``x`` holds n valid rows followed by zero padding; mean and std use the valid rows only.
    """
    valid = (jnp.arange(x.shape[0]) < n)[:, None]
    if g is None:
        return x, jnp.all(jnp.isfinite(x))
    # One pass over x for both moments (sibling reductions XLA fuses), shifted by the first
    # row so that the E[z^2] - E[z]^2 form does not cancel when |mean| >> std.
    z = jnp.where(valid, x - x[0], 0.0)
    m1 = jnp.sum(z, axis=0) / n
    m2 = jnp.sum(z * z, axis=0) / n
    std = jnp.sqrt(jnp.maximum(m2 - m1 * m1, 0.0))
    w = _projection_matrix(g, std)
    return jnp.dot(x, w, precision=HIGHEST), jnp.all(jnp.isfinite(m2))


def project_streamed(x, g, dtype):
    """Streaming version of :func:`_project_inline` for host arrays larger than one chunk.

    Returns (xw, finite) as device values (no host synchronisation).
    """
    if g is None:
        xd = to_device(x, dtype)
        return xd, jnp.all(jnp.isfinite(xd))
    _, std, finite = _column_moments(x, dtype)
    w = _projection_matrix(jnp.asarray(g), std)
    return project_rows(x, w, dtype), finite


def _kth_nn_dist_sorted(s, p, k, n, steps: int):
    """Distance from s[p] to its k-th nearest point among the n sorted values s[:n] (self included).

    The k nearest points of a point of a 1-D set form a window of k consecutive sorted
    values that contains it, so the distance is min over window starts lo of
    max(s[p] - s[lo], s[lo + k - 1] - s[p]). The first term falls and the second rises
    with lo, so the minimum sits where they cross: found by a binary search of ``steps``
    >= ceil(log2(k + 1)) + 1 iterations (O(log k) per query, no (N, k) or (N, N) array).
    k and n may be traced; entries of s beyond n are never read.
    """
    v = s[p]
    a = jnp.maximum(p - (k - 1), 0)  # smallest window start containing p
    b = jnp.minimum(p, n - k)  # largest window start containing p

    def f(lo):
        return v - s[lo]

    def g(lo):
        return s[lo + k - 1] - v

    # smallest lo in [a, b] with g(lo) >= f(lo); b + 1 if none.
    def body(_, state):
        lo_, hi_ = state
        mid = (lo_ + hi_) // 2
        midc = jnp.minimum(mid, b)
        pred = jnp.where(mid > b, True, g(midc) >= f(midc))
        active = lo_ < hi_
        return jnp.where((~pred) & active, mid + 1, lo_), jnp.where(pred & active, mid, hi_)

    lo_, _ = jax.lax.fori_loop(0, steps, body, (a, b + 1))
    c1 = jnp.clip(lo_, a, b)
    c0 = jnp.clip(lo_ - 1, a, b)
    return jnp.minimum(jnp.maximum(f(c0), g(c0)), jnp.maximum(f(c1), g(c1)))


def knn_bandwidth(z, queries, k, n=None):
    """Mean over the query rows of the 1-D k-NN distance, for every column of z: shape (d',).

    The first ``n`` rows of z are data (default: all), the rest padding (sorted to the end
    as +inf and never read). Sorts one column at a time (``lax.map``), so memory stays O(N)
    whatever d'. With ``queries=None`` every valid row is a query.
    """
    n_pad = z.shape[0]
    if n is None:
        n = n_pad
    iota = jnp.arange(n_pad, dtype=jnp.int32)
    valid = iota < n
    steps = max(1, math.ceil(math.log2(n_pad + 1)) + 1)

    def per_column(col):
        col = jnp.where(valid, col, jnp.inf)
        s, order = jax.lax.sort((col, iota), num_keys=1)
        rank = jnp.zeros((n_pad,), jnp.int32).at[order].set(iota)
        if queries is None:
            p = jnp.where(valid, rank, 0)
            d = jax.vmap(lambda pi: _kth_nn_dist_sorted(s, pi, k, n, steps))(p)
            return jnp.sum(jnp.where(valid, d, 0.0)) / n
        d = jax.vmap(lambda pi: _kth_nn_dist_sorted(s, pi, k, n, steps))(rank[queries])
        return jnp.mean(d)

    return jax.lax.map(per_column, z.T)


def group_counts(cols):
    """Group id and group size of every row for the tuple of equal-length 1-D key arrays ``cols``.

    Sort-based: one multi-key ``lax.sort`` of (cols..., row index), run starts where any key
    changes, ids by cumulative sum, sizes by a segment sum; no hash tables.
    """
    n = cols[0].shape[0]
    iota = jnp.arange(n, dtype=jnp.int32)
    out = jax.lax.sort(tuple(cols) + (iota,), num_keys=len(cols))
    keys, order = out[:-1], out[-1]
    change = jnp.zeros((n - 1,), bool)
    for c in keys:
        change = change | (c[1:] != c[:-1])
    new = jnp.concatenate([jnp.ones((1,), bool), change])
    gid_sorted = jnp.cumsum(new.astype(jnp.int32)) - 1
    sizes = jax.ops.segment_sum(jnp.ones((n,), jnp.int32), gid_sorted, num_segments=n)
    gid = jnp.zeros((n,), jnp.int32).at[order].set(gid_sorted)
    cnt = jnp.zeros((n,), jnp.int32).at[order].set(sizes[gid_sorted])
    return gid, cnt


def _edge_single_hash(xw, yv, eps_x, eps_y, b_x, b_y, U, n):
    """One EDGE hash: I = sum_buckets N_ij clip(log2(N_ij N / (N_i M_j)), 0.001, U) / N.

    The bucket sum equals the mean over points of the clipped log-ratio of the point's
    own buckets, which is what is computed (no list of unique buckets needed). Padding
    rows (index >= n) get the code +inf in every coordinate, a bucket no data row can
    share, and are left out of the mean.
    """
    valid = jnp.arange(xw.shape[0]) < n
    hx = jnp.where(valid[:, None], jnp.floor((xw + b_x) / eps_x), jnp.inf)
    hy = jnp.where(valid[:, None], jnp.floor((yv + b_y) / eps_y), jnp.inf)
    gx, nx = group_counts(tuple(hx[:, i] for i in range(hx.shape[1])))
    gy, ny = group_counts(tuple(hy[:, i] for i in range(hy.shape[1])))
    _, nxy = group_counts((gx, gy))
    f = xw.dtype
    ratio = (
        jnp.log2(nxy.astype(f))
        + jnp.log2(jnp.asarray(n).astype(f))
        - jnp.log2(nx.astype(f))
        - jnp.log2(ny.astype(f))
    )
    return jnp.sum(jnp.where(valid, jnp.clip(ratio, 0.001, U), 0.0)) / n


def _edge_from_projected_impl(xw, yv, n, queries, ux, uy, kx, ky, scale_x, scale_y, U, *, eps_range, shift_scale):
    """EDGE on projected data (n valid rows, then padding): bandwidths, L hashes, median."""
    f = xw.dtype
    L = ux.shape[0]
    bw_x = knn_bandwidth(xw, queries, kx, n) + 1e-4
    bw_y = knn_bandwidth(yv, queries, ky, n) + 1e-4
    eps_x0 = bw_x * scale_x
    eps_y0 = bw_y * scale_y
    T = jnp.linspace(1.0, 1.0 + eps_range, L).astype(f) if L > 1 else jnp.ones((1,), f)

    def one(t, u_x, u_y):
        ex, ey = eps_x0 * t, eps_y0 * t
        return _edge_single_hash(xw, yv, ex, ey, shift_scale * u_x.astype(f) * ex, shift_scale * u_y.astype(f) * ey, U, n)

    values = jax.lax.map(lambda a: one(*a), (T, ux, uy))
    return dict(mi=jnp.median(values), values=values, eps_x=eps_x0, eps_y=eps_y0)


_STATIC = ("eps_range", "shift_scale")
edge_from_projected = jax.jit(_edge_from_projected_impl, static_argnames=_STATIC)


@partial(jax.jit, static_argnames=("n_pad",))
def project_pair(x, y, gx, gy, n, *, n_pad):
    """Both projections in one compiled call; outputs zero-padded to n_pad rows."""
    xw, fx = _project_inline(x, gx, n)
    yv, fy = _project_inline(y, gy, n)
    pad = ((0, n_pad - x.shape[0]), (0, 0))
    return jnp.pad(xw, pad), jnp.pad(yv, pad), fx & fy

