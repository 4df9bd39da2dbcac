"""jsemi.experiments.table_s5 (`jsemi table-s5`) produces the Table S5 comparison (tiny settings on digits)."""

from __future__ import annotations

import json

import pytest


def _load_script():
    from jsemi.experiments import table_s5

    return table_s5


def _check_table(s5, tmp_path, doc, *, measure: bool):
    rows = doc["rows"]
    assert [r["method"] for r in rows] == list(s5.METHODS)
    table = (tmp_path / "table_s5.md").read_text()
    head = table.splitlines()[2]
    for col in ("Method", "# fb", "Acc*", "Acc~", "Diff", "# Epochs", "fine-tune wall [s]", "robust pretrain [s]"):
        assert col in head
    assert ("rho_n [bits]" in head) == measure
    for label in ("PGD", "TRADES", "ATTA", "ATTA+TRADES"):
        assert f"| {label} | 2 |" in table
    for r in rows:
        assert r["num_fb"] == 2 and r["trials"] == 1
        assert 0.0 <= r["acc_star"] <= 1.0 and r["acc_tilde"][0] is not None
        assert r["finetune_s"][0] > 0 and r["robust_pretrain_s"] > 0
        assert ("rho_n" in r["rho_columns"]) == measure
    return rows


# slow: four training modes end to end (~25 CPU s); each mode is covered by test_robust_training, Algorithm 1 by
# test_algorithms
@pytest.mark.slow
def test_table_s5_on_the_cpu_config_with_tiny_settings(tmp_path):
    """Every method, one robust network (--shared-robust), no rho (the estimators cost ~30 s here)."""
    s5 = _load_script()
    from jsemi.experiments.configs import get_experiment

    exp = s5.tiny_experiment(get_experiment("cpu"))
    doc = s5.run(exp, tmp_path, methods=s5.METHODS, shared_robust=True, measure=False, progress=False)
    rows = _check_table(s5, tmp_path, doc, measure=False)
    assert len({r["acc_star"] for r in rows}) == 1  # --shared-robust: one robust network
    assert json.loads((tmp_path / "table_s5.json").read_text())["settings"]["finetune"]["trades"]["trades_beta"] == 6.0
    # A rerun loads every finished trial and pretraining instead of recomputing.
    again = s5.run(exp, tmp_path, methods=("atta",), shared_robust=True, measure=False, progress=False)
    assert again["rows"][0]["acc_tilde"] == rows[2]["acc_tilde"]
    with pytest.raises(ValueError, match="unknown method"):
        s5.run(exp, tmp_path, methods=("fgsm",), progress=False)


@pytest.mark.slow
def test_table_s5_full_tiny_run_with_rho_columns(tmp_path):
    """The script's own --tiny run: a robust network per method and the rho columns."""
    s5 = _load_script()
    from jsemi.cli import main as cli

    assert cli(["table-s5", "--tiny", "--out", str(tmp_path), "--no-progress"]) == 0
    doc = json.loads((tmp_path / "table_s5.json").read_text())
    rows = _check_table(s5, tmp_path, doc, measure=True)
    assert sorted(doc["settings"]["pretrain"]) == ["normal"] + [f"robust-{m}" for m in sorted(s5.METHODS)]
