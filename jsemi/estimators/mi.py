"""Mutual-information estimators in bits: EDGE, KSG and a Gaussian (CCA) estimate.

Every function here returns **bits** (log base 2).

EDGE (Noshad, Zeng, Hero, ICASSP 2019) is the estimator the paper uses for its rho
values; :func:`edge_mi` reproduces the authors' script step by step (their
``mi_estimator.EDGE`` called with its final defaults: ``L_ensemble=1``,
``stochastic=True``, ``epsilon_vector='range'``, ``normalize_epsilon=False``,
``hashing='p-stable'``), compiled in JAX with sort-based collision counting.
KSG (Kraskov, Stoegbauer, Grassberger 2004, estimator 1) and the Gaussian
log-det / CCA estimate are independent second opinions; on high-dimensional
layers both are meant to run on a shared low-dimensional :func:`reduce`-tion.

When each estimator can be trusted (numbers measured with ``tests/test_mi.py``'s data and
settings; :mod:`jsemi.estimators.conditional` repeats them next to the null control):

- **EDGE, d <= 6 per variable** (hashed unprojected): rises monotonically with the
  dependence but is biased, up for weak and down for strong dependence. Correlated
  Gaussians, N = 10,000, d = 1: 0.03 / 0.20 / 0.47 / 1.06 / 1.84 bits for
  r = 0 / 0.3 / 0.6 / 0.9 / 0.99 (truths 0 / 0.07 / 0.32 / 1.20 / 2.83); d = 6: 0.68 at
  r = 0, 2.79 at r = 0.9 (truth 7.19), 4.37 at r = 0.99 (truth 16.95). An ordinal
  measure: use its excess over the null and its ordering, not its value.
- **EDGE, d > 6**: the two *independent* random projections (d -> floor(log2(N/10)))
  erase coordinate-wise dependence. 4,096-dim layers, 1,000 points per class,
  y = x + noise: 7.02 bits; y shuffled within the class: 7.00 bits (the null: 7.00 +- 0.001,
  so the visible dependence is 0.02 bits). KSG on a 4-dim PCA of the same data: 7.9 bits
  against a null of 0.0. Report EDGE values at these sizes only with their null.
- **KSG** (k = 3, estimator 1): bias within 3.3% of the truth for d <= 3 per side (joint
  dimension <= 6) at N = 10,000 for truths of 0.4 to 3.6 bits (mean of 3 samples); a
  single estimate scatters by 0.01-0.02 bits (1 sd), which dominates below ~0.4 bits
  (d = 1, r = 0.5, truth 0.21: +0.014 bits on average); biased *low* at d = 4 per side
  (-5.5% / -7.2% / -10.6% at r = 0.5 / 0.7 / 0.9, truths 0.83 / 1.94 / 4.79 bits; the same
  with an independent scipy k-d tree implementation); saturates below log2 N (truth 22.6
  bits, N = 2,000: estimate < 11). Meant for a shared reduction to <= 4 dims per layer.
- **Gaussian**: within 2% of the truth on Gaussians (d <= 8, N = 20,000); the plug-in bias
  of independent data is about dx*dy / (2 N ln 2) bits; on other data it measures the
  linearly-carried dependence only. Needs N >> dx + dy.
- Independent data: every estimator's excess over its within-class permutation null is
  near 0 (|excess| <= 0.038 EDGE, 0.046 KSG, 0.015 Gaussian over 8 seeds, 4 classes x 400,
  8-dim layers).
"""

from __future__ import annotations

import math
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "EdgeRandomness",
    "edge_dims",
    "edge_k",
    "edge_randomness",
    "edge_mi",
    "ksg_mi",
    "gaussian_mi",
    "reduce",
    "Reduction",
    "fit_reduction",
]

_LN2 = math.log(2.0)
_HIGHEST = jax.lax.Precision.HIGHEST
#: rows per chunk when a host (NumPy) array is streamed to the device.
_ROW_CHUNK_BYTES = 256 * 2**20
#: EDGE pads raw rows to a size bucket only below this many elements (N * (dx + dy));
#: above it, padding would copy the data, so only the small projections are padded.
_PAD_RAW_MAX = 1 << 22


# ----------------------------------------------------------------------------------------------
# small helpers
# ----------------------------------------------------------------------------------------------


def _float_dtype(x):
    """Float dtype used for ``x``: its own float dtype, float32 for ints (float64 needs x64)."""
    dt = np.dtype(getattr(x, "dtype", np.float32))
    if not np.issubdtype(dt, np.floating):
        dt = np.dtype(np.float32)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        dt = np.dtype(np.float32)
    if dt in (np.dtype(np.float16),) or str(dt) == "bfloat16":
        dt = np.dtype(np.float32)
    return dt


def _as_2d(x, name: str):
    """Returns ``x`` as an (N, d) array (rank 1 -> one column, rank > 2 -> flattened)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError(f"{name} must have a leading sample axis, got a scalar")
    if len(shape) == 1:
        return x.reshape(-1, 1)
    if len(shape) > 2:
        return x.reshape(shape[0], -1)
    return x


def _check_pair(x, y):
    x = _as_2d(x, "x")
    y = _as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {x.shape[0]}")
    if x.shape[1] < 1 or y.shape[1] < 1:
        raise ValueError(f"x and y need at least one feature, got shapes {x.shape} and {y.shape}")
    return x, y


def _is_host(x) -> bool:
    return isinstance(x, np.ndarray)


def _row_chunks(x):
    """Row slices covering a host array in pieces of about ``_ROW_CHUNK_BYTES``."""
    n = x.shape[0]
    row_bytes = max(1, int(np.prod(x.shape[1:])) * 4)
    step = max(1, _ROW_CHUNK_BYTES // row_bytes)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def _to_device(x, dtype):
    """x as a device array of ``dtype``.

    Host arrays go through ``jax.device_put`` (on the CPU backend it aliases a contiguous
    NumPy buffer instead of copying; ``jnp.asarray`` took ~20x longer for a 16 MB block).
    """
    if isinstance(x, np.ndarray):
        dt = np.dtype(dtype)
        if x.dtype != dt:
            x = x.astype(dt)
        return jax.device_put(np.ascontiguousarray(x))
    return jnp.asarray(x, dtype=dtype)


# ----------------------------------------------------------------------------------------------
# EDGE
# ----------------------------------------------------------------------------------------------


class EdgeRandomness(NamedTuple):
    """Every random draw EDGE makes, so a caller (or a test) can fix them.

    Attributes:
      gx: (dx, d'x) standard-normal matrix for x's p-stable projection, or None when x
        is hashed unprojected. The data-dependent column scale 1 / (std * sqrt(dx)) is
        applied inside :func:`edge_mi`, so this is the raw N(0, 1) draw.
      gy: same for y.
      queries: (r,) integer row indices whose k-NN distances are averaged to set the
        bandwidths (the same rows for every projected column, as in the authors'
        script, which re-seeds before each column), or None to average over all rows.
      ux: (L, d'x) uniform [0, 1) draws; hash l shifts x by ``shift_scale * ux[l] * eps_l``.
      uy: (L, d'y) same for y.
    """

    gx: jax.Array | np.ndarray | None
    gy: jax.Array | np.ndarray | None
    queries: jax.Array | np.ndarray | None
    ux: jax.Array | np.ndarray
    uy: jax.Array | np.ndarray


_PROJECT_MODES = ("joint", "each", "always", "never")


def edge_dims(n: int, dx: int, dy: int, project: str = "joint") -> tuple[int, int, bool, bool]:
    """Hash dimensions of EDGE: ``(d'x, d'y, project_x, project_y)``.

    A projected variable of dimension d gets d' = min(d, floor(log2(n / 10))) (at least 1;
    the authors' ``gen_W`` with kx = 2, rx = 10). ``project`` decides who is projected:

    - ``"joint"`` (default, the authors' rule): both are hashed unprojected ("floor"
      hashing) when dx <= 6 **and** dy <= 6; otherwise both are projected, even a
      variable with d <= 6 (for n >= 640 that is a random mixing with d' = d).
    - ``"each"``: each variable with d <= 6 is hashed unprojected, the other projected.
    - ``"always"`` / ``"never"``: project both / neither.
    """
    if project not in _PROJECT_MODES:
        raise ValueError(f"project must be one of {_PROJECT_MODES}, got {project!r}")
    if project == "joint":
        px = py = not (dx <= 6 and dy <= 6)
    elif project == "each":
        px, py = dx > 6, dy > 6
    else:
        px = py = project == "always"
    shrink = max(1, math.floor(math.log2(n / 10.0))) if n > 0 else 1
    dpx = min(dx, shrink) if px else dx
    dpy = min(dy, shrink) if py else dy
    return dpx, dpy, px, py


def edge_k(n: int, dp: int) -> int:
    """Neighbour count of the bandwidth rule (authors' ``find_knn``), clamped to [1, n].

    k = floor(0.43 * n^(2/3 + 0.17 * dp / (dp + 1)) * exp(-1 / max(10000, dp^4))), with
    dp the hashed (projected) dimension of the variable. The k-th neighbour counts the
    query point itself (scikit-learn's ``kneighbors`` on points of the fitted set).
    """
    k = math.floor(0.43 * n ** (2.0 / 3.0 + 0.17 * (dp / (dp + 1.0))) * math.exp(-1.0 / max(10000, dp**4)))
    return int(min(max(k, 1), n))


def edge_randomness(
    key: jax.Array,
    n: int,
    dx: int,
    dy: int,
    *,
    L: int = 1,
    knn_queries: int | None = None,
    project: str = "joint",
) -> EdgeRandomness:
    """Draws every random quantity of one EDGE call from ``key`` (see :class:`EdgeRandomness`)."""
    return _edge_randomness(key, n, dx, dy, L=L, knn_queries=knn_queries, project=project)


def _edge_randomness(key, n, dx, dy, *, L=1, knn_queries=None, project="joint", fold=None) -> EdgeRandomness:
    """:func:`edge_randomness` of ``fold_in(key, fold)`` when ``fold`` is given, the fold-in
    done inside the compiled draw (an eager ``fold_in`` costs more than all the draws)."""
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    dpx, dpy, px, py = edge_dims(n, dx, dy, project)
    if knn_queries is not None and knn_queries < 1:
        raise ValueError(f"knn_queries must be >= 1 or None, got {knn_queries}")
    gx, gy, queries, ux, uy = _draw_edge(
        key, np.int32(n), None if fold is None else np.uint32(fold),
        dx=dx, dy=dy, dpx=dpx, dpy=dpy, px=px, py=py, L=L, nq=knn_queries,
    )
    return EdgeRandomness(gx, gy, queries, ux, uy)


@partial(jax.jit, static_argnames=("dx", "dy", "dpx", "dpy", "px", "py", "L", "nq"))
def _draw_edge(key, n, fold, *, dx, dy, dpx, dpy, px, py, L, nq):
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
    if not _is_host(x):
        return _column_moments_dev(_to_device(x, dtype))
    chunks = _row_chunks(x)
    if len(chunks) == 1:
        return _column_moments_dev(_to_device(x, dtype))
    n = x.shape[0]
    total, finite = None, True
    for sl in chunks:
        s, f = _chunk_sums(_to_device(x[sl], dtype))
        total = s if total is None else total + s
        finite = finite & f
    mean = total / n
    m2 = None
    for sl in chunks:
        s = _chunk_m2(_to_device(x[sl], dtype), mean)
        m2 = s if m2 is None else m2 + s
    return mean, jnp.sqrt(m2 / n), finite


@jax.jit
def _projection_matrix(g, std):
    """W = g / (std * sqrt(d)) row-wise; columns with std < 1e-4 use scale 1 (authors' guard)."""
    d = g.shape[0]
    std = jnp.where(std < 1e-4, jnp.ones_like(std), std)
    return g.astype(std.dtype) / (std[:, None] * jnp.sqrt(jnp.asarray(d, std.dtype)))


@jax.jit
def _matmul(x, w):
    return jnp.dot(x, w, precision=_HIGHEST)


def _project_rows(x, w, dtype):
    """x @ w, streaming host arrays in row chunks."""
    if not _is_host(x):
        return _matmul(_to_device(x, dtype), w)
    chunks = _row_chunks(x)
    if len(chunks) == 1:
        return _matmul(_to_device(x, dtype), w)
    return jnp.concatenate([_matmul(_to_device(x[sl], dtype), w) for sl in chunks], axis=0)


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
    return jnp.dot(x, w, precision=_HIGHEST), jnp.all(jnp.isfinite(m2))


def _edge_project(x, g, dtype):
    """Streaming version of :func:`_project_inline` for host arrays larger than one chunk.

    Returns (xw, finite) as device values (no host synchronisation).
    """
    if g is None:
        xd = _to_device(x, dtype)
        return xd, jnp.all(jnp.isfinite(xd))
    _, std, finite = _column_moments(x, dtype)
    w = _projection_matrix(jnp.asarray(g), std)
    return _project_rows(x, w, dtype), finite


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


def _knn_bandwidth(z, queries, k, n=None):
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


def _group_counts(cols):
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
    gx, nx = _group_counts(tuple(hx[:, i] for i in range(hx.shape[1])))
    gy, ny = _group_counts(tuple(hy[:, i] for i in range(hy.shape[1])))
    _, nxy = _group_counts((gx, gy))
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
    bw_x = _knn_bandwidth(xw, queries, kx, n) + 1e-4
    bw_y = _knn_bandwidth(yv, queries, ky, n) + 1e-4
    eps_x0 = bw_x * scale_x
    eps_y0 = bw_y * scale_y
    T = jnp.linspace(1.0, 1.0 + eps_range, L).astype(f) if L > 1 else jnp.ones((1,), f)

    def one(t, u_x, u_y):
        ex, ey = eps_x0 * t, eps_y0 * t
        return _edge_single_hash(xw, yv, ex, ey, shift_scale * u_x.astype(f) * ex, shift_scale * u_y.astype(f) * ey, U, n)

    values = jax.lax.map(lambda a: one(*a), (T, ux, uy))
    return dict(mi=jnp.median(values), values=values, eps_x=eps_x0, eps_y=eps_y0)


_STATIC = ("eps_range", "shift_scale")
_edge_from_projected = jax.jit(_edge_from_projected_impl, static_argnames=_STATIC)


@partial(jax.jit, static_argnames=("n_pad",))
def _project_pair(x, y, gx, gy, n, *, n_pad):
    """Both projections in one compiled call; outputs zero-padded to n_pad rows."""
    xw, fx = _project_inline(x, gx, n)
    yv, fy = _project_inline(y, gy, n)
    pad = ((0, n_pad - x.shape[0]), (0, 0))
    return jnp.pad(xw, pad), jnp.pad(yv, pad), fx & fy


def _bucket(n: int) -> int:
    """Padded row count for n rows: n rounded up to a multiple of max(16, 2^(floor(log2 n) - 2))
    (<= 25% padding above 64 rows). Compiled EDGE/KSG code depends on the padded size only,
    so classes of different sizes share one compilation."""
    q = max(16, 1 << max(0, n.bit_length() - 3))
    return -(-n // q) * q


def _pad_rows(z, n_pad):
    """z (n, d) padded with zero rows to (n_pad, d); host arrays are padded in NumPy (no
    per-shape compilation), device arrays with ``jnp.pad``."""
    n = z.shape[0]
    if n == n_pad:
        return z
    if isinstance(z, np.ndarray):
        out = np.zeros((n_pad,) + z.shape[1:], z.dtype)
        out[:n] = z
        return out
    return jnp.pad(z, ((0, n_pad - n),) + ((0, 0),) * (z.ndim - 1))


def _edge_scale(d: int, dp: int, gamma: float) -> float:
    """18 d' / max(1 + ln d, 1) * gamma: the authors' bandwidth factor (d = unprojected dim)."""
    return 18.0 * dp / max(1.0 + math.log(d), 1.0) * gamma


def edge_mi(
    x,
    y,
    key: jax.Array | None = None,
    *,
    U: float = 10.0,
    gamma: float = 0.4,
    L: int = 1,
    knn_queries: int | None = None,
    eps_range: float = 0.1,
    shift_scale: float = 0.1,
    project: str = "joint",
    randomness: EdgeRandomness | None = None,
    return_details: bool = False,
):
    """EDGE mutual-information estimate I(x; y) in **bits**, as in the paper's authors' script.

    Args:
      x: (N, dx) samples (rank 1 -> one feature, rank > 2 -> flattened per sample).
        NumPy arrays are streamed to the device in row chunks (memory stays bounded).
      y: (N, dy) samples, same N.
      key: PRNG key for the projections, bandwidth query rows and shifts; not needed when
        ``randomness`` is given.
      U: cap of each bucket's log-ratio (bits), the MI upper bound of assumption A1.
      gamma: smoothness factor on the bandwidths (authors: ``gamma=[1, 1]`` times 0.4).
      L: number of hashes in the median ensemble (authors' final setting: 1).
      knn_queries: rows whose k-NN distances are averaged for the bandwidth. ``None``
        (default) uses every row: the exact mean the authors subsample, deterministic and
        invariant to reordering the samples; 500 reproduces their script (500 rows drawn
        with replacement).
      eps_range: hash l uses bandwidth eps * T_l with T = linspace(1, 1 + eps_range, L)
        (authors' ``epsilon_vector='range'``, ``eps_range_factor=0.1``; T = 1 for L = 1).
      shift_scale: the shift of hash l is b = shift_scale * u * eps_l with u ~ U[0, 1)^d'
        (authors' ``stochastic=True`` branch, f = 0.1).
      project: which variables get the random projection, see :func:`edge_dims`.
      randomness: fixed draws (see :func:`edge_randomness`); overrides ``key``.
      return_details: also return the hash dimensions, k's, bandwidths and per-hash values.

    Algorithm (every choice follows the authors' ``mi_estimator.EDGE`` unless noted):

    1. Projection (``gen_W``): for a projected variable, W = G / (std * sqrt(d)) with G a
       (d, d') standard-normal draw and std the per-feature population std (ddof 0;
       stds below 1e-4 replaced by 1); the variable becomes x @ W. x and y get
       independent draws. Done in float32 (float64 under ``jax_enable_x64``), matmul at
       ``Precision.HIGHEST``; the two moments in one pass over x, shifted by its first row
       (so E[z^2] - E[z]^2 does not cancel).
    2. Bandwidth (``find_knn``/``gen_eps``): per projected column, the mean over query rows
       of the distance to the k-th nearest value (the row itself counts as the first),
       k = :func:`edge_k` (n, d'), plus 1e-4; computed from one sort of the column (a 1-D
       k-NN is a window of the sorted values) instead of a k-d tree. Then
       eps = that * 18 d' / max(1 + ln d, 1) * gamma.
    3. Hash l: floor((x W + b) / eps_l) per column; N_i, M_j, N_ij are the sizes of the x,
       y and joint buckets of each point, counted by sorting (no dictionaries).
    4. I_l = sum over joint buckets of N_ij * clip(log2(N_ij N / (N_i M_j)), 0.001, U) / N;
       the result is the median of I_1..I_L.

    Not reproduced: the authors' ``normalize_epsilon`` second pass, ``'optimal_weights'``
    (cvxpy) and TSNE hashing, all off in their final call.

    Compilation: rows are zero-padded to a size bucket (N rounded up by at most 25%) and
    masked exactly, with N and k passed as traced values, so samples (classes) of similar
    sizes share one compiled program; the result equals the unpadded computation.

    Returns:
      The estimate as a Python float (bits); with ``return_details`` a dict with keys
      ``mi``, ``values`` (per hash), ``eps_x``, ``eps_y``, ``dims``, ``k``, ``projected``.
    """
    x, y = _check_pair(x, y)
    n, dx = x.shape
    dy = y.shape[1]
    if U <= 0.001:
        raise ValueError(f"U must exceed the 0.001 floor, got {U}")
    if gamma <= 0:
        raise ValueError(f"gamma must be > 0, got {gamma}")
    dpx, dpy, px, py = edge_dims(n, dx, dy, project)
    if randomness is None:
        if key is None:
            raise ValueError("edge_mi needs a PRNG key (or explicit randomness=)")
        randomness = edge_randomness(key, n, dx, dy, L=L, knn_queries=knn_queries, project=project)
    _check_randomness(randomness, n, dx, dy, dpx, dpy, px, py)
    res, _, _, finite = _edge_run(x, y, randomness, U=U, gamma=gamma, eps_range=eps_range, shift_scale=shift_scale)
    if not bool(finite):
        raise ValueError("x and y must be finite (found NaN or inf)")
    out = _edge_finalize(res, n, dx, dy, randomness, gamma)
    if return_details:
        return out
    return out["mi"]


def _check_randomness(r: EdgeRandomness, n, dx, dy, dpx, dpy, px, py):
    for name, g, d, dp, proj in (("gx", r.gx, dx, dpx, px), ("gy", r.gy, dy, dpy, py)):
        if proj and (g is None or tuple(g.shape) != (d, dp)):
            raise ValueError(f"randomness.{name} must have shape {(d, dp)}, got {None if g is None else g.shape}")
        if not proj and g is not None:
            raise ValueError(f"randomness.{name} must be None: this variable is hashed unprojected")
    ux, uy = np.shape(r.ux), np.shape(r.uy)
    if len(ux) != 2 or ux[1] != dpx or len(uy) != 2 or uy[1] != dpy or ux[0] != uy[0] or ux[0] < 1:
        raise ValueError(f"randomness.ux/uy must have shapes (L, {dpx}) and (L, {dpy}), got {ux} and {uy}")
    if r.queries is not None:
        q = np.asarray(r.queries)
        if q.ndim != 1 or q.size == 0 or q.min() < 0 or q.max() >= n:
            raise ValueError(f"randomness.queries must be a non-empty 1-D array of row indices in [0, {n})")


def _edge_args(n, dx, dy, dpx, dpy, randomness: EdgeRandomness, *, U, gamma, eps_range, shift_scale):
    """Dynamic (traced) and static arguments of the compiled EDGE functions."""
    q = randomness.queries
    if q is not None and np.dtype(q.dtype) != np.int32:
        q = np.asarray(q, np.int32)
    f32 = np.float32
    dyn = (  # NumPy scalars: passed to the compiled call without eager device ops
        np.int32(n), q, randomness.ux, randomness.uy, np.int32(edge_k(n, dpx)), np.int32(edge_k(n, dpy)),
        f32(_edge_scale(dx, dpx, gamma)), f32(_edge_scale(dy, dpy, gamma)), f32(U),
    )
    return dyn, dict(eps_range=float(eps_range), shift_scale=float(shift_scale))


def _edge_run(x, y, randomness: EdgeRandomness, *, U, gamma, eps_range, shift_scale):
    """Dispatches EDGE on (N, d) data; returns device values (res, xw, yv, finite), no sync.

    Rows are zero-padded to :func:`_bucket` (N) and masked, so one compilation serves every
    N of a bucket. Device arrays and host arrays of at most one row chunk are projected in
    one compiled call; bigger host arrays in streamed row chunks. Steps 2-4 are a second
    compiled call, the same one the permutation null reuses (one compilation, not two).
    The returned projections keep the padding rows (``xw[:N]`` is the data).
    """
    n, dx = x.shape
    dy = y.shape[1]
    n_pad = _bucket(n)
    dpx = dx if randomness.gx is None else randomness.gx.shape[1]
    dpy = dy if randomness.gy is None else randomness.gy.shape[1]
    dyn, static = _edge_args(n, dx, dy, dpx, dpy, randomness, U=U, gamma=gamma, eps_range=eps_range, shift_scale=shift_scale)
    dtype = np.promote_types(_float_dtype(x), _float_dtype(y))
    big = any(_is_host(v) and len(_row_chunks(v)) > 1 for v in (x, y))
    if not big:
        gx = None if randomness.gx is None else jnp.asarray(randomness.gx)
        gy = None if randomness.gy is None else jnp.asarray(randomness.gy)
        nn = np.int32(n)
        if n * (dx + dy) <= _PAD_RAW_MAX:  # small: pad the raw rows, one compile per bucket
            xd = _to_device(_pad_rows(x, n_pad), dtype)
            yd = _to_device(_pad_rows(y, n_pad), dtype)
        else:  # large: no copy of the raw data; project unpadded (a cheap compile per N)
            xd, yd = _to_device(x, dtype), _to_device(y, dtype)
        xw, yv, fin = _project_pair(xd, yd, gx, gy, nn, n_pad=n_pad)
    else:
        xw, fx = _edge_project(x, randomness.gx, dtype)
        yv, fy = _edge_project(y, randomness.gy, dtype)
        xw, yv, fin = _pad_rows(xw, n_pad), _pad_rows(yv, n_pad), fx & fy
    return _edge_from_projected(xw, yv, *dyn, **static), xw, yv, fin


def _edge_core(xw, yv, randomness: EdgeRandomness, n, dx, dy, *, U, gamma, eps_range, shift_scale):
    """EDGE steps 2-4 from (padded) projected data with n valid rows; device result, no sync."""
    dyn, static = _edge_args(
        n, dx, dy, xw.shape[1], yv.shape[1], randomness, U=U, gamma=gamma, eps_range=eps_range, shift_scale=shift_scale
    )
    return _edge_from_projected(xw, yv, *dyn, **static)


def _edge_finalize(res, n, dx, dy, randomness: EdgeRandomness, gamma) -> dict:
    """Host-side details dict from a device result (synchronises)."""
    dpx = dx if randomness.gx is None else randomness.gx.shape[1]
    dpy = dy if randomness.gy is None else randomness.gy.shape[1]
    return dict(
        mi=float(res["mi"]),
        values=np.asarray(res["values"], np.float64),
        eps_x=np.asarray(res["eps_x"], np.float64),
        eps_y=np.asarray(res["eps_y"], np.float64),
        dims=(dpx, dpy),
        k=(edge_k(n, dpx), edge_k(n, dpy)),
        projected=(randomness.gx is not None, randomness.gy is not None),
    )


# ----------------------------------------------------------------------------------------------
# KSG
# ----------------------------------------------------------------------------------------------


def _ksg_chunk(n: int) -> int:
    """Query rows per chunk: keeps each (chunk, N) distance block near 2^22 elements."""
    return int(max(1, min(n, (1 << 22) // max(1, n))))


def _maxnorm_dist(q, z):
    """(B, N) max-norm distances between query rows q (B, d) and rows z (N, d).

    One coordinate at a time (unrolled up to 32 coordinates, a ``fori_loop`` beyond), which
    XLA fuses into (B, N) elementwise maxima; broadcasting a (B, N, d) block and reducing
    over d was 10x slower on CPU.
    """
    d = z.shape[1]
    zt = z.T
    if d <= 32:
        out = jnp.abs(q[:, 0:1] - zt[0][None, :])
        for c in range(1, d):
            out = jnp.maximum(out, jnp.abs(q[:, c : c + 1] - zt[c][None, :]))
        return out

    def body(c, acc):
        qc = jax.lax.dynamic_slice_in_dim(q, c, 1, axis=1)
        return jnp.maximum(acc, jnp.abs(qc - zt[c][None, :]))

    return jax.lax.fori_loop(0, d, body, jnp.zeros((q.shape[0], z.shape[0]), z.dtype))


def _kth_smallest_rows(z, k: int):
    """k-th smallest value of every row of z (ties counted with multiplicity).

    For small k, k passes of "next distinct value above m, and how many are <= it" are
    ~15x faster on XLA:CPU than ``lax.top_k`` (which sorts there); ``top_k`` for k > 32.
    """
    if k > 32:
        return -jax.lax.top_k(-z, k)[0][:, k - 1]

    def body(_, state):
        m, found = state
        nxt = jnp.min(jnp.where(z > m[:, None], z, jnp.inf), axis=1)
        cnt = jnp.sum(z <= nxt[:, None], axis=1)
        return jnp.where(found, m, nxt), found | (cnt >= k)

    m0 = jnp.full((z.shape[0],), -jnp.inf, z.dtype)
    return jax.lax.fori_loop(0, k, body, (m0, jnp.zeros((z.shape[0],), bool)))[0]


def _masked_standardize(z, n):
    """Columns to zero mean and unit (population) std over the first n rows; padding -> 0."""
    valid = (jnp.arange(z.shape[0]) < n)[:, None]
    z = jnp.where(valid, z, 0.0)
    mu = jnp.sum(z, axis=0) / n
    sd = jnp.sqrt(jnp.sum(jnp.where(valid, jnp.square(z - mu), 0.0), axis=0) / n)
    return jnp.where(valid, (z - mu) / jnp.where(sd > 0, sd, 1.0), 0.0)


@partial(jax.jit, static_argnames=("standardize",))
def _ksg_prepare(x, y, n, jitter, kx, ky, *, standardize: bool):
    """Finiteness flag, masked standardisation and jitter of padded KSG inputs."""
    valid = (jnp.arange(x.shape[0]) < n)[:, None]
    finite = jnp.all(jnp.isfinite(x)) & jnp.all(jnp.isfinite(y))
    if standardize:
        x, y = _masked_standardize(x, n), _masked_standardize(y, n)
    x = x + jnp.where(valid, jitter * jax.random.normal(kx, x.shape, x.dtype), 0.0)
    y = y + jnp.where(valid, jitter * jax.random.normal(ky, y.shape, y.dtype), 0.0)
    return x, y, finite


@partial(jax.jit, static_argnames=("k", "batch"))
def _ksg_nats(x, y, n, *, k: int, batch: int):
    """Kraskov estimator 1 in nats: psi(k) + psi(N) - < psi(n_x + 1) + psi(n_y + 1) >.

    The first n rows (traced) are data, the rest padding: padding columns are at infinite
    distance and padding query rows are left out of the mean, so one compilation serves
    every n of a :func:`_bucket`. Query rows are processed ``batch`` at a time (``lax.map``
    over chunks).
    """
    n_pad = x.shape[0]
    nchunks = -(-n_pad // batch)
    qidx = jnp.arange(nchunks * batch, dtype=jnp.int32)
    valid = qidx < n
    qidx = jnp.where(valid, qidx, 0).reshape(nchunks, batch)
    cols = jnp.arange(n_pad, dtype=jnp.int32)
    col_pad = cols >= n
    dg = jax.scipy.special.digamma

    def chunk(iq):
        self_ = (iq[:, None] == cols[None, :]) | col_pad[None, :]
        dx = jnp.where(self_, jnp.inf, _maxnorm_dist(x[iq], x))
        dy = jnp.where(self_, jnp.inf, _maxnorm_dist(y[iq], y))
        dz = jnp.maximum(dx, dy)
        eps = _kth_smallest_rows(dz, k)  # k-th neighbour in the joint space (max-norm)
        nx = jnp.sum(dx < eps[:, None], axis=1)
        ny = jnp.sum(dy < eps[:, None], axis=1)
        return dg(nx + 1.0) + dg(ny + 1.0)

    terms = jax.lax.map(chunk, qidx).reshape(-1)
    f = x.dtype
    mean_terms = jnp.sum(jnp.where(valid, terms, 0.0)) / n
    return dg(jnp.asarray(k, f)) + dg(jnp.asarray(n).astype(f)) - mean_terms


def ksg_mi(
    x,
    y,
    *,
    k: int = 3,
    standardize: bool = True,
    jitter: float = 0.0,
    key: jax.Array | None = None,
    batch: int | None = None,
) -> float:
    """KSG (Kraskov et al. 2004, estimator 1) mutual-information estimate in **bits**.

    I = psi(k) + psi(N) - mean_i [psi(n_x(i) + 1) + psi(n_y(i) + 1)], where eps_i is the
    max-norm distance from (x_i, y_i) to its k-th nearest neighbour in the joint space
    (self excluded) and n_x(i) counts the j != i with ||x_j - x_i||_max < eps_i (strictly),
    likewise n_y. Converted to bits by dividing by ln 2.

    Args:
      x, y: (N, dx), (N, dy) samples. Meant for low dimensions (use :func:`reduce`);
        cost is O(N^2 (dx + dy)), memory O(batch * N).
      k: neighbour count (3 is Kraskov's usual choice; larger k, lower variance, more bias).
      standardize: scale each column to zero mean, unit variance first (the max-norm
        mixes the coordinates, so their scales matter for the finite-sample estimate).
      jitter: std of Gaussian noise added after standardising (Kraskov's remedy for tied
        values, e.g. exact ReLU zeros); needs ``key`` when > 0.
      batch: query rows processed together (default keeps each (batch, N) block near 2^22
        elements).

    Distances are computed a chunk of query rows at a time (``lax.map`` over chunks), never
    as an (N, N) matrix; rows are zero-padded to :func:`_bucket` (N) and masked, so samples
    of similar sizes share one compilation. Not differentiable (counts).
    """
    x, y = _check_pair(x, y)
    n = x.shape[0]
    if not (1 <= k < n):
        raise ValueError(f"k must satisfy 1 <= k < N = {n}, got {k}")
    dtype = np.promote_types(_float_dtype(x), _float_dtype(y))
    if jitter > 0 and key is None:
        raise ValueError("jitter > 0 needs a PRNG key")
    n_pad = _bucket(n)
    if batch is None:
        batch = _ksg_chunk(n_pad)
    xd = _to_device(_pad_rows(x, n_pad), dtype)
    yd = _to_device(_pad_rows(y, n_pad), dtype)
    kx, ky = jax.random.split(jax.random.key(0) if key is None else key)
    nn = jnp.asarray(n, jnp.int32)
    xd, yd, finite = _ksg_prepare(xd, yd, nn, float(jitter), kx, ky, standardize=bool(standardize))
    if not bool(finite):
        raise ValueError("x and y must be finite (found NaN or inf)")
    return float(_ksg_nats(xd, yd, nn, k=int(k), batch=int(batch))) / _LN2


# ----------------------------------------------------------------------------------------------
# Gaussian (log-det / CCA)
# ----------------------------------------------------------------------------------------------


@jax.jit
def _joint_cov(x, y):
    n = x.shape[0]
    xc = x - jnp.mean(x, axis=0)
    yc = y - jnp.mean(y, axis=0)
    den = n - 1
    cxx = jnp.dot(xc.T, xc, precision=_HIGHEST) / den
    cyy = jnp.dot(yc.T, yc, precision=_HIGHEST) / den
    cxy = jnp.dot(xc.T, yc, precision=_HIGHEST) / den
    return cxx, cyy, cxy, jnp.all(jnp.isfinite(cxy))


def _inv_sqrt_psd(c, ridge):
    c = np.asarray(c, np.float64)
    d = c.shape[0]
    tr = float(np.trace(c)) / max(d, 1)
    c = c + ridge * (tr if tr > 0 else 1.0) * np.eye(d)
    w, v = np.linalg.eigh(c)
    w = np.maximum(w, 1e-300)
    return (v / np.sqrt(w)) @ v.T


def gaussian_mi(x, y, *, ridge: float = 1e-6, max_rho2: float = 1.0 - 1e-9, return_correlations: bool = False):
    """Gaussian mutual information in **bits** from the sample covariance.

    I = 0.5 log2(det Cxx det Cyy / det C) = -0.5 sum_i log2(1 - rho_i^2) with rho_i the
    canonical correlations (singular values of Cxx^{-1/2} Cxy Cyy^{-1/2}). Exact MI for
    jointly Gaussian data; for other data it is the MI of the Gaussian with the same
    covariance (the information carried by linear correlations). Covariances are
    computed in JAX; the small whitening/SVD in float64 NumPy. ``ridge`` adds
    ridge * mean eigenvalue to Cxx and Cyy; rho^2 is capped at ``max_rho2`` so an exact
    linear relation gives a large finite value (~15 bits per pair) instead of inf.
    The plug-in estimate of independent data is biased up by about dx*dy/(2 N ln 2) bits;
    it needs N >> dx + dy.
    """
    x, y = _check_pair(x, y)
    dtype = np.promote_types(_float_dtype(x), _float_dtype(y))
    cxx, cyy, cxy, finite = _joint_cov(_to_device(x, dtype), _to_device(y, dtype))
    if not bool(finite):
        raise ValueError("x and y must be finite (found NaN or inf)")
    wx = _inv_sqrt_psd(cxx, ridge)
    wy = _inv_sqrt_psd(cyy, ridge)
    m = wx @ np.asarray(cxy, np.float64) @ wy
    rho = np.linalg.svd(m, compute_uv=False)
    rho2 = np.minimum(rho**2, max_rho2)
    mi = float(-0.5 * np.sum(np.log2(1.0 - rho2)))
    if return_correlations:
        return mi, rho
    return mi


# ----------------------------------------------------------------------------------------------
# shared reductions
# ----------------------------------------------------------------------------------------------


class Reduction(NamedTuple):
    """A fitted linear map ``(z - mean) @ matrix``, then per-output scaling by ``scale``."""

    mean: jax.Array
    matrix: jax.Array | None  # None = identity (input already small enough)
    scale: jax.Array

    def apply(self, z):
        """Applies the reduction to (N, d) data (host arrays are streamed in row chunks)."""
        z = _as_2d(z, "z")
        dtype = _float_dtype(z)
        if self.matrix is None:
            return (_to_device(z, dtype) - self.mean) / self.scale
        out = _project_rows(z, self.matrix, dtype) - jnp.dot(self.mean, self.matrix, precision=_HIGHEST)
        return out / self.scale


@partial(jax.jit, static_argnames=("num_classes",))
def _class_sums(x, labels, *, num_classes):
    return jax.ops.segment_sum(x, labels, num_segments=num_classes), jnp.bincount(labels, length=num_classes)


def _class_means(x, labels, num_classes, dtype):
    """(C, d) per-class means (a single class when labels is None), streamed for host arrays."""
    n = x.shape[0]
    lab = jnp.zeros((n,), jnp.int32) if labels is None else jnp.asarray(labels, jnp.int32)
    C = 1 if labels is None else num_classes
    if _is_host(x) and len(_row_chunks(x)) > 1:
        sums, counts = None, None
        for sl in _row_chunks(x):
            s, c = _class_sums(_to_device(x[sl], dtype), lab[sl], num_classes=C)
            sums = s if sums is None else sums + s
            counts = c if counts is None else counts + c
    else:
        sums, counts = _class_sums(_to_device(x, dtype), lab, num_classes=C)
    return sums / jnp.maximum(counts, 1)[:, None].astype(sums.dtype), lab


@jax.jit
def _centered_matmul(x, lab, means, w):
    """(x - means[lab]) @ w without forming the centered x."""
    return jnp.dot(x, w, precision=_HIGHEST) - jnp.dot(means, w, precision=_HIGHEST)[lab]


@jax.jit
def _centered_rmatmul(x, lab, means, u):
    """(x - means[lab])^T @ u."""
    su = jax.ops.segment_sum(u, lab, num_segments=means.shape[0])
    return jnp.dot(x.T, u, precision=_HIGHEST) - jnp.dot(means.T, su, precision=_HIGHEST)


def _cmatmul(x, lab, means, w, dtype):
    if _is_host(x) and len(_row_chunks(x)) > 1:
        return jnp.concatenate(
            [_centered_matmul(_to_device(x[sl], dtype), lab[sl], means, w) for sl in _row_chunks(x)], axis=0
        )
    return _centered_matmul(_to_device(x, dtype), lab, means, w)


def _crmatmul(x, lab, means, u, dtype):
    if _is_host(x) and len(_row_chunks(x)) > 1:
        acc = None
        for sl in _row_chunks(x):
            part = _centered_rmatmul(_to_device(x[sl], dtype), lab[sl], means, u[sl])
            acc = part if acc is None else acc + part
        return acc
    return _centered_rmatmul(_to_device(x, dtype), lab, means, u)


def _pca_components(x, lab, means, dim: int, key, dtype, *, exact_max_dim: int = 2048, power_iters: int = 4):
    """Top-``dim`` principal directions and variances of the (class-)centered data.

    Exact (eigh of the d x d scatter) for d <= ``exact_max_dim``; otherwise randomized
    subspace iteration (Halko et al. 2011) with ``dim + 10`` columns and ``power_iters``
    QR-stabilised power steps, using only products with the data (never its centered copy).
    """
    n, d = x.shape
    if d <= exact_max_dim:
        eye = jnp.eye(d, dtype=dtype)
        scatter = _crmatmul(x, lab, means, _cmatmul(x, lab, means, eye, dtype), dtype)
        evals, evecs = jnp.linalg.eigh((scatter + scatter.T) / 2)
        order = jnp.argsort(-evals)[:dim]
        return evecs[:, order], jnp.maximum(evals[order], 0.0) / max(n - 1, 1)
    l = min(d, dim + 10)
    omega = jax.random.normal(key, (d, l), dtype)
    q, _ = jnp.linalg.qr(_cmatmul(x, lab, means, omega, dtype))
    for _ in range(power_iters):
        z, _ = jnp.linalg.qr(_crmatmul(x, lab, means, q, dtype))
        q, _ = jnp.linalg.qr(_cmatmul(x, lab, means, z, dtype))
    bt = _crmatmul(x, lab, means, q, dtype)  # (d, l) = Xc^T Q
    u, s, _ = jnp.linalg.svd(bt, full_matrices=False)
    return u[:, :dim], (s[:dim] ** 2) / max(n - 1, 1)


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
    x = _as_2d(x, "x")
    n, d = x.shape
    dtype = _float_dtype(x)
    if dim < 1:
        raise ValueError(f"dim must be >= 1, got {dim}")
    if labels is not None and num_classes is None:
        num_classes = int(np.max(np.asarray(labels))) + 1
    means, lab = _class_means(x, labels, num_classes, dtype)
    gmean = _class_means(x, None, 1, dtype)[0][0]
    if d <= dim and method != "random":
        matrix = None
        proj = _to_device(x, dtype) - means[lab]
        scale = jnp.std(proj, axis=0) if whiten else jnp.ones((d,), dtype)
        return Reduction(gmean, None, jnp.where(scale > 0, scale, 1.0))
    if method == "pca":
        comps, var = _pca_components(x, lab, means, dim, key, dtype)
        matrix = comps
        scale = jnp.sqrt(var) if whiten else jnp.ones_like(var)
    elif method == "random":
        g = jax.random.normal(key, (d, dim), dtype) if shared_matrix is None else jnp.asarray(shared_matrix, dtype)[:d]
        matrix = g / jnp.sqrt(jnp.asarray(d, dtype))
        if whiten:
            proj = _cmatmul(x, lab, means, matrix, dtype)
            scale = jnp.sqrt(jnp.mean(jnp.square(proj), axis=0))
        else:
            scale = jnp.ones((dim,), dtype)
    else:
        raise ValueError(f"method must be 'pca' or 'random', got {method!r}")
    scale = jnp.where(scale > 0, scale, 1.0)
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
    x, y = _check_pair(x, y)
    kx, ky, kg = jax.random.split(key, 3)
    shared = None
    if method == "random":
        shared = jax.random.normal(kg, (max(x.shape[1], y.shape[1]), dim), _float_dtype(x))
    rx = fit_reduction(x, kx, method=method, dim=dim, labels=labels, num_classes=num_classes, whiten=whiten, shared_matrix=shared)
    ry = fit_reduction(y, ky, method=method, dim=dim, labels=labels, num_classes=num_classes, whiten=whiten, shared_matrix=shared)
    xr, yr = rx.apply(x), ry.apply(y)
    if return_reductions:
        return xr, yr, rx, ry
    return xr, yr
