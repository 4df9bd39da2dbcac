"""The reproduction study: aggregation and verdicts on hand-made runs (fast), and a tiny study end to end (slow)."""

from __future__ import annotations

import json
import math
import os

import pytest

from jsemi.experiments import study_report as sr
from jsemi.runs import RunDir, write_json_atomic

T975_DF2 = 4.302652729749464  # Student t quantile 0.975, 2 degrees of freedom
T975_DF3 = 3.182446305284263


def test_t_interval_closed_form():
    ci = sr.t_interval([1.0, 2.0, 3.0])
    half = T975_DF2 * 1.0 / math.sqrt(3)
    assert ci["m"] == 3 and ci["mean"] == pytest.approx(2.0) and ci["sd"] == pytest.approx(1.0)
    assert ci["lo"] == pytest.approx(2.0 - half) and ci["hi"] == pytest.approx(2.0 + half)
    t80_df2 = (2 * 0.8 - 1) / math.sqrt(2 * 0.8 * 0.2)  # Student t quantile, 2 df: (2p - 1) / sqrt(2p(1 - p))
    assert ci["mde80"] == pytest.approx((T975_DF2 + t80_df2) / math.sqrt(3))
    one = sr.t_interval([5.0, None, float("nan")])
    assert one == {"mean": 5.0, "lo": None, "hi": None, "sd": None, "m": 1, "mde80": None}
    assert sr.t_interval([])["mean"] is None
    with pytest.raises(ValueError, match="level"):
        sr.t_interval([1.0, 2.0], level=1.5)


def test_verdict_sides():
    above = sr.CLAIMS[0]  # acc_sr: number must exceed 0
    below = next(c for c in sr.CLAIMS if c.id == "acc_tilde")  # number must stay below 3
    assert sr.verdict({"lo": 0.1, "hi": 2.0}, above) == sr.HOLDS
    assert sr.verdict({"lo": -2.0, "hi": -0.1}, above) == sr.FAILS
    assert sr.verdict({"lo": -1.0, "hi": 1.0}, above) == sr.UNDETERMINED
    assert sr.verdict({"lo": None, "hi": None}, above) == sr.UNDETERMINED
    assert sr.verdict({"lo": 0.5, "hi": 2.9}, below) == sr.HOLDS
    assert sr.verdict({"lo": 3.1, "hi": 9.0}, below) == sr.FAILS
    assert sr.verdict({"lo": 2.0, "hi": 4.0}, below) == sr.UNDETERMINED


# ----------------------------------------------------------------------------- hand-made runs


def _trial(t, fb, n, acc_star, acc_sr, acc_tilde, rhos, nulls, ps):
    """A trial record as jsemi.algorithms writes it (only the fields the report reads)."""
    pairs = list(range(n - fb + 1, n + 1))
    entries = [{"layer": j, "pair": [j - 1, j], "rho": r, "null": q, "excess": r - q, "p_value": p}
               for j, r, q, p in zip(pairs, rhos, nulls, ps)]
    return {"trial": t, "seed": t, "net": "net", "dataset": "data", "n": n, "a": n - fb, "num_fb": fb, "k": 0.0,
            "max_epochs": 3, "acc": 0.1, "acc_star": acc_star, "threshold": acc_star, "acc_sr": acc_sr,
            "acc_tilde": acc_tilde, "diff": acc_tilde - acc_star, "converged": acc_tilde >= acc_star, "epochs": 2,
            "history": [], "rho_estimator": "ksg", "rho": {"ksg": entries, "edge": entries},
            "timing": {"wall_s": 1.0}}


def _make_unit(out, arch, seed, gap_sr, gap_tilde, rho_last, initial_shift):
    """One unit with # fb 2 (pairs 6, 7 of n = 7): Acc* = 0.5, two identical trials."""
    name = f"{arch}-data-seed{seed}"
    d = out / "alg1" / name / "fb2"
    rd = RunDir.open(d, {"unit": name})
    rhos, nulls, ps = [1.0, rho_last], [0.2, 0.2], [0.02, 0.02]
    for t in range(2):
        rd.save_trial(t, _trial(t, 2, 7, 0.5, 0.5 - gap_sr / 100, 0.5 - gap_tilde / 100, rhos, nulls, ps))
    rd.save("settings", {"config": {"num_fb": 2}})
    init = [{"layer": j, "rho": r - initial_shift} for j, r in zip((6, 7), rhos)]
    rd.save("initial", {"rho": {"ksg": init}, "rho_estimator": "ksg"})
    rd.save("initial_edge", {"rho": {"edge": init}, "rho_estimator": "edge"})
    write_json_atomic(out / "units" / f"{name}.json",
                      {"unit": name, "arch": arch, "dataset": "data", "seed": seed, "rows": [{"run_dir": str(d)}],
                       "pretrain_test_acc": {"normal": 0.9, "robust": 0.8}, "seconds": {"x": 2.0}})


def _study(tmp_path, gaps_sr=(1.0, 2.0, 3.0)):
    out = tmp_path / "study"
    write_json_atomic(out / "study.json", {"kind": "study", "hash": "h", "config": {
        "scale": "hand", "archs": [{"label": "a", "model": "m", "model_kwargs": {}}], "seeds": [0, 1, 2],
        "datasets": [{"label": "data", "name": "digits", "options": {}, "train_subset": None, "test_subset": None,
                      "finetune_subset": None, "epochs_normal": 1, "epochs_robust": 1}],
        "pretrain": {}, "fb_values": [2],
        "alg1": {"rho_estimators": ["ksg", "edge"], "trials": 2, "rho_settings": {"ksg": {"permutations": 49}}}}})
    for seed, g in enumerate(gaps_sr):
        # rho_last 0.4 / 0.5 / 0.6: min earlier (1.0) - rho_n = 0.6 / 0.5 / 0.4; fine-tuning raised rho by 0.1
        _make_unit(out, "a", seed, gap_sr=g, gap_tilde=10.0, rho_last=0.4 + 0.1 * seed, initial_shift=0.1)
    return out


def test_unit_statistics_from_rows(tmp_path):
    out = _study(tmp_path)
    units = sr.collect_units(out, ["ksg", "edge"])
    assert [u["seed"] for u in units] == [0, 1, 2]
    st = units[0]["per_estimator"]["ksg"]["stats"]
    assert st["acc_sr"] == pytest.approx(1.0)
    assert st["acc_tilde"] == pytest.approx(10.0)
    assert st["larger_fb_harder"] is None  # one # fb only
    assert st["rho_last_smallest"] == pytest.approx(0.6)
    assert st["rho_last_smallest_excess"] == pytest.approx(0.6)  # equal nulls
    assert st["rho_above_null"] == pytest.approx(((1.0 - 0.2) + (0.4 - 0.2)) / 2)
    assert st["finetune_raises_rho"] == pytest.approx(0.1)
    assert st["share_p05"] == 1.0 and st["rho_n"] == pytest.approx(0.4) and st["null_n"] == pytest.approx(0.2)
    checks = units[0]["per_estimator"]["ksg"]["checks"]
    assert checks["acc_sr"] is True and checks["acc_tilde"] is False and checks["rho_last_smallest"] is True
    assert checks["finetune_raises_rho"] is True and checks["larger_fb_harder"] is None


def test_aggregate_intervals_shares_and_report(tmp_path):
    out = _study(tmp_path, gaps_sr=(1.0, 2.0, 3.0))
    path = sr.write_study_report(out, command="python -m jsemi study --scale hand --out X")
    summary = json.loads((out / "summary.json").read_text())
    res = {(c["claim"], c["estimator"]): c for c in summary["claims"]}
    a = res[("acc_sr", None)]  # per unit 1, 2, 3 points
    half = T975_DF2 / math.sqrt(3)
    assert a["pooled"]["mean"] == pytest.approx(2.0) and a["pooled"]["lo"] == pytest.approx(2.0 - half)
    assert a["verdict"] == sr.UNDETERMINED  # 2 - 2.48 < 0 < 2 + 2.48
    assert a["share"] == 1.0 and a["holds_units"] == 3
    t = res[("acc_tilde", None)]  # constant 10 points: sd 0, interval [10, 10], above 3
    assert t["pooled"]["lo"] == pytest.approx(10.0) and t["verdict"] == sr.FAILS and t["share"] == 0.0
    r = res[("rho_last_smallest", "edge")]  # 0.6, 0.5, 0.4
    assert r["pooled"]["mean"] == pytest.approx(0.5)
    assert r["pooled"]["lo"] == pytest.approx(0.5 - T975_DF2 * 0.1 / math.sqrt(3))
    assert r["verdict"] == sr.HOLDS
    f = res[("finetune_raises_rho", "ksg")]
    assert f["pooled"]["mean"] == pytest.approx(0.1) and f["verdict"] == sr.HOLDS
    assert f["per_setting"]["a-data"]["m"] == 3
    assert res[("rho_above_null", "ksg")]["beside"]["null_n"]["mean"] == pytest.approx(0.2)
    text = path.read_text()
    assert "**3 of 3 units** finished" in text and "does not hold" in text and "undetermined at this power" in text
    assert "--only a-data-seed2" in text


def test_aggregate_decides_with_more_power(tmp_path):
    out = _study(tmp_path, gaps_sr=(1.9, 2.0, 2.1))  # same mean, small spread: the interval excludes 0
    sr.write_study_report(out)
    summary = json.loads((out / "summary.json").read_text())
    a = next(c for c in summary["claims"] if c["claim"] == "acc_sr")
    assert a["pooled"]["lo"] == pytest.approx(2.0 - T975_DF2 * 0.1 / math.sqrt(3))
    assert a["verdict"] == sr.HOLDS


def test_study_config_checks():
    from jsemi.experiments.study import SCALES, StudyConfig, get_scale

    cpu = get_scale("cpu")
    assert len(cpu.units()) == 18 and len({u.name for u in cpu.units()}) == 18
    assert set(cpu.alg1.rho_estimators) == {"edge", "ksg", "gaussian"}
    with pytest.raises(ValueError, match="unknown study scale"):
        get_scale("huge")
    import dataclasses

    with pytest.raises(ValueError, match="unique"):
        dataclasses.replace(SCALES["tiny"], archs=SCALES["tiny"].archs[:1] * 2)
    with pytest.raises(ValueError, match="at least one"):
        dataclasses.replace(SCALES["tiny"], seeds=())
    assert isinstance(cpu, StudyConfig)


# ----------------------------------------------------------------------------- end to end


@pytest.mark.slow  # trains 8 tiny networks and runs 8 Algorithm 1 rows with rho, gamma: minutes on 2 cores
def test_tiny_study_end_to_end_and_resume(tmp_path):
    from jsemi.experiments.study import get_scale, run_study, unit_paths

    cfg = get_scale("tiny")
    out = tmp_path / "study"
    res = run_study(cfg, out, doc=tmp_path / "docs" / "reproduction.md", log=lambda s: None)
    names = [u.name for u in cfg.units()]
    assert res["ran"] == names and len(names) == 4
    summary = json.loads((out / "summary.json").read_text())
    assert len(summary["units"]) == 4
    ests = {c["estimator"] for c in summary["claims"] if c["estimator"]}
    assert ests == {"edge", "ksg", "gaussian"}
    for c in summary["claims"]:
        assert c["verdict"] in (sr.HOLDS, sr.FAILS, sr.UNDETERMINED)
    doc = (tmp_path / "docs" / "reproduction.md").read_text()
    assert "4 of 4 units" in doc and (tmp_path / "docs" / "figures" / "reproduction" / "claims.png").exists()
    trial_files = sorted((out / "alg1").rglob("trial_*.json"))
    assert len(trial_files) == 4 * len(cfg.fb_values) * cfg.alg1.trials
    mtimes = {p: os.stat(p).st_mtime_ns for p in trial_files}
    # a rerun skips every finished unit
    again = run_study(cfg, out, log=lambda s: None)
    assert again["ran"] == [] and again["skipped"] == names
    # without its marker, a unit reloads its finished pretraining and trials and recomputes nothing
    unit = cfg.units()[0]
    os.unlink(unit_paths(out, unit, cfg.fb_values)["marker"])
    redo = run_study(cfg, out, only=[unit.name], log=lambda s: None)
    assert redo["ran"] == [unit.name]
    marker = json.loads(unit_paths(out, unit, cfg.fb_values)["marker"].read_text())
    assert all(r["trials_ran"] == [] for r in marker["rows"])
    assert {p: os.stat(p).st_mtime_ns for p in trial_files} == mtimes
    # other settings in the same directory are refused
    import dataclasses

    with pytest.raises(ValueError, match="other settings"):
        run_study(dataclasses.replace(cfg, seeds=(5, 6)), out, log=lambda s: None)
