"""`jsemi sweep`: the supplement's figure sweeps, from resumable Algorithm 1 runs.

    jsemi sweep layers cpu --out runs/cpu   # rho per layer for each # fb            (Fig. S2)
    jsemi sweep k      cpu --out runs/cpu   # rho against k                          (Fig. S3)
    jsemi sweep models cpu --out runs/cpu   # rho across independently pretrained models (Fig. S1)

Rows identical to `jsemi reproduce`'s share its run directories.  Output: OUT/sweeps/.
"""

from __future__ import annotations

import argparse

from jsemi.cli._experiment_args import add_experiment_args, resolve


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``sweep`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("sweep", help="figure sweeps: rho per layer, against k, across models",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("sweep", choices=("layers", "k", "models"))
    add_experiment_args(p, alg1=True)
    p.add_argument("--k-values", type=float, nargs="+", default=None, help="sweep k: default the experiment's")
    p.add_argument("--seeds", type=int, nargs="+", default=None, help="sweep models: default the experiment's")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.experiments.sweeps import SWEEPS
    from jsemi.experiments.timing import log

    exp, out = resolve(args)
    kw = dict(fb_values=args.fb, trials=args.trials, vmap=args.vmap, data_dir=args.data_dir, download=args.download,
              progress=not args.no_progress)
    if args.sweep == "k":
        kw["k_values"] = args.k_values
    elif args.k_values is not None:
        raise ValueError("--k-values applies to `jsemi sweep k`")
    if args.sweep == "models":
        kw["seeds"] = args.seeds
    elif args.seeds is not None:
        raise ValueError("--seeds applies to `jsemi sweep models`")
    png = SWEEPS[args.sweep](exp, out, **kw)
    log(f"wrote {png}")
    return 0
