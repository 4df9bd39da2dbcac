"""Shared pieces of the subcommands: data arguments, loading a split, writing results."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

EXIT_USAGE = 2


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, mnist, cifar10, cifar100, tiny_imagenet, digits, synthetic")
    p.add_argument("--data-dir", default=None, help="directory with local dataset files (overrides the default locations)")
    p.add_argument("--train-subset", type=int, default=None, help="use this many training images (deterministic subset)")
    p.add_argument("--test-subset", type=int, default=None, help="use this many test images (deterministic subset)")


def load_split(name: str, split: str, data_dir: str | None, subset: int | None, seed: int = 0):
    """Loads one split through ``jsemi.data`` and returns the Dataset."""
    from jsemi.data import load_dataset

    return load_dataset(name, split, data_dir=data_dir, subset=subset, seed=seed)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Arguments of the subcommands that measure a trained run (estimate, linear)."""
    p.add_argument("--run", required=True, help="run directory written by `jsemi train` (its latest checkpoint is used)")
    p.add_argument("--out", required=True, help="output directory for the JSON and Markdown results")
    p.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-subset", type=int, default=1000, help="test images used (stratified, deterministic; 0 or more than the split = all)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--eps", type=float, default=None, help="attack budget in pixel units (default: the run's training eps)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def load_images(dataset: str, split: str, data_dir, subset: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 images in [0, 1], int32 labels) of a split; a stratified subset of ``subset``
    examples (``jsemi.data.stratified_indices``) when it is smaller than the split, else all."""
    from jsemi.data import stratified_indices

    ds = load_split(dataset, split, data_dir, None, seed)
    images, labels = ds.images, np.asarray(ds.labels, np.int32)
    if subset and subset < len(labels):
        keep = np.sort(stratified_indices(labels, subset, seed=seed))
        images, labels = images[keep], labels[keep]
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    return x, labels


def load_run(args):
    """(model, variables, meta, x, y, threat, info, key) of ``--run`` on its test split."""
    import jax

    from jsemi.attacks import make_threat
    from jsemi.pretrain import load_trained

    model, variables, meta = load_trained(args.run)
    sig = meta.get("signature", {})
    dataset = args.dataset or sig.get("dataset")
    if not dataset:
        raise ValueError(f"{args.run}: the run records no dataset; pass --dataset")
    x, y = load_images(dataset, "test", args.data_dir, args.test_subset, args.seed)
    eps = args.eps if args.eps is not None else float(sig.get("config", {}).get("eps", 8 / 255))
    threat = make_threat(args.norm, eps)
    info = {"run": str(args.run), "model": sig.get("model"), "dataset": dataset, "num_test": int(len(x)),
            "threat": {"norm": args.norm, "eps": eps}, "seed": args.seed}
    return model, variables, meta, x, y, threat, info, jax.random.PRNGKey(args.seed)


def write_outputs(out: Path, stem: str, obj: dict, markdown: str) -> dict:
    from jsemi.estimators.bounds import jsonable

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    for kind, text in (("json", json.dumps(jsonable(obj), indent=2, allow_nan=False)), ("markdown", markdown)):
        tmp = paths[kind].with_name(paths[kind].name + ".tmp")
        tmp.write_text(text)
        tmp.replace(paths[kind])
    return {k: str(v) for k, v in paths.items()}
