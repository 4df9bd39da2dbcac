"""Pretraining the normal and the robust network of an experiment (resumable; reused by every other stage).

Writes OUT/pretrain/{normal,robust}[-seedS]/ (orbax checkpoints after every epoch and
history.json); rerunning continues an interrupted run and does nothing for a finished one.
Command line: ``jsemi reproduce CONFIG --pretrain-only [--seed S]``.
"""

from __future__ import annotations

from pathlib import Path

from jsemi.experiments.configs import Experiment
from jsemi.experiments.pipeline import load_data, pretrain_pair
from jsemi.experiments.timing import Stages


def pretrain_experiment(exp: Experiment, out: str | Path, *, seed: int | None = None, data_dir: str | None = None,
                        download: bool = False, progress: bool = True) -> dict:
    """Trains (or reloads) both networks; returns {kind: {run_dir, epochs, test_acc}}; stage times in
    OUT/timings-pretrain.json."""
    out = Path(out)
    stages = Stages(out / "timings-pretrain.json")
    with stages("load data"):
        train, test = load_data(exp, data_dir, download=download)
    _, _, _, info = pretrain_pair(exp, out, train, test, seed=seed, progress=progress, stages=stages)
    stages.save()
    return {k: {"run_dir": v["run_dir"], "epochs": len(v["history"]),
                "test_acc": v["history"][-1]["test_acc"] if v["history"] else None} for k, v in info.items()}
