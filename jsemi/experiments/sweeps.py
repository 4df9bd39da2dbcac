"""Figure sweeps of the supplement, each from resumable Algorithm 1 runs.

- ``sweep_layers``: rho per layer for each # fb (Fig. S2), the experiment's # fb rows
  (shared with ``jsemi reproduce``);
- ``sweep_k``: rho against k (Fig. S3), one # fb (default: the smallest) for every k;
- ``sweep_models``: rho across independently pretrained models (Fig. S1), one (normal,
  robust) pair per seed of ``independent_seeds`` and one # fb row on each.

Every run is a jsemi.runs directory, so interrupted sweeps resume and finished rows are
reused.  Output: OUT/sweeps/<name>.png and <name>.md.  Command line:
``jsemi sweep {layers,k,models} CONFIG --out OUT``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jsemi.experiments.configs import Experiment
from jsemi.experiments.pipeline import alg1_data, load_data, pretrain_pair, run_rows


def _pretrained(exp: Experiment, out: Path, data_dir: str | None, download: bool, progress: bool):
    """(model, normal, robust, fine-tuning data, evaluation data) of the experiment's pretrained pair (resumable)."""
    train, test = load_data(exp, data_dir, download=download)
    model, normal, robust, _ = pretrain_pair(exp, out, train, test, progress=progress)
    return (model, normal, robust) + tuple(alg1_data(exp, train, test))


def sweep_layers(exp: Experiment, out: str | Path, *, fb_values: Sequence[int] | None = None, trials: int | None = None,
                 vmap: int | None = None, data_dir: str | None = None, download: bool = False,
                 progress: bool = True) -> Path:
    """rho per layer pair for each # fb; returns the figure's path."""
    from jsemi import report

    out = Path(out)
    model, normal, robust, ft, ev = _pretrained(exp, out, data_dir, download, progress)
    dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=fb_values, trials=trials,
                    vmap=vmap, progress=progress)
    rows, _ = report.load_rows(dirs)
    png = report.plot_rho_per_layer(rows, out / "sweeps" / "rho_per_layer.png")
    (out / "sweeps" / "rho_per_layer.md").write_text(
        f"# rho per layer pair for each # fb ({exp.name})\n\n" + report.rho_table_markdown(rows)
        + f"\n![rho per layer]({png.name})\n")
    return png


def sweep_k(exp: Experiment, out: str | Path, *, fb_values: Sequence[int] | None = None,
            k_values: Sequence[float] | None = None, trials: int | None = None, vmap: int | None = None,
            data_dir: str | None = None, download: bool = False, progress: bool = True) -> Path:
    """rho against k for the first of ``fb_values`` (default: the smallest # fb); returns the figure's path."""
    from jsemi import report

    out = Path(out)
    model, normal, robust, ft, ev = _pretrained(exp, out, data_dir, download, progress)
    fb = (fb_values or [min(exp.fb_values)])[0]
    dirs = []
    for k in (k_values or exp.k_values):
        dirs += run_rows(exp, model, normal, robust, ft, ev, out, fb_values=[fb], k=k, trials=trials,
                         vmap=vmap, progress=progress)
    rows, _ = report.load_rows(dirs)
    png = report.plot_rho_vs_k(rows, out / "sweeps" / f"rho_vs_k_fb{fb}.png")
    (out / "sweeps" / f"rho_vs_k_fb{fb}.md").write_text(
        f"# rho against k, # fb {fb} ({exp.name})\n\n" + report.table_markdown(rows)
        + "\n"
        + report.rho_table_markdown(rows) + f"\n![rho vs k]({png.name})\n")
    return png


def sweep_models(exp: Experiment, out: str | Path, *, fb_values: Sequence[int] | None = None,
                 seeds: Sequence[int] | None = None, trials: int | None = None, vmap: int | None = None,
                 data_dir: str | None = None, download: bool = False, progress: bool = True) -> Path:
    """rho across independently pretrained pairs (one per seed); returns the figure's path."""
    from jsemi import report

    out = Path(out)
    train, test = load_data(exp, data_dir, download=download)
    fb = (fb_values or [min(exp.fb_values)])[0]
    series, rows = {}, []
    for seed in (seeds or exp.independent_seeds):
        model, normal, robust, _ = pretrain_pair(exp, out, train, test, seed=seed, progress=progress)
        ft, ev = alg1_data(exp, train, test)
        dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=[fb], trials=trials, vmap=vmap,
                        progress=progress, seed_tag=seed, overrides={"seed": seed})
        r, _ = report.load_rows(dirs)
        rows += [dict(row, pretrain_seed=seed) for row in r]
        series[f"pretraining seed {seed}"] = {j: {"rho": e["rho"][0], "null": e["null"][0]}
                                              for j, e in r[0]["rho_pairs"].items()}
    png = report.plot_rho_across_models(series, out / "sweeps" / f"rho_across_models_fb{fb}.png")
    (out / "sweeps" / f"rho_across_models_fb{fb}.md").write_text(
        f"# rho across independently pretrained models, # fb {fb} ({exp.name})\n\n"
        + report.table_markdown(rows) + "\n" + report.rho_table_markdown(rows) + f"\n![rho across models]({png.name})\n")
    return png


SWEEPS = {"layers": sweep_layers, "k": sweep_k, "models": sweep_models}
