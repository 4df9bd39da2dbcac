"""``jsemi linear``: Algorithm S1 (linear dependency of a frozen network's logits on fa*).

    jsemi linear --run runs/robust --out runs/robust/linear --attacks none,fgsm,pgd,autoattack
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from jsemi.cli._common import add_run_args, load_run, nonneg_float, nonneg_int, positive_int, write_outputs


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``jsemi linear``: Algorithm S1 for several fa* sizes and attacks."""
    p = subparsers.add_parser("linear", help="Algorithm S1: linear dependency of a frozen network's logits on fa*")
    add_run_args(p)
    p.add_argument("--split", type=positive_int, action="append", default=None,
                   help="fa* size a (repeat); default: n-2 and the paper's n-4, n-8, n-12 that exist")
    p.add_argument("--attacks", default="none,fgsm,pgd,autoattack", help="comma-separated: none and registry names")
    p.add_argument("--steps", type=positive_int, default=10, help="PGD steps")
    p.add_argument("--lambda-batch-size", type=positive_int, default=256, help="batch size of the per-batch pinv (paper's protocol)")
    p.add_argument("--ridge", type=nonneg_float, default=1e-6, help="relative ridge of the exact global solution")
    p.add_argument("--random-trials", type=nonneg_int, default=10)
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of examples kept out of the fit (also reported)")
    p.set_defaults(func=run_linear)
    return p


def default_s1_splits(n: int) -> list[int]:
    """The paper's fa* sizes n-4, n-8, n-12 (ResNet-18: 17, 13, 9) plus n-2, those in 1..n-1."""
    return sorted(a for a in {n - 2, n - 4, n - 8, n - 12} if 1 <= a <= n - 1)


def run_linear(args: argparse.Namespace) -> int:
    """Algorithm S1 for the requested fa* sizes and attacks; writes linear.json and linear.md."""
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.estimators.semirobust import network_info

    model, variables, meta, x, y, threat, info, key = load_run(args)
    n, _ = network_info(model, variables, x)
    splits = sorted(set(args.split)) if args.split else default_s1_splits(n)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise ValueError("--attacks is empty")
    settings = {"pgd": {"steps": args.steps}}
    t = time.perf_counter()
    rows = algorithm_s1_sweep(model, variables, x, y, key, split_points=splits, attacks=[None if a == "none" else a for a in attacks],
                              threat=threat, attack_settings=settings, lambda_batch_size=args.lambda_batch_size,
                              ridge=args.ridge, random_trials=args.random_trials, holdout=args.holdout,
                              batch_size=args.batch_size)
    obj = {"n": n, "rows": rows, "settings": {**info, "splits": splits, "attacks": attacks, "seconds": time.perf_counter() - t}}
    md = s1_markdown(rows) + f"\nRun `{info['run']}` ({info['model']}, {info['dataset']}, n = {n} weight layers), " \
                             f"{info['num_test']} test images, threat {info['threat']['norm']} eps = {info['threat']['eps']:.4g}.\n"
    paths = write_outputs(Path(args.out), "linear", obj, md)
    print(json.dumps({"out": paths, "rows": len(rows)}))
    return 0
