"""``jsemi train``: train a model normally or adversarially into a resumable run directory.

    jsemi train --model small_cnn --dataset fashion_mnist --mode pgd --preset cpu --out runs/robust
"""

from __future__ import annotations

import argparse
import json

from jsemi.cli._common import add_data_args, budget, load_split, nonneg_float, nonneg_int, positive_int, warn_eps


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("train", help="train a model normally or adversarially (resumable)")
    p.add_argument("--model", default="small_cnn")
    add_data_args(p)
    p.add_argument("--mode", default=None, help="standard, pgd, trades, atta, atta_trades")
    p.add_argument("--preset", default="cpu", help="hyperparameter preset: cpu or paper")
    p.add_argument("--optimizer", default=None)
    p.add_argument("--lr", type=nonneg_float, default=None)
    p.add_argument("--weight-decay", type=nonneg_float, default=None)
    p.add_argument("--epochs", type=positive_int, default=None,
                   help="total epochs; rerunning a run with a larger value extends it")
    p.add_argument("--batch-size", type=positive_int, default=None)
    p.add_argument("--eps", type=budget, default=None, help="L-inf training budget in pixel units of [0, 1] images")
    p.add_argument("--attack-steps", type=positive_int, default=None)
    p.add_argument("--attack-step-size", type=budget, default=None)
    p.add_argument("--no-augment", action="store_true")
    p.add_argument("--dtype", default="float32", help="compute dtype: float32, bfloat16 or auto (bf16 on TPU/GPU); params stay float32")
    p.add_argument("--seed", type=nonneg_int, default=0)
    p.add_argument("--out", required=True, help="run directory (checkpoints, history.json); rerun to resume")
    p.add_argument("--stop-after-epochs", type=nonneg_int, default=None, help=argparse.SUPPRESS)
    p.add_argument("--no-progress", action="store_true")
    p.set_defaults(func=run)

    return p


def run(args: argparse.Namespace) -> int:
    from jsemi.pretrain import pretrain
    from jsemi.train import config_from_preset

    config = config_from_preset(
        args.preset, mode=args.mode, optimizer=args.optimizer, lr=args.lr, epochs=args.epochs,
        batch_size=args.batch_size, eps=args.eps, attack_steps=args.attack_steps,
        attack_step_size=args.attack_step_size, weight_decay=args.weight_decay,
        augment=(False if args.no_augment else None),
    )
    if config.mode != "standard":
        warn_eps(config.eps, config.attack_norm)
    train = load_split(args.dataset, "train", args.data_dir, args.train_subset, args.seed, args.download)
    test = load_split(args.dataset, "test", args.data_dir, args.test_subset, args.seed, args.download)
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
