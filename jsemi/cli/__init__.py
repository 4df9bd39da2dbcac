"""The ``jsemi`` command line: one module per subcommand.

    jsemi train --model small_cnn --dataset fashion_mnist --mode pgd --preset cpu --out runs/robust
    jsemi eval  --run runs/robust --attack pgd --eps 0.1 --steps 20 --test-subset 2000
    jsemi estimate ... / jsemi linear ... / jsemi alg1 ...   (see ``jsemi <cmd> --help``)

Errors in the input (unknown model or dataset, bad eps, corrupt checkpoint,
mismatched run directory) print one line naming the problem and exit with 2.
Library modules never import from here.
"""

from __future__ import annotations

import argparse
import sys

from jsemi.cli import alg1, demo, estimate, evaluate, linear, reproduce, s1, study, sweep, table_s5, train
from jsemi.cli._common import EXIT_USAGE

# subcommand modules, in the order ``jsemi --help`` lists them; each has add_parser(sub)
SUBCOMMANDS = (train, evaluate, estimate, linear, alg1, demo, reproduce, sweep, s1, table_s5, study)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jsemi", description="Semirobust subnetworks in JAX/Flax")
    sub = parser.add_subparsers(dest="cmd", required=True)
    for module in SUBCOMMANDS:
        module.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``jsemi`` console script; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    from jsemi.checkpoint import CheckpointError

    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, CheckpointError, FileNotFoundError) as e:
        print(f"jsemi {args.cmd}: error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"jsemi {args.cmd}: interrupted; finished work is saved, rerun the same command to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
