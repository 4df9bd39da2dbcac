"""``jsemi eval``: clean and attacked accuracy of a trained run.

    jsemi eval --run runs/robust --attack pgd --eps 0.1 --steps 20 --test-subset 2000
"""

from __future__ import annotations

import argparse
import json

from jsemi.cli._common import add_download_arg, budget, check_json_target, check_run_data, load_split, nonneg_int, positive_int, warn_eps


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("eval", help="clean and attacked accuracy of a trained run")
    p.add_argument("--run", required=True, help="run directory written by `jsemi train`")
    p.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    p.add_argument("--data-dir", default=None)
    add_download_arg(p)
    p.add_argument("--test-subset", type=positive_int, default=None)
    p.add_argument("--attack", default="pgd", help="none, fgsm, ifgsm, pgd, pgd-l2, cw, apgd-ce, apgd-t, fab-t, square, autoattack, autoattack-rand")
    p.add_argument("--norm", default="linf", help="linf or l2 (pgd-l2 and cw are always l2)")
    p.add_argument("--eps", type=budget, default=0.1, help="budget in pixel units of [0, 1] images")
    p.add_argument("--steps", type=positive_int, default=None)
    p.add_argument("--restarts", type=positive_int, default=None)
    p.add_argument("--batch-size", type=positive_int, default=500)
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    import jax

    from jsemi.evaluation import evaluate
    from jsemi.models import bind
    from jsemi.pretrain import load_trained

    check_json_target(args.json)  # before any work
    model, variables, meta = load_trained(args.run)
    dataset = args.dataset or meta["signature"]["dataset"]
    check_run_data(meta, None, dataset, args.run)  # before the data is looked for
    test = load_split(dataset, "test", args.data_dir, args.test_subset, args.seed, args.download)
    check_run_data(meta, test.images, dataset, args.run)
    attack = None
    if args.attack != "none":
        from jsemi.attacks import get_attack, make_threat

        norm = "l2" if args.attack in ("pgd-l2", "cw") else args.norm
        warn_eps(args.eps, norm, test.images.shape[1:])
        settings = {}
        if args.steps is not None:
            settings["steps"] = args.steps
        if args.restarts is not None:
            settings["restarts"] = args.restarts
        attack = get_attack(args.attack, make_threat(norm, args.eps), **settings)
    # one evaluator (jsemi.evaluation): AutoAttack runs on concrete batches, others compiled once
    res = evaluate(bind(model, variables), test.images, test.labels, jax.random.PRNGKey(args.seed), attack,
                   batch_size=args.batch_size, progress=not args.no_progress)
    out = {"run": str(args.run), "dataset": dataset, "n": res["n"], "clean_acc": res["acc"],
           "attack": args.attack, "eps": args.eps if attack else None, "adv_acc": res["adv_acc"]}
    print(json.dumps(out))
    if args.json:
        from jsemi.runs import write_json_atomic

        write_json_atomic(args.json, out)
    return 0
