"""Shared stages of the experiments: data, pretraining both networks, Algorithm 1 rows.

Directory layout under an experiment's output directory OUT::

    OUT/pretrain/normal[-seedS]/   jsemi.pretrain run (orbax checkpoints, history.json)
    OUT/pretrain/robust[-seedS]/
    OUT/alg1/<attack>/fb<F>[-k<K>][-seedS]/   jsemi.runs run directory of one table row
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Iterable

import numpy as np

from jsemi.experiments.configs import Experiment
from jsemi.experiments.timing import Stages, log


# ----------------------------------------------------------------------------- data


def load_data(exp: Experiment, data_dir: str | None = None, *, download: bool = False):
    """(train, test) ``jsemi.data.Dataset`` of the experiment (with its subsets); ``download`` prepares a
    missing TFDS dataset first (``jsemi.data.load_dataset``)."""
    from jsemi.data import load_dataset

    p = exp.pretrain
    opts = dict(p.data_options)
    train = load_dataset(p.dataset, "train", data_dir=data_dir, subset=p.train_subset, seed=p.seed,
                         download=download, **opts)
    test = load_dataset(p.dataset, "test", data_dir=data_dir, subset=p.test_subset, seed=p.seed,
                        download=download, **opts)
    return train, test


def subset(ds, n: int | None, seed: int, tag: int = 0):
    """A class-stratified subset (images, labels) of n examples of ``ds`` (all when n is None)."""
    from jsemi.data import stratified_indices

    if n is None or n >= len(ds):
        return ds.images, ds.labels
    idx = np.sort(stratified_indices(ds.labels, n, seed=seed * 7919 + tag))
    return ds.images[idx], ds.labels[idx]


# ----------------------------------------------------------------------------- pretraining


def pretrain_pair(exp: Experiment, out: Path, train, test, *, seed: int | None = None, progress: bool = True,
                  stages: Stages | None = None):
    """Trains (or reloads) the normal and the robust network; returns (model, normal_vars, robust_vars, info)."""
    from jsemi.pretrain import pretrain

    p = exp.pretrain
    seed = p.seed if seed is None else seed
    suffix = "" if seed == p.seed else f"-seed{seed}"
    eval_x, eval_y = subset(test, p.pretrain_eval_subset, seed, tag=11)
    out_vars, info = {}, {}
    model = None
    for kind, cfg in (("normal", p.normal), ("robust", p.robust)):
        run_dir = Path(out) / "pretrain" / f"{kind}{suffix}"
        name = f"pretrain {kind}" + (f" (seed {seed})" if suffix else "")
        ctx = stages(name) if stages is not None else _null()
        with ctx:
            before = _epochs_done(run_dir)
            res = pretrain(run_dir, p.model, train.images, train.labels, eval_x, eval_y, cfg,
                           num_classes=train.num_classes, dataset=p.dataset, seed=seed,
                           model_kwargs=dict(p.model_kwargs), train_subset=p.train_subset, progress=progress,
                           log=log, eval_batch_size=1000)
        if stages is not None and before >= cfg.epochs:
            stages.mark_reused(name)
        model = res.model
        out_vars[kind] = res.variables
        info[kind] = {"run_dir": str(run_dir), "history": res.history, "config": cfg.to_dict(), "seed": seed}
    return model, out_vars["normal"], out_vars["robust"], info


def _epochs_done(run_dir: Path) -> int:
    try:
        h = json.loads((Path(run_dir) / "history.json").read_text())
        return len(h)
    except (OSError, ValueError):
        return 0


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


# ----------------------------------------------------------------------------- Algorithm 1 rows


def alg1_data(exp: Experiment, train, test):
    """(fine-tuning train (x, y), evaluation test (x, y)) subsets of the experiment."""
    return (subset(train, exp.finetune_train_subset, exp.pretrain.seed, tag=21),
            subset(test, exp.eval_test_subset, exp.pretrain.seed, tag=22))


def row_dir(out: Path, attack: str, num_fb: int, k: float | None = None, seed: int | None = None) -> Path:
    name = f"fb{num_fb}"
    if k is not None:
        name += f"-k{k:g}"
    if seed is not None:
        name += f"-seed{seed}"
    return Path(out) / "alg1" / attack / name


def run_rows(exp: Experiment, model, normal, robust, ft_data, eval_data, out: Path, *,
             fb_values: Iterable[int] | None = None, k: float | None = None, attack: str | None = None,
             trials: int | None = None, vmap: int | None = None, seed_tag: int | None = None,
             progress: bool = True, overrides: dict | None = None) -> list[Path]:
    """Algorithm 1 for each # fb (one run directory per row); returns the run directories."""
    from jsemi.algorithms import algorithm1

    dirs = []
    for fb in (fb_values or exp.fb_values):
        extra = dict(overrides or {})
        if trials is not None:
            extra["trials"] = trials
        if vmap is not None:
            extra["vmap"] = vmap
        cfg = exp.row_config(fb, k=k, attack=attack, **extra)
        # rows identical to the experiment's base rows share their directory (and finished trials)
        k_tag = None if k is None or float(k) == float(exp.alg1.k) else k
        s_tag = None if seed_tag is None or (seed_tag == exp.pretrain.seed and cfg.seed == exp.alg1.seed) else seed_tag
        d = row_dir(out, cfg.eval_attack, fb, k_tag, s_tag)
        algorithm1(model, normal, robust, ft_data, eval_data, cfg, d, progress=progress, log=log)
        dirs.append(d)
    return dirs
