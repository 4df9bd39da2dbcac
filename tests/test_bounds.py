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
    for text in ("[logit]", "[bits]", "[logit + bits]", "as the paper states", "upper estimate", "Thm 3"):
        assert text in md
    assert md.count("| 4 | 3 |") == 1 and "| (6, 7) |" in md
