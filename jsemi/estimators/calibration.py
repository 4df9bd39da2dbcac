"""Calibration of the mutual-information estimators on distributions whose MI is known (bits).

Designs (all closed form):

- ``gauss``: x ~ N(0, I_d), y = r x + sqrt(1 - r^2) e coordinate-wise; I = -d/2 log2(1 - r^2),
  r chosen for the target (0 = independent pair).
- ``nonlin``: the same pair through invertible maps x -> x^3, y -> exp(y) (MI unchanged).
- ``lowrank``: x = z A + s e_x, y = z B + s e_y with a 3-dim latent z and fixed random A, B:
  dependence in the top-variance directions, as in network layers; I from the covariance.
- ``cond``: 4 classes with shifted means, inside each class a ``gauss`` pair: the
  class-conditional MI sum_y pi(y) I(x; y | class) equals the target.
- ``cmi-null`` / ``cmi-iso`` / ``cmi-lowrank``: permutation-test designs, 2 classes x 100
  points, a 32-dim, b 16-dim; conditionally independent (null), or 0.5 bits of conditional
  MI spread evenly over 4 rotated coordinate pairs (iso) or carried by a 3-dim latent in the
  top-variance directions (lowrank).

Reported: mean and sd over data sets of each estimator (bias = mean - truth), and for the
permutation designs the share of data sets with p <= 0.05 / 0.01 (false-positive rate under
the null, power otherwise). ``python -m jsemi.estimators.calibration --write docs/calibration.md``
regenerates the tables of docs/calibration.md (between its ``calibration:begin/end`` markers).
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import time
from collections.abc import Callable

import jax
import numpy as np

from jsemi.estimators.conditional import conditional_mi, conditional_mi_with_null
from jsemi.estimators.edge import edge_mi
from jsemi.estimators.gaussian import gaussian_mi
from jsemi.estimators.ksg import ksg_mi
from jsemi.estimators.reduction import reduce

__all__ = [
    "PAIR_ESTIMATORS",
    "TEST_ESTIMATORS",
    "bias_table",
    "design_pair",
    "gaussian_mi_bits",
    "markdown",
    "test_table",
    "test_design",
]

BEGIN, END = "<!-- calibration:begin -->", "<!-- calibration:end -->"


# ----------------------------------------------------------------------------------------------
# designs with known MI
# ----------------------------------------------------------------------------------------------


def gaussian_mi_bits(cov: np.ndarray, dx: int) -> float:
    """Exact MI (bits) of a Gaussian with covariance ``cov`` split after the first dx coordinates."""
    ld = lambda c: np.linalg.slogdet(c)[1]
    return float(0.5 * (ld(cov[:dx, :dx]) + ld(cov[dx:, dx:]) - ld(cov)) / math.log(2.0))


def _r_for(mi_bits: float, d: int) -> float:
    """Per-coordinate correlation of d independent pairs carrying ``mi_bits`` in total."""
    return math.sqrt(1.0 - 2.0 ** (-2.0 * mi_bits / d))


def _gauss(rng, n, d, mi_bits):
    r = _r_for(mi_bits, d)
    x = rng.standard_normal((n, d))
    return x, r * x + math.sqrt(1 - r * r) * rng.standard_normal((n, d))


def _lowrank_noise(d: int, mi_bits: float, a, b) -> float:
    """Noise level s at which the lowrank design carries ``mi_bits`` (bisection on log s)."""
    lo, hi = -8.0, 8.0
    for _ in range(80):
        mid = (lo + hi) / 2
        s2 = math.exp(2 * mid)
        ab = np.concatenate([a, b], axis=1)
        cov = ab.T @ ab + s2 * np.eye(2 * d)
        if gaussian_mi_bits(cov, d) > mi_bits:
            lo = mid
        else:
            hi = mid
    return math.exp((lo + hi) / 2)


def design_pair(design: str, n: int, d: int, mi_bits: float, seed: int):
    """(x, y) float32 arrays of shape (n, d) from ``design`` with true MI ``mi_bits`` (bits)."""
    rng = np.random.default_rng(seed)
    if design == "gauss":
        x, y = _gauss(rng, n, d, mi_bits)
    elif design == "nonlin":
        x, y = _gauss(rng, n, d, mi_bits)
        x, y = x**3, np.exp(y)
    elif design == "lowrank":
        fixed = np.random.default_rng(1234 + d)  # the same A, B for every seed
        a, b = fixed.standard_normal((3, d)), fixed.standard_normal((3, d))
        z = rng.standard_normal((n, 3))
        if mi_bits == 0:
            x, y = z @ a + rng.standard_normal((n, d)), rng.standard_normal((n, 3)) @ b + rng.standard_normal((n, d))
        else:
            s = _lowrank_noise(d, mi_bits, a, b)
            x, y = z @ a + s * rng.standard_normal((n, d)), z @ b + s * rng.standard_normal((n, d))
    else:
        raise ValueError(f"unknown pair design {design!r}")
    return x.astype(np.float32), y.astype(np.float32)


def design_cond(n_per_class: int, d: int, mi_bits: float, seed: int, classes: int = 4):
    """(a, b, labels): within each class a ``gauss`` pair with ``mi_bits``, class means shifted by 3."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(classes), n_per_class)
    x, y = _gauss(rng, classes * n_per_class, d, mi_bits)
    shift = 3.0 * labels[:, None]
    return (x + shift).astype(np.float32), (y - shift).astype(np.float32), labels


def test_design(design: str, seed: int, *, n_per_class: int = 100, da: int = 32, db: int = 16, mi_bits: float = 0.5):
    """(a, b, labels) of a permutation-test design (see the module docstring); 2 classes."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(2), n_per_class)
    n = 2 * n_per_class
    means_a, means_b = 2.0 * rng.standard_normal((2, da)), 2.0 * rng.standard_normal((2, db))
    if design in ("cmi-null", "cmi-iso"):
        a, b = rng.standard_normal((n, da)), rng.standard_normal((n, db))
        if design == "cmi-iso":
            r = _r_for(mi_bits, 4)
            b[:, :4] = r * a[:, :4] + math.sqrt(1 - r * r) * b[:, :4]
        qa = np.linalg.qr(np.random.default_rng(99).standard_normal((da, da)))[0]
        qb = np.linalg.qr(np.random.default_rng(98).standard_normal((db, db)))[0]
        a, b = a @ qa, b @ qb
    elif design == "cmi-lowrank":
        fixed = np.random.default_rng(77)
        A, B = 2.0 * fixed.standard_normal((3, da)), 2.0 * fixed.standard_normal((3, db))
        # the noise on b sets the MI: solve on the joint covariance of (z A + e_a, z B + s e_b)
        lo, hi = -6.0, 10.0
        for _ in range(60):
            mid = (lo + hi) / 2
            s2 = math.exp(2 * mid)
            cov = np.block([[A.T @ A + np.eye(da), A.T @ B], [B.T @ A, B.T @ B + s2 * np.eye(db)]])
            lo, hi = (mid, hi) if gaussian_mi_bits(cov, da) > mi_bits else (lo, mid)
        z = rng.standard_normal((n, 3))
        a = z @ A + rng.standard_normal((n, da))
        b = z @ B + math.exp(lo) * rng.standard_normal((n, db))
    else:
        raise ValueError(f"unknown test design {design!r}")
    return (a + means_a[labels]).astype(np.float32), (b + means_b[labels]).astype(np.float32), labels


# ----------------------------------------------------------------------------------------------
# estimators under test
# ----------------------------------------------------------------------------------------------


def _reduced(fn: Callable, dim: int) -> Callable:
    def run(x, y, key):
        xr, yr = reduce(x, y, key, dim=dim)
        return fn(np.asarray(xr), np.asarray(yr), key)

    return run


#: pair estimators: name -> f(x, y, key) in bits.
PAIR_ESTIMATORS: dict[str, Callable] = {
    "edge": lambda x, y, key: edge_mi(x, y, key),
    "edge-paper": lambda x, y, key: edge_mi(x, y, key, draws="paper"),
    "ksg": lambda x, y, key: ksg_mi(x, y),
    "ksg-pca3": _reduced(lambda x, y, key: ksg_mi(x, y), 3),
    "ksg-pca4": _reduced(lambda x, y, key: ksg_mi(x, y), 4),
    "gauss-plugin": lambda x, y, key: gaussian_mi(x, y, bias_correction=False),
    "gauss": lambda x, y, key: gaussian_mi(x, y),
}

#: permutation-test configurations: name -> conditional_mi_with_null keyword arguments.
TEST_ESTIMATORS: dict[str, dict] = {
    "edge": dict(estimator="edge"),
    "edge-paper": dict(estimator="edge", edge_kwargs=dict(draws="paper")),
    "ksg-pca4": dict(estimator="ksg", reduce_dim=4),
    "ksg-pca3": dict(estimator="ksg", reduce_dim=3),
    "gauss-pca16": dict(estimator="gaussian", reduce_dim=16),
    "gauss-pca4": dict(estimator="gaussian", reduce_dim=4),
}


def bias_table(grid, estimators=None, *, seeds: int = 5, n: int = 2000, cond_n_per_class: int = 250) -> list[dict]:
    """Mean and sd over ``seeds`` data sets per (design, d, truth) of ``grid`` and estimator.

    ``grid``: iterable of (design, d, truth_bits[, n[, estimators]]); design "cond" runs
    :func:`~jsemi.estimators.conditional.conditional_mi` (raw or PCA-reduced as named).
    """
    all_est = list(PAIR_ESTIMATORS) if estimators is None else list(estimators)
    rows = []
    for cell in grid:
        design, d, truth = cell[:3]
        nn = cell[3] if len(cell) > 3 else n
        cell_est = [e for e in all_est if len(cell) <= 4 or e in cell[4]]
        vals: dict[str, list[float]] = {e: [] for e in cell_est}
        secs: dict[str, float] = {e: 0.0 for e in cell_est}
        for s in range(seeds):
            key = jax.random.key(s)
            if design == "cond":
                a, b, lab = design_cond(cond_n_per_class, d, truth, s)
            else:
                x, y = design_pair(design, nn, d, truth, s)
            for e in cell_est:
                t0 = time.process_time()
                if design == "cond":
                    base = e.split("-")[0]
                    est = {"gauss": "gaussian"}.get(base, base)
                    if est not in ("edge", "ksg", "gaussian") or e.endswith("plugin"):
                        continue
                    kw = dict(edge_kwargs=dict(draws="paper")) if e == "edge-paper" else {}
                    if e.startswith("ksg-pca"):
                        kw["reduce_dim"] = int(e[len("ksg-pca"):])
                    elif est in ("ksg", "gaussian"):
                        kw["reduce_dim"] = None
                    vals[e].append(conditional_mi(a, b, lab, key, estimator=est, **kw)[0])
                else:
                    vals[e].append(float(PAIR_ESTIMATORS[e](x, y, key)))
                secs[e] += time.process_time() - t0
        for e in cell_est:
            v = np.asarray(vals[e])
            if v.size:
                rows.append(dict(design=design, d=d, n=nn if design != "cond" else cond_n_per_class, truth=truth,
                                 estimator=e, mean=float(v.mean()), sd=float(v.std(ddof=1)) if v.size > 1 else 0.0,
                                 bias=float(v.mean() - truth), values=v.tolist(), cpu_s=secs[e] / len(v)))
    return rows


def test_table(designs, estimators=None, *, datasets: int = 50, permutations: int = 99) -> list[dict]:
    """Share of data sets with p <= 0.05 and p <= 0.01 per (design, estimator)."""
    estimators = list(TEST_ESTIMATORS) if estimators is None else list(estimators)
    rows = []
    for design in designs:
        for e in estimators:
            ps, exc, t0 = [], [], time.process_time()
            for s in range(datasets):
                a, b, lab = test_design(design, s)
                r = conditional_mi_with_null(a, b, lab, jax.random.key(1000 + s), permutations=permutations,
                                             **TEST_ESTIMATORS[e])
                ps.append(r["p_value"])
                exc.append(r["excess"])
            ps = np.asarray(ps)
            rows.append(dict(design=design, estimator=e, datasets=datasets, permutations=permutations,
                             reject05=float(np.mean(ps <= 0.05)), reject01=float(np.mean(ps <= 0.01)),
                             mean_excess=float(np.mean(exc)), cpu_s=(time.process_time() - t0) / datasets))
    return rows


def edge_draws_table(*, keys: int = 10, n: int = 1000, d: int = 64) -> list[dict]:
    """EDGE's own noise: sd over PRNG keys on one data set, fresh vs paper draws, for a pair
    y = x + noise (low-rank x) and for y shuffled; and the dependent - shuffled gap."""
    rng = np.random.default_rng(0)
    z = rng.standard_normal((n, 4))
    x = z @ rng.standard_normal((4, d)) + 0.3 * rng.standard_normal((n, d))
    y = x + 0.3 * rng.standard_normal((n, d))
    y_shuf = y[rng.permutation(n)]
    rows = []
    for draws in ("fresh", "paper"):
        dep = [edge_mi(x, y, jax.random.key(k), draws=draws) for k in range(keys)]
        shf = [edge_mi(x, y_shuf, jax.random.key(k), draws=draws) for k in range(keys)]
        rows.append(dict(draws=draws, n=n, d=d, keys=keys, dep_mean=float(np.mean(dep)), dep_sd=float(np.std(dep, ddof=1)),
                         shuf_mean=float(np.mean(shf)), shuf_sd=float(np.std(shf, ddof=1)),
                         gap=float(np.mean(dep) - np.mean(shf))))
    return rows


# ----------------------------------------------------------------------------------------------
# tables
# ----------------------------------------------------------------------------------------------


def markdown(bias_rows, test_rows=(), draw_rows=()) -> str:
    """The markdown tables of docs/calibration.md."""
    out = []
    if bias_rows:
        ests = list(dict.fromkeys(r["estimator"] for r in bias_rows))
        cells = list(dict.fromkeys((r["design"], r["d"], r["n"], r["truth"]) for r in bias_rows))
        by = {(r["design"], r["d"], r["n"], r["truth"], r["estimator"]): r for r in bias_rows}
        out.append("Mean ± sd over data sets, bits (truth in the 4th column; `cond`: N per class, 4 classes).\n")
        out.append("| design | d | N | truth | " + " | ".join(ests) + " |")
        out.append("|---|---:|---:|---:|" + "---:|" * len(ests))
        for c in cells:
            vals = []
            for e in ests:
                r = by.get(c + (e,))
                vals.append("" if r is None else f"{r['mean']:.2f} ± {r['sd']:.2f}")
            out.append(f"| {c[0]} | {c[1]} | {c[2]} | {c[3]:g} | " + " | ".join(vals) + " |")
        cpu = {e: np.mean([r["cpu_s"] for r in bias_rows if r["estimator"] == e]) for e in ests}
        out.append("\nMean CPU seconds per call: " + ", ".join(f"{e} {cpu[e]:.2f}" for e in ests) + ".\n")
    if test_rows:
        out.append("Share of data sets rejected by the within-class permutation test (2 classes x 100 points, "
                   "a 32-dim, b 16-dim; `cmi-null`: false-positive rate, others: power at 0.5 bits).\n")
        out.append("| design | estimator | data sets | permutations | p <= 0.05 | p <= 0.01 | mean excess (bits) | CPU s / data set |")
        out.append("|---|---|---:|---:|---:|---:|---:|---:|")
        for r in test_rows:
            r01 = f"{r['reject01']:.2f}" if r["permutations"] >= 99 else "—"
            out.append(f"| {r['design']} | {r['estimator']} | {r['datasets']} | {r['permutations']} | "
                       f"{r['reject05']:.2f} | {r01} | {r['mean_excess']:.3f} | {r['cpu_s']:.2f} |")
        out.append("")
    if draw_rows:
        out.append("EDGE's own noise on one data set (sd over PRNG keys), fresh vs the authors' fixed draws.\n")
        out.append("| draws | N | d | keys | dependent | shuffled | gap |")
        out.append("|---|---:|---:|---:|---:|---:|---:|")
        for r in draw_rows:
            out.append(f"| {r['draws']} | {r['n']} | {r['d']} | {r['keys']} | {r['dep_mean']:.3f} ± {r['dep_sd']:.3f} | "
                       f"{r['shuf_mean']:.3f} ± {r['shuf_sd']:.3f} | {r['gap']:.3f} |")
        out.append("")
    return "\n".join(out)


def write_between_markers(path: str, text: str, header: str) -> None:
    """Replaces the text between BEGIN and END in ``path`` (appends the block if absent)."""
    try:
        with open(path) as f:
            doc = f.read()
    except FileNotFoundError:
        doc = ""
    block = f"{BEGIN}\n{header}\n\n{text}\n{END}"
    if BEGIN in doc and END in doc:
        doc = doc[: doc.index(BEGIN)] + block + doc[doc.index(END) + len(END):]
    else:
        doc = doc + ("\n" if doc else "") + block + "\n"
    with open(path, "w") as f:
        f.write(doc)


QUICK_GRID = [("gauss", 1, 1.0), ("gauss", 5, 1.0), ("gauss", 20, 1.0), ("gauss", 20, 0.0)]
FULL_GRID = (
    [("gauss", d, t) for d in (1, 5, 20) for t in (0.0, 1.0, 5.0)]
    + [("nonlin", d, t) for d in (1, 5, 20) for t in (1.0, 5.0)]
    + [("gauss", 20, t, 10_000, ("edge", "gauss-plugin", "gauss")) for t in (0.0, 5.0)]
    + [("lowrank", 20, 5.0), ("cond", 5, 1.0)]
)
TEST_DESIGNS = ("cmi-null", "cmi-iso", "cmi-lowrank")
#: permutation-test configurations of the full run (edge-paper tests like edge: same draws in the null).
FULL_TEST_ESTIMATORS = ("edge", "ksg-pca4", "gauss-pca16", "gauss-pca4")
#: estimators of the bias grid (edge-paper differs from edge only in its fixed draws: see the draws table).
BIAS_ESTIMATORS = ("edge", "ksg", "ksg-pca3", "ksg-pca4", "gauss-plugin", "gauss")


def main(argv=None) -> dict:
    import sys

    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m jsemi.estimators.calibration", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a 4-cell grid, 2 seeds, 10 data sets per test design")
    p.add_argument("--seeds", type=int, default=None, help="data sets per bias cell (default 5; quick 2)")
    p.add_argument("--datasets", type=int, default=None, help="data sets per test design (default 60; quick 10)")
    p.add_argument("--permutations", type=int, default=19, help="permutations of the test table (p <= 0.05)")
    p.add_argument("--part", choices=("all", "bias", "tests", "draws"), default="all")
    p.add_argument("--write", default=None, help="markdown file whose calibration block is replaced")
    p.add_argument("--json", default=None, help="also write every number (and per-data-set values) here")
    a = p.parse_args(argv)
    seeds = a.seeds or (2 if a.quick else 5)
    datasets = a.datasets or (10 if a.quick else 60)
    t0, c0 = time.time(), time.process_time()
    part = a.part
    bias = bias_table(QUICK_GRID if a.quick else FULL_GRID, BIAS_ESTIMATORS, seeds=seeds) if part in ("all", "bias") else []
    tests = []
    if part in ("all", "tests"):
        tests = test_table(TEST_DESIGNS, FULL_TEST_ESTIMATORS, datasets=datasets, permutations=a.permutations)
        # p <= 0.01 needs >= 99 permutations: the most powerful configuration, null and alternative
        tests += test_table(("cmi-null", "cmi-lowrank"), ("gauss-pca16",), datasets=max(10, datasets // 2), permutations=99)
    draws = edge_draws_table(keys=5 if a.quick else 10) if part in ("all", "draws") else []
    text = markdown(bias, tests, draws)
    header = (f"Generated by `python -m jsemi.estimators.calibration {' '.join(argv or [])}` on {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, "
              f"{platform.node()} ({platform.processor() or platform.machine()}), {time.time() - t0:.0f} s wall, "
              f"{time.process_time() - c0:.0f} CPU s; {seeds} data sets per bias cell, {datasets} per test row "
              f"({a.permutations} permutations; {max(10, datasets // 2)} with 99).")
    print(header + "\n\n" + text)
    if a.write:
        write_between_markers(a.write, text, header)
    out = dict(bias=bias, tests=tests, edge_draws=draws, header=header)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(out, f, indent=1)
    return out


if __name__ == "__main__":
    main()
