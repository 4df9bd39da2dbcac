"""`jsemi demo`: the CPU-scale pipeline end to end (pretraining, Algorithm 1, bounds, S1), OUT/REPORT.md.

    jsemi demo --out runs/demo            # what `make demo` runs; ~6-10 minutes on 2 CPU cores

Rerunning the same command reuses every finished stage.
"""

from __future__ import annotations

import argparse
import time

from jsemi.cli._experiment_args import add_experiment_args, resolve


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``demo`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("demo", help="the CPU-scale demo end to end, writes OUT/REPORT.md",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(p, positional=False, out_default="runs/demo")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.experiments.demo import run_demo
    from jsemi.experiments.timing import log

    exp, out = resolve(args)
    t0 = time.perf_counter()
    run_demo(exp, out, data_dir=args.data_dir, download=args.download, progress=not args.no_progress)
    log(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return 0
