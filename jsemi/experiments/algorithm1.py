"""Algorithm 1 rows of an experiment (pretraining first if needed), with the table, figures and report.

One run directory per row under OUT/alg1/<attack>/ (trial JSONs written as they finish;
rerun to resume), then OUT/alg1/<attack>/REPORT.md with the paper's table, the rho table
beside the nulls, the per-trial details, the claim check and the figures.
Command line: ``jsemi reproduce CONFIG [--attack A] [--fb F ...] [--k K] [--trials T] [--vmap V]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterable

from jsemi.experiments.configs import Experiment
from jsemi.experiments.pipeline import alg1_data, load_data, pretrain_pair, run_rows


def run_algorithm1(exp: Experiment, out: str | Path, *, fb_values: Iterable[int] | None = None, k: float | None = None,
                   attack: str | None = None, trials: int | None = None, vmap: int | None = None,
                   data_dir: str | None = None, download: bool = False,
                   progress: bool = True) -> tuple[Path, list[dict]]:
    """Runs (or resumes) the rows; returns (REPORT.md path, table rows of ``jsemi.report.load_rows``)."""
    from jsemi.report import alg1_report, load_rows

    out = Path(out)
    train, test = load_data(exp, data_dir, download=download)
    model, normal, robust, _ = pretrain_pair(exp, out, train, test, progress=progress)
    ft, ev = alg1_data(exp, train, test)
    dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=fb_values, k=k, attack=attack,
                    trials=trials, vmap=vmap, progress=progress)
    attack = attack or exp.alg1.eval_attack
    path = alg1_report(dirs, out / "alg1" / attack, title=f"Algorithm 1: {exp.name}, {attack}")
    rows, _ = load_rows(dirs)
    return path, rows
