"""`jsemi table-s5`: Table S5, Algorithm 1 with other adversarial training methods (PGD, TRADES, ATTA).

    jsemi table-s5 cpu --out runs/table_s5 [--methods pgd,trades,atta,atta_trades] [--fb 2,4]
    jsemi table-s5 --tiny --out /tmp/s5      # seconds-scale check on scikit-learn digits

Writes OUT/table_s5.md and OUT/table_s5.json; pretraining and finished trials are reused.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from jsemi.cli._experiment_args import add_experiment_args


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``table-s5`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("table-s5", help="Table S5: Algorithm 1 with PGD, TRADES, ATTA, ATTA+TRADES",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(p, out_default="runs/table_s5")
    p.add_argument("--methods", default=None, help="comma-separated (default: pgd,trades,atta,atta_trades)")
    p.add_argument("--fb", default=None, help="comma-separated # fb values (default: the experiment's)")
    p.add_argument("--trials", type=int, default=None)
    p.add_argument("--max-epochs", type=int, default=None)
    p.add_argument("--trades-beta", type=float, default=None, help="TRADES beta (default: the config's, 6)")
    p.add_argument("--shared-robust", action="store_true", help="one PGD-trained robust network for every method")
    p.add_argument("--no-measure", action="store_true", help="skip rho / gamma (no rho columns)")
    p.add_argument("--tiny", action="store_true", help="seconds-scale check on scikit-learn digits")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.experiments import table_s5
    from jsemi.experiments.configs import get_experiment

    exp = get_experiment(args.experiment)
    if args.tiny:
        exp = table_s5.tiny_experiment(exp)
    fb = tuple(int(v) for v in args.fb.split(",")) if args.fb else None
    methods = table_s5.METHODS if args.methods is None else [m.strip() for m in args.methods.split(",") if m.strip()]
    doc = table_s5.run(exp, args.out, methods=methods,
                       fb_values=fb, trials=args.trials, max_epochs=args.max_epochs,
                       shared_robust=args.shared_robust, trades_beta=args.trades_beta, measure=not args.no_measure,
                       data_dir=args.data_dir, download=args.download, progress=not args.no_progress)
    print(doc["table_markdown"])
    print(f"written: {Path(args.out) / 'table_s5.md'}")
    return 0
