"""The ``jsemi`` command line: train, eval, and the subcommands of the experiment modules.

    jsemi train --model small_cnn --dataset fashion_mnist --mode pgd --preset cpu --out runs/robust
    jsemi eval  --run runs/robust --attack pgd --eps 0.1 --steps 20 --test-subset 2000
    jsemi estimate ... / jsemi linear ... / jsemi alg1 ...   (see ``jsemi <cmd> --help``)

Errors in the input (unknown model or dataset, bad eps, corrupt checkpoint,
mismatched run directory) print one line naming the problem and exit with 2.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

EXIT_USAGE = 2


def _add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, mnist, cifar10, cifar100, tiny_imagenet, digits, synthetic")
    p.add_argument("--data-dir", default=None, help="directory with local dataset files (overrides the default locations)")
    p.add_argument("--train-subset", type=int, default=None, help="use this many training images (deterministic subset)")
    p.add_argument("--test-subset", type=int, default=None, help="use this many test images (deterministic subset)")


def load_split(name: str, split: str, data_dir: str | None, subset: int | None, seed: int = 0):
    """Loads one split through ``jsemi.data`` and returns the Dataset."""
    from jsemi.data import load_dataset

    return load_dataset(name, split, data_dir=data_dir, subset=subset, seed=seed)


def cmd_train(args: argparse.Namespace) -> int:
    from jsemi.pretrain import pretrain
    from jsemi.train import config_from_preset

    config = config_from_preset(
        args.preset, mode=args.mode, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, eps=args.eps, attack_steps=args.attack_steps,
        attack_step_size=args.attack_step_size, weight_decay=args.weight_decay,
        augment=(False if args.no_augment else None),
    )
    train = load_split(args.dataset, "train", args.data_dir, args.train_subset, args.seed)
    test = load_split(args.dataset, "test", args.data_dir, args.test_subset, args.seed)
    model_kwargs = {}
    if args.dtype != "float32":
        from jsemi.precision import compute_dtype

        import jax.numpy as jnp

        name = jnp.dtype(compute_dtype(args.dtype)).name  # validates; "auto" -> bfloat16 on TPU/GPU
        if name != "float32":
            model_kwargs["dtype"] = name  # a string, so the run signature stays JSON
    res = pretrain(
        args.out, args.model, train.images, train.labels, test.images, test.labels, config,
        num_classes=train.num_classes, dataset=args.dataset, seed=args.seed, model_kwargs=model_kwargs,
        train_subset=args.train_subset, progress=not args.no_progress, stop_after_epochs=args.stop_after_epochs,
    )
    last = res.history[-1] if res.history else {}
    print(json.dumps({"run_dir": str(res.run_dir), "epochs": len(res.history), **{k: last.get(k) for k in ("test_acc", "train_acc")}}))
    return 0


def make_threat(norm: str, eps: float):
    """Threat model object for a norm name ('linf' or 'l2') and a budget ``eps``."""
    from jsemi.attacks import L2Ball, LinfBall

    if norm == "linf":
        return LinfBall(eps)
    if norm == "l2":
        return L2Ball(eps)
    raise ValueError(f"unknown norm {norm!r}; choose linf or l2")


def cmd_eval(args: argparse.Namespace) -> int:
    import jax

    from jsemi.pretrain import load_trained
    from jsemi.train import evaluate

    model, variables, meta = load_trained(args.run)
    dataset = args.dataset or meta["signature"]["dataset"]
    test = load_split(dataset, "test", args.data_dir, args.test_subset, args.seed)
    attack = None
    if args.attack != "none":
        from jsemi.attacks.registry import get_attack

        norm = "l2" if args.attack in ("pgd-l2", "cw") else args.norm
        settings = {}
        if args.steps is not None:
            settings["steps"] = args.steps
        if args.restarts is not None:
            settings["restarts"] = args.restarts
        attack = get_attack(args.attack, make_threat(norm, args.eps), **settings)
    res = evaluate(model, variables, test.images, test.labels, jax.random.PRNGKey(args.seed), attack=attack,
                   batch_size=args.batch_size, progress=not args.no_progress)
    out = {"run": str(args.run), "dataset": dataset, "n": res["n"], "clean_acc": res["acc"],
           "attack": args.attack, "eps": args.eps if attack else None, "adv_acc": res["adv_acc"]}
    print(json.dumps(out))
    if args.json:
        from jsemi.pretrain import write_json_atomic

        write_json_atomic(args.json, out)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="jsemi", description="Semirobust subnetworks in JAX/Flax")
    sub = parser.add_subparsers(dest="cmd", required=True)

    p = sub.add_parser("train", help="train a model normally or adversarially (resumable)")
    p.add_argument("--model", default="small_cnn")
    _add_data_args(p)
    p.add_argument("--mode", default=None, help="standard, pgd, trades, atta, atta_trades")
    p.add_argument("--preset", default="cpu", help="hyperparameter preset: cpu or paper")
    p.add_argument("--optimizer", default=None)
    p.add_argument("--lr", type=float, default=None)
    p.add_argument("--weight-decay", type=float, default=None)
    p.add_argument("--epochs", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=None)
    p.add_argument("--eps", type=float, default=None, help="L-inf training budget in pixel units")
    p.add_argument("--attack-steps", type=int, default=None)
    p.add_argument("--attack-step-size", type=float, default=None)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--dtype", default="float32", help="compute dtype: float32, bfloat16 or auto (bf16 on TPU/GPU); params stay float32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", required=True, help="run directory (checkpoints, history.json); rerun to resume")
    p.add_argument("--stop-after-epochs", type=int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="clean and attacked accuracy of a trained run")
    p.add_argument("--run", required=True, help="run directory written by `jsemi train`")
    p.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-subset", type=int, default=None)
    p.add_argument("--attack", default="pgd", help="none, fgsm, ifgsm, pgd, pgd-l2, cw, apgd-ce, apgd-t, fab-t, square, autoattack, autoattack-rand")
    p.add_argument("--norm", default="linf", help="linf or l2 (pgd-l2 and cw are always l2)")
    p.add_argument("--eps", type=float, default=0.1)
    p.add_argument("--steps", type=int, default=None)
    p.add_argument("--restarts", type=int, default=None)
    p.add_argument("--batch-size", type=int, default=500)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", default=None, help="also write the result to this JSON file")
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=cmd_eval)

    for module, names in (("jsemi.estimators.cli", ("add_estimate_parser", "add_linear_parser")),
                          ("jsemi.algorithms_cli", ("add_alg1_parser",))):
        try:
            mod = __import__(module, fromlist=list(names))
        except ImportError:
            continue
        for name in names:
            if hasattr(mod, name):
                getattr(mod, name)(sub)
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
