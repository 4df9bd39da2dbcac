"""Shared pieces of the subcommands: argument types, data arguments, loading a split and a
run (checked against each other), writing results."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

EXIT_USAGE = 2


# ----------------------------------------------------------------------------- argument types
# argparse turns their ValueError into "argument --x: invalid positive_int value" with exit 2;
# ArgumentTypeError keeps our message instead.


def _number(convert, ok, what: str):
    """An argparse type: ``convert(text)`` that must satisfy ``ok``; the message says ``what`` it must be."""

    def parse(text: str):
        try:
            v = convert(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {what}, got {text!r}") from None
        if not ok(v):
            raise argparse.ArgumentTypeError(f"must be {what}, got {text}")
        return v

    return parse


# an int >= 1 (batch sizes, steps, epochs, trials)
positive_int = _number(int, lambda v: v >= 1, "a positive integer")
# an int >= 0 (subset sizes where 0 means all, seeds)
nonneg_int = _number(int, lambda v: v >= 0, "an integer >= 0")
# a finite float >= 0 (learning rates, weight decay)
nonneg_float = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0")
# a finite float >= 0 in pixel units of [0, 1] images (eps, step sizes)
budget = _number(float, lambda v: math.isfinite(v) and v >= 0, "a finite number >= 0 (pixel units of [0, 1] images)")


def warn_eps(eps: float, norm: str, image_shape=None) -> None:
    """Warns on stderr (via ``jsemi.validation.warn_large_eps``) when --eps looks like 0-255 units."""
    from jsemi.validation import warn_large_eps

    dim = int(np.prod(image_shape)) if image_shape is not None else None
    warn_large_eps(eps, norm, dim, name="--eps")


def check_json_target(path) -> None:
    """Checks before any work that ``--json PATH`` can be written (not a directory, its folder writable)."""
    from jsemi.runs import check_output_location

    if path is None:
        return
    p = Path(path)
    if p.is_dir():
        raise ValueError(f"--json {p} is a directory; give a file path")
    check_output_location(p.parent if str(p.parent) else Path("."), what="folder of --json")


def add_data_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--dataset", default="fashion_mnist", help="fashion_mnist, mnist, cifar10, cifar100, tiny_imagenet, digits, synthetic")
    p.add_argument("--data-dir", default=None, help="directory with local dataset files (overrides the default locations)")
    p.add_argument("--train-subset", type=positive_int, default=None, help="use this many training images (deterministic subset)")
    p.add_argument("--test-subset", type=positive_int, default=None, help="use this many test images (deterministic subset)")
    add_download_arg(p)


def add_download_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--download", action="store_true",
                   help="prepare a TFDS dataset (cifar10, cifar100, mnist, fashion_mnist) with tensorflow-datasets first")


def load_split(name: str, split: str, data_dir: str | None, subset: int | None, seed: int = 0,
               download: bool = False):
    """Loads one split through ``jsemi.data`` (``download``: prepare a TFDS dataset first) and returns the Dataset."""
    from jsemi.data import load_dataset

    return load_dataset(name, split, data_dir=data_dir, subset=subset, seed=seed, download=download)


def add_run_args(p: argparse.ArgumentParser) -> None:
    """Arguments of the subcommands that measure a trained run (estimate, linear)."""
    p.add_argument("--run", required=True, help="run directory written by `jsemi train` (its latest checkpoint is used)")
    p.add_argument("--out", required=True, help="output directory for the JSON and Markdown results")
    p.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    p.add_argument("--data-dir", default=None)
    add_download_arg(p)
    p.add_argument("--test-subset", type=nonneg_int, default=1000, help="test images used (stratified, deterministic; 0 or more than the split = all)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--eps", type=budget, default=None, help="attack budget in pixel units (default: the run's training eps)")
    p.add_argument("--batch-size", type=positive_int, default=256)
    p.add_argument("--seed", type=nonneg_int, default=0)


def load_images(dataset: str, split: str, data_dir, subset: int | None, seed: int,
                download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(float32 images in [0, 1], int32 labels) of a split; a stratified subset of ``subset``
    examples (``jsemi.data.stratified_indices``) when it is smaller than the split, else all."""
    from jsemi.data import stratified_indices, unit_float

    ds = load_split(dataset, split, data_dir, None, seed, download)
    images, labels = ds.images, np.asarray(ds.labels, np.int32)
    if subset and subset < len(labels):
        keep = np.sort(stratified_indices(labels, subset, seed=seed))
        images, labels = images[keep], labels[keep]
    return unit_float(images), labels


def check_run_data(meta: dict, images: np.ndarray | None, dataset: str, run) -> None:
    """Names a run / dataset mismatch ("the run R expects 8x8x1 input, but fashion_mnist images
    are 28x28x1") before any model is applied.  ``images=None``: checked against the dataset's
    known shape (``jsemi.data.input_shape_of``), before the data is looked for."""
    from jsemi.data import input_shape_of
    from jsemi.validation import check_input_shape

    want = meta.get("input_shape")
    if want:
        shape = input_shape_of(dataset) if images is None else images.shape
        check_input_shape(shape, want, what=f"the run {run}", data=dataset)


def load_run(args):
    """(model, variables, meta, x, y, threat, info, key) of ``--run`` on its test split."""
    import jax

    from jsemi.attacks import make_threat
    from jsemi.pretrain import load_trained
    from jsemi.runs import check_output_location

    check_output_location(args.out, what="--out")  # before any work
    model, variables, meta = load_trained(args.run)
    sig = meta.get("signature", {})
    dataset = args.dataset or sig.get("dataset")
    if not dataset:
        raise ValueError(f"{args.run}: the run records no dataset; pass --dataset")
    check_run_data(meta, None, dataset, args.run)  # before the data is looked for
    x, y = load_images(dataset, "test", args.data_dir, args.test_subset, args.seed, args.download)
    check_run_data(meta, x, dataset, args.run)
    eps = args.eps if args.eps is not None else float(sig.get("config", {}).get("eps", 8 / 255))
    warn_eps(eps, args.norm, x.shape[1:])
    threat = make_threat(args.norm, eps)
    info = {"run": str(args.run), "model": sig.get("model"), "dataset": dataset, "num_test": int(len(x)),
            "threat": {"norm": args.norm, "eps": eps}, "seed": args.seed}
    return model, variables, meta, x, y, threat, info, jax.random.PRNGKey(args.seed)


def write_outputs(out: Path, stem: str, obj: dict, markdown: str) -> dict:
    """Writes ``out/stem.json`` and ``out/stem.md`` atomically (``jsemi.runs.write_text_atomic``), and
    each table of the JSON as ``out/stem_<key>.csv`` (``jsemi.csv_tables.write_json_tables``)."""
    from jsemi.csv_tables import write_json_tables
    from jsemi.estimators.bounds import jsonable
    from jsemi.runs import write_text_atomic

    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    doc = jsonable(obj)
    write_text_atomic(paths["json"], json.dumps(doc, indent=2, allow_nan=False))
    write_text_atomic(paths["markdown"], markdown)
    paths.update({f"csv_{name}": p for name, p in write_json_tables(out, stem, doc).items()})
    return {k: str(v) for k, v in paths.items()}
