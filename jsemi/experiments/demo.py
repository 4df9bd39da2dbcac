"""`jsemi demo` (and `make demo`): the CPU-scale pipeline end to end, written to OUT/REPORT.md.

Stages (each timed; the wall times go into REPORT.md and runs/demo/timings.json):

1. load Fashion-MNIST (local IDX files, else tensorflow-datasets);
2. pretrain the SmallCNN normally and adversarially (``jsemi.pretrain``; a rerun reuses
   the finished checkpoints);
3. clean and PGD-20 accuracy of both networks on Algorithm 1's 1,000 evaluation test images (the
   images Acc* is measured on, so PGD-20 sits beside Algorithm 1's PGD-10);
4. Algorithm 1 for two # fb values, 3 trials each (``jsemi.algorithms``; finished trials
   are reused, an interrupted run resumes);
5. the Theorem 2 / 3 bound report of the robust network at both split points
   (gamma of every layer, rho of every pair with its null);
6. Algorithm S1 (linear dependency of the logits on fa*) at both split points, clean and PGD;
7. tables, figures and REPORT.md, with a claim-by-claim check of the paper's qualitative
   results at this scale.  Nothing is tuned to make a claim hold: the report states
   plainly when one does not.

Usage: ``jsemi demo --out runs/demo [--data-dir DIR] [--experiment cpu]``; the report is
written by ``jsemi.experiments.demo_report``.
"""

from __future__ import annotations

import json
from pathlib import Path

from jsemi.experiments.configs import Experiment
from jsemi.experiments.demo_report import write_report
from jsemi.experiments.pipeline import alg1_data, load_data, pretrain_pair, row_dir, run_rows, subset
from jsemi.experiments.timing import Stages, log


def pretrained_accuracy(exp: Experiment, model, normal, robust, eval_data, out: Path) -> dict:
    """Clean and PGD-20 accuracy of both pretrained networks on ``eval_data`` = (x (N, H, W, C), y (N,)).

    The demo passes Algorithm 1's evaluation images, so the robust net's PGD-20 accuracy is read
    beside Acc* (PGD-10 on the same images).  The normal net's PGD-20 runs on the first quarter.
    """
    from jsemi.algorithms import AttackedAccuracy, bind_eval_attack
    from jsemi.attacks import make_threat
    from jsemi.runs import read_json, write_json_atomic

    path = out / "pretrained_accuracy.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    x, y = eval_data
    threat = make_threat(exp.alg1.norm, exp.alg1.eps)
    settings = {"steps": 20, "random_start": True}
    pgd = AttackedAccuracy(model, bind_eval_attack("pgd", threat, settings), 500)
    clean = AttackedAccuracy(model, None, 500)
    key = jax.random.PRNGKey(123)
    # PGD-20 of the normal network on a quarter of the images only (it is ~0 anyway): saves demo time
    n_normal = max(1, len(y) // 4)
    res = {"n": int(len(y)), "n_pgd_normal": int(n_normal), "attack": "pgd", "attack_settings": settings,
           "eps": exp.alg1.eps, "norm": exp.alg1.norm, "images": "algorithm 1 evaluation subset"}
    res["normal"] = {"clean_acc": clean(normal, x, y, key), "pgd20_acc": pgd(normal, x[:n_normal], y[:n_normal], key)}
    res["robust"] = {"clean_acc": clean(robust, x, y, key), "pgd20_acc": pgd(robust, x, y, key)}
    write_json_atomic(path, res)
    return res


def bound_stage(exp: Experiment, model, robust, test, train, out: Path) -> dict:
    """gamma of every layer, rho of every pair (with nulls) and Theorems 2/3 of the robust network."""
    from jsemi.data import unit_float
    from jsemi.attacks import make_threat
    from jsemi.estimators.measure import measure_network
    from jsemi.models import count_weight_layers
    from jsemi.csv_tables import write_json_tables
    from jsemi.runs import read_json, write_json_atomic

    path = out / "bounds" / "bounds.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    a1 = exp.alg1
    n = count_weight_layers(robust)
    x, y = subset(test, a1.measure_examples, exp.pretrain.seed, tag=31)
    px, py = subset(train, a1.probe_examples, exp.pretrain.seed, tag=32)
    x, px = unit_float(x), unit_float(px)
    threat = make_threat(a1.norm, a1.eps)
    key = jax.random.PRNGKey(exp.pretrain.seed + 77)
    splits = sorted(n - fb for fb in exp.fb_values)
    gx, gy = x, y
    if a1.gamma_examples is not None and a1.gamma_examples < len(y):
        gx, gy = x[: a1.gamma_examples], y[: a1.gamma_examples]
    # what Theorems 2 and 3 need at these split points: rho_j for j > min(a), gamma at each a and at n
    m = measure_network(model, robust, x, y, key, threat=threat, splits=splits, attack=a1.eval_attack,
                        attack_settings=a1.eval_attack_settings, rho_estimators=a1.rho_estimators,
                        rho_settings=a1.rho_settings, gamma_x=gx, gamma_y=gy, gamma_attack=a1.gamma_attack,
                        gamma_attack_settings=a1.gamma_attack_settings, probe_x=px, probe_y=py,
                        settings={"network": "robust (fa*, fb*)",
                                  "rho_inputs": f"{a1.eval_attack} {a1.eval_attack_settings}"})
    rep, rhos, primary = m.report, m.rhos, m.primary
    md = rep.to_markdown()
    others = [e for e in a1.rho_estimators if e != primary]
    if others:
        md += "\n## rho with the other estimators (same attacked inputs)\n\n| pair | " + " | ".join(
            f"{e} rho / null / excess / p" for e in others) + " |\n|:---|" + "---:|" * len(others) + "\n"
        for i, r in enumerate(rhos[primary]):
            cells = []
            for e in others:
                q = rhos[e][i]
                cells.append(f"{q['rho']:.3f} / {q['null']:.3f} / {q['excess']:.3f} / {q['p_value']:.3f}")
            md += f"| ({r['layer'] - 1}, {r['layer']}) | " + " | ".join(cells) + " |\n"
    (out / "bounds").mkdir(parents=True, exist_ok=True)
    (out / "bounds" / "BOUNDS.md").write_text(md)
    res = {"report": rep.to_dict(), "rho": {e: [{k: v for k, v in r.items() if k != "per_class"} for r in rs]
                                           for e, rs in rhos.items()}}
    write_json_atomic(path, res)
    write_json_tables(path.parent, "bounds", res["report"])
    return res


def s1_stage(exp: Experiment, model, robust, test, out: Path) -> dict:
    """Algorithm S1 at the experiment's split points, on clean and PGD-attacked test images."""
    from jsemi.data import unit_float
    from jsemi.attacks import make_threat
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.csv_tables import write_json_tables
    from jsemi.runs import read_json, write_json_atomic

    path = out / "s1" / "s1.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    a1 = exp.alg1
    x, y = subset(test, exp.s1_examples, exp.pretrain.seed, tag=41)
    x = unit_float(x)
    rows = algorithm_s1_sweep(model, robust, x, y, jax.random.PRNGKey(exp.pretrain.seed + 5),
                              split_points=exp.s1_split_points, attacks=(None, a1.eval_attack),
                              threat=make_threat(a1.norm, a1.eps),
                              attack_settings={a1.eval_attack: dict(a1.eval_attack_settings)}, holdout=0.2)
    (out / "s1").mkdir(parents=True, exist_ok=True)
    md = s1_markdown(rows)
    (out / "s1" / "S1.md").write_text(md)
    write_json_atomic(path, {"rows": rows})
    write_json_tables(path.parent, "s1", {"rows": rows})
    return {"rows": rows}


def run_demo(exp: Experiment, out: str | Path, *, data_dir: str | None = None, download: bool = False,
             progress: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out / "timings.json")
    with stages("load data"):
        train, test = load_data(exp, data_dir, download=download)
        log(f"train {train}, test {test}")
    model, normal, robust, info = pretrain_pair(exp, out, train, test, progress=progress, stages=stages)
    ft, ev = alg1_data(exp, train, test)
    with stages("pretrained accuracy (clean, PGD-20)"):
        pre_acc = pretrained_accuracy(exp, model, normal, robust, ev, out)
    if pre_acc.get("reused"):
        stages.mark_reused("pretrained accuracy (clean, PGD-20)")
    log(f"pretrained: {json.dumps({k: pre_acc[k] for k in ('normal', 'robust')})}")
    dirs = []
    for fb in exp.fb_values:
        name = f"algorithm 1, # fb {fb} ({exp.alg1.trials} trials)"
        trials_dir = row_dir(out, exp.alg1.eval_attack, fb) / "trials"
        done_before = len(list(trials_dir.glob("trial_*.json"))) if trials_dir.exists() else 0
        with stages(name):
            d = run_rows(exp, model, normal, robust, ft, ev, out, fb_values=[fb], progress=progress)
        if done_before >= exp.alg1.trials:
            stages.mark_reused(name)
        dirs += d
    from jsemi import report
    from jsemi.runs import RunDir

    rows, trials = report.load_rows(dirs)
    initial = {}
    for d, r in zip(dirs, rows):
        rd = RunDir.load(d)
        if rd.has("initial"):
            ini = rd.read("initial")
            initial[r["num_fb"]] = {int(e["layer"]): e for e in ini["rho"][ini["rho_estimator"]]}
    with stages("bound report (robust network)"):
        bounds = bound_stage(exp, model, robust, test, train, out)
    if bounds.get("reused"):
        stages.mark_reused("bound report (robust network)")
    with stages("algorithm S1"):
        s1 = s1_stage(exp, model, robust, test, out)
    if s1.get("reused"):
        stages.mark_reused("algorithm S1")
    with stages("tables, figures, report"):
        stages.save()
        path = write_report(exp, out, rows, trials, initial, pre_acc, bounds, s1, stages, info, dirs)
    stages.save()
    path = write_report(exp, out, rows, trials, initial, pre_acc, bounds, s1, stages, info, dirs)  # with the last stage's time
    log(f"report: {path} (total {stages.total:.1f} s)")
    print(report.table_markdown(rows))
    return path
