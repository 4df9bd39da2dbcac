"""`jsemi alg1`: Algorithm 1 on two trained run directories (normal and robust), resumable.

    jsemi alg1 --normal runs/normal --robust runs/robust --num-fb 2 4 --trials 3 --epochs 4 \\
        --preset cpu --eps 0.1 --train-subset 4096 --test-subset 1000 --out runs/alg1

One run directory per # fb under --out (``fb<F>``), each trial written as JSON the moment
it finishes; rerunning the same command skips finished trials, and a changed setting is
refused instead of being mixed in.  Afterwards --out/REPORT.md, table.md and the figures
summarise every row.  ``--config`` reads an ``Alg1Config`` as JSON, or an experiment
(a name of ``jsemi reproduce --list`` or a JSON file it writes with ``--write-configs``)
whose ``alg1`` entry is used; the flags given on the command line override it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

from jsemi.cli._common import budget, nonneg_float, nonneg_int, positive_int


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Adds the ``alg1`` subcommand to ``subparsers`` ."""
    p = subparsers.add_parser("alg1", help="Algorithm 1: semirobust transfer trials (resumable)",
                              description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--normal", required=True, help="run directory of the normally trained network (jsemi train)")
    p.add_argument("--robust", required=True, help="run directory of the adversarially trained network")
    p.add_argument("--out", required=True, help="output directory (one run directory per # fb); rerun to resume")
    p.add_argument("--config", default=None, help="Alg1Config JSON, experiment JSON or experiment name "
                                                   "(jsemi reproduce --list); flags override it")
    p.add_argument("--num-fb", type=positive_int, nargs="+", default=None, help="# fb values, one table row each")
    p.add_argument("--a", type=positive_int, nargs="+", default=None, help="split points instead of --num-fb")
    p.add_argument("--k", type=nonneg_float, default=None, help="stop at Acc* - k (accuracy points); default 0")
    p.add_argument("--epochs", type=positive_int, default=None, help="E, the maximum fine-tuning epochs (default 10)")
    p.add_argument("--trials", type=positive_int, default=None, help="trials per row (default 10)")
    p.add_argument("--seed", type=nonneg_int, default=None)
    p.add_argument("--vmap", type=positive_int, default=None, help="train this many trials at once (jax.vmap); default 1")
    p.add_argument("--dataset", default=None, help="default: the normal run's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--train-subset", type=positive_int, default=None, help="fine-tuning images (stratified subset)")
    p.add_argument("--test-subset", type=positive_int, default=None, help="test images for every attacked accuracy")
    p.add_argument("--attack", default=None, help="evaluation attack: none, fgsm, pgd, autoattack, ... (default pgd)")
    p.add_argument("--attack-steps", type=positive_int, default=None)
    p.add_argument("--attack-step-size", type=budget, default=None)
    p.add_argument("--norm", default=None, help="linf or l2")
    p.add_argument("--eps", type=budget, default=None, help="budget in pixel units (default: the robust run's)")
    p.add_argument("--preset", default=None, help="fine-tuning TrainConfig preset: cpu or paper "
                                                   "(default: the robust run's training config)")
    p.add_argument("--ft-lr", type=nonneg_float, default=None)
    p.add_argument("--ft-batch-size", type=positive_int, default=None)
    p.add_argument("--ft-attack-steps", type=positive_int, default=None)
    p.add_argument("--rho-estimators", default=None, help="comma-separated, first is the tables' (default ksg,edge)")
    p.add_argument("--measure-examples", type=positive_int, default=None)
    p.add_argument("--no-measure", action="store_true", help="skip rho / gamma / sensitivities")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run_alg1)
    return p


def _base_config(path: str | None):
    from jsemi.algorithms import Alg1Config

    if path is None:
        return None
    from jsemi.experiments.configs import EXPERIMENTS

    if path in EXPERIMENTS:  # a named experiment
        return EXPERIMENTS[path].alg1
    with open(path) as f:
        d = json.load(f)
    if "alg1" in d and "pretrain" in d:  # an experiment file
        d = d["alg1"]
    return Alg1Config.from_dict(d)


def build_config(args: argparse.Namespace, robust_meta: dict, split: dict):
    """The Alg1Config of one row from --config, the robust run's settings and the flags."""
    from jsemi.algorithms import Alg1Config
    from jsemi.train import TrainConfig, config_from_preset

    base = _base_config(args.config)
    d = base.to_dict() if base is not None else {}
    sig = robust_meta.get("signature", {})
    robust_cfg = TrainConfig.from_dict(sig.get("config", {})) if sig.get("config") else TrainConfig(mode="pgd")
    if args.preset is not None:
        ft = config_from_preset(args.preset, mode="pgd")
    elif base is not None:
        ft = base.finetune
    else:
        ft = dataclasses.replace(robust_cfg, mode=robust_cfg.mode if robust_cfg.mode != "standard" else "pgd")
    ft_over = {"lr": args.ft_lr, "batch_size": args.ft_batch_size, "attack_steps": args.ft_attack_steps}
    if args.eps is not None:
        ft_over["eps"] = args.eps
    ft = dataclasses.replace(ft, **{k: v for k, v in ft_over.items() if v is not None})
    d["finetune"] = ft
    if base is None:
        d.setdefault("eps", robust_cfg.eps)
        d.setdefault("norm", robust_cfg.attack_norm)
    over = {"k": args.k, "max_epochs": args.epochs, "trials": args.trials, "seed": args.seed, "vmap": args.vmap,
            "norm": args.norm, "eps": args.eps, "measure_examples": args.measure_examples}
    d.update({k: v for k, v in over.items() if v is not None})
    if args.attack is not None:
        d["eval_attack"] = args.attack
        if base is None or base.eval_attack != args.attack:
            d["eval_attack_settings"] = {"steps": 10, "random_start": True} if args.attack == "pgd" else {}
    if args.attack_steps is not None or args.attack_step_size is not None:
        s = dict(d.get("eval_attack_settings", {"steps": 10, "random_start": True}))
        if args.attack_steps is not None:
            s["steps"] = args.attack_steps
        if args.attack_step_size is not None:
            s["step_size"] = args.attack_step_size
        d["eval_attack_settings"] = s
    if args.rho_estimators is not None:
        d["rho_estimators"] = tuple(e.strip() for e in args.rho_estimators.split(",") if e.strip())
    if args.no_measure:
        d["measure"] = False
    d.update(split)
    d.setdefault("net", sig.get("model", ""))
    d.setdefault("dataset", args.dataset or sig.get("dataset", ""))
    return Alg1Config.from_dict({k: v for k, v in d.items()})


def run_alg1(args: argparse.Namespace) -> int:
    """Runs the rows, then writes --out/REPORT.md; prints a JSON summary."""
    from jsemi.algorithms import algorithm1
    from jsemi.data import load_dataset
    from jsemi.pretrain import load_trained
    from jsemi.report import alg1_report, load_rows

    from jsemi.cli._common import check_run_data, warn_eps
    from jsemi.runs import check_output_location, lock_run_dir

    if (args.num_fb is None) == (args.a is None):
        if args.config is None:
            raise ValueError("give --num-fb (or --a) with one or more values")
    check_output_location(args.out, what="--out")  # before any work; one writer at a time:
    lock = lock_run_dir(args.out)  # noqa: F841 - held until this command returns (each row's RunDir locks too)
    model, normal, n_meta = load_trained(args.normal)
    model_r, robust, r_meta = load_trained(args.robust)
    if n_meta["signature"]["model"] != r_meta["signature"]["model"] or \
            n_meta["signature"].get("model_kwargs") != r_meta["signature"].get("model_kwargs"):
        raise ValueError(f"the normal ({n_meta['signature']['model']}) and robust ({r_meta['signature']['model']}) "
                         "runs are not the same architecture")
    dataset = args.dataset or n_meta["signature"]["dataset"]
    for run, meta in ((args.normal, n_meta), (args.robust, r_meta)):
        check_run_data(meta, None, dataset, run)  # before the data is looked for
    # data subsets are fixed (seed 0) so runs with other --seed values see the same images
    train = load_dataset(dataset, "train", data_dir=args.data_dir, subset=args.train_subset, seed=0)
    test = load_dataset(dataset, "test", data_dir=args.data_dir, subset=args.test_subset, seed=0)
    for run, meta in ((args.normal, n_meta), (args.robust, r_meta)):
        check_run_data(meta, test.images, dataset, run)
    if args.eps is not None:
        warn_eps(args.eps, args.norm or "linf", test.images.shape[1:])
    if args.num_fb is not None:
        splits = [{"num_fb": f, "a": None} for f in args.num_fb]
    elif args.a is not None:
        splits = [{"a": a, "num_fb": None} for a in args.a]
    else:
        splits = [{}]
    out = Path(args.out)
    dirs = []
    for sp in splits:
        cfg = build_config(args, r_meta, sp)
        name = f"fb{cfg.num_fb}" if cfg.num_fb is not None else f"a{cfg.a}"
        algorithm1(model, normal, robust, train, test, cfg, out / name, progress=not args.no_progress, log=print)
        dirs.append(out / name)
    report = alg1_report(dirs, out, title=f"Algorithm 1: {n_meta['signature']['model']} on {dataset}")
    rows, _ = load_rows(dirs)
    summary = [{"num_fb": r["num_fb"], "acc": r["acc"], "acc_star": r["acc_star"], "acc_sr": r["acc_sr"][0],
                "acc_tilde": r["acc_tilde"][0], "diff": r["diff"][0], "epochs": r["epochs"][0],
                "converged": r["converged"], "trials": r["trials"], "rho": r["rho_columns"]} for r in rows]
    print(json.dumps({"out": str(out), "report": str(report), "rows": summary}))
    return 0
