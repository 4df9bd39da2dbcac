"""Per-claim statistics of the reproduction study across independently pretrained networks.

Each finished unit (one architecture, dataset and pretraining seed; see
``jsemi.experiments.study``) gives one number per claim and rho estimator (``unit_statistics``,
from ``jsemi.report`` rows), and one per-unit verdict from ``jsemi.report.check_claims``.
Across units:

- the **confidence interval** is Student's t-interval of the per-unit numbers,
  mean ± t_{(1+level)/2, m-1} · s / sqrt(m) (s the sample standard deviation, m units): per
  setting (architecture x dataset) across its seeds, and pooled over every unit (each
  unit is an independently pretrained pair of networks, so the pooled interval is about
  the average effect over the study's settings);
- the **share** is the fraction of units where the per-unit check holds (units where it
  cannot be checked are left out of numerator and denominator);
- the **verdict** compares the pooled interval with the claim's threshold: "holds" when
  the whole interval is on the claim's side, "does not hold" when the whole interval is
  on the other side, otherwise "undetermined at this power" (also when fewer than two
  units have the number).

``write_study_report`` writes OUT/summary.json, OUT/REPORT.md (and, given ``doc``, the
same text as docs/reproduction.md) with tables and figures.  Nothing here runs a network.
"""

from __future__ import annotations

import dataclasses
import datetime
import math
import platform
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from jsemi import report
from jsemi.runs import read_json, write_json_atomic

HOLDS, FAILS, UNDETERMINED = "holds", "does not hold", "undetermined at this power"


@dataclasses.dataclass(frozen=True)
class Claim:
    """A claim as a per-unit number compared with ``threshold``: holds when ``sign * (x - threshold) > 0``
    (sign +1: the number must exceed the threshold; -1: it must stay below it)."""

    id: str
    text: str
    statistic: str
    threshold: float
    sign: int
    per_estimator: bool
    check_index: int | None  # index in jsemi.report.check_claims' output (None: per-unit sign of the number)


CLAIMS: tuple[Claim, ...] = (
    Claim("acc_sr", "Acc_sr < Acc*: gluing the normal fb onto the robust fa* loses robustness",
          "Acc* - mean Acc_sr over trials and # fb [points]", 0.0, +1, False, 0),
    Claim("acc_tilde", "fine-tuning fb alone brings Acc~ within 3 points of Acc* (smallest # fb)",
          "Acc* - mean Acc~, smallest # fb [points]", 3.0, -1, False, 1),
    Claim("larger_fb_harder", "a larger fb is harder to fine-tune back (larger gap Acc* - Acc~)",
          "gap(largest # fb) - gap(smallest # fb) [points]", 0.0, +1, False, None),
    Claim("rho_last_smallest", "rho is smallest for the last layer pair (rho_n)",
          "min over earlier pairs of mean rho_j - mean rho_n, mean over # fb [bits]", 0.0, +1, True, 2),
    Claim("rho_last_smallest_excess", "rho_n is smallest also after subtracting each pair's permutation null",
          "min over earlier pairs of excess_j - excess_n, mean over # fb [bits]", 0.0, +1, True, None),
    Claim("rho_above_null", "each rho exceeds its within-class permutation null",
          "mean over pairs and # fb of rho - null [bits]", 0.0, +1, True, 3),
    Claim("finetune_raises_rho", "adversarial fine-tuning raises rho",
          "mean over pairs and # fb of rho after - rho before fine-tuning [bits]", 0.0, +1, True, 4),
)


# ----------------------------------------------------------------------------- statistics


def t_interval(values: Sequence[float | None], level: float = 0.95) -> dict:
    """Student's t-interval of the mean of the finite ``values``: {mean, lo, hi, sd, m, mde80}.

    ``lo``/``hi`` are None for fewer than two values; ``sd`` uses ddof = 1.  ``mde80`` is the
    power statement: the smallest true mean distance from a threshold that this many values
    with this spread detect (two-sided, at ``level``) with 80 % power,
    (t_{(1+level)/2, m-1} + t_{0.8, m-1}) sd / sqrt(m) (the usual one-sample t approximation).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    xs = np.asarray([float(v) for v in values if v is not None and math.isfinite(float(v))], float)
    m = int(xs.size)
    if m == 0:
        return {"mean": None, "lo": None, "hi": None, "sd": None, "m": 0, "mde80": None}
    mean = float(xs.mean())
    if m < 2:
        return {"mean": mean, "lo": None, "hi": None, "sd": None, "m": 1, "mde80": None}
    from scipy.stats import t

    sd = float(xs.std(ddof=1))
    q = float(t.ppf((1 + level) / 2, m - 1))
    half = q * sd / math.sqrt(m)
    mde = (q + float(t.ppf(0.8, m - 1))) * sd / math.sqrt(m)
    return {"mean": mean, "lo": mean - half, "hi": mean + half, "sd": sd, "m": m, "mde80": mde}


def verdict(ci: Mapping, claim: Claim) -> str:
    """"holds" / "does not hold" / "undetermined at this power" from an interval and the claim's side."""
    lo, hi = ci.get("lo"), ci.get("hi")
    if lo is None or hi is None:
        return UNDETERMINED
    if claim.sign > 0:
        return HOLDS if lo > claim.threshold else FAILS if hi < claim.threshold else UNDETERMINED
    return HOLDS if hi < claim.threshold else FAILS if lo > claim.threshold else UNDETERMINED


def _m(pair: Sequence) -> float | None:
    return None if pair is None or pair[0] is None else float(pair[0])


def _last_gap(r: Mapping, key: str) -> float | None:
    pairs = r["rho_pairs"]
    n = r["n"]
    if n not in pairs or len(pairs) < 2:
        return None
    last = _m(pairs[n][key])
    others = [_m(e[key]) for j, e in pairs.items() if j != n]
    if last is None or any(v is None for v in others):
        return None
    return min(others) - last


def _mean(xs: Sequence[float | None]) -> float | None:
    xs = [x for x in xs if x is not None]
    return float(np.mean(xs)) if xs else None


def unit_statistics(rows: Sequence[Mapping], initial: Mapping[int, Mapping[int, Mapping]] | None = None) -> dict:
    """The per-unit number of every claim (``CLAIMS`` ids) plus the rho/null levels beside them.

    ``rows``: ``jsemi.report.summarize`` rows of one unit (one per # fb, one estimator);
    ``initial``: {# fb: {j: rho entry before fine-tuning}} of that estimator.  Accuracy
    gaps in percentage points, rho in bits; None where a number cannot be formed.
    """
    if not rows:
        raise ValueError("no rows")
    rows = sorted(rows, key=lambda r: r["num_fb"])
    gap = lambda r: None if r["acc_tilde"][0] is None else 100 * (r["acc_star"] - r["acc_tilde"][0])  # noqa: E731
    st: dict[str, Any] = {
        "acc_sr": _mean([100 * (r["acc_star"] - r["acc_sr"][0]) for r in rows if r["acc_sr"][0] is not None]),
        "acc_tilde": gap(rows[0]),
        "larger_fb_harder": (gap(rows[-1]) - gap(rows[0])) if len(rows) > 1 and None not in (gap(rows[0]), gap(rows[-1])) else None,
        "rho_last_smallest": _mean([_last_gap(r, "rho") for r in rows]),
        "rho_last_smallest_excess": _mean([_last_gap(r, "excess") for r in rows]),
        "rho_above_null": _mean([_m(e["excess"]) for r in rows for e in r["rho_pairs"].values()]),
    }
    ups = []
    for r in rows:
        ini = (initial or {}).get(r["num_fb"]) or {}
        for j, e in r["rho_pairs"].items():
            before = report._num((ini.get(j) or {}).get("rho"))
            if before is not None and _m(e["rho"]) is not None:
                ups.append(_m(e["rho"]) - before)
    st["finetune_raises_rho"] = _mean(ups) if ups else None
    big = rows[-1]
    st["rho_n"] = _m(big["rho_pairs"].get(big["n"], {}).get("rho"))
    st["null_n"] = _m(big["rho_pairs"].get(big["n"], {}).get("null"))
    st["rho_mean"] = _mean([_m(e["rho"]) for r in rows for e in r["rho_pairs"].values()])
    st["null_mean"] = _mean([_m(e["null"]) for r in rows for e in r["rho_pairs"].values()])
    ps = [e["p_value_median"] for r in rows for e in r["rho_pairs"].values() if e["p_value_median"] is not None]
    st["share_p05"] = float(np.mean([p < 0.05 for p in ps])) if ps else None
    st["p_min"] = min(ps) if ps else None
    return st


def unit_checks(rows: Sequence[Mapping], initial: Mapping | None, stats: Mapping) -> dict:
    """Per-unit verdict (True / False / None) of every claim: ``report.check_claims`` where it has
    the claim, else the sign of the unit's number against the threshold."""
    checked = report.check_claims(rows, initial_rhos=initial or None)
    out = {}
    for c in CLAIMS:
        if c.check_index is not None:
            out[c.id] = checked[c.check_index]["holds"] if c.check_index < len(checked) else None
        else:
            x = stats.get(c.id)
            out[c.id] = None if x is None else bool(c.sign * (x - c.threshold) > 0)
    return out


# ----------------------------------------------------------------------------- collecting runs


def initial_from_dirs(row_dirs: Sequence[Path], estimator: str) -> dict:
    """{# fb: {j: entry}} from the runs' initial.json / initial_<estimator>.json (missing: left out)."""
    out = {}
    for d in row_dirs:
        d = Path(d)
        for name in (f"initial_{estimator}.json", "initial.json"):
            p = d / name
            if p.exists():
                rho = read_json(p).get("rho", {}).get(estimator)
                if rho:
                    fb = int(read_json(d / "settings.json")["config"]["num_fb"])
                    out[fb] = {int(e["layer"]): e for e in rho}
                    break
    return out


def collect_units(out: str | Path, estimators: Sequence[str]) -> list[dict]:
    """One record per finished unit in OUT/units: its rows, statistics and checks per estimator."""
    recs = []
    for p in sorted((Path(out) / "units").glob("*.json")):
        marker = read_json(p)
        dirs = [Path(r["run_dir"]) for r in marker["rows"]]
        per_est = {}
        for est in estimators:
            rows, _ = report.load_rows(dirs, estimator=est)
            for r in rows:
                r["pretrain_seed"] = marker["seed"]
            ini = initial_from_dirs(dirs, est)
            st = unit_statistics(rows, ini)
            per_est[est] = {"rows": rows, "stats": st, "checks": unit_checks(rows, ini, st)}
        recs.append({"unit": marker["unit"], "arch": marker["arch"], "dataset": marker["dataset"],
                     "seed": marker["seed"], "setting": f"{marker['arch']}-{marker['dataset']}",
                     "marker": marker, "per_estimator": per_est})
    return recs


def aggregate(units: Sequence[Mapping], estimators: Sequence[str], level: float = 0.95) -> list[dict]:
    """Per claim and estimator: pooled interval, per-setting intervals, share of units, verdict."""
    out = []
    settings = sorted({u["setting"] for u in units})
    for c in CLAIMS:
        for est in (estimators if c.per_estimator else estimators[:1]):
            vals = [u["per_estimator"][est]["stats"].get(c.id) for u in units]
            checks = [u["per_estimator"][est]["checks"].get(c.id) for u in units]
            pooled = t_interval(vals, level)
            per_setting = {}
            for s in settings:
                sv = [u["per_estimator"][est]["stats"].get(c.id) for u in units if u["setting"] == s]
                ci = t_interval(sv, level)
                per_setting[s] = dict(ci, verdict=verdict(ci, c))
            known = [x for x in checks if x is not None]
            beside = {}
            if c.per_estimator:
                for k in ("rho_n", "null_n", "rho_mean", "null_mean", "share_p05"):
                    beside[k] = t_interval([u["per_estimator"][est]["stats"].get(k) for u in units], level)
            out.append({"claim": c.id, "text": c.text, "statistic": c.statistic, "threshold": c.threshold,
                        "sign": c.sign, "estimator": est if c.per_estimator else None, "pooled": pooled,
                        "verdict": verdict(pooled, c), "holds_units": sum(known), "checked_units": len(known),
                        "share": (sum(known) / len(known)) if known else None, "per_setting": per_setting,
                        "beside": beside, "level": level})
    return out


# ----------------------------------------------------------------------------- markdown


def fmt_ci(ci: Mapping, digits: int = 2) -> str:
    if ci.get("mean") is None:
        return "-"
    if ci.get("lo") is None:
        return f"{ci['mean']:.{digits}f} (m=1)"
    return f"{ci['mean']:.{digits}f} [{ci['lo']:.{digits}f}, {ci['hi']:.{digits}f}]"


def _mde(ci: Mapping) -> str:
    return "-" if ci.get("mde80") is None else f"±{ci['mde80']:.3f}"


def verdict_table(results: Sequence[Mapping]) -> str:
    lines = ["| claim | estimator | per-network number | mean [95% CI] over networks | detectable at 80 % power "
             "| holds in | verdict |",
             "|:---|:---|:---|---:|---:|---:|:---|"]
    for r in results:
        side = (">" if r["sign"] > 0 else "<") + f" {r['threshold']:g}"
        share = "-" if r["share"] is None else f"{r['holds_units']}/{r['checked_units']} ({100 * r['share']:.0f} %)"
        lines.append(f"| {r['text']} | {r['estimator'] or '-'} | {r['statistic']} (claim: {side}) "
                     f"| {fmt_ci(r['pooled'], 3)} (m={r['pooled']['m']}) | {_mde(r['pooled'])} | {share} "
                     f"| **{r['verdict']}** |")
    return "\n".join(lines) + "\n"


def setting_table(results: Sequence[Mapping]) -> str:
    settings = sorted({s for r in results for s in r["per_setting"]})
    short = {HOLDS: "holds", FAILS: "fails", UNDETERMINED: "undet."}
    lines = ["| claim | estimator | " + " | ".join(settings) + " |", "|:---|:---|" + "---:|" * len(settings)]
    for r in results:
        cells = [f"{fmt_ci(r['per_setting'][s])} {short[r['per_setting'][s]['verdict']]}" if s in r["per_setting"] else "-"
                 for s in settings]
        lines.append(f"| {r['claim']} | {r['estimator'] or '-'} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def null_table(results: Sequence[Mapping]) -> str:
    lines = ["| estimator | rho_n (largest # fb) | its null | mean rho over pairs | mean null | share of pairs with p < 0.05 |",
             "|:---|---:|---:|---:|---:|---:|"]
    for r in results:
        if r["claim"] != "rho_above_null":
            continue
        b = r["beside"]
        lines.append(f"| {r['estimator']} | {fmt_ci(b['rho_n'], 3)} | {fmt_ci(b['null_n'], 3)} | {fmt_ci(b['rho_mean'], 3)} "
                     f"| {fmt_ci(b['null_mean'], 3)} | {fmt_ci(b['share_p05'], 2)} |")
    return "\n".join(lines) + "\n"


def units_table(units: Sequence[Mapping], command: str) -> str:
    lines = ["| unit | clean acc normal / robust [%] | Acc / Acc* [%] | wall / CPU [s] | regenerate |",
             "|:---|---:|---:|---:|:---|"]
    for u in units:
        m = u["marker"]
        acc = m.get("pretrain_test_acc", {})
        est0 = next(iter(u["per_estimator"].values()))
        r0 = est0["rows"][0] if est0["rows"] else None
        a = "-" if r0 is None else f"{report.pct(r0['acc'], 1)} / {report.pct(r0['acc_star'], 1)}"
        secs = f"{sum(m.get('seconds', {}).values()):.0f} / {sum(m.get('cpu_seconds', {}).values()):.0f}"
        lines.append(f"| {u['unit']} | {report.pct(acc.get('normal'), 1)} / {report.pct(acc.get('robust'), 1)} | {a} "
                     f"| {secs} | `{command} --only {u['unit']}` |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------- figures


def plot_claims(units: Sequence[Mapping], results: Sequence[Mapping], path: Path) -> Path:
    """Per claim and estimator: every unit's number (dots, by setting) and the pooled interval."""
    plt = report._plt()
    fig, ax = plt.subplots(figsize=(8, 0.45 * len(results) + 1.5))
    settings = sorted({u["setting"] for u in units})
    colors = {s: plt.cm.tab10(i % 10) for i, s in enumerate(settings)}
    for i, r in enumerate(results):
        est = r["estimator"] or next(iter(units[0]["per_estimator"]))
        for u in units:
            x = u["per_estimator"][est]["stats"].get(r["claim"])
            if x is not None:
                thr_scale = x - r["threshold"]
                ax.plot(thr_scale, i, "o", ms=3, color=colors[u["setting"]], alpha=0.7)
        p = r["pooled"]
        if p["lo"] is not None:
            ax.plot([p["lo"] - r["threshold"], p["hi"] - r["threshold"]], [i, i], "k-", lw=2)
    ax.axvline(0, color="gray", ls="--")
    ax.set_yticks(range(len(results)))
    ax.set_yticklabels([f"{r['claim']} ({r['estimator'] or 'acc'})" for r in results], fontsize=7)
    ax.set_xlabel("per-network number minus the claim's threshold (points or bits); bar: pooled 95% CI")
    for s in settings:
        ax.plot([], [], "o", color=colors[s], label=s)
    ax.legend(fontsize=6, loc="best")
    ax.set_title("claims per network (dots) and pooled interval (bars)")
    ax.grid(alpha=0.3)
    return report._save(plt, fig, path)


def plot_rho_pairs(units: Sequence[Mapping], est: str, path: Path) -> Path:
    """rho per pair (largest # fb row), one panel per setting, one line per seed, nulls dashed."""
    plt = report._plt()
    settings = sorted({u["setting"] for u in units})
    fig, axes = plt.subplots(1, len(settings), figsize=(3.2 * len(settings), 3), squeeze=False)
    for ax, s in zip(axes[0], settings):
        for u in (u for u in units if u["setting"] == s):
            rows = u["per_estimator"][est]["rows"]
            if not rows:
                continue
            r = max(rows, key=lambda r: r["num_fb"])
            js = sorted(r["rho_pairs"])
            line = ax.plot([j - r["n"] for j in js], [_m(r["rho_pairs"][j]["rho"]) for j in js], "o-",
                           label=f"seed {u['seed']}")
            ax.plot([j - r["n"] for j in js], [_m(r["rho_pairs"][j]["null"]) for j in js], "--",
                    color=line[0].get_color(), alpha=0.6)
        ax.set_title(s, fontsize=9)
        ax.set_xlabel("j - n")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=6)
    axes[0][0].set_ylabel(f"rho_j [bits], {est} (dashed: null)")
    return report._save(plt, fig, path)


# ----------------------------------------------------------------------------- the report


def study_markdown(out: Path, units: Sequence[Mapping], results: Sequence[Mapping], config: Mapping,
                   figures: Sequence[str], command: str) -> str:
    ests = list(config["alg1"]["rho_estimators"])
    n_units = len(units)
    planned = len(config["archs"]) * len(config["datasets"]) * len(config["seeds"])
    a1 = config["alg1"]
    lines = [
        "# Reproduction study: the paper's claims across architectures, datasets and pretraining seeds", "",
        f"Generated {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC by `{command}` "
        f"(scale `{config['scale']}`) from **{n_units} of {planned} units** finished "
        f"(a unit = one architecture x dataset x pretraining seed: a normal and a robust network trained "
        f"from that seed, then Algorithm 1 for # fb in {config['fb_values']}, {a1['trials']} trials each). "
        f"Machine: {platform.machine()}, {platform.system()}. Rerunning the command resumes: finished units, "
        "pretraining epochs and trials are never recomputed; this file is rewritten from the finished runs.", "",
        "Design: the paper's claims (PAPER_NOTES section 7) are judged across independently pretrained networks, "
        "not on one: every unit is a replicate, and each number below says how it was formed from a unit's "
        f"Algorithm 1 rows. rho comes from {len(ests)} estimators ({', '.join(ests)}), each beside its within-class "
        "permutation null, because no single estimator is calibrated at these layer sizes (issue 12). The networks "
        "are small and trained briefly so that the whole study fits a 2-core machine; the `gpu` scale runs the same "
        "design wider, longer and with more seeds and trials.", "",
        "## Verdicts", "",
        *([] if units else ["**No unit has finished yet**, so no claim has a verdict here: every table below is empty "
                            "until the study command (above) finishes its first unit; rerun it to resume.", ""]),
        "Per claim and rho estimator: each network's number (the second column says which), its mean with a 95 % "
        "Student-t interval over the independently pretrained networks (m), the share of networks where the per-network "
        "check holds (`jsemi.report.check_claims`, or the number's sign), the power of this design (the smallest "
        "distance of the true mean from the threshold that m networks with this spread detect with 80 % power at the "
        "5 % level: (t_0.975 + t_0.8) sd / sqrt(m)), and the verdict: **holds** when the whole "
        "interval lies on the claim's side of the threshold, **does not hold** when it lies on the other side, "
        "**undetermined at this power** otherwise.", "",
        verdict_table(results),
        "## Per setting (95 % t-interval over seeds)", "",
        setting_table(results),
        "## rho beside its within-class permutation null (mean [95 % CI] over networks, bits)", "",
        f"Permutations per estimator: " + ", ".join(f"{e} {a1['rho_settings'].get(e, {}).get('permutations', '?')}"
                                                   for e in ests)
        + " (the smallest p-value is 1 / (1 + permutations)).", "",
        null_table(results),
        "## Units", "",
        units_table(units, command),
    ]
    for est in ests[:1]:
        rows = [r for u in units for r in u["per_estimator"][est]["rows"]]
        if rows:
            lines += [f"## Algorithm 1 table, every unit (rho columns: {est})", "", report.table_markdown(rows)]
    lines += ["## Settings", "",
              "Architectures: " + "; ".join(f"{a['label']} = `{a['model']}` {a['model_kwargs']}" for a in config["archs"]),
              "", "Datasets: " + "; ".join(f"{d['label']} = `{d['name']}` {d['options']} (train subset "
                                           f"{d['train_subset']}, test subset {d['test_subset']}, fine-tuning subset "
                                           f"{d['finetune_subset']}, pretraining epochs {d['epochs_normal']} normal / "
                                           f"{d['epochs_robust']} robust)" for d in config["datasets"]),
              "", f"Pretraining: {config['pretrain']}", "",
              f"Algorithm 1: {a1}", ""]
    lines += [f"![{Path(f).stem}]({f})" for f in figures]
    return "\n".join(lines) + "\n"


def write_study_report(out: str | Path, *, doc: str | Path | None = None, level: float = 0.95,
                       command: str | None = None) -> Path:
    """Writes OUT/summary.json and OUT/REPORT.md (and ``doc`` with its figures beside it) from the finished units."""
    out = Path(out)
    config = read_json(out / "study.json")["config"]
    ests = list(config["alg1"]["rho_estimators"])
    command = command or f"python -m jsemi study --scale {config['scale']} --out {out}"
    units = collect_units(out, ests)
    results = aggregate(units, ests, level) if units else []
    write_json_atomic(out / "summary.json", {"units": [{k: u[k] for k in ("unit", "arch", "dataset", "seed")}
                                                       | {"stats": {e: v["stats"] for e, v in u["per_estimator"].items()},
                                                          "checks": {e: v["checks"] for e, v in u["per_estimator"].items()}}
                                                       for u in units], "claims": results})
    targets = [(out / "REPORT.md", out / "figures")]
    if doc is not None:
        targets.append((Path(doc), Path(doc).parent / "figures" / "reproduction"))
    for md_path, fig_dir in targets:
        figs = []
        if units:
            try:
                figs.append(plot_claims(units, results, fig_dir / "claims.png"))
                figs += [plot_rho_pairs(units, e, fig_dir / f"rho_{e}.png") for e in ests]
            except ImportError:  # matplotlib missing: tables only
                pass
        rel = [str(p.relative_to(md_path.parent)) for p in figs]
        md_path.parent.mkdir(parents=True, exist_ok=True)
        md_path.write_text(study_markdown(out, units, results, config, rel, command))
    return out / "REPORT.md"
