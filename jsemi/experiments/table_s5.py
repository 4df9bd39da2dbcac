"""Table S5: Algorithm 1 with other adversarial training methods (PAPER_NOTES section 6).

For every method in {pgd, trades, atta, atta_trades}:

1. the robust network (fa*, fb*) is trained with that method (``--shared-robust`` uses the
   PGD-trained one for every method instead, so Acc* is common); the normal network is
   trained once;
2. Algorithm 1 (``jsemi.algorithms.algorithm1``) runs for each # fb, fine-tuning fb with
   the same method (TRADES beta = ``--trades-beta``, 6 by default; ATTA with
   ``atta_steps`` attack steps per epoch on perturbations carried across epochs and reset
   every ``atta_reset_every`` epochs, the paper's 3 and 10 unless the experiment says
   otherwise).

Columns: Method, # fb, Acc*, Acc~, Diff = Acc~ - Acc*, # Epochs (mean over the trials that
reached Acc* - k, "-" if none), fine-tuning wall time per trial (training and per-epoch
evaluation, mean ± std), the robust network's pretraining wall time, then the rho columns
(rho_n, rho_{n-3}, ... by the paper's rule, see ``jsemi.report``).  Accuracies are attacked
test accuracies in percent (the experiment's evaluation attack); rho in bits.

Outputs under OUT (default runs/table_s5): ``table_s5.md``, ``table_s5.json`` (rows and
settings), ``pretrain/`` (resumable checkpoints) and ``alg1/<method>/fb<F>/`` (resumable
Algorithm 1 runs: a rerun skips finished trials and pretraining).

Usage::

    jsemi table-s5 cpu [--methods pgd,trades,atta,atta_trades]
        [--fb 2,4] [--trials 3] [--max-epochs 4] [--out runs/table_s5]
    jsemi table-s5 --tiny --out /tmp/s5    # seconds-scale check on digits
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

from jsemi.experiments.configs import Experiment, PretrainSpec
from jsemi.experiments.pipeline import alg1_data, load_data, subset
from jsemi.experiments.timing import log

METHODS = ("pgd", "trades", "atta", "atta_trades")
METHOD_LABELS = {"pgd": "PGD", "trades": "TRADES", "atta": "ATTA", "atta_trades": "ATTA+TRADES"}


def tiny_experiment(base: Experiment) -> Experiment:
    """The CPU experiment shrunk to seconds: scikit-learn digits (8x8), a 4-layer SmallCNN,
    eps 0.2, one trial, two epochs everywhere, small estimator samples."""
    from jsemi.train import TrainConfig

    normal = TrainConfig(mode="standard", optimizer="adam", lr=3e-3, weight_decay=0.0, lr_schedule="constant",
                         epochs=2, batch_size=64, eps=0.2, attack_steps=2, attack_step_size=0.1, atta_steps=2,
                         atta_reset_every=10, augment=False, flip=False)
    robust = dataclasses.replace(normal, mode="pgd", epochs=2)
    a1 = dataclasses.replace(
        base.alg1, max_epochs=2, trials=1, finetune=robust, eps=0.2,
        eval_attack_settings={"steps": 5, "step_size": 0.05, "random_start": True}, eval_batch_size=360,
        measure_examples=200, probe_examples=200, rho_estimators=("ksg",),
        rho_settings={"ksg": {"permutations": 3, "reduce_dim": 4}},
        gamma_attack_settings={"steps": 3, "restarts": 1, "loss": "margin"}, net="SmallCNN-tiny", dataset="digits",
    )
    return dataclasses.replace(
        base, name="tiny-small_cnn-digits",
        pretrain=PretrainSpec(model="small_cnn", dataset="digits", normal=normal, robust=robust,
                              model_kwargs={"widths": (8, 16), "hidden": 32}, seed=0, pretrain_eval_subset=None),
        alg1=a1, fb_values=(2,), attacks={"pgd": dict(a1.eval_attack_settings)},
        finetune_train_subset=None, eval_test_subset=None,
        notes=("Tiny check configuration: digits 8x8, SmallCNN widths (8, 16), 2 epochs, 1 trial.",),
    )


def _method_config(cfg, method: str, trades_beta: float | None):
    kw = {"mode": method}
    if trades_beta is not None:
        kw["trades_beta"] = float(trades_beta)
    return dataclasses.replace(cfg, **kw)


def pretrain_networks(exp: Experiment, out: Path, train, test, methods, *, shared_robust: bool,
                      trades_beta: float | None, progress: bool):
    """Normal network once, robust network per method (or once with PGD); returns (model, normal, robust, info)."""
    from jsemi.pretrain import pretrain

    p = exp.pretrain
    eval_x, eval_y = subset(test, p.pretrain_eval_subset, p.seed, tag=11)
    todo = [("normal", p.normal)]
    for m in (("pgd",) if shared_robust else methods):
        todo.append((f"robust-{m}", _method_config(p.robust, m, trades_beta)))
    variables, info, model = {}, {}, None
    for name, cfg in todo:
        run_dir = out / "pretrain" / name
        t0 = time.perf_counter()
        res = pretrain(run_dir, p.model, train.images, train.labels, eval_x, eval_y, cfg,
                       num_classes=train.num_classes, dataset=p.dataset, seed=p.seed,
                       model_kwargs=dict(p.model_kwargs), train_subset=p.train_subset, progress=progress,
                       log=log, eval_batch_size=1000)
        model = res.model
        variables[name] = res.variables
        info[name] = {"mode": cfg.mode, "epochs": len(res.history),
                      "train_seconds": float(sum(h["seconds"] for h in res.history)),
                      "this_call_seconds": time.perf_counter() - t0}
    robust = {m: variables["robust-pgd" if shared_robust else f"robust-{m}"] for m in methods}
    return model, variables["normal"], robust, info


def run(exp: Experiment, out: str | Path, *, methods=METHODS, fb_values=None, trials: int | None = None,
        max_epochs: int | None = None, shared_robust: bool = False, trades_beta: float | None = None,
        measure: bool = True, data_dir: str | None = None, download: bool = False, progress: bool = True,
        ) -> dict:
    """Runs (or resumes) the comparison and writes table_s5.md / table_s5.json; returns the JSON dict."""
    from jsemi.algorithms import algorithm1
    from jsemi.report import summarize
    from jsemi.csv_tables import write_json_tables
    from jsemi.runs import write_json_atomic

    out = Path(out)
    methods = tuple(methods)
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {METHODS}")
    fb_values = tuple(fb_values or exp.fb_values)
    train, test = load_data(exp, data_dir, download=download)
    model, normal, robust, pre_info = pretrain_networks(exp, out, train, test, methods, shared_robust=shared_robust,
                                                        trades_beta=trades_beta, progress=progress)
    ft_data, eval_data = alg1_data(exp, train, test)
    rows = []
    for m in methods:
        for fb in fb_values:
            over = {"finetune": _method_config(exp.alg1.finetune, m, trades_beta), "measure": measure}
            if trials is not None:
                over["trials"] = trials
            if max_epochs is not None:
                over["max_epochs"] = max_epochs
            if m in ("atta", "atta_trades"):
                over["vmap"] = 1  # carried perturbations: trials run one after another
            cfg = exp.row_config(fb, **over)
            d = out / "alg1" / m / f"fb{fb}"
            log(f"== {METHOD_LABELS[m]}, # fb {fb}")
            res = algorithm1(model, normal, robust[m], ft_data, eval_data, cfg, d, progress=progress, log=log)
            row = summarize(res.trials)
            pre = pre_info["robust-pgd" if shared_robust else f"robust-{m}"]
            train_s = [t["timing"].get("train_eval_s") for t in res.trials]
            row.update(method=m, run_dir=str(d), robust_pretrain_s=pre["train_seconds"],
                       finetune_s=_mean_std(train_s), finetune_s_per_epoch=_mean_std(
                           [s for t in res.trials for s in t["timing"].get("epoch_s", [])]))
            rows.append(row)
    table = table_markdown(rows)
    settings = {
        "experiment": exp.name, "methods": list(methods), "fb_values": list(fb_values),
        "shared_robust": shared_robust, "measure": measure,
        "finetune": {m: _method_config(exp.alg1.finetune, m, trades_beta).to_dict() for m in methods},
        "robust_pretrain": {m: _method_config(exp.pretrain.robust, "pgd" if shared_robust else m, trades_beta).to_dict()
                            for m in methods},
        "eval_attack": exp.alg1.eval_attack, "eps": exp.alg1.eps, "norm": exp.alg1.norm,
        "pretrain": pre_info, "notes": list(exp.notes),
    }
    out.mkdir(parents=True, exist_ok=True)
    (out / "table_s5.md").write_text(f"# Table S5 ({exp.name})\n\n" + table + "\n" + _settings_md(settings))
    doc = {"rows": [_jsonable_row(r) for r in rows], "settings": settings, "table_markdown": table}
    write_json_atomic(out / "table_s5.json", doc)
    write_json_tables(out, "table_s5", doc)
    return doc


def _mean_std(vals):
    import numpy as np

    xs = [float(v) for v in vals if v is not None]
    if not xs:
        return (None, None)
    return (float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0)


def _jsonable_row(r: dict) -> dict:
    from jsemi.runs import to_jsonable

    return to_jsonable({k: v for k, v in r.items()})


def table_markdown(rows) -> str:
    """Method, # fb, Acc*, Acc~, Diff, # Epochs, wall times, rho columns (accuracies in %, rho in bits)."""
    from jsemi.report import pct, pm, rho_column_labels

    labels = rho_column_labels(rows)
    head = ["Method", "# fb", "Acc*", "Acc~", "Diff", "# Epochs", "fine-tune wall [s]", "robust pretrain [s]"]
    head += [f"{lab} [bits]" for lab in labels]
    lines = ["| " + " | ".join(head) + " |", "|:---|" + "|".join(["---:"] * (len(head) - 1)) + "|"]
    for r in rows:
        ep = r["epochs"]
        cells = [METHOD_LABELS[r["method"]], str(r["num_fb"]), pct(r["acc_star"]), pm(*r["acc_tilde"], 100),
                 pm(*r["diff"], 100), "-" if ep[0] is None else pm(ep[0], ep[1], 1.0, 1),
                 pm(*r["finetune_s"], 1.0, 1), f"{r['robust_pretrain_s']:.1f}"]
        cells += ["-" if r["rho_columns"].get(lab) is None else f"{r['rho_columns'][lab]:.3f}" for lab in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _settings_md(s: dict) -> str:
    ft = s["finetune"]
    lines = ["## Settings", "",
             f"- experiment `{s['experiment']}`, evaluation attack `{s['eval_attack']}` ({s['norm']}, eps {s['eps']:g})",
             f"- robust networks: {'one PGD-trained network for every method' if s['shared_robust'] else 'trained with each method'}",
             "- # Epochs: mean over trials that reached Acc* - k; fine-tune wall: training + per-epoch evaluation per trial",
             "- rho: the paper's rule (lowest among converged trials, else the largest), in bits"]
    for m, cfg in ft.items():
        lines.append(f"- {METHOD_LABELS[m]} fine-tuning: mode `{cfg['mode']}`, eps {cfg['eps']:g}, attack steps "
                     f"{cfg['atta_steps'] if m.startswith('atta') else cfg['attack_steps']}"
                     + (f", beta {cfg['trades_beta']:g}" if 'trades' in m else "")
                     + (f", reset every {cfg['atta_reset_every']} epochs" if m.startswith('atta') else ""))
    lines += [f"- {n}" for n in s["notes"]]
    return "\n".join(lines) + "\n"
