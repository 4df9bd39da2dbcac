"""Tables, figures and REPORT.md for Algorithm 1 runs (the paper's layout, PAPER_NOTES section 4).

Table columns, one row per (net, dataset, # fb): Net, Dataset, # fb, Acc, Acc*, Acc_sr,
Acc~, Diff = Acc~ - Acc*, # Epochs, then rho_n, rho_{n-3}, rho_{n-7}, rho_{n-11} (those
whose pair lies in fb).  Accuracies are in percent, "mean ± std" over trials (Acc and Acc*
are computed once per run, so they have no spread).  # Epochs is the mean over the trials
that reached Acc* - k ("-" if none did).  A rho column follows the paper's rule: the
lowest rho among converged trials, or the largest over all trials when none converged;
its mean ± std over all trials is in the rho table next to the within-class permutation
null, the excess over the null and the p-value.  rho_j is the dependency of the pair
(j-1, j), in bits.

Figures (PNG, matplotlib with the Agg backend, the ``jsemi[plots]`` extra): rho per layer
pair for each # fb (Fig. S2), rho against k (Fig. S3), rho across independently pretrained
models (Fig. S1), and attacked accuracy per fine-tuning epoch.  Without matplotlib the
plot functions raise ImportError naming the extra, and ``alg1_report`` says once that it
skipped them.  Every table also goes to CSV (``table_records``, ``rho_records``,
``trial_records``; ``jsemi.csv_tables``).

``check_claims`` tests the paper's qualitative results (section 7) on the rows and says
plainly, with the numbers, when one does not hold.  Nothing here tunes anything.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

RHO_OFFSETS = (0, 3, 7, 11)  # rho_n, rho_{n-3}, rho_{n-7}, rho_{n-11}


# ----------------------------------------------------------------------------- small helpers


def _num(v: Any) -> float | None:
    if v is None:
        return None
    if isinstance(v, str):
        try:
            v = float(v)
        except ValueError:
            return None
    v = float(v)
    return v if math.isfinite(v) else None


def _mean_std(vals: Iterable[Any]) -> tuple[float | None, float | None]:
    xs = [x for x in (_num(v) for v in vals) if x is not None]
    if not xs:
        return None, None
    return float(np.mean(xs)), float(np.std(xs, ddof=1)) if len(xs) > 1 else 0.0


def pct(v: float | None, digits: int = 2) -> str:
    """A fraction as percent ("-" for None)."""
    return "-" if v is None else f"{100 * v:.{digits}f}"


def pm(mean: float | None, std: float | None, scale: float = 1.0, digits: int = 2) -> str:
    """"mean ± std" (std omitted when 0 or None), scaled (e.g. 100 for percent)."""
    if mean is None:
        return "-"
    s = f"{scale * mean:.{digits}f}"
    if std:
        s += f" ± {scale * std:.{digits}f}"
    return s


def rho_label(j: int, n: int) -> str:
    """Column name of rho_j relative to n: rho_n, rho_{n-3}, ..."""
    return "rho_n" if j == n else f"rho_{{n-{n - j}}}"


def _rho_entries(trial: Mapping, estimator: str | None = None) -> dict[int, Mapping]:
    rho = trial.get("rho") or {}
    est = estimator or trial.get("rho_estimator") or (next(iter(rho)) if rho else None)
    return {int(r["layer"]): r for r in rho.get(est, [])} if est else {}


# ----------------------------------------------------------------------------- rows


def summarize(trials: Sequence[Mapping], estimator: str | None = None) -> dict:
    """One table row from the trial records of a run (all trials share net, dataset, # fb, k)."""
    if not trials:
        raise ValueError("no finished trials to summarize")
    t0 = trials[0]
    n, a = int(t0["n"]), int(t0["a"])
    est = estimator or t0.get("rho_estimator")
    conv = [t for t in trials if t.get("converged")]
    row: dict[str, Any] = {
        "net": t0.get("net") or "-", "dataset": t0.get("dataset") or "-", "n": n, "a": a, "num_fb": n - a,
        "k": t0.get("k"), "trials": len(trials), "converged": len(conv), "estimator": est,
        "acc": _num(t0["acc"]), "acc_star": _num(t0["acc_star"]),
        "acc_sr": _mean_std(t["acc_sr"] for t in trials),
        "acc_tilde": _mean_std(t["acc_tilde"] for t in trials),
        "diff": _mean_std(t["diff"] for t in trials),
        "epochs": _mean_std(t["epochs"] for t in conv) if conv else (None, None),
        "epochs_all": _mean_std(t["epochs"] for t in trials),
        "max_epochs": t0.get("max_epochs"),
        "acc_sr_all": [_num(t["acc_sr"]) for t in trials],
        "acc_tilde_all": [_num(t["acc_tilde"]) for t in trials],
        "wall_s": _mean_std((t.get("timing") or {}).get("wall_s") for t in trials),
    }
    pairs = list(range(a + 1, n + 1))
    per_pair = {}
    for j in pairs:
        vals = [(_rho_entries(t, est).get(j), bool(t.get("converged"))) for t in trials]
        vals = [(e, c) for e, c in vals if e is not None]
        if not vals:
            continue
        rhos = [_num(e["rho"]) for e, _ in vals]
        conv_rhos = [r for (e, c), r in zip(vals, rhos) if c and r is not None]
        sel = min(conv_rhos) if conv_rhos else max(r for r in rhos if r is not None)
        p = [_num(e.get("p_value")) for e, _ in vals]
        per_pair[j] = {
            "pair": [j - 1, j], "selected": sel, "selected_from": "converged (min)" if conv_rhos else "all (max)",
            "rho": _mean_std(rhos), "null": _mean_std(e.get("null") for e, _ in vals),
            "excess": _mean_std(e.get("excess") for e, _ in vals),
            "p_value_max": max((x for x in p if x is not None), default=None),
            "p_value_median": float(np.median([x for x in p if x is not None])) if any(x is not None for x in p) else None,
        }
    row["rho_pairs"] = per_pair
    row["rho_columns"] = {rho_label(n - o, n): per_pair[n - o]["selected"] for o in RHO_OFFSETS if (n - o) in per_pair}
    return row


def rho_column_labels(rows: Sequence[Mapping]) -> list[str]:
    """Every rho column label of ``rows`` ("rho_n", "rho_{n-3}", ...), the last pair first."""
    labels = {lab for r in rows for lab in r["rho_columns"]}
    return sorted(labels, key=lambda s: 0 if s == "rho_n" else int(s.split("-")[1].rstrip("}")))


# Columns shown only when the rows differ in them (sweeps): row key, header, cell format.
_SWEEP_COLUMNS = (("k", "k", lambda v: f"{float(v):g}"), ("pretrain_seed", "pretraining seed", lambda v: f"{int(v)}"))


def _sweep_columns(rows: Sequence[Mapping]) -> list[tuple]:
    return [c for c in _SWEEP_COLUMNS if len({r.get(c[0]) for r in rows}) > 1]


def _sweep_cells(r: Mapping, cols) -> list[str]:
    return ["-" if r.get(key) is None else fmt(r[key]) for key, _, fmt in cols]


def table_markdown(rows: Sequence[Mapping], title: str | None = None) -> str:
    """The paper's table layout (accuracies in percent, rho in bits).  Rows that differ in k
    (the k sweep) or in ``pretrain_seed`` (the sweep over pretrained models) get that column
    after "# fb" (k in accuracy points)."""
    labels = rho_column_labels(rows)
    cols = _sweep_columns(rows)
    head = (["Net", "Dataset", "# fb"] + [c[1] for c in cols] + ["Acc", "Acc*", "Acc_sr", "Acc~", "Diff", "# Epochs"]
            + [f"{lab} [bits]" for lab in labels])
    lines = [f"**{title}**", ""] if title else []
    lines += ["| " + " | ".join(head) + " |", "|" + "|".join([":---", ":---"] + ["---:"] * (len(head) - 2)) + "|"]
    for r in rows:
        ep = r["epochs"]
        epochs = "-" if ep[0] is None else pm(ep[0], ep[1], 1.0, 1)
        cells = [str(r["net"]), str(r["dataset"]), str(r["num_fb"])] + _sweep_cells(r, cols)
        cells += [pct(r["acc"]), pct(r["acc_star"]), pm(*r["acc_sr"], 100), pm(*r["acc_tilde"], 100), pm(*r["diff"], 100),
                  epochs]
        cells += [("-" if r["rho_columns"].get(lab) is None else f"{r['rho_columns'][lab]:.3f}") for lab in labels]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def rho_table_markdown(rows: Sequence[Mapping]) -> str:
    """Every rho_j (mean ± std over trials) beside its permutation null, the excess and the p-value."""
    cols = _sweep_columns(rows)
    lines = ["| # fb |" + "".join(f" {c[1]} |" for c in cols) + " pair (j-1, j) | column | rho_j [bits] | null [bits] "
             "| excess [bits] | p-value (median / max) | table value [bits] |",
             "|---:|" + "---:|" * len(cols) + ":---|:---|---:|---:|---:|---:|---:|"]
    for r in rows:
        for j, e in sorted(r["rho_pairs"].items(), reverse=True):
            p = "-" if e["p_value_median"] is None else f"{e['p_value_median']:.3f} / {e['p_value_max']:.3f}"
            k = "".join(f" {c} |" for c in _sweep_cells(r, cols))
            lines.append(f"| {r['num_fb']} |{k} ({j - 1}, {j}) | {rho_label(j, r['n'])} | {pm(*e['rho'], 1, 3)} "
                         f"| {pm(*e['null'], 1, 3)} | {pm(*e['excess'], 1, 3)} | {p} | {e['selected']:.3f} ({e['selected_from']}) |")
    return "\n".join(lines) + "\n"


def trials_markdown(trials: Sequence[Mapping]) -> str:
    """Per-trial details: Acc_sr, accuracy after every epoch, Acc~, epochs, wall time."""
    lines = ["| # fb | trial | seed | Acc_sr | attacked acc per epoch | Acc~ | epochs | converged | fa* bit-identical | wall [s] |",
             "|---:|---:|---:|---:|:---|---:|---:|:---:|:---:|---:|"]
    for t in trials:
        hist = ", ".join(pct(h["adv_acc"]) for h in t.get("history", [])) or "-"
        wall = (t.get("timing") or {}).get("wall_s")
        lines.append(f"| {t['num_fb']} | {t['trial']} | {t['seed']} | {pct(t['acc_sr'])} | {hist} | {pct(t['acc_tilde'])} "
                     f"| {t['epochs']} | {'yes' if t['converged'] else 'no'} | {'yes' if t.get('fa_star_bit_identical') else 'NO'} "
                     f"| {'-' if wall is None else f'{wall:.1f}'} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- CSV twins


def _ms(prefix: str, v: tuple) -> dict:
    return {f"{prefix}_mean": v[0], f"{prefix}_std": v[1]}


def _sweep_keys(rows: Sequence[Mapping]) -> dict:
    return {key: None for key, _, _ in _sweep_columns(rows)}


def table_records(rows: Sequence[Mapping]) -> list[dict]:
    """The rows of ``table_markdown`` as CSV records: accuracies as fractions in [0, 1] (the
    Markdown shows percent), mean and std over trials in two columns, rho columns in bits."""
    labels, sweep = rho_column_labels(rows), _sweep_keys(rows)
    out = []
    for r in rows:
        rec = {"net": r["net"], "dataset": r["dataset"], "num_fb": r["num_fb"], "n": r["n"], "a": r["a"]}
        rec.update({key: r.get(key) for key in sweep})
        rec.update({"k": r.get("k"), "trials": r["trials"], "converged": r["converged"], "estimator": r["estimator"],
                    "acc": r["acc"], "acc_star": r["acc_star"], **_ms("acc_sr", r["acc_sr"]),
                    **_ms("acc_tilde", r["acc_tilde"]), **_ms("diff", r["diff"]), **_ms("epochs", r["epochs"]),
                    "max_epochs": r.get("max_epochs"), **_ms("wall_s", r["wall_s"])})
        rec.update({lab: r["rho_columns"].get(lab) for lab in labels})
        out.append(rec)
    return out


def rho_records(rows: Sequence[Mapping]) -> list[dict]:
    """The rows of ``rho_table_markdown`` as CSV records (bits; p-values median and max)."""
    sweep = _sweep_keys(rows)
    return [{"num_fb": r["num_fb"], **{key: r.get(key) for key in sweep}, "j_minus_1": j - 1, "j": j,
             "column": rho_label(j, r["n"]), **_ms("rho", e["rho"]), **_ms("null", e["null"]),
             **_ms("excess", e["excess"]), "p_value_median": e["p_value_median"], "p_value_max": e["p_value_max"],
             "table_value": e["selected"], "table_value_from": e["selected_from"]}
            for r in rows for j, e in sorted(r["rho_pairs"].items(), reverse=True)]


def trial_records(trials: Sequence[Mapping]) -> list[dict]:
    """One CSV record per trial (fractions; ``adv_acc_per_epoch`` a JSON list; ``rho_j<j>`` the
    primary estimator's rho of pair (j-1, j) in bits)."""
    out = []
    for t in trials:
        rec = {key: t.get(key) for key in ("num_fb", "trial", "seed", "k", "acc", "acc_star", "threshold", "acc_sr",
                                           "acc_tilde", "diff", "converged", "epochs", "fa_star_bit_identical")}
        rec["wall_s"] = (t.get("timing") or {}).get("wall_s")
        rec["adv_acc_per_epoch"] = [h["adv_acc"] for h in t.get("history", [])]
        rec["rho_estimator"] = t.get("rho_estimator")
        rec.update({f"rho_j{j}": _num(e.get("rho")) for j, e in sorted(_rho_entries(t).items())})
        out.append(rec)
    return out


# ----------------------------------------------------------------------------- claims


def _rho_order(r: Mapping) -> tuple[bool | None, str]:
    """(last pair has the smallest mean rho?, evidence) for one row; None when not checkable."""
    pairs = r["rho_pairs"]
    if len(pairs) < 2 or r["n"] not in pairs:
        return None, f"# fb {r['num_fb']}: fewer than two pairs, not checkable"
    means = {j: e["rho"][0] for j, e in pairs.items()}
    exc = {j: e["excess"][0] for j, e in pairs.items()}
    last = r["n"]
    holds = all(means[last] < v for j, v in means.items() if j != last)
    order = " < ".join(f"rho_{j}={means[j]:.3f}" for j in sorted(means, key=lambda j: means[j]))
    s = f"# fb {r['num_fb']} ({r['estimator']}): {order} -> last pair smallest: {'yes' if holds else 'NO'}"
    if all(v is not None for v in exc.values()):
        eh = all(exc[last] < v for j, v in exc.items() if j != last)
        s += ("; by excess over the null: " + ", ".join(f"({j - 1},{j}) {exc[j]:.3f}" for j in sorted(exc))
              + f" -> last pair smallest: {'yes' if eh else 'no'}")
    return holds, s


def check_claims(rows: Sequence[Mapping], *, within_points: float = 3.0,
                 initial_rhos: Mapping[int, Mapping[int, Mapping]] | None = None,
                 secondary: Mapping[str, Sequence[Mapping]] | None = None) -> list[dict]:
    """The paper's qualitative results (section 7) checked on the rows; one dict per claim.

    Each dict: ``claim``, ``holds`` (True / False / None = cannot be checked), ``evidence``
    (the numbers).  ``initial_rhos``: optional {# fb: {j: rho entry}} measured on the glued
    network before fine-tuning (for "fine-tuning raises rho").  ``secondary``: rows of the
    same runs summarised with other rho estimators (estimator -> rows); claims 3 and 4 list
    them as additional evidence, the verdict uses the primary rows.
    """
    out = []
    # 1. Acc_sr < Acc*
    ev, ok = [], []
    for r in rows:
        vals = [v for v in r["acc_sr_all"] if v is not None]
        holds = all(v < r["acc_star"] for v in vals)
        ok.append(holds)
        ev.append(f"# fb {r['num_fb']}: Acc_sr = {pm(*r['acc_sr'], 100)}% (max {pct(max(vals))}%) vs "
                  f"Acc* = {pct(r['acc_star'])}% -> {'holds' if holds else 'DOES NOT HOLD'} in {sum(v < r['acc_star'] for v in vals)}/{len(vals)} trials")
    out.append({"claim": "Acc_sr < Acc*: gluing the normal fb onto the robust fa* loses robustness",
                "holds": all(ok) if ok else None, "evidence": ev})
    # 2. Acc~ within 3 points of Acc* for the smaller fb
    if rows:
        r = min(rows, key=lambda r: r["num_fb"])
        vals = [v for v in r["acc_tilde_all"] if v is not None]
        gaps = [100 * (r["acc_star"] - v) for v in vals]
        holds_mean = 100 * (r["acc_star"] - r["acc_tilde"][0]) <= within_points
        n_ok = sum(g <= within_points for g in gaps)
        ev = [f"# fb {r['num_fb']} (smallest): Acc~ = {pm(*r['acc_tilde'], 100)}% vs Acc* = {pct(r['acc_star'])}%; "
              f"Acc* - Acc~ = {100 * (r['acc_star'] - r['acc_tilde'][0]):.2f} points (mean), per trial "
              + ", ".join(f"{g:.2f}" for g in gaps) + f"; within {within_points:g} points in {n_ok}/{len(gaps)} trials"]
        for o in rows:
            if o is not r:
                ep = "-" if o["epochs"][0] is None else f"{o['epochs'][0]:.1f}"
                ev.append(f"# fb {o['num_fb']}: Acc* - Acc~ = {100 * (o['acc_star'] - o['acc_tilde'][0]):.2f} points (mean), "
                          f"converged {o['converged']}/{o['trials']}, # Epochs {ep}")
        out.append({"claim": f"Acc~ within {within_points:g} points of Acc* for the smaller fb (mean over trials)",
                    "holds": bool(holds_mean), "evidence": ev})
    # 3. rho smallest for the last layer pair
    ev, ok = [], []
    for r in rows:
        holds, text = _rho_order(r)
        if holds is not None:
            ok.append(holds)
        ev.append(text)
    for est, srows in (secondary or {}).items():
        for r in srows:
            ev.append("(secondary estimator, not part of the verdict) " + _rho_order(r)[1])
    out.append({"claim": "rho is smallest for the last layer pair (rho_n), growing toward earlier layers",
                "holds": (all(ok) if ok else None), "evidence": ev})
    # 4. each rho beside its permutation null
    ev, tot, sig = [], 0, 0
    for r in rows:
        for j, e in sorted(r["rho_pairs"].items()):
            tot += 1
            p = e["p_value_median"]
            s = p is not None and p < 0.05
            sig += int(s)
            ev.append(f"# fb {r['num_fb']} pair ({j - 1},{j}): rho {pm(*e['rho'], 1, 3)} vs null {pm(*e['null'], 1, 3)} bits, "
                      f"excess {pm(*e['excess'], 1, 3)}, median p {('-' if p is None else f'{p:.3f}')}")
    for est, srows in (secondary or {}).items():
        s_tot = s_sig = 0
        for r in srows:
            for j, e in sorted(r["rho_pairs"].items()):
                s_tot += 1
                p = e["p_value_median"]
                s_sig += int(p is not None and p < 0.05)
                ev.append(f"({est}, secondary) # fb {r['num_fb']} pair ({j - 1},{j}): rho {pm(*e['rho'], 1, 3)} vs null "
                          f"{pm(*e['null'], 1, 3)} bits, excess {pm(*e['excess'], 1, 3)}, median p "
                          f"{('-' if p is None else f'{p:.3f}')}")
        ev.insert(0, f"({est}, secondary) {s_sig}/{s_tot} pairs with median p < 0.05")
    out.append({"claim": "each rho is reported beside its within-class permutation null; rho exceeds its null (p < 0.05)",
                "holds": (sig == tot) if tot else None,
                "evidence": [f"{sig}/{tot} pairs with median p < 0.05 ({rows[0]['estimator'] if rows else '-'}, "
                             "primary; the smallest attainable p is 1/(1 + permutations))"] + ev})
    # 5. fine-tuning raises rho
    if initial_rhos:
        ev, ok = [], []
        for r in rows:
            ini = initial_rhos.get(r["num_fb"]) or {}
            for j, e in sorted(r["rho_pairs"].items()):
                if j in ini and _num(ini[j].get("rho")) is not None:
                    up = e["rho"][0] > float(ini[j]["rho"])
                    ok.append(up)
                    ev.append(f"# fb {r['num_fb']} pair ({j - 1},{j}): before {float(ini[j]['rho']):.3f} -> after "
                              f"{e['rho'][0]:.3f} bits ({'up' if up else 'NOT up'})")
        out.append({"claim": "adversarial fine-tuning raises rho as robust accuracy improves",
                    "holds": (all(ok) if ok else None), "evidence": ev})
    return out


def claims_markdown(claims: Sequence[Mapping]) -> str:
    lines = []
    for i, c in enumerate(claims, 1):
        verdict = {True: "REPRODUCED", False: "NOT REPRODUCED", None: "NOT CHECKABLE"}[c["holds"]]
        lines.append(f"{i}. **{c['claim']}** — {verdict}")
        for e in c["evidence"]:
            lines.append(f"   - {e}")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


PLOTS_HINT = "pip install 'jsemi[plots]'"


def _plt():
    """matplotlib.pyplot on the Agg backend; ImportError naming ``PLOTS_HINT`` when matplotlib is missing."""
    try:
        import matplotlib
    except ImportError as e:
        raise ImportError(f"figures need matplotlib, which is not installed ({PLOTS_HINT})") from e

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def _int_ticks(ax) -> None:
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))


def _finish_axes(ax, title: str, legend_size: int = 8) -> None:
    """Title, legend and a light grid: the common finish of every single-panel figure."""
    ax.set_title(title)
    ax.legend(fontsize=legend_size)
    ax.grid(alpha=0.3)


def _save(plt, fig, path: str | Path) -> Path:
    """Lay out, write ``fig`` as a 120-dpi PNG at ``path`` (parents created), close it; returns the path."""
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_rho_per_layer(rows: Sequence[Mapping], path: str | Path, title: str = "rho per layer pair (Fig. S2)") -> Path:
    """rho_j (mean ± std over trials) against the pair index j, one line per # fb, nulls dashed."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for r in sorted(rows, key=lambda r: r["num_fb"]):
        js = sorted(r["rho_pairs"])
        m = [r["rho_pairs"][j]["rho"][0] for j in js]
        s = [r["rho_pairs"][j]["rho"][1] or 0 for j in js]
        line = ax.errorbar(js, m, yerr=s, marker="o", capsize=3, label=f"# fb {r['num_fb']}")
        nm = [r["rho_pairs"][j]["null"][0] for j in js]
        if all(v is not None for v in nm):
            ax.plot(js, nm, ls="--", color=line[0].get_color(), alpha=0.6, label=f"# fb {r['num_fb']} null")
    ax.set_xlabel("layer pair (j-1, j): j")
    _int_ticks(ax)
    ax.set_ylabel(f"rho_j [bits] ({rows[0]['estimator'] if rows else ''})")
    _finish_axes(ax, title)
    return _save(plt, fig, path)


def plot_accuracy_per_epoch(trials: Sequence[Mapping], path: str | Path, title: str = "attacked accuracy during fine-tuning") -> Path:
    """Attacked test accuracy per epoch (epoch 0 = Acc_sr), one panel per # fb, Acc* and Acc dotted."""
    plt = _plt()
    fbs = sorted({t["num_fb"] for t in trials})
    fig, axes = plt.subplots(1, len(fbs), figsize=(4.5 * len(fbs), 3.6), squeeze=False)
    for ax, fb in zip(axes[0], fbs):
        ts = [t for t in trials if t["num_fb"] == fb]
        for t in ts:
            xs = [0] + [h["epoch"] for h in t["history"]]
            ys = [100 * t["acc_sr"]] + [100 * h["adv_acc"] for h in t["history"]]
            ax.plot(xs, ys, marker="o", label=f"trial {t['trial']}")
        ax.axhline(100 * ts[0]["acc_star"], color="k", ls=":", label="Acc*")
        if ts[0].get("k"):
            ax.axhline(100 * ts[0]["threshold"], color="gray", ls="--", label="Acc* - k")
        ax.axhline(100 * ts[0]["acc"], color="r", ls=":", label="Acc (normal)")
        ax.set_title(f"# fb {fb}")
        ax.set_xlabel("fine-tuning epoch")
        _int_ticks(ax)
        ax.set_ylabel("attacked accuracy [%]")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.suptitle(title)
    return _save(plt, fig, path)


def plot_rho_vs_k(points: Sequence[Mapping], path: str | Path, title: str = "rho against k (Fig. S3)") -> Path:
    """``points``: rows (from ``summarize``) of runs that differ in k; one line per layer pair."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    pairs = sorted({j for r in points for j in r["rho_pairs"]}, reverse=True)
    for j in pairs:
        pts = sorted((float(r["k"]), r["rho_pairs"][j]["rho"][0], r["rho_pairs"][j]["rho"][1] or 0)
                     for r in points if j in r["rho_pairs"])
        n = points[0]["n"]
        ax.errorbar([p[0] for p in pts], [p[1] for p in pts], yerr=[p[2] for p in pts], marker="o", capsize=3,
                    label=f"{rho_label(j, n)} ({j - 1},{j})")
    ax.set_xlabel("k [accuracy points]")
    ax.set_ylabel("rho_j [bits]")
    _finish_axes(ax, title)
    return _save(plt, fig, path)


def plot_rho_across_models(series: Mapping[str, Mapping[int, Mapping]], path: str | Path,
                           title: str = "rho across independently pretrained models (Fig. S1)") -> Path:
    """``series``: label (e.g. "seed 0") -> {j: rho entry with 'rho' (and 'null')}; one line each."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    for lab, entries in series.items():
        js = sorted(entries)
        line = ax.plot(js, [_num(entries[j]["rho"]) for j in js], marker="o", label=lab)
        nulls = [_num(entries[j].get("null")) for j in js]
        if all(v is not None for v in nulls):
            ax.plot(js, nulls, ls="--", color=line[0].get_color(), alpha=0.5)
    ax.set_xlabel("layer pair (j-1, j): j")
    _int_ticks(ax)
    ax.set_ylabel("rho_j [bits] (dashed: null)")
    _finish_axes(ax, title)
    return _save(plt, fig, path)


# ----------------------------------------------------------------------------- run directories


def load_rows(run_dirs: Sequence[str | Path], estimator: str | None = None) -> tuple[list[dict], list[dict]]:
    """(rows, all trial records) of Algorithm 1 run directories, in the given order."""
    from jsemi.runs import RunDir

    rows, trials = [], []
    for d in run_dirs:
        ts = RunDir.load(d).trials()
        if ts:
            rows.append(summarize(ts, estimator))
            trials += ts
    return rows, trials


def _stderr(line: str) -> None:
    print(line, file=sys.stderr)


def alg1_report(run_dirs: Sequence[str | Path], out_dir: str | Path, *, title: str = "Algorithm 1",
                estimator: str | None = None, log: Callable[[str], None] = _stderr) -> Path:
    """Writes table.md, figures and a short REPORT.md for a set of Algorithm 1 runs (``jsemi alg1``),
    with CSV twins of the tables: table.csv, rho.csv and trials.csv (``table_records``,
    ``rho_records``, ``trial_records``).  Without matplotlib the figures are skipped and ``log``
    (standard error by default) says so once, naming ``PLOTS_HINT``."""
    from jsemi.csv_tables import write_csv

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows, trials = load_rows(run_dirs, estimator)
    if not rows:
        raise ValueError("no finished trials in " + ", ".join(str(d) for d in run_dirs))
    table = table_markdown(rows)
    (out_dir / "table.md").write_text(table)
    write_csv(out_dir / "table.csv", table_records(rows))
    write_csv(out_dir / "rho.csv", rho_records(rows))
    write_csv(out_dir / "trials.csv", trial_records(trials))
    figs, skipped = [], None
    try:
        figs.append(plot_rho_per_layer(rows, out_dir / "rho_per_layer.png"))
        figs.append(plot_accuracy_per_epoch(trials, out_dir / "accuracy_per_epoch.png"))
    except ImportError as e:  # matplotlib missing: tables only, said once
        skipped = f"figures skipped: {e}"
        log(skipped)
    md = [f"# {title}", "", table, "## rho beside its permutation null", "", rho_table_markdown(rows),
          "## Trials", "", trials_markdown(trials), "## Paper's qualitative claims", "", claims_markdown(check_claims(rows))]
    md += ["Tables as CSV: table.csv, rho.csv, trials.csv.", ""]
    md += [f"![{p.stem}]({p.name})" for p in figs] + ([f"_{skipped}_"] if skipped else [])
    path = out_dir / "REPORT.md"
    path.write_text("\n".join(md) + "\n")
    return path
