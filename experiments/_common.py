"""Shared plumbing of the experiment scripts: data, pretraining both networks, Algorithm 1 rows, timing.

Directory layout under an experiment's output directory OUT::

    OUT/pretrain/normal[-seedS]/   jsemi.pretrain run (orbax checkpoints, history.json)
    OUT/pretrain/robust[-seedS]/
    OUT/alg1/<attack>/fb<F>[-k<K>][-seedS]/   jsemi.runs run directory of one table row
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Iterable

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import numpy as np  # noqa: E402

from configs import Experiment, get_experiment  # noqa: E402,F401


def experiment_parser(doc: str, *, out_default: str | None = None, alg1: bool = False) -> argparse.ArgumentParser:
    """The scripts' common options: --experiment, --out, --data-dir, --no-progress; with
    ``alg1`` also the Algorithm 1 row options --fb, --trials and --vmap."""
    ap = argparse.ArgumentParser(description=doc.split("\n")[0])
    ap.add_argument("--experiment", default="cpu", help="a name from experiments/configs.py or a JSON file")
    if out_default is None:
        ap.add_argument("--out", required=True)
    else:
        ap.add_argument("--out", default=out_default)
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--no-progress", action="store_true")
    if alg1:
        ap.add_argument("--fb", type=int, nargs="+", default=None, help="# fb values (default: the experiment's)")
        ap.add_argument("--trials", type=int, default=None, help="trials per row (default: the experiment's)")
        ap.add_argument("--vmap", type=int, default=None, help="trials trained at once in one vmapped program")
    return ap


def log(msg: str) -> None:
    """Prints a progress line (flushed, so it interleaves correctly with tqdm on stderr)."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(msg)
    except ImportError:  # pragma: no cover
        print(msg, flush=True)
    sys.stdout.flush()


class Stages:
    """Wall time of named stages, kept in OUT/timings.json across invocations.

    ``with stages("pretrain normal"):`` times a block; ``stages.note(name, reused=True)``
    marks a stage whose results were loaded from an earlier invocation.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.current: dict[str, dict] = {}
        self.previous: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.previous = json.loads(self.path.read_text()).get("stages", {})
            except (OSError, ValueError):
                self.previous = {}
        self.t0 = time.perf_counter()
        self.load_start = _loadavg()

    def __call__(self, name: str):
        stages = self

        class _Ctx:
            def __enter__(self):
                self.t = time.perf_counter()
                log(f"== {name}")
                return self

            def __exit__(self, et, ev, tb):
                if et is None:
                    dt = time.perf_counter() - self.t
                    stages.current[name] = {"seconds": dt}
                    log(f"== {name}: {dt:.1f} s")
                return False

        return _Ctx()

    def mark_reused(self, name: str) -> None:
        if name in self.current:
            self.current[name]["reused"] = True

    def save(self) -> None:
        from jsemi.runs import write_json_atomic

        total = time.perf_counter() - self.t0
        merged = {}
        for name, rec in self.current.items():
            first = self.previous.get(name, {})
            if rec.get("reused") and "first_run_seconds" in first:
                rec = {**rec, "first_run_seconds": first["first_run_seconds"]}
            elif rec.get("reused") and first.get("seconds") is not None and not first.get("reused"):
                rec = {**rec, "first_run_seconds": first["seconds"]}
            elif not rec.get("reused"):
                rec = {**rec, "first_run_seconds": rec["seconds"]}
            merged[name] = rec
        self.load_end = _loadavg()
        write_json_atomic(self.path, {"stages": merged, "total_seconds": total, "load_average_start": self.load_start,
                                      "load_average_end": self.load_end})
        self.total = total
        self.merged = merged


def _loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes competing for the cores), if available."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None


# ----------------------------------------------------------------------------- data


def load_data(exp: Experiment, data_dir: str | None = None):
    """(train, test) ``jsemi.data.Dataset`` of the experiment (with its subsets)."""
    from jsemi.data import load_dataset

    p = exp.pretrain
    opts = dict(p.data_options)
    train = load_dataset(p.dataset, "train", data_dir=data_dir, subset=p.train_subset, seed=p.seed, **opts)
    test = load_dataset(p.dataset, "test", data_dir=data_dir, subset=p.test_subset, seed=p.seed, **opts)
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
