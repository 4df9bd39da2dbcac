"""The README's functional-API pattern with three weight sets: does a new weight set recompile?

For each way of handing the model to ``jsemi.attacks.pgd`` (a plain closure, as the README
used to show; ``jax.tree_util.Partial(model.apply, variables)``; ``jsemi.models.bind``), PGD-20
on 64 digits images runs with three independently initialised weight sets of one SmallCNN.
Each call is timed (wall and process CPU seconds) and its XLA compilations are counted through
jax's monitoring events.  The reference is a fourth call that reuses the compiled program
(same function object, same weights).  Reported: seconds per call and the ratio of calls
2 and 3 to the reference (the target is <= 1.3x).

    python benchmarks/bench_compile.py [--steps 20] [--batch 64]
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import jax
import jax.numpy as jnp
from jax.tree_util import Partial

from jsemi.attacks import LinfBall, pgd
from jsemi.data import load_dataset
from jsemi.models import bind, get_model, init_model

_COUNT = [0]


def _listener(event, *args, **kwargs):
    if event == "/jax/core/compile/backend_compile_duration":
        _COUNT[0] += 1


def timed(fn):
    c0, t0, p0 = _COUNT[0], time.perf_counter(), time.process_time()
    jax.block_until_ready(fn())
    return time.perf_counter() - t0, time.process_time() - p0, _COUNT[0] - c0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    jax.monitoring.register_event_duration_secs_listener(_listener)
    ds = load_dataset("digits", "test")
    x = jnp.asarray(ds.images[: args.batch], jnp.float32) / 255.0
    y = jnp.asarray(ds.labels[: args.batch])
    model = get_model("small_cnn", num_classes=10)
    weights = [init_model(model, jax.random.key(s), x.shape[1:]) for s in range(3)]
    threat = LinfBall(0.1)
    forms = {
        "closure (lambda x: model.apply(variables, x))": lambda v: (lambda z: model.apply(v, z, train=False)),
        "jax.tree_util.Partial(model.apply, variables)": lambda v: Partial(model.apply, v),
        "jsemi.models.bind(model, variables)": lambda v: bind(model, v),
    }
    print(f"# {platform.node()} {platform.machine()}, {os.cpu_count()} CPUs, jax {jax.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}, {time.strftime('%Y-%m-%d %H:%M')}")
    print(f"PGD-{args.steps}, batch {args.batch} digits images (8x8x1), SmallCNN\n")
    print("| model function | call 1 [s] | call 2 [s] | call 3 [s] | compilations 1/2/3 | reuse call [s] | "
          "call 2 / reuse | call 3 / reuse | CPU s calls 2+3 |")
    print("|:---|---:|---:|---:|:---|---:|---:|---:|---:|")
    for name, make in forms.items():
        rows, fns = [], []
        for i, v in enumerate(weights):
            f = make(v)
            fns.append(f)
            rows.append(timed(lambda f=f: pgd(f, x, y, jax.random.key(1), threat, steps=args.steps)))
        reuse = min(timed(lambda: pgd(fns[-1], x, y, jax.random.key(1), threat, steps=args.steps))[0] for _ in range(3))
        print(f"| {name} | " + " | ".join(f"{r[0]:.2f}" for r in rows) + f" | {'/'.join(str(r[2]) for r in rows)} | "
              f"{reuse:.2f} | {rows[1][0] / reuse:.2f}x | {rows[2][0] / reuse:.2f}x | {rows[1][1] + rows[2][1]:.2f} |")
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
