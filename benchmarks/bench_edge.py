"""Benchmark: jitted EDGE (jsemi) against a NumPy/dict reference of the same algorithm.

The reference has the structure of the paper authors' EDGE script (our own code): a Python
loop over columns for the per-feature std, scikit-learn ``NearestNeighbors`` for the k-NN
bandwidth of every projected column, and per-point dictionary hashing for the collision
counts. Both get the same random draws (projections, bandwidth query rows, shifts), so
they compute the same number up to float32-vs-float64 rounding (jsemi runs in float32, the
reference, like the authors' script, projects in float64).

Runs (rho = sum_y pi(y) EDGE(a; b | y), the authors' settings: L = 1, 500 query rows):

- ``small``: N = 10,000 points in 10 classes, d = 4,096 for both layers; reference vs jsemi
  (first call = compile + run, then the median of warm calls; wall clock and process CPU
  time summed over threads, the latter less sensitive to other jobs on the machine), and
  jsemi with all rows as bandwidth queries (its default).
- ``large``: N = 50,000 in 10 classes, d = 16,384; jsemi only, in a child process whose
  peak resident memory (ru_maxrss, data included) is reported.

Usage:
  python benchmarks/bench_edge.py                  # small + large
  python benchmarks/bench_edge.py --skip-large
  python benchmarks/bench_edge.py --json out.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import math
import os
import platform
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))


# ---------------------------------------------------------------------------------------------
# reference (NumPy + dicts, the authors' structure)
# ---------------------------------------------------------------------------------------------


def reference_edge(X, Y, gx, gy, queries, ux, uy, U=10.0, gamma=0.4, eps_range=0.1, shift_scale=0.1):
    """EDGE of one class with given draws, structured like the authors' ``mi_estimator.EDGE``."""
    from sklearn.neighbors import NearestNeighbors

    N = X.shape[0]
    dim_X, dim_Y = X.shape[1], Y.shape[1]

    def gen_w(Z, g):
        d = Z.shape[1]
        std = np.array([np.std(Z[:, [i]]) for i in range(d)])  # per-column loop
        std_mat = np.tile(std.reshape(d, 1), (1, g.shape[1]))
        std_mat[std_mat < 0.0001] = 1
        return np.asarray(g, np.float64) / (std_mat * np.sqrt(d))

    if gx is not None:
        XW = np.dot(X, gen_w(X, gx))
        YV = np.dot(Y, gen_w(Y, gy))
    else:
        XW, YV = X.astype(np.float64), Y.astype(np.float64)
    d_X, d_Y = XW.shape[1], YV.shape[1]

    def find_knn(A, d):
        A = A.reshape((-1, 1))
        n = A.shape[0]
        k = math.floor(0.43 * n ** (2 / 3 + 0.17 * (d / (d + 1))) * math.exp(-1.0 / max(10000, d**4)))
        k = min(max(k, 1), n)
        T = A[np.asarray(queries)] if queries is not None else A
        nbrs = NearestNeighbors(n_neighbors=k, algorithm="auto").fit(A)
        distances, _ = nbrs.kneighbors(T)
        return np.mean(distances[:, -1])

    eps_X = np.array([find_knn(XW[:, [i]], d_X) for i in range(d_X)]) + 0.0001
    eps_Y = np.array([find_knn(YV[:, [i]], d_Y) for i in range(d_Y)]) + 0.0001
    cx = 18 * d_X / max(1 + math.log(dim_X), 1) * gamma
    cy = 18 * d_Y / max(1 + math.log(dim_Y), 1) * gamma
    L = ux.shape[0]
    T = np.linspace(1, 1 + eps_range, L) if L > 1 else np.ones(1)
    vals = []
    for j in range(L):
        ex, ey = eps_X * cx * T[j], eps_Y * cy * T[j]
        bx = shift_scale * np.asarray(ux[j], np.float64) * ex
        by = shift_scale * np.asarray(uy[j], np.float64) * ey
        CX, CY, CXY = {}, {}, {}
        for i in range(N):
            xl = tuple(np.floor((XW[i] + bx) / ex).tolist())
            yl = tuple(np.floor((YV[i] + by) / ey).tolist())
            CX.setdefault(xl, []).append(i)
            CY.setdefault(yl, []).append(i)
            CXY.setdefault((xl, yl), []).append(i)
        I = 0.0
        for e, members in CXY.items():
            nij, ni, mj = len(members), len(CX[e[0]]), len(CY[e[1]])
            I += nij * max(min(math.log(nij * N / (ni * mj), 2), U), 0.001)
        vals.append(I / N)
    return float(np.median(vals))


def reference_rho(a, b, labels, key, num_classes, *, knn_queries=500):
    """sum_y pi(y) reference_edge(...) with the draws jsemi's conditional_mi uses for each class."""
    import jax

    from jsemi.estimators import edge_randomness

    # conditional_mi: key -> (reduction key, estimator key); class c uses fold_in(estimator key, c)
    _, k_est = jax.random.split(key)
    n = a.shape[0]
    total = 0.0
    for c in range(num_classes):
        idx = np.nonzero(labels == c)[0]
        r = edge_randomness(jax.random.fold_in(k_est, c), len(idx), a.shape[1], b.shape[1], knn_queries=knn_queries)
        v = reference_edge(
            a[idx], b[idx],
            None if r.gx is None else np.asarray(r.gx), None if r.gy is None else np.asarray(r.gy),
            None if r.queries is None else np.asarray(r.queries), np.asarray(r.ux), np.asarray(r.uy),
        )
        total += len(idx) / n * v
    return total


# ---------------------------------------------------------------------------------------------
# data
# ---------------------------------------------------------------------------------------------


def make_layers(n, d, num_classes, seed=0, chunk=2048):
    """Two ReLU 'layers' with class structure, y = relu(x + noise); float32, built in chunks."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(num_classes), n // num_classes).astype(np.int32)
    latent = 16
    A = (rng.standard_normal((latent, d), dtype=np.float32) / np.sqrt(latent)).astype(np.float32)
    M = rng.standard_normal((num_classes, d), dtype=np.float32) * 0.5
    x = np.empty((n, d), np.float32)
    y = np.empty((n, d), np.float32)
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        z = rng.standard_normal((e - s, latent), dtype=np.float32)
        xs = z @ A + M[labels[s:e]] + 0.5 * rng.standard_normal((e - s, d), dtype=np.float32)
        np.maximum(xs, 0, out=xs)
        x[s:e] = xs
        ys = xs + 0.5 * rng.standard_normal((e - s, d), dtype=np.float32)
        np.maximum(ys, 0, out=ys)
        y[s:e] = ys
    return x, y, labels


# ---------------------------------------------------------------------------------------------
# runs
# ---------------------------------------------------------------------------------------------


def _time_jsemi(a, b, labels, key, num_classes, knn_queries, reps):
    from jsemi.estimators import conditional_mi

    kw = dict(estimator="edge", num_classes=num_classes, edge_kwargs=dict(knn_queries=knn_queries))
    t = time.perf_counter()
    rho, _ = conditional_mi(a, b, labels, key, **kw)
    first = time.perf_counter() - t
    warm, cpu = [], []
    for _ in range(reps):
        t, c = time.perf_counter(), time.process_time()
        rho2, _ = conditional_mi(a, b, labels, key, **kw)
        warm.append(time.perf_counter() - t)
        cpu.append(time.process_time() - c)
        assert rho2 == rho
    return rho, first, float(np.median(warm)), float(np.min(warm)), float(np.median(cpu))


def run_small(n, d, num_classes, reps, seed):
    import jax

    x, y, labels = make_layers(n, d, num_classes, seed)
    key = jax.random.key(seed)
    out = dict(n=n, d=d, num_classes=num_classes)
    t, c = time.perf_counter(), time.process_time()
    out["reference_rho"] = reference_rho(x, y, labels, key, num_classes, knn_queries=500)
    out["reference_s"] = time.perf_counter() - t
    out["reference_cpu_s"] = time.process_time() - c
    rho, first, med, best, cpu = _time_jsemi(x, y, labels, key, num_classes, 500, reps)
    out.update(jsemi_rho=rho, jsemi_first_call_s=first, jsemi_warm_median_s=med, jsemi_warm_min_s=best,
               jsemi_warm_median_cpu_s=cpu)
    out["abs_diff_bits"] = abs(rho - out["reference_rho"])
    out["speedup_warm_median"] = out["reference_s"] / med
    out["speedup_cpu_time"] = out["reference_cpu_s"] / cpu
    rho_all, first_all, med_all, _, _ = _time_jsemi(x, y, labels, key, num_classes, None, reps)
    out.update(jsemi_allrows_rho=rho_all, jsemi_allrows_warm_median_s=med_all)
    return out


def run_large(n, d, num_classes, seed):
    """Run in a child process so ru_maxrss is this run's peak."""
    code = (
        "import json,sys,time,resource;sys.path.insert(0,%r);import bench_edge as b;import jax;"
        "t=time.perf_counter();x,y,l=b.make_layers(%d,%d,%d,%d);tg=time.perf_counter()-t;"
        "from jsemi.estimators import conditional_mi;"
        "t=time.perf_counter();r,_=conditional_mi(x,y,l,jax.random.key(%d),estimator='edge',num_classes=%d,"
        "edge_kwargs=dict(knn_queries=500));te=time.perf_counter()-t;"
        "print(json.dumps(dict(rho=r,data_gib=(x.nbytes+y.nbytes)/2**30,gen_s=tg,edge_s=te,"
        "peak_rss_gib=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss/2**20)))"
    ) % (os.path.dirname(os.path.abspath(__file__)), n, d, num_classes, seed, seed, num_classes)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr[-4000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    res.update(n=n, d=d, num_classes=num_classes)
    return res


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--n", type=int, default=10_000)
    p.add_argument("--d", type=int, default=4096)
    p.add_argument("--classes", type=int, default=10)
    p.add_argument("--reps", type=int, default=5)
    p.add_argument("--large-n", type=int, default=50_000)
    p.add_argument("--large-d", type=int, default=16_384)
    p.add_argument("--skip-large", action="store_true")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=str, default=None)
    args = p.parse_args(argv)
    # GPU: do not let this process grab 75% of device memory, the large run's child needs it.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    import jax

    info = dict(
        date=datetime.datetime.now().isoformat(timespec="seconds"),
        platform=platform.platform(),
        cpu_count=os.cpu_count(),
        jax=jax.__version__,
        backend=jax.default_backend(),
        devices=[str(dv) for dv in jax.devices()],
        command="python " + " ".join(sys.argv),
    )
    print(json.dumps(info, indent=1), flush=True)
    results = dict(info=info)
    if not args.skip_small:
        results["small"] = run_small(args.n, args.d, args.classes, args.reps, args.seed)
        print(json.dumps(results["small"], indent=1), flush=True)
    if not args.skip_large:
        results["large"] = run_large(args.large_n, args.large_d, args.classes, args.seed)
        print(json.dumps(results["large"], indent=1), flush=True)
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
