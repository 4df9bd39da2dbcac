"""Figure sweeps of the supplement, each from resumable Algorithm 1 runs.

    python experiments/sweeps.py layers --experiment cpu --out runs/cpu   # rho per layer for each # fb (Fig. S2)
    python experiments/sweeps.py k      --experiment cpu --out runs/cpu   # rho against k            (Fig. S3)
    python experiments/sweeps.py models --experiment cpu --out runs/cpu   # rho across independently
                                                                            # pretrained models      (Fig. S1)

``layers`` runs the experiment's # fb rows (shared with experiments/algorithm1.py);
``k`` runs one # fb (default: the smallest) for every k of the experiment; ``models``
pretrains one (normal, robust) pair per seed of ``independent_seeds`` and runs one
# fb row on each.  Every run is a jsemi.runs directory, so interrupted sweeps resume and
finished rows are reused.  Output: OUT/sweeps/<name>.png and <name>.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import experiment_parser, alg1_data, load_data, log, pretrain_pair, run_rows  # noqa: E402
from configs import get_experiment  # noqa: E402


def sweep_layers(exp, out: Path, args) -> Path:
    from jsemi import report

    train, test = load_data(exp, args.data_dir)
    model, normal, robust, _ = pretrain_pair(exp, out, train, test, progress=not args.no_progress)
    ft, ev = alg1_data(exp, train, test)
    dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=args.fb, trials=args.trials,
                    vmap=args.vmap, progress=not args.no_progress)
    rows, _ = report.load_rows(dirs)
    png = report.plot_rho_per_layer(rows, out / "sweeps" / "rho_per_layer.png")
    (out / "sweeps" / "rho_per_layer.md").write_text(
        f"# rho per layer pair for each # fb ({exp.name})\n\n" + report.rho_table_markdown(rows)
        + f"\n![rho per layer]({png.name})\n")
    return png


def sweep_k(exp, out: Path, args) -> Path:
    from jsemi import report

    train, test = load_data(exp, args.data_dir)
    model, normal, robust, _ = pretrain_pair(exp, out, train, test, progress=not args.no_progress)
    ft, ev = alg1_data(exp, train, test)
    fb = (args.fb or [min(exp.fb_values)])[0]
    dirs = []
    for k in (args.k_values or exp.k_values):
        dirs += run_rows(exp, model, normal, robust, ft, ev, out, fb_values=[fb], k=k, trials=args.trials,
                         vmap=args.vmap, progress=not args.no_progress)
    rows, _ = report.load_rows(dirs)
    png = report.plot_rho_vs_k(rows, out / "sweeps" / f"rho_vs_k_fb{fb}.png")
    (out / "sweeps" / f"rho_vs_k_fb{fb}.md").write_text(
        f"# rho against k, # fb {fb} ({exp.name})\n\n" + report.table_markdown(rows)
        + "\n"
        + report.rho_table_markdown(rows) + f"\n![rho vs k]({png.name})\n")
    return png


def sweep_models(exp, out: Path, args) -> Path:
    from jsemi import report

    train, test = load_data(exp, args.data_dir)
    fb = (args.fb or [min(exp.fb_values)])[0]
    series, rows = {}, []
    for seed in (args.seeds or exp.independent_seeds):
        model, normal, robust, _ = pretrain_pair(exp, out, train, test, seed=seed, progress=not args.no_progress)
        ft, ev = alg1_data(exp, train, test)
        dirs = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=[fb], trials=args.trials, vmap=args.vmap,
                        progress=not args.no_progress, seed_tag=seed, overrides={"seed": seed})
        r, _ = report.load_rows(dirs)
        rows += [dict(row, pretrain_seed=seed) for row in r]
        series[f"pretraining seed {seed}"] = {j: {"rho": e["rho"][0], "null": e["null"][0]}
                                              for j, e in r[0]["rho_pairs"].items()}
    png = report.plot_rho_across_models(series, out / "sweeps" / f"rho_across_models_fb{fb}.png")
    (out / "sweeps" / f"rho_across_models_fb{fb}.md").write_text(
        f"# rho across independently pretrained models, # fb {fb} ({exp.name})\n\n"
        + report.table_markdown(rows) + "\n" + report.rho_table_markdown(rows) + f"\n![rho across models]({png.name})\n")
    return png


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, alg1=True)
    ap.add_argument("sweep", choices=("layers", "k", "models"))
    ap.add_argument("--k-values", type=float, nargs="+", default=None)
    ap.add_argument("--seeds", type=int, nargs="+", default=None)
    args = ap.parse_args(argv)
    exp = get_experiment(args.experiment)
    fn = {"layers": sweep_layers, "k": sweep_k, "models": sweep_models}[args.sweep]
    png = fn(exp, Path(args.out), args)
    log(f"wrote {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
