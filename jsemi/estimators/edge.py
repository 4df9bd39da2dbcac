"""EDGE mutual-information estimate in bits (Noshad, Zeng, Hero, ICASSP 2019), the estimator
the paper uses for its rho values.

:func:`edge_mi` reproduces the authors' script step by step (their ``mi_estimator.EDGE``
called with its final defaults: ``L_ensemble=1``, ``stochastic=True``,
``epsilon_vector='range'``, ``normalize_epsilon=False``, ``hashing='p-stable'``), compiled in
JAX with sort-based collision counting (kernels in :mod:`jsemi.estimators.edge_kernels`).
Its random draws are fresh from the PRNG key by default (``draws="fresh"``); ``draws="paper"``
makes the authors' fixed draws (their script re-seeds NumPy with 3334 before its projections
and bandwidth rows, so only the hash shifts vary), to match their numbers call for call.
Calibration against known MI: ``docs/calibration.md``.

When it can be trusted (numbers measured with ``tests/test_mi.py``'s data and settings):

- **d <= 6 per variable** (hashed unprojected): rises monotonically with the dependence but
  is biased, up for weak and down for strong dependence. Correlated Gaussians, N = 10,000,
  d = 1: 0.03 / 0.20 / 0.47 / 1.06 / 1.84 bits for r = 0 / 0.3 / 0.6 / 0.9 / 0.99 (truths
  0 / 0.07 / 0.32 / 1.20 / 2.83); d = 6: 0.68 at r = 0, 2.79 at r = 0.9 (truth 7.19), 4.37 at
  r = 0.99 (truth 16.95). An ordinal measure: use its excess over the null and its
  ordering, not its value.
- **d > 6**: the two *independent* random projections (d -> floor(log2(N/10))) erase
  coordinate-wise dependence. 4,096-dim layers, 1,000 points per class, y = x + noise:
  7.02 bits; y shuffled within the class: 7.00 bits (the null: 7.00 +- 0.001, so the
  visible dependence is 0.02 bits). Report EDGE values at these sizes only with their null.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.estimators.arrays import check_pair, float_dtype, is_host, pad_rows, row_chunks, size_bucket, to_device
from jsemi.estimators.edge_kernels import draw_edge, edge_from_projected, project_pair, project_streamed

__all__ = [
    "EdgeRandomness",
    "edge_dims",
    "edge_hash",
    "edge_k",
    "edge_mi",
    "edge_project",
    "edge_randomness",
    "paper_draws",
    "PAPER_SEED",
]

#: EDGE pads raw rows to a size bucket only below this many elements (N * (dx + dy));
#: above it, padding would copy the data, so only the small projections are padded.
PAD_RAW_MAX = 1 << 22
#: the authors' script re-seeds NumPy with this before its projections and bandwidth rows.
PAPER_SEED = 3334
#: rows whose k-NN distances set the bandwidths in the authors' script.
PAPER_QUERIES = 500
_DRAWS = ("fresh", "paper")


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

    # jax.typing.ArrayLike (device or host arrays): an annotation that resolves without this
    # module's globals, which the generated __new__ of a NamedTuple lacks (pdoc, make docs-api)
    gx: jax.typing.ArrayLike | None
    gy: jax.typing.ArrayLike | None
    queries: jax.typing.ArrayLike | None
    ux: jax.typing.ArrayLike
    uy: jax.typing.ArrayLike


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
    fold: int | None = None,
    draws: str = "fresh",
) -> EdgeRandomness:
    """Draws every random quantity of one EDGE call from ``key`` (see :class:`EdgeRandomness`).

    With ``fold`` the draws are those of ``jax.random.fold_in(key, fold)`` (e.g. one
    independent draw per class), the fold-in done inside the compiled draw (an eager
    ``fold_in`` costs more than all the draws).

    ``draws="paper"`` reproduces the authors' script, which re-seeds NumPy's global
    Mersenne Twister with :data:`PAPER_SEED` before its projections (``gen_W``: the x
    matrix, then the y matrix from the same stream) and before each column's bandwidth
    query rows (``find_knn``: 500 rows drawn with replacement, the same rows for every
    column); only the hash shifts are fresh (they come from ``key``, where the authors
    re-seed from the OS). Given those shifts, :func:`edge_mi` then equals the authors' EDGE
    call for call. Needs ``project="joint"`` and ``knn_queries`` None or 500.
    """
    if L < 1:
        raise ValueError(f"L must be >= 1, got {L}")
    if draws not in _DRAWS:
        raise ValueError(f"draws must be one of {_DRAWS}, got {draws!r}")
    dpx, dpy, px, py = edge_dims(n, dx, dy, project)
    if draws == "paper":
        if project != "joint" or knn_queries not in (None, PAPER_QUERIES):
            raise ValueError(
                f"draws='paper' follows the authors' script: project='joint' and knn_queries={PAPER_QUERIES} "
                f"(or None), got project={project!r}, knn_queries={knn_queries!r}"
            )
        knn_queries = PAPER_QUERIES
    if knn_queries is not None and knn_queries < 1:
        raise ValueError(f"knn_queries must be >= 1 or None, got {knn_queries}")
    fresh = draws == "fresh"  # paper: only the shifts come from the key
    gx, gy, queries, ux, uy = draw_edge(
        key, np.int32(n), None if fold is None else np.uint32(fold),
        dx=dx, dy=dy, dpx=dpx, dpy=dpy, px=px and fresh, py=py and fresh, L=L, nq=knn_queries if fresh else None,
    )
    if not fresh:
        gx, gy, queries = paper_draws(n, dx, dy, dpx, dpy, px, py)
    return EdgeRandomness(gx, gy, queries, ux, uy)


def paper_draws(n: int, dx: int, dy: int, dpx: int, dpy: int, px: bool, py: bool):
    """The authors' fixed draws: (gx, gy, queries) as float64 / int32 NumPy arrays.

    gx, gy: the standard-normal factors of ``gen_W``'s ``np.random.normal(0, sigma, (d, d'))``
    after ``np.random.seed(PAPER_SEED)`` (x first, then y, one stream; None for an
    unprojected variable). queries: the row indices behind ``find_knn``'s
    ``np.random.choice(column, 500)`` after the same re-seed (NumPy draws the indices
    uniformly with replacement), identical for every column.
    """
    rs = np.random.RandomState(PAPER_SEED)
    gx = rs.standard_normal((dx, dpx)) if px else None
    gy = rs.standard_normal((dy, dpy)) if py else None
    queries = np.random.RandomState(PAPER_SEED).randint(0, n, size=PAPER_QUERIES).astype(np.int32)
    return gx, gy, queries


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
    draws: str = "fresh",
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
      draws: ``"fresh"`` (default): projections, bandwidth rows and shifts all drawn from
        ``key``, so repeated calls with new keys sample EDGE's full randomness (its spread
        over keys is the estimator's own noise). ``"paper"``: the authors' fixed draws
        (NumPy seed 3334 for the projections and 500 bandwidth rows, see
        :func:`edge_randomness`), only the shifts from ``key``; use it to match the
        authors' numbers call for call. Ignored when ``randomness`` is given.
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
    x, y = check_pair(x, y)
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
        randomness = edge_randomness(key, n, dx, dy, L=L, knn_queries=knn_queries, project=project, draws=draws)
    _check_randomness(randomness, n, dx, dy, dpx, dpy, px, py)
    xw, yv, finite = edge_project(x, y, randomness)
    res = edge_hash(xw, yv, randomness, n, dx, dy, U=U, gamma=gamma, eps_range=eps_range, shift_scale=shift_scale)
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


def edge_project(x, y, randomness: EdgeRandomness):
    """EDGE step 1 on (N, dx), (N, dy) data: returns device values (xw, yv, finite), no sync.

    xw (n_pad, d'x) and yv (n_pad, d'y) are the projected (or, for an unprojected variable,
    raw) rows zero-padded to :func:`~jsemi.estimators.arrays.size_bucket` (N) rows (``xw[:N]``
    is the data), so one compilation of :func:`edge_hash` serves every N of a bucket;
    ``finite`` is False if the data hold NaN or inf. Device arrays and host arrays of at most
    one row chunk are projected in one compiled call; bigger host arrays in streamed row
    chunks. Permuting rows of yv[:N] equals projecting permuted rows of y (what the
    permutation null uses).
    """
    n, dx = x.shape
    dy = y.shape[1]
    n_pad = size_bucket(n)
    dtype = np.promote_types(float_dtype(x), float_dtype(y))
    big = any(is_host(v) and len(row_chunks(v)) > 1 for v in (x, y))
    if not big:
        gx = None if randomness.gx is None else jnp.asarray(randomness.gx)
        gy = None if randomness.gy is None else jnp.asarray(randomness.gy)
        nn = np.int32(n)
        if n * (dx + dy) <= PAD_RAW_MAX:  # small: pad the raw rows, one compile per bucket
            xd = to_device(pad_rows(x, n_pad), dtype)
            yd = to_device(pad_rows(y, n_pad), dtype)
        else:  # large: no copy of the raw data; project unpadded (a cheap compile per N)
            xd, yd = to_device(x, dtype), to_device(y, dtype)
        return project_pair(xd, yd, gx, gy, nn, n_pad=n_pad)
    xw, fx = project_streamed(x, randomness.gx, dtype)
    yv, fy = project_streamed(y, randomness.gy, dtype)
    return pad_rows(xw, n_pad), pad_rows(yv, n_pad), fx & fy


def edge_hash(
    xw, yv, randomness: EdgeRandomness, n: int, dx: int, dy: int, *,
    U: float = 10.0, gamma: float = 0.4, eps_range: float = 0.1, shift_scale: float = 0.1,
) -> dict:
    """EDGE steps 2-4 on :func:`edge_project`'s padded output with n valid rows (dx, dy the
    unprojected dimensions): a dict of device values ``mi`` (bits), ``values`` (per hash),
    ``eps_x``, ``eps_y``; no host synchronisation. One compiled call, reused by the null."""
    dyn, static = _edge_args(
        n, dx, dy, xw.shape[1], yv.shape[1], randomness, U=U, gamma=gamma, eps_range=eps_range, shift_scale=shift_scale
    )
    return edge_from_projected(xw, yv, *dyn, **static)


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
