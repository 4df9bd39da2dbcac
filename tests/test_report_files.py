"""Files around the reports: CSV twins of the tables (jsemi.csv_tables, jsemi.report) and the
notice printed when figures are skipped for a missing matplotlib."""

from __future__ import annotations

import csv
import json
import sys
from pathlib import Path

import numpy as np
import pytest

from jsemi import csv_tables as C
from jsemi import report as R
from jsemi.runs import RunDir


def read(path: Path) -> list[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def fake_trial(t, fb, converged, rhos, acc_sr=0.3, acc_tilde=0.5):
    n = 7
    return {"trial": t, "seed": 100 + t, "net": "SmallCNN", "dataset": "FMNIST", "n": n, "a": n - fb, "num_fb": fb,
            "k": 0.0, "max_epochs": 4, "acc": 0.1, "acc_star": 0.52, "threshold": 0.52, "acc_sr": acc_sr,
            "acc_tilde": acc_tilde, "diff": acc_tilde - 0.52, "converged": converged, "epochs": 2,
            "history": [{"epoch": 1, "adv_acc": acc_tilde - 0.125}, {"epoch": 2, "adv_acc": acc_tilde}],
            "fa_star_bit_identical": True, "rho_estimator": "ksg",
            "rho": {"ksg": [{"layer": j, "rho": r, "null": 0.01, "excess": r - 0.01, "p_value": 0.04}
                            for j, r in rhos.items()]},
            "timing": {"wall_s": 1.5 + t}}


@pytest.fixture
def run_dirs(tmp_path):
    specs = {4: [fake_trial(0, 4, True, {4: 3.0, 5: 2.0, 6: 1.5, 7: 0.5}),
                 fake_trial(1, 4, False, {4: 4.0, 5: 2.5, 6: 1.0, 7: 0.9}, acc_sr=0.25, acc_tilde=0.375)],
             2: [fake_trial(0, 2, True, {6: 1.25, 7: 0.75})]}
    dirs = []
    for fb, trials in specs.items():
        rd = RunDir.open(tmp_path / f"fb{fb}", {"num_fb": fb})
        for t in trials:
            rd.save_trial(t["trial"], t)
        del rd
        dirs.append(tmp_path / f"fb{fb}")
    return dirs


def test_alg1_report_writes_csv_twins_with_the_same_numbers(tmp_path, run_dirs):
    out = tmp_path / "report"
    R.alg1_report(run_dirs, out, log=lambda s: None)
    rows, trials = R.load_rows(run_dirs)
    table = read(out / "table.csv")
    assert [int(r["num_fb"]) for r in table] == [4, 2]
    for r, c in zip(rows, table):
        for key in ("acc", "acc_star"):
            assert float(c[key]) == r[key]
        for key in ("acc_sr", "acc_tilde", "diff", "epochs", "wall_s"):
            assert float(c[f"{key}_mean"]) == r[key][0] and float(c[f"{key}_std"]) == r[key][1]
        for lab, v in r["rho_columns"].items():
            assert float(c[lab]) == v
    # numbers, not the Markdown's rounded percent: the # fb 4 row's Acc~ = mean(0.5, 0.375)
    assert float(table[0]["acc_tilde_mean"]) == 0.4375 and table[0]["rho_n"] == "0.5"
    assert table[1]["rho_{n-3}"] == ""  # # fb 2 has no pair n-3
    rho = read(out / "rho.csv")
    assert len(rho) == 4 + 2
    first = rho[0]
    assert (first["num_fb"], first["j_minus_1"], first["j"], first["column"]) == ("4", "6", "7", "rho_n")
    assert float(first["rho_mean"]) == rows[0]["rho_pairs"][7]["rho"][0] == 0.7
    assert float(first["table_value"]) == 0.5 and first["table_value_from"] == "converged (min)"
    tr = read(out / "trials.csv")
    assert [(int(t["num_fb"]), int(t["trial"]), int(t["seed"])) for t in tr] == [(4, 0, 100), (4, 1, 101), (2, 0, 100)]
    assert json.loads(tr[1]["adv_acc_per_epoch"]) == [0.25, 0.375] and tr[1]["converged"] == "False"
    assert float(tr[0]["rho_j4"]) == 3.0 and tr[2]["rho_j4"] == "" and float(tr[2]["wall_s"]) == 1.5
    assert "table.csv" in (out / "REPORT.md").read_text()


def test_missing_matplotlib_prints_one_notice(tmp_path, run_dirs, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # `import matplotlib` now raises ImportError
    monkeypatch.setitem(sys.modules, "matplotlib.pyplot", None)
    with pytest.raises(ImportError, match=r"pip install 'jsemi\[plots\]'"):
        R.plot_rho_per_layer([], tmp_path / "x.png")
    out = tmp_path / "report"
    R.alg1_report(run_dirs, out)
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "figures skipped" in err[0] and "pip install 'jsemi[plots]'" in err[0]
    assert not list(out.glob("*.png")) and (out / "table.csv").exists()
    assert "pip install 'jsemi[plots]'" in (out / "REPORT.md").read_text()


def test_figures_written_and_no_notice_with_matplotlib(tmp_path, run_dirs):
    pytest.importorskip("matplotlib")
    said = []
    R.alg1_report(run_dirs, tmp_path / "report", log=said.append)
    assert said == [] and sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "accuracy_per_epoch.png", "rho_per_layer.png"]


def test_json_tables_and_cells(tmp_path):
    doc = {"n": 7, "notes": ["a", "b"], "empty": [],
           "splits": [{"a": 5, "gamma_a": 0.1 + 0.2, "holds": True, "gamma_b": None, "rhos": [{"layer": 6, "rho": 1.0}],
                       "settings": {"eps": 0.03, "attack": {"steps": 10}}},
                      {"a": 3, "gamma_a": "nan", "holds": False, "extra": np.float32(0.5)}],
           "rows": [{"x": 1}]}
    assert sorted(C.json_tables(doc)) == ["rows", "splits"]
    assert C.json_tables([{"x": 1}]) == {"": [{"x": 1}]} and C.json_tables([1, 2]) == {}
    paths = C.write_json_tables(tmp_path, "estimate", doc)
    assert {k: p.name for k, p in paths.items()} == {"splits": "estimate_splits.csv", "rows": "estimate_rows.csv"}
    rows = read(paths["splits"])
    assert list(rows[0]) == ["a", "gamma_a", "holds", "gamma_b", "rhos", "settings.eps", "settings.attack.steps",
                             "extra"]
    assert float(rows[0]["gamma_a"]) == 0.1 + 0.2  # full precision (0.30000000000000004)
    assert rows[0]["holds"] == "True" and rows[0]["gamma_b"] == "" and rows[1]["gamma_a"] == ""
    assert json.loads(rows[0]["rhos"]) == [{"layer": 6, "rho": 1.0}] and rows[0]["settings.attack.steps"] == "10"
    assert float(rows[1]["extra"]) == 0.5 and rows[1]["settings.eps"] == ""
    assert C.write_json_tables(tmp_path, "one", [{"x": 2}])[""].name == "one.csv"
    with pytest.raises(TypeError, match="sequence of dicts"):
        C.to_csv([1, 2])
    with pytest.raises(TypeError, match="JSON document"):
        C.json_tables(3)


def test_cli_write_outputs_adds_csv_twins(tmp_path):
    from jsemi.cli._common import write_outputs

    obj = {"n": 3, "rows": [{"a": 1, "lambda": 0.25}, {"a": 2, "lambda": float("inf")}]}
    paths = write_outputs(tmp_path, "linear", obj, "# md\n")
    assert paths["csv_rows"] == str(tmp_path / "linear_rows.csv")
    saved = json.loads((tmp_path / "linear.json").read_text())
    rows = read(tmp_path / "linear_rows.csv")
    assert [float(r["lambda"]) if r["lambda"] else None for r in rows] == [r["lambda"] for r in saved["rows"]]


@pytest.mark.slow  # imports every module of the package (about 15 CPU-seconds)
def test_api_reference_builds_without_warnings(tmp_path):
    """What `make docs-api` checks: pdoc renders every module and warns about nothing."""
    import os
    import subprocess

    pytest.importorskip("pdoc")
    r = subprocess.run([sys.executable, "-m", "pdoc", "jsemi", "-o", str(tmp_path)], capture_output=True, text=True,
                       env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "warn" not in (r.stdout + r.stderr).lower(), (r.stdout + r.stderr)[-2000:]
    assert (tmp_path / "jsemi" / "metrics.html").exists() and (tmp_path / "jsemi" / "report.html").exists()
