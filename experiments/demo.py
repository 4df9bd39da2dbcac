"""`make demo`: the CPU-scale pipeline end to end, written to runs/demo/REPORT.md.

Stages (each timed; the wall times go into REPORT.md and runs/demo/timings.json):

1. load Fashion-MNIST (local IDX files, else tensorflow-datasets);
2. pretrain the SmallCNN normally and adversarially (``jsemi.pretrain``; a rerun reuses
   the finished checkpoints);
3. clean and PGD-20 accuracy of both networks on 2,000 test images;
4. Algorithm 1 for two # fb values, 3 trials each (``jsemi.algorithms``; finished trials
   are reused, an interrupted run resumes);
5. the Theorem 2 / 3 bound report of the robust network at both split points
   (gamma of every layer, rho of every pair with its null);
6. Algorithm S1 (linear dependency of the logits on fa*) at both split points, clean and PGD;
7. tables, figures and REPORT.md, with a claim-by-claim check of the paper's qualitative
   results at this scale.  Nothing is tuned to make a claim hold: the report states
   plainly when one does not.

Usage: ``python experiments/demo.py --out runs/demo [--data-dir DIR] [--experiment cpu]``.
"""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _common import experiment_parser, Stages, alg1_data, load_data, log, pretrain_pair, row_dir, run_rows, subset  # noqa: E402
from configs import Experiment, get_experiment  # noqa: E402


def pretrained_accuracy(exp: Experiment, model, normal, robust, test, out: Path) -> dict:
    """Clean and PGD-20 accuracy of both pretrained networks on ``pretrain_eval_subset`` test images."""
    from jsemi.algorithms import AttackedAccuracy, bind_eval_attack
    from jsemi.attacks import make_threat
    from jsemi.runs import read_json, write_json_atomic

    path = out / "pretrained_accuracy.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    x, y = subset(test, exp.pretrain.pretrain_eval_subset, exp.pretrain.seed, tag=11)
    threat = make_threat(exp.alg1.norm, exp.alg1.eps)
    settings = {"steps": 20, "random_start": True}
    pgd = AttackedAccuracy(model, bind_eval_attack("pgd", threat, settings), 500)
    clean = AttackedAccuracy(model, None, 500)
    key = jax.random.PRNGKey(123)
    # PGD-20 of the normal network on a quarter of the images only (it is ~0 anyway): saves demo time
    n_normal = max(1, len(y) // 4)
    res = {"n": int(len(y)), "n_pgd_normal": int(n_normal), "attack": "pgd", "attack_settings": settings,
           "eps": exp.alg1.eps, "norm": exp.alg1.norm}
    res["normal"] = {"clean_acc": clean(normal, x, y, key), "pgd20_acc": pgd(normal, x[:n_normal], y[:n_normal], key)}
    res["robust"] = {"clean_acc": clean(robust, x, y, key), "pgd20_acc": pgd(robust, x, y, key)}
    write_json_atomic(path, res)
    return res


def bound_stage(exp: Experiment, model, robust, test, train, out: Path) -> dict:
    """gamma of every layer, rho of every pair (with nulls) and Theorems 2/3 of the robust network."""
    from jsemi.algorithms import _float_images
    from jsemi.attacks import make_threat
    from jsemi.estimators.bounds import bound_report
    from jsemi.estimators.network import adversarial_examples, layer_sensitivities, network_rhos
    from jsemi.estimators.semirobust import layer_gammas
    from jsemi.models import count_weight_layers
    from jsemi.runs import read_json, write_json_atomic

    path = out / "bounds" / "bounds.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    a1 = exp.alg1
    n = count_weight_layers(robust)
    x, y = subset(test, a1.measure_examples, exp.pretrain.seed, tag=31)
    px, py = subset(train, a1.probe_examples, exp.pretrain.seed, tag=32)
    x, px = _float_images(x), _float_images(px)
    threat = make_threat(a1.norm, a1.eps)
    key = jax.random.PRNGKey(exp.pretrain.seed + 77)
    x_adv = adversarial_examples(model, robust, x, y, jax.random.fold_in(key, 1), threat=threat, attack=a1.eval_attack,
                                 attack_settings=a1.eval_attack_settings)
    splits = sorted(n - fb for fb in exp.fb_values)
    # what Theorems 2 and 3 need at these split points: rho_j for j > min(a), gamma at each a and at n
    pairs = list(range(splits[0] + 1, n + 1))
    rhos = {est: network_rhos(model, robust, x_adv, y, jax.random.fold_in(key, 2), layers=pairs, estimator=est,
                              **dict(a1.rho_settings.get(est, {})))
            for est in a1.rho_estimators}
    gx, gy = x, y
    if a1.gamma_examples is not None and a1.gamma_examples < len(y):
        gx, gy = x[: a1.gamma_examples], y[: a1.gamma_examples]
    gammas = layer_gammas(model, robust, gx, gy, jax.random.fold_in(key, 3), threat=threat, layers=splits + [n],
                          attack=a1.gamma_attack, attack_settings=a1.gamma_attack_settings, probe_x=px, probe_y=py)
    sens = layer_sensitivities(model, robust, x, x_adv)
    primary = a1.rho_estimators[0]
    rep = bound_report(gammas, rhos[primary], n, splits, sensitivities=sens,
                       settings={"network": "robust (fa*, fb*)", "rho_estimator": primary,
                                 "rho_settings": a1.rho_settings.get(primary, {}), "gamma_attack": a1.gamma_attack,
                                 "gamma_attack_settings": a1.gamma_attack_settings, "examples": int(len(y)),
                                 "gamma_examples": int(len(gy)),
                                 "rho_inputs": f"{a1.eval_attack} {a1.eval_attack_settings}"})
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
    return res


def s1_stage(exp: Experiment, model, robust, test, out: Path) -> dict:
    """Algorithm S1 at the experiment's split points, on clean and PGD-attacked test images."""
    from jsemi.algorithms import _float_images
    from jsemi.attacks import make_threat
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.runs import read_json, write_json_atomic

    path = out / "s1" / "s1.json"
    if path.exists():
        return read_json(path) | {"reused": True}
    import jax

    a1 = exp.alg1
    x, y = subset(test, exp.s1_examples, exp.pretrain.seed, tag=41)
    x = _float_images(x)
    rows = algorithm_s1_sweep(model, robust, x, y, jax.random.PRNGKey(exp.pretrain.seed + 5),
                              split_points=exp.s1_split_points, attacks=(None, a1.eval_attack),
                              threat=make_threat(a1.norm, a1.eps),
                              attack_settings={a1.eval_attack: dict(a1.eval_attack_settings)}, holdout=0.2)
    (out / "s1").mkdir(parents=True, exist_ok=True)
    md = s1_markdown(rows)
    (out / "s1" / "S1.md").write_text(md)
    write_json_atomic(path, {"rows": rows})
    return {"rows": rows}


def _theorem2_table(trials: list[dict]) -> str:
    lines = ["| # fb | trial | gamma_a [logit/probe] | sum rho_j [bits] | Thm 2: gamma_a + sum rho [mixed] "
             "| gamma_b measured [logit] | gamma_b <= Thm 2 | gamma_a + sum excess | Thm 3 |",
             "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|"]
    f = lambda v: "-" if v is None else f"{v:.3f}"  # noqa: E731
    for t in trials:
        b = (t.get("bound") or {}).get("splits") or []
        if not b:
            continue
        s = b[0]
        holds = "-" if s.get("theorem2_holds") is None else ("yes" if s["theorem2_holds"] else "no")
        lines.append(f"| {t['num_fb']} | {t['trial']} | {f(s.get('gamma_a'))} | {f(s.get('sum_rho'))} | {f(s.get('theorem2'))} "
                     f"| {f(s.get('gamma_b'))} | {holds} | {f(s.get('theorem2_excess'))} | {f(s.get('theorem3'))} |")
    return "\n".join(lines) + "\n"


def write_report(exp: Experiment, out: Path, rows, trials, initial, pre_acc, bounds, s1, stages: Stages,
                 info: dict, dirs: list) -> Path:
    from jsemi import report

    figs = out / "figures"
    fig_paths = []
    try:
        fig_paths.append(report.plot_rho_per_layer(rows, figs / "rho_per_layer.png",
                                                   title=f"rho per layer pair, {rows[0]['estimator']} (cf. Fig. S2)"))
        fig_paths.append(report.plot_accuracy_per_epoch(trials, figs / "accuracy_per_epoch.png"))
        if bounds:
            primary = exp.alg1.rho_estimators[0]
            ser = {"robust (fa*, fb*)": {int(r["layer"]): r for r in bounds["rho"][primary]}}
            for r in rows:
                ser[f"fine-tuned (fa*, fb), # fb {r['num_fb']}"] = {
                    j: {"rho": e["rho"][0], "null": e["null"][0]} for j, e in r["rho_pairs"].items()}
            fig_paths.append(report.plot_rho_across_models(ser, figs / "rho_networks.png",
                                                           title=f"rho per pair: robust net vs fine-tuned ({primary})"))
    except ImportError as e:
        log(f"figures skipped: {e}")
    secondary = {}
    for est in exp.alg1.rho_estimators[1:]:
        srows, _ = report.load_rows(dirs, estimator=est)
        secondary[est] = srows
    claims = report.check_claims(rows, initial_rhos=initial, secondary=secondary)
    table = report.table_markdown(rows, title=f"Algorithm 1, {exp.alg1.eval_attack.upper()} "
                                              f"(eps {exp.alg1.eps:g}, {exp.alg1.norm}), k = {exp.alg1.k:g}, "
                                              f"{rows[0]['trials']} trials per row")
    a1 = exp.alg1
    st = stages.merged
    lines = [
        "# jsemi demo: semirobust transfer (Algorithm 1) at CPU scale",
        "",
        "Reproduction at small scale of Craig et al., *A Theoretical Perspective on Subnetwork Contributions to "
        "Adversarial Robustness* (arXiv:2307.03803): Fashion-MNIST, the 7-weight-layer SmallCNN, L-inf eps "
        f"{a1.eps:g}. Generated by `make demo` (`experiments/demo.py`); every number below is read from the run "
        "directories next to this file.",
        "",
        "## Result table (the paper's layout)",
        "",
        table,
        "Accuracies in percent on attacked test images (mean ± std over trials; Acc and Acc* are computed once). "
        "Diff = Acc~ - Acc*. # Epochs: mean over the trials that reached Acc* - k ('-' if none did). "
        "rho columns (bits, estimator "
        f"`{rows[0]['estimator']}`): the paper's rule, lowest rho among converged trials, else the largest over all "
        "trials; rho_j is the pair (j-1, j), n = 7.",
        "",
        "## Claim-by-claim check of the paper's qualitative results",
        "",
        report.claims_markdown(claims),
        "## rho beside its permutation null (every pair in fb)",
        "",
        report.rho_table_markdown(rows),
    ]
    for est, srows in secondary.items():
        lines += [f"Secondary estimator `{est}` (same attacked inputs):", "", report.rho_table_markdown(srows)]
    lines += [
        "Null: the same estimator with one layer's activations permuted within each class; excess = rho - null; "
        "p-value from the permutations.",
        "",
    ]
    if initial:
        lines += ["rho of the glued network (fa*, fb) *before* fine-tuning (same attacked inputs' construction, "
                  "attack against the glued network):", "",
                  "| # fb | pair | rho before [bits] | null before [bits] |", "|---:|:---|---:|---:|"]
        for fb, ent in sorted(initial.items()):
            for j, e in sorted(ent.items(), reverse=True):
                null = "-" if e.get("null") is None else f"{float(e['null']):.3f}"
                lines.append(f"| {fb} | ({j - 1}, {j}) | {float(e['rho']):.3f} | {null} |")
        lines.append("")
    lines += ["## Trials", "", report.trials_markdown(trials),
              "fa* bit-identical: every fa* variable (weights and BatchNorm statistics) of the fine-tuned network "
              "equals the robust network's, bit for bit.", "",
              "## Theorem 2 on the fine-tuned networks (per trial)", "",
              _theorem2_table(trials),
              "gamma values are attacked margins (upper estimates). gamma_a is the margin of a ridge probe on layer "
              "a's output (one-hot target units), gamma_b the network's logit margin; Theorem 2 adds bits to a margin "
              "as the paper states it.", ""]
    if bounds:
        lines += ["## Bound report of the robust network (fa*, fb*)", "",
                  "Full report: [bounds/BOUNDS.md](bounds/BOUNDS.md).", ""]
        for s in bounds["report"]["splits"]:
            gb = "-" if s["gamma_b"] is None else f"{s['gamma_b']:.3f}"
            lines.append(f"- a = {s['a']} (# fb {s['num_fb']}): gamma_a = {s['gamma_a']:.3f}, sum rho = {s['sum_rho']:.3f} "
                         f"bits, Theorem 2 value = {s['theorem2']:.3f}, measured gamma_b = {gb}, "
                         f"holds: {s['theorem2_holds']}; Theorem 3 value = {s['theorem3']:.3f}")
        lines.append("")
    if s1:
        from jsemi.estimators.linear import s1_markdown

        lines += ["## Algorithm S1 (robust network)", "", s1_markdown(s1["rows"], title="Algorithm S1").split("\n", 2)[-1], ""]
    lines += ["## Pretrained networks", "",
              f"On {pre_acc['n']} stratified test images (PGD-20, eps {pre_acc['eps']:g}, random start; the normal "
              f"network's PGD-20 accuracy on the first {pre_acc.get('n_pgd_normal', pre_acc['n'])} of them):", "",
              "| network | clean acc | PGD-20 acc |", "|:---|---:|---:|",
              f"| normal (fa, fb) | {report.pct(pre_acc['normal']['clean_acc'])} | {report.pct(pre_acc['normal']['pgd20_acc'])} |",
              f"| robust (fa*, fb*) | {report.pct(pre_acc['robust']['clean_acc'])} | {report.pct(pre_acc['robust']['pgd20_acc'])} |",
              ""]
    lines += ["## Figures", ""] + [f"![{p.stem}](figures/{p.name})" for p in fig_paths] + [""]
    lines += ["## Wall time per stage", "",
              f"Machine: {platform.machine()}, {_cpu_count()} CPU cores, {platform.python_implementation()} "
              f"{platform.python_version()}, JAX {_jax_version()}. Load average (1/5/15 min) at the start "
              f"{stages.load_start}, at the end {stages.load_end} (other processes competing for the cores "
              "inflate the wall times).", "",
              "| stage | this run [s] | first run [s] |", "|:---|---:|---:|"]
    for name, rec in st.items():
        lines.append(f"| {name} | {rec['seconds']:.1f}{' (reused)' if rec.get('reused') else ''} "
                     f"| {rec.get('first_run_seconds', rec['seconds']):.1f} |")
    first_total = sum(r.get("first_run_seconds", r["seconds"]) for r in st.values())
    lines += [f"| **total** | {stages.total:.1f} | {first_total:.1f} (sum of stages) |", ""]
    lines += ["## Settings (departures from the paper)", ""] + [f"- {n}" for n in exp.notes] + [""]
    lines += ["```json", json.dumps(exp.to_dict(), indent=1), "```", ""]
    path = out / "REPORT.md"
    path.write_text("\n".join(lines))
    (out / "table.md").write_text(table)
    from jsemi.runs import write_json_atomic

    write_json_atomic(out / "claims.json", claims)
    return path


def _cpu_count() -> int:
    import os

    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 0)


def _jax_version() -> str:
    import jax

    return jax.__version__


def run_demo(exp: Experiment, out: str | Path, *, data_dir: str | None = None, progress: bool = True) -> Path:
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stages = Stages(out / "timings.json")
    with stages("load data"):
        train, test = load_data(exp, data_dir)
        log(f"train {train}, test {test}")
    model, normal, robust, info = pretrain_pair(exp, out, train, test, progress=progress, stages=stages)
    with stages("pretrained accuracy (clean, PGD-20)"):
        pre_acc = pretrained_accuracy(exp, model, normal, robust, test, out)
    if pre_acc.get("reused"):
        stages.mark_reused("pretrained accuracy (clean, PGD-20)")
    log(f"pretrained: {json.dumps({k: pre_acc[k] for k in ('normal', 'robust')})}")
    ft, ev = alg1_data(exp, train, test)
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


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__, out_default="runs/demo")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    run_demo(get_experiment(args.experiment), args.out, data_dir=args.data_dir, progress=not args.no_progress)
    log(f"demo finished in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
