"""Options shared by the subcommands that run a named experiment (demo, reproduce, sweep, s1, table-s5)."""

from __future__ import annotations

import argparse


def add_experiment_args(p: argparse.ArgumentParser, *, positional: bool = True, default: str | None = "cpu",
                        out_default: str | None = None, alg1: bool = False) -> None:
    """CONFIG (or --experiment; ``default`` None = required), --out, --data-dir, --download, --no-progress; with ``alg1``
    also --fb, --trials, --vmap."""
    helptext = 'a name of `jsemi reproduce --list` ("cpu", "paper-<model>-<dataset>") or an experiment JSON file'
    if positional:
        tail = f" (default {default})" if default else ""
        p.add_argument("experiment", metavar="CONFIG", nargs="?", default=default, help=helptext + tail)
    else:
        p.add_argument("--experiment", default=default, metavar="CONFIG", help=helptext)
    if out_default is None:
        p.add_argument("--out", default=None, help="output directory (default runs/<CONFIG>); rerun to resume")
    else:
        p.add_argument("--out", default=out_default, help=f"output directory (default {out_default}); rerun to resume")
    p.add_argument("--data-dir", default=None, help="directory with local dataset files or prepared TFDS data")
    p.add_argument("--download", action="store_true",
                   help="prepare a missing TFDS dataset (CIFAR, MNIST) with tfds' builder first (needs network)")
    p.add_argument("--no-progress", action="store_true")
    if alg1:
        p.add_argument("--fb", type=int, nargs="+", default=None, help="# fb values (default: the experiment's)")
        p.add_argument("--trials", type=int, default=None, help="trials per row (default: the experiment's)")
        p.add_argument("--vmap", type=int, default=None, help="trials trained at once in one vmapped program")


def resolve(args: argparse.Namespace):
    """(Experiment, output directory) of parsed arguments; --out defaults to runs/<experiment name>."""
    from pathlib import Path

    from jsemi.experiments.configs import get_experiment

    if args.experiment is None:
        raise ValueError("give CONFIG: a name of `jsemi reproduce --list` or an experiment JSON file")
    exp = get_experiment(args.experiment)
    return exp, Path(args.out if args.out is not None else f"runs/{exp.name}")
