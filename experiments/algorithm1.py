"""Algorithm 1 rows of an experiment (pretraining first if needed), with the table, figures and report.

    python experiments/algorithm1.py --experiment cpu --out runs/cpu
    python experiments/algorithm1.py --experiment paper-vgg16-cifar10 --out runs/vgg --attack autoattack
    python experiments/algorithm1.py --experiment cpu --out runs/cpu --fb 2 3 4 --k 2 --trials 5 --vmap 5

One run directory per row under OUT/alg1/<attack>/ (trial JSONs written as they finish;
rerun to resume), then OUT/alg1/<attack>/REPORT.md with the paper's table, the rho table
beside the nulls, the per-trial details, the claim check and the figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import experiment_parser, alg1_data, load_data, log, pretrain_pair, run_rows  # noqa: E402
from configs import get_experiment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, alg1=True)
    ap.add_argument("--attack", default=None, help="evaluation attack (default: the experiment's)")
    ap.add_argument("--k", type=float, default=None)
    args = ap.parse_args(argv)
    exp = get_experiment(args.experiment)
    out = Path(args.out)
    train, test = load_data(exp, args.data_dir)
    model, normal, robust, _ = pretrain_pair(exp, out, train, test, progress=not args.no_progress)
    ft, ev = alg1_data(exp, train, test)
    dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=args.fb, k=args.k, attack=args.attack,
                    trials=args.trials, vmap=args.vmap, progress=not args.no_progress)
    from jsemi.report import alg1_report, load_rows, table_markdown

    attack = args.attack or exp.alg1.eval_attack
    path = alg1_report(dirs, out / "alg1" / attack, title=f"Algorithm 1: {exp.name}, {attack}")
    rows, _ = load_rows(dirs)
    print(table_markdown(rows))
    log(f"report: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
