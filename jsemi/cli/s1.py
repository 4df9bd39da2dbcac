"""`jsemi s1`: Algorithm S1 on an experiment's robust network (linear dependency of the logits on fa*).

    jsemi s1 cpu --out runs/cpu
    jsemi s1 paper-resnet18-cifar10 --out runs/r18 --attacks none fgsm pgd autoattack

Pretrains first if OUT/pretrain lacks the networks; writes OUT/s1/S1.md and OUT/s1/s1.json.
(`jsemi linear` runs the same on a `jsemi train` run directory.)
"""

from __future__ import annotations

import argparse

from jsemi.cli._experiment_args import add_experiment_args, resolve


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``s1`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("s1", help="Algorithm S1 on an experiment's robust network",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(p)
    p.add_argument("--attacks", nargs="+", default=None, help="default: every attack of the experiment")
    p.add_argument("--split-points", type=int, nargs="+", default=None)
    p.add_argument("--examples", type=int, default=None)
    p.add_argument("--holdout", type=float, default=0.2)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.experiments.algorithm_s1 import run_algorithm_s1
    from jsemi.experiments.timing import log

    exp, out = resolve(args)
    path, md = run_algorithm_s1(exp, out, attacks=args.attacks, split_points=args.split_points,
                                examples=args.examples, holdout=args.holdout, data_dir=args.data_dir,
                                download=args.download,
                                progress=not args.no_progress)
    print(md)
    log(f"wrote {path}")
    return 0
