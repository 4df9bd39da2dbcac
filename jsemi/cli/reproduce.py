"""`jsemi reproduce`: an experiment's pretraining and Algorithm 1 rows, with the report (resumable).

    jsemi reproduce --list                                   # the configurations (paper and CPU scale)
    jsemi reproduce cpu --out runs/cpu
    jsemi reproduce paper-vgg16-cifar10 --out runs/vgg --attack autoattack
    jsemi reproduce cpu --out runs/cpu --fb 2 3 4 --k 2 --trials 5 --vmap 5
    jsemi reproduce cpu --out runs/cpu --pretrain-only --seed 1   # an independent pair (Fig. S1)
    jsemi reproduce --write-configs DIR                      # every configuration as JSON (edit, pass the file)

One run directory per row under OUT/alg1/<attack>/ (trial JSONs written as they finish;
rerun to resume), then OUT/alg1/<attack>/REPORT.md.  Pretraining writes OUT/pretrain/.
"""

from __future__ import annotations

import argparse
import json

from jsemi.cli._experiment_args import add_experiment_args, resolve


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``reproduce`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("reproduce", help="an experiment's pretraining + Algorithm 1 rows; --list the configs",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_experiment_args(p, default=None, alg1=True)
    p.add_argument("--list", action="store_true", help="list the named configurations and exit")
    p.add_argument("--write-configs", metavar="DIR", default=None, help="write every configuration as JSON and exit")
    p.add_argument("--attack", default=None, help="evaluation attack (default: the experiment's)")
    p.add_argument("--k", type=float, default=None)
    p.add_argument("--pretrain-only", action="store_true", help="only pretrain the normal and the robust network")
    p.add_argument("--seed", type=int, default=None,
                   help="pretraining seed with --pretrain-only (default: the experiment's)")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.experiments import configs

    if args.list:
        for name, exp in configs.EXPERIMENTS.items():
            print(f"{name:32s} {configs.summary(exp)}")
        return 0
    if args.write_configs is not None:
        paths = configs.save_all(args.write_configs)
        print(f"wrote {len(paths)} configurations to {args.write_configs}")
        return 0
    exp, out = resolve(args)
    progress = not args.no_progress
    if args.pretrain_only:
        from jsemi.experiments.pretrain import pretrain_experiment
        from jsemi.experiments.timing import log

        log(json.dumps(pretrain_experiment(exp, out, seed=args.seed, data_dir=args.data_dir, download=args.download,
                                           progress=progress)))
        return 0
    if args.seed is not None:
        raise ValueError("--seed applies to --pretrain-only (independent pairs: `jsemi sweep models`)")
    from jsemi.experiments.algorithm1 import run_algorithm1
    from jsemi.experiments.timing import log
    from jsemi.report import table_markdown

    path, rows = run_algorithm1(exp, out, fb_values=args.fb, k=args.k, attack=args.attack, trials=args.trials,
                                vmap=args.vmap, data_dir=args.data_dir, download=args.download, progress=progress)
    print(table_markdown(rows))
    log(f"report: {path}")
    return 0
