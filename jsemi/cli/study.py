"""`jsemi study`: the reproduction study (Algorithm 1 over architectures x datasets x seeds), resumable.

    jsemi study --scale cpu --out runs/study --doc docs/reproduction.md
    jsemi study --scale cpu --out runs/study --only 'vgg-digits-*'      # some units only
    jsemi study --out runs/study --report-only                          # rewrite the report

Every unit (architecture x dataset x pretraining seed) resumes where it stopped, a finished
unit is skipped, and the report (OUT/REPORT.md, OUT/summary.json, --doc) is recomputed from
the finished units.  ``--scale gpu`` is the same design at a lent accelerator's size.
"""

from __future__ import annotations

import argparse
import json


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``study`` subcommand to ``subparsers``."""
    p = subparsers.add_parser("study", help="reproduction study: claims with intervals across seeds (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--scale", default="cpu", help="cpu (a few hours on 2 cores), gpu (a lent accelerator) or tiny")
    p.add_argument("--out", required=True, help="output directory; rerun the same command to resume")
    p.add_argument("--doc", default=None, help="also write the report here (e.g. docs/reproduction.md), figures beside it")
    p.add_argument("--only", nargs="+", default=(), help="unit name globs, e.g. 'vgg-digits-*' (default: every unit)")
    p.add_argument("--max-units", type=int, default=None, help="stop after this many newly finished units")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--report-only", action="store_true", help="only rewrite the report from the finished units")
    p.add_argument("--list", action="store_true", help="list the scale's units and exit")
    p.add_argument("--progress", action="store_true", help="progress bars")
    p.set_defaults(func=run_study_cmd)
    return p


def run_study_cmd(args: argparse.Namespace) -> int:
    from jsemi.experiments.study import get_scale, run_study
    from jsemi.experiments.study_report import write_study_report

    config = get_scale(args.scale)
    if args.list:
        for u in config.units():
            print(u.name)
        return 0
    command = f"python -m jsemi study --scale {args.scale} --out {args.out}" + (f" --doc {args.doc}" if args.doc else "")
    if args.report_only:
        path = write_study_report(args.out, doc=args.doc, command=command)
        print(json.dumps({"report": str(path)}))
        return 0
    res = run_study(config, args.out, only=tuple(args.only), data_dir=args.data_dir, max_units=args.max_units,
                    progress=args.progress, doc=args.doc, command=command)
    print(json.dumps(res))
    return 0
