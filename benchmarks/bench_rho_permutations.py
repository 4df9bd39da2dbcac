"""CPU cost of the permutation null: network_rhos on a SmallCNN layer pair, 20 vs 99 permutations.

    python benchmarks/bench_rho_permutations.py [--examples 1000] [--layers 5 6]

Prints CPU seconds (time.process_time, all threads of this process) and wall seconds per
(estimator, permutations), each after a warm-up call (compilation excluded). The weights are a
random initialisation and the images uniform noise: the cost does not depend on what they hold.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import jax
import numpy as np

from jsemi.estimators import network_rhos
from jsemi.models import SmallCNN, init_model


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--examples", type=int, default=1000, help="attacked test points (balanced over 10 classes)")
    p.add_argument("--layers", type=int, nargs="+", default=[5, 6], help="rho_j for the pairs (j-1, j)")
    p.add_argument("--estimators", nargs="+", default=["edge", "ksg", "gaussian"])
    p.add_argument("--permutations", type=int, nargs="+", default=[20, 99])
    a = p.parse_args()
    model = SmallCNN(num_classes=10)
    variables = init_model(model, jax.random.key(0), (28, 28, 1))
    rng = np.random.default_rng(0)
    x = rng.uniform(size=(a.examples, 28, 28, 1)).astype(np.float32)
    y = np.arange(a.examples) % 10
    rows = []
    for est in a.estimators:
        network_rhos(model, variables, x, y, jax.random.key(1), a.layers, est, permutations=2)  # compile
        for perms in a.permutations:
            c0, t0 = time.process_time(), time.time()
            out = network_rhos(model, variables, x, y, jax.random.key(1), a.layers, est, permutations=perms)
            rows.append(dict(estimator=est, permutations=perms, cpu_s=round(time.process_time() - c0, 2),
                             wall_s=round(time.time() - t0, 2), p_values=[round(r["p_value"], 3) for r in out]))
            print(json.dumps(rows[-1]), flush=True)
    print(json.dumps(dict(load_average=os.getloadavg(), examples=a.examples, layers=a.layers)))


if __name__ == "__main__":
    main()
