"""Class-conditional mutual information rho = sum_y pi(y) I(a; b | y), with a permutation null.

rho is the quantity of Theorem 2 (PAPER_NOTES section 2): for a pair of consecutive weight
layers, a = f(j-1)(X + delta) and b = f(j)(X + delta) on attacked data, flattened per example,
pi(y) the class frequencies of ``labels``. Values are in **bits**.

Estimators (``estimator=``):

- ``"edge"``: :func:`jsemi.estimators.edge.edge_mi` on each class's raw flattened activations,
  exactly the paper's procedure. Optionally on a reduction (``reduce_dim=``); reduced to
  <= 6 dims per layer, EDGE hashes without its random projections.
- ``"ksg"``: :func:`~jsemi.estimators.ksg.ksg_mi` (k=3) on a shared reduction
  (:func:`~jsemi.estimators.reduction.reduce`; default PCA of the within-class scatter to 4 dims
  per layer, i.e. an 8-dim joint space).
- ``"gaussian"``: :func:`~jsemi.estimators.gaussian.gaussian_mi` on a shared reduction (default
  PCA to 16 dims per layer).

The reduction is fitted once on all examples (within-class scatter) and shared by every
class and by the null, so values and nulls are comparable.

The null control (:func:`conditional_mi_with_null`): the same estimator, with the same
randomness and reduction, on data where b's rows are permuted *within each class* (this
keeps both class-conditional marginals and destroys every a-b dependence inside a class, so
its rho is what the estimator reports for conditionally independent layers of these sizes).
Reported: rho, null (mean over permutations), excess = rho - null, and the permutation
p-value (1 + #{null_p >= rho}) / (1 + P). Only the excess (and p-value) is evidence of
dependence; a rho near the null means the estimator cannot see dependence at these sizes.

When each estimator is trustworthy (numbers from ``tests/test_mi.py``; more in the module
docstrings of :mod:`~jsemi.estimators.edge`, :mod:`~jsemi.estimators.ksg`, :mod:`~jsemi.estimators.gaussian`):

- Independent layers (given the class): the excess is near zero for every estimator,
  |excess| <= 0.038 (EDGE), 0.046 (KSG), 0.015 (Gaussian) bits over 8 seeds, 4 classes x
  400 points, 8-dim layers, 10 permutations; the p-values spread over (0, 1].
- Paper sizes (4,096-dim layers, 1,000 points per class, y = x + noise with low-rank
  structure, 2 classes): EDGE gives rho = 7.02 bits for the dependent pair and 7.00 for y
  shuffled within class; its null is 7.00 +- 0.001, so the excess, 0.02 bits, is all the
  dependence EDGE sees (significant, p = 1/6 with 5 permutations, but tiny). KSG on the
  4-dim PCA: rho 7.9, null 0.005; Gaussian on the 16-dim PCA: rho 50.2, null 0.2. At these
  sizes an EDGE rho is set by bucket occupancy (its ceiling is log2 of the points per
  class), not by the dependence: report it only with its null and excess.
- d <= 6 (EDGE without projection): monotone in the dependence, biased; compare excesses.
- KSG: within 5% for joint dimension <= 6 at 10,000 points; 5-11% low at joint dimension 8;
  never much above log2(points per class).
- Gaussian: exact for Gaussian data, the linearly-carried dependence otherwise; with
  ~1,000 points per class keep reduce_dim well below ~100.
"""

from __future__ import annotations

from typing import Any

import jax
import numpy as np

from jsemi.estimators.edge import edge_hash, edge_project, edge_randomness
from jsemi.estimators.gaussian import gaussian_mi
from jsemi.estimators.ksg import ksg_mi
from jsemi.estimators.reduction import reduce

__all__ = ["conditional_mi", "conditional_mi_with_null", "DEFAULT_REDUCE_DIM"]

_ESTIMATORS = ("edge", "ksg", "gaussian")
#: default reduction dimension per layer (None = no reduction) for each estimator.
DEFAULT_REDUCE_DIM = {"edge": None, "ksg": 4, "gaussian": 16}


def _flat(a, name):
    shape = getattr(a, "shape", None)
    if shape is None:
        a = np.asarray(a)
        shape = a.shape
    if len(shape) < 1:
        raise ValueError(f"{name} must have a leading example axis")
    if len(shape) == 1:
        return a.reshape(-1, 1)
    return a.reshape(shape[0], -1) if len(shape) > 2 else a


def _classes(labels, n, num_classes):
    lab = np.asarray(labels)
    if lab.ndim != 1 or lab.shape[0] != n:
        raise ValueError(f"labels must be a rank-1 array of {n} class indices, got shape {lab.shape}")
    if not np.issubdtype(lab.dtype, np.integer):
        raise TypeError(f"labels must be integers, got dtype {lab.dtype}")
    if lab.size and lab.min() < 0:
        raise ValueError("labels must be >= 0")
    if num_classes is None:
        num_classes = int(lab.max()) + 1
    elif lab.size and lab.max() >= num_classes:
        raise ValueError(f"labels must lie in [0, {num_classes}), got max {lab.max()}")
    counts = np.bincount(lab, minlength=num_classes)
    present = [int(c) for c in np.nonzero(counts)[0]]
    index = {c: np.nonzero(lab == c)[0] for c in present}
    return lab, num_classes, counts / n, present, index


def _numpy_rng(key) -> np.random.Generator:
    """A NumPy generator seeded from a JAX key (host permutations without a compilation per
    class size, still reproducible from the key)."""
    return np.random.default_rng(np.asarray(jax.random.key_data(key)).ravel().tolist())


def _take(a, idx):
    """Rows ``idx`` of a; a view (no copy) when they are one contiguous block."""
    if len(idx) and idx[-1] - idx[0] + 1 == len(idx):
        return a[int(idx[0]) : int(idx[-1]) + 1]
    return a[idx]


def _min_points(estimator, k):
    return {"edge": 2, "ksg": k + 2, "gaussian": 3}[estimator]


class _Prepared:
    """Per-class inputs of one estimator, ready to be evaluated with b's rows permuted."""

    def __init__(self, a, b, labels, key, *, estimator, num_classes, reduce_dim, reduce_method, k, edge_kwargs):
        if estimator not in _ESTIMATORS:
            raise ValueError(f"estimator must be one of {_ESTIMATORS}, got {estimator!r}")
        a = _flat(a, "a")
        b = _flat(b, "b")
        n = a.shape[0]
        if b.shape[0] != n:
            raise ValueError(f"a and b must have the same number of examples, got {n} and {b.shape[0]}")
        self.lab, self.num_classes, self.pi, self.present, self.index = _classes(labels, n, num_classes)
        need = _min_points(estimator, k)
        for c in self.present:
            if len(self.index[c]) < need:
                raise ValueError(
                    f"class {c} has {len(self.index[c])} examples; the {estimator} estimator needs >= {need} per class"
                )
        self.estimator = estimator
        self.k = k
        self.edge_kwargs = dict(edge_kwargs or {})
        if reduce_dim == "default":
            reduce_dim = DEFAULT_REDUCE_DIM[estimator]
        self.reduce_dim = reduce_dim
        self.reduce_method = reduce_method
        k_red, k_est = jax.random.split(key)
        self.dims = (a.shape[1], b.shape[1])
        if reduce_dim is not None:
            a, b = reduce(a, b, k_red, method=reduce_method, dim=int(reduce_dim), labels=self.lab, num_classes=self.num_classes)
            a, b = np.asarray(a), np.asarray(b)
        self.reduced_dims = (a.shape[1], b.shape[1])
        self.per_class = {}
        self._observed = {}
        finite = []
        for c in self.present:
            idx = self.index[c]
            xc, yc = _take(a, idx), _take(b, idx)
            if estimator == "edge":
                ek = {kk: v for kk, v in self.edge_kwargs.items() if kk in ("L", "knn_queries", "project")}
                nc, dx, dy = len(idx), xc.shape[1], yc.shape[1]
                r = edge_randomness(k_est, nc, dx, dy, fold=c, **ek)  # = edge_randomness(fold_in(k_est, c))
                xw, yv, fin = edge_project(xc, yc, r)
                res = edge_hash(xw, yv, r, nc, dx, dy, **self._edge_params())
                finite.append(fin)
                self._observed[c] = res["mi"]
                self.per_class[c] = (xw, yv, r, nc, dx, dy)
            else:
                self.per_class[c] = (xc, yc)
        if finite and not all(bool(f) for f in finite):
            raise ValueError("a and b must be finite (found NaN or inf)")

    def _edge_params(self):
        return {kk: self.edge_kwargs.get(kk, dflt) for kk, dflt in (("U", 10.0), ("gamma", 0.4), ("eps_range", 0.1), ("shift_scale", 0.1))}

    def value(self, c, perm=None):
        """MI of class c (b's rows permuted by ``perm``); EDGE returns an unsynchronised device scalar."""
        data = self.per_class[c]
        if self.estimator == "edge":
            if perm is None:
                return self._observed[c]
            xw, yv, r, nc, dx, dy = data
            # (P y) W = P (y W): permuting projected rows == projecting permuted rows; rows past
            # nc are padding (see edge.edge_project) and stay where they are.
            full = np.concatenate([np.asarray(perm), np.arange(nc, yv.shape[0])])
            yv = yv[full]
            return edge_hash(xw, yv, r, nc, dx, dy, **self._edge_params())["mi"]
        x, y = data
        if perm is not None:
            y = y[perm]
        if self.estimator == "ksg":
            return ksg_mi(x, y, k=self.k)
        return gaussian_mi(x, y)

    def rho(self, perms=None):
        vals = {c: self.value(c, None if perms is None else perms[c]) for c in self.present}
        per = np.full((self.num_classes,), np.nan)
        for c in self.present:
            per[c] = float(vals[c])
        rho = float(sum(self.pi[c] * per[c] for c in self.present))
        return rho, per

    def settings(self) -> dict[str, Any]:
        s: dict[str, Any] = dict(
            units="bits",
            estimator=self.estimator,
            num_classes=self.num_classes,
            class_counts={int(c): int(len(self.index[c])) for c in self.present},
            dims=self.dims,
            reduce_method=self.reduce_method if self.reduce_dim is not None else None,
            reduce_dim=self.reduce_dim,
            reduced_dims=self.reduced_dims,
        )
        if self.estimator == "ksg":
            s["k"] = self.k
        if self.estimator == "edge":
            s.update(dict(U=10.0, gamma=0.4, L=1, knn_queries=None, eps_range=0.1, shift_scale=0.1, project="joint"))
            s.update(self.edge_kwargs)
        return s


def conditional_mi(
    a,
    b,
    labels,
    key: jax.Array,
    *,
    estimator: str = "edge",
    num_classes: int | None = None,
    reduce_dim: int | None | str = "default",
    reduce_method: str = "pca",
    k: int = 3,
    edge_kwargs: dict | None = None,
):
    """rho = sum_y pi(y) I(a; b | y) in **bits**, pi(y) the class frequencies of ``labels``.

    Args:
      a, b: (N, ...) activations of two layers on the same N examples (flattened per example).
      labels: (N,) integer classes.
      key: PRNG key (EDGE projections/shifts, one independent draw per class via
        ``fold_in(key, class)``; the randomized PCA / random projection of the reduction).
      estimator: "edge" (paper), "ksg" or "gaussian" (see the module docstring).
      num_classes: length of the per-class output (default labels.max() + 1).
      reduce_dim: per-layer dimension of the shared reduction; "default" picks
        :data:`DEFAULT_REDUCE_DIM` (EDGE: none, KSG: 4, Gaussian: 16); None disables it.
      reduce_method: "pca" (within-class scatter) or "random" (common Gaussian projection).
      k: KSG neighbour count.
      edge_kwargs: EDGE options (U, gamma, L, knn_queries, eps_range, shift_scale, project).

    Returns:
      (rho_bits, per_class_bits): a float and a (num_classes,) array, NaN for absent classes.
    """
    prep = _Prepared(
        a, b, labels, key, estimator=estimator, num_classes=num_classes, reduce_dim=reduce_dim,
        reduce_method=reduce_method, k=k, edge_kwargs=edge_kwargs,
    )
    return prep.rho()


def conditional_mi_with_null(
    a,
    b,
    labels,
    key: jax.Array,
    *,
    estimator: str = "edge",
    permutations: int = 20,
    num_classes: int | None = None,
    reduce_dim: int | None | str = "default",
    reduce_method: str = "pca",
    k: int = 3,
    edge_kwargs: dict | None = None,
) -> dict[str, Any]:
    """rho with its within-class permutation null (see the module docstring).

    The null uses the same estimator, randomness (projections, shifts, bandwidth queries)
    and reduction as rho; only b's rows are permuted inside each class, independently for
    each of the ``permutations`` draws.

    Returns:
      dict(rho, null, excess, p_value, per_class, estimator, settings) plus ``null_std``,
      ``null_values`` (per permutation) and ``per_class_null`` (mean over permutations).
      All MI values in bits. p_value = (1 + #{null_p >= rho}) / (1 + permutations), so its
      resolution is 1 / (1 + permutations).
    """
    if permutations < 1:
        raise ValueError(f"permutations must be >= 1, got {permutations}")
    k_est, k_perm = jax.random.split(key)
    prep = _Prepared(
        a, b, labels, k_est, estimator=estimator, num_classes=num_classes, reduce_dim=reduce_dim,
        reduce_method=reduce_method, k=k, edge_kwargs=edge_kwargs,
    )
    rho, per = prep.rho()
    null_values = np.zeros((permutations,))
    per_null = np.zeros((permutations, prep.num_classes))
    for p in range(permutations):
        rng = _numpy_rng(jax.random.fold_in(k_perm, p))
        perms = {c: rng.permutation(len(prep.index[c])) for c in prep.present}
        null_values[p], per_null[p] = prep.rho(perms)
    null = float(np.mean(null_values))
    settings = prep.settings()
    settings["permutations"] = int(permutations)
    return dict(
        rho=rho,
        null=null,
        excess=rho - null,
        p_value=float((1 + np.sum(null_values >= rho)) / (1 + permutations)),
        per_class=per,
        estimator=estimator,
        settings=settings,
        null_std=float(np.std(null_values)),
        null_values=null_values,
        per_class_null=np.mean(per_null, axis=0),
    )
