"""Theorems 2 and 3 as a report: arithmetic, validation, rendering, and end to end on a trained CNN."""

from __future__ import annotations

import json

import pytest

from jsemi.estimators.bounds import BoundReport, bound_report, theorem3_factor, theorem3_value


def test_theorem3_arithmetic():
    # gamma_b = gamma_a (1 + (n-1-a)(n-a)/2)
    assert theorem3_factor(7, 6) == 1.0  # one layer in fb: (0)(1)/2 = 0
    assert theorem3_factor(7, 5) == 2.0  # (1)(2)/2 = 1
    assert theorem3_factor(7, 4) == 4.0  # (2)(3)/2 = 3
    assert theorem3_factor(7, 1) == 16.0  # (5)(6)/2 = 15
    assert theorem3_factor(21, 17) == 7.0  # ResNet-18 with 4 layers in fb: (3)(4)/2 = 6
    assert theorem3_value(0.25, 7, 4) == pytest.approx(1.0)
    assert theorem3_value(-0.5, 7, 5) == pytest.approx(-1.0)


def _inputs():
    gammas = {1: 0.9, 2: 0.7, 3: 0.5, 4: 0.3, 5: 0.2, 6: 0.1, 7: 0.6}
    rhos = {j: {"rho": 0.5 * j, "null": 0.4 * j, "excess": 0.1 * j, "p_value": 0.01, "estimator": "ksg"} for j in range(2, 8)}
    return gammas, rhos


def test_bound_report_values_per_split():
    gammas, rhos = _inputs()
    rep = bound_report(gammas, rhos, 7, [6, 4])
    assert isinstance(rep, BoundReport) and [s.a for s in rep.splits] == [4, 6]
    s4, s6 = rep.splits
    assert s4.num_fb == 3 and [e.layer for e in s4.rhos] == [5, 6, 7]
    assert s4.sum_rho == pytest.approx(0.5 * (5 + 6 + 7))
    assert s4.theorem2 == pytest.approx(0.3 + 9.0)
    assert s4.sum_excess == pytest.approx(0.1 * 18) and s4.theorem2_excess == pytest.approx(0.3 + 1.8)
    assert s4.gamma_b == 0.6 and s4.theorem2_holds is True
    assert s4.theorem3_factor == 4.0 and s4.theorem3 == pytest.approx(1.2)
    assert s6.theorem2 == pytest.approx(0.1 + 3.5) and s6.theorem3 == pytest.approx(0.1)
    # gamma_b above the bound is reported, not hidden
    rep2 = bound_report({**gammas, 7: 100.0}, rhos, 7, [6])
    assert rep2.splits[0].theorem2_holds is False
    # plain floats and the list forms returned by layer_gammas / network_rhos are accepted
    rep3 = bound_report([{"layer": j, "attacked_margin": g} for j, g in gammas.items()],
                        [{"layer": j, **r} for j, r in rhos.items()], 7, [4])
    assert rep3.splits[0] == s4
    rep4 = bound_report({4: 1.0}, {5: 0.5, 6: 0.5, 7: 0.5}, 7, [4], gamma_b=2.0)
    assert rep4.splits[0].theorem2 == 2.5 and rep4.splits[0].sum_excess is None and rep4.splits[0].theorem2_holds


def test_bound_report_validates_inputs():
    gammas, rhos = _inputs()
    with pytest.raises(ValueError, match="out of range"):
        bound_report(gammas, rhos, 7, [7])
    with pytest.raises(ValueError, match="rho_j missing"):
        bound_report(gammas, {j: r for j, r in rhos.items() if j != 6}, 7, [4])
    with pytest.raises(ValueError, match="gamma_3"):
        bound_report({4: 0.1, 7: 0.2}, rhos, 7, [3])
    with pytest.raises(ValueError, match="empty"):
        bound_report(gammas, rhos, 7, [])


def test_bound_report_renders_json_and_markdown_with_units():
    gammas, rhos = _inputs()
    rep = bound_report(gammas, rhos, 7, [4, 6], sensitivities={1: 0.2, 2: float("nan")}, settings={"eps": 0.1})
    d = json.loads(rep.to_json())
    assert d["n"] == 7 and len(d["splits"]) == 2 and d["units"]["rho"] == "bits"
    assert "logit" in d["units"]["gamma"] and "Theorem 2" in d["units"]["theorem2"]
    assert d["sensitivities"][1]["sensitivity"] is None  # NaN -> null, the JSON stays strict
    md = rep.to_markdown()
    for text in ("[logit*]", "[bits]", "[logit* + bits]", "as the paper states", "upper estimate", "Thm 3",
                 "different scales"):
        assert text in md
    assert md.count("| 4 | 3 |") == 1 and "| (6, 7) |" in md


# ----------------------------------------------------------------------------- end to end on a trained CNN


@pytest.fixture(scope="module")
def trained_run(tmp_path_factory):
    """A SmallCNN trained for a few seconds on the synthetic dataset, as a `jsemi train` run directory."""
    from jsemi.data import load_dataset
    from jsemi.pretrain import pretrain
    from jsemi.train import TrainConfig

    run = tmp_path_factory.mktemp("theory") / "run"
    tr = load_dataset("synthetic", "train", subset=512)
    te = load_dataset("synthetic", "test", subset=128)
    cfg = TrainConfig(optimizer="adam", lr=3e-3, epochs=2, batch_size=64, augment=False)
    pretrain(run, "small_cnn", tr.images, tr.labels, te.images, te.labels, cfg, num_classes=10, dataset="synthetic",
             model_kwargs={"widths": (8, 8, 16, 16, 16), "hidden": 32}, progress=False, log=lambda s: None)
    return run, te


# slow: trains a CNN and runs jsemi estimate end to end (~45 CPU s); the same pipeline (measure_network) runs in the
# default suite inside Algorithm 1's measured trials (test_algorithms) and the CLI checks are in test_bad_input
@pytest.mark.slow
def test_bound_report_end_to_end_on_trained_cnn(trained_run, tmp_path, capsys):
    """`jsemi estimate` on a trained SmallCNN: gammas, attacked data, rho with nulls, sensitivities, bounds."""
    from jsemi.cli import main

    run, _ = trained_run
    out = tmp_path / "est"
    assert main(["estimate", "--run", str(run), "--out", str(out), "--split", "4", "--split", "6", "--test-subset", "60",
                 "--probe-subset", "100", "--gamma-layers", "needed", "--gamma-steps", "5", "--gamma-restarts", "1",
                 "--rho-steps", "5", "--rho-layers", "needed", "--estimator", "ksg", "--permutations", "3", "--eps", "0.1",
                 "--batch-size", "32"]) == 0
    d = json.loads((out / "estimate.json").read_text())
    assert d["n"] == 7 and [s["a"] for s in d["splits"]] == [4, 6]
    assert d["settings"]["threat"] == {"norm": "linf", "eps": 0.1} and d["settings"]["probe_examples"] == 100
    g = {e["layer"]: e for e in d["gamma_details"]}
    assert sorted(g) == [4, 6, 7] and g[7]["probe"] == "identity" and g[4]["probe"] == "ridge"
    assert g[7]["clean_acc"] > 0.5  # trained: far above chance (0.1)
    for e in g.values():
        assert e["attacked_margin"] <= e["clean_margin"] and "UPPER" in e["note"]
    rho = {e["layer"]: e for e in d["rho_details"]}
    assert sorted(rho) == [5, 6, 7] and rho[5]["pair"] == [4, 5] and rho[5]["estimator"] == "ksg"
    s4, s6 = d["splits"]
    assert s4["gamma_a"] == g[4]["attacked_margin"] and s4["gamma_b"] == g[7]["attacked_margin"]
    assert s4["theorem2"] == pytest.approx(g[4]["attacked_margin"] + sum(rho[j]["rho"] for j in (5, 6, 7)))
    assert s6["theorem2"] == pytest.approx(g[6]["attacked_margin"] + rho[7]["rho"])
    assert s4["theorem3"] == pytest.approx(4.0 * g[4]["attacked_margin"])
    assert all(e["null"] is not None and e["p_value"] is not None for e in s4["rhos"])
    assert [e["layer"] for e in d["sensitivities"]] == list(range(1, 8))
    assert all(e["sensitivity_image"] >= 0 for e in d["sensitivities"])
    md = (out / "estimate.md").read_text()
    assert "| 4 | 3 |" in md and "[bits]" in md and "| (6, 7) |" in md
    assert main(["estimate", "--run", str(run), "--out", str(out), "--split", "7"]) == 2
    assert "out of range" in capsys.readouterr().err


def test_cli_linear_writes_json_and_markdown(digits_runs, tmp_path):
    from jsemi.cli import main

    run = digits_runs["normal"]  # the session's tiny digits run (tests/conftest.py)
    lin = tmp_path / "lin"
    assert main(["linear", "--run", str(run), "--out", str(lin), "--split", "3", "--split", "5", "--attacks", "none,fgsm",
                 "--test-subset", "40", "--random-trials", "2", "--eps", "0.1"]) == 0
    d = json.loads((lin / "linear.json").read_text())
    assert [(r["attack"], r["a"]) for r in d["rows"]] == [("none", 3), ("none", 5), ("fgsm", 3), ("fgsm", 5)]
    assert all(0.0 <= r["acc_linear"] <= 1.0 and "heldout_acc_linear" in r for r in d["rows"])
    assert "Acc~" in (lin / "linear.md").read_text()
