"""Algorithm 1's per-epoch evaluation on a test subset (Alg1Config.epoch_eval_examples, jsemi.alg1_epochs)
and the baseline shared by the rows of one process.

Tiny settings (as test_algorithms): a narrow 7-layer SmallCNN on synthetic 12x12 data, an untrained
'normal' net and a briefly adversarially trained 'robust' one.
"""

from __future__ import annotations

import json

import jax
import numpy as np
import pytest

from jsemi import algorithms as A
from jsemi import alg1_epochs as E
from jsemi.runs import config_hash
from test_algorithms import cfg, strip_timing  # the same tiny nets and settings


@pytest.fixture
def data(alg1_data):  # tests/conftest.py: the data and nets of test_algorithms, made once per session
    return alg1_data


@pytest.fixture
def nets(alg1_nets):
    return alg1_nets


def test_default_is_omitted_so_existing_hashes_hold():
    c = A.Alg1Config(num_fb=2)
    assert "epoch_eval_examples" not in c.to_dict() and "epoch_eval_examples" not in c.identity()
    # the hash of this configuration before the field existed (computed with the previous alg1_config.py)
    assert config_hash(c.to_dict()) == "15816b71992055a2"
    s = A.Alg1Config(num_fb=2, epoch_eval_examples=100)
    assert s.to_dict()["epoch_eval_examples"] == 100
    assert A.Alg1Config.from_dict(json.loads(json.dumps(s.to_dict()))) == s
    assert A.Alg1Config.from_dict(c.to_dict()) == c
    for bad in (0, -1, 2.5, True, "100"):
        with pytest.raises(ValueError, match="epoch_eval_examples"):
            A.Alg1Config(num_fb=2, epoch_eval_examples=bad)


def test_subset_covering_the_test_set_is_the_default_procedure(data, nets):
    tr, te = data
    model, normal, robust = nets
    a = A.algorithm1(model, normal, robust, tr, te, cfg(trials=1), progress=False)
    b = A.algorithm1(model, normal, robust, tr, te, cfg(trials=1, epoch_eval_examples=len(te)), progress=False)
    assert [strip_timing(t) for t in a.trials] == [strip_timing(t) for t in b.trials]


def test_subset_epochs_and_acc_tilde_on_the_whole_set(data, nets):
    tr, te = data
    model, normal, robust = nets
    c = cfg(trials=2, max_epochs=2, epoch_eval_examples=32)
    res = A.algorithm1(model, normal, robust, tr, te, c, progress=False)
    ctx = A._Context(model, normal, robust, tr, te, c)
    assert ctx.epoch_eval.subset and len(ctx.epoch_eval.y) == 32
    for rec in res.trials:
        assert rec["epoch_eval_examples"] == 32 and len(rec["history"]) == rec["epochs"]
        e = rec["acc_tilde_epoch"]
        if rec["epochs"] == 0:
            assert e == 0 and rec["acc_tilde"] == rec["acc_sr"]
            continue
        assert 1 <= e <= rec["epochs"]
        subset_accs = [h["adv_acc"] for h in rec["history"]]
        if not rec["converged"]:  # the best subset epoch (latest of ties)
            assert e == max(i + 1 for i, v in enumerate(subset_accs) if v == max(subset_accs))
        # Acc~ is a whole-set accuracy: a multiple of 1/64, and that of the selected epoch if it was confirmed
        assert abs(rec["acc_tilde"] * len(te) - round(rec["acc_tilde"] * len(te))) < 1e-6
        assert rec["diff"] == pytest.approx(rec["acc_tilde"] - rec["acc_star"])
        if "adv_acc_full" in rec["history"][e - 1]:
            assert rec["acc_tilde"] == rec["history"][e - 1]["adv_acc_full"]


def test_vmapped_subset_trials_match_sequential(tmp_path, data, nets):
    tr, te = data
    model, normal, robust = nets
    seq = A.algorithm1(model, normal, robust, tr, te, cfg(trials=2, epoch_eval_examples=32), progress=False)
    vm = A.algorithm1(model, normal, robust, tr, te, cfg(trials=2, vmap=2, epoch_eval_examples=32), progress=False)
    for a, b in zip(seq.trials, vm.trials):
        assert a["epochs"] == b["epochs"] and a["acc_tilde_epoch"] == b["acc_tilde_epoch"]
        assert abs(a["acc_tilde"] - b["acc_tilde"]) <= 2 / len(te)


def test_last_epoch_is_read_from_the_measurement(data, nets):
    """Epoch E of a subset run is evaluated from the measurement's x_adv (same key): the measured rho and
    gamma are those of the default procedure (same final network), and Acc~ is that epoch's whole-set value."""
    tr, te = data
    model, normal, robust = nets
    kw = dict(trials=1, max_epochs=1, measure=True, measure_examples=len(te), probe_examples=64,
              rho_estimators=("gaussian",), rho_settings={"gaussian": {"permutations": 3, "reduce_dim": 2}},
              gamma_attack_settings={"steps": 2, "restarts": 1, "loss": "margin"})
    full = A.algorithm1(model, normal, robust, tr, te, cfg(**kw), progress=False).trials[0]
    sub = A.algorithm1(model, normal, robust, tr, te, cfg(epoch_eval_examples=32, **kw), progress=False).trials[0]
    assert sub["epochs"] == full["epochs"]
    assert sub["rho"] == full["rho"] and sub["gamma_a"] == full["gamma_a"] and sub["gamma_b"] == full["gamma_b"]
    assert "attacked_acc" not in sub
    if sub["epochs"] == 1:
        h = sub["history"][0]
        assert sub["acc_tilde"] == h["adv_acc_full"] and sub["acc_tilde_epoch"] == 1
        assert sub["converged"] == (h["adv_acc_full"] >= sub["threshold"] - 1e-12)


class _Ctx:
    """Just what TrialSelection uses: an evaluator returning scripted whole-set accuracies."""

    def __init__(self, full):
        self.full, self.calls = list(full), 0
        self.test_x, self.test_y = np.zeros((10, 2, 2, 1), np.uint8), np.zeros(10, np.int32)

    def evaluator(self, variables, x, y, key):
        self.calls += 1
        return self.full.pop(0)


class _EE:
    subset, examples, measure_covers_test = True, 5, False


def test_stop_only_when_the_whole_set_confirms():
    ctx = _Ctx([0.4, 0.6])  # epoch 2's screen is not confirmed (0.4 < 0.5), epoch 3's is
    sel = E.TrialSelection(_EE(), ctx, jax.random.PRNGKey(0), threshold=0.5)
    h = [{"adv_acc": a} for a in (0.3, 0.7, 0.9)]
    assert sel.update(1, "v1", 0.3, h[0]) is False and ctx.calls == 0 and "adv_acc_full" not in h[0]
    assert sel.update(2, "v2", 0.7, h[1]) is False and h[1]["adv_acc_full"] == 0.4
    assert sel.update(3, "v3", 0.9, h[2]) is True and h[2]["adv_acc_full"] == 0.6
    acc, extra = sel.acc_tilde(h, acc_sr=0.1)
    assert acc == 0.6 and extra["acc_tilde_epoch"] == 3 and ctx.calls == 2


def test_unconverged_acc_tilde_is_the_best_subset_epoch_on_the_whole_set():
    ctx = _Ctx([0.45])
    sel = E.TrialSelection(_EE(), ctx, jax.random.PRNGKey(0), threshold=0.9)
    h = [{"adv_acc": a} for a in (0.3, 0.5, 0.5, 0.4)]
    for i, e in enumerate(h):
        assert sel.update(i + 1, f"v{i + 1}", e["adv_acc"], e) is False
    acc, extra = sel.acc_tilde(h, acc_sr=0.1)
    assert acc == 0.45 and extra["acc_tilde_epoch"] == 3 and ctx.calls == 1  # latest of the tied best
    sel0 = E.TrialSelection(_EE(), _Ctx([]), jax.random.PRNGKey(0), threshold=0.9)
    assert sel0.acc_tilde([], acc_sr=0.25)[0] == 0.25


def test_rows_share_one_baseline(data, nets):
    tr, te = data
    model, normal, robust = nets
    E._BASELINES.clear()
    r2 = A.algorithm1(model, normal, robust, tr, te, cfg(trials=1, num_fb=2), progress=False)
    r3 = A.algorithm1(model, normal, robust, tr, te, cfg(trials=1, num_fb=3, k=2.0), progress=False)
    for key in ("acc", "acc_star", "clean_acc_normal", "clean_acc_robust"):
        assert r2.baseline[key] == r3.baseline[key]
    assert r3.baseline["threshold"] == pytest.approx(r3.baseline["acc_star"] - 0.02) and "shared" in r3.baseline
    E._BASELINES.clear()
    fresh = A.algorithm1(model, normal, robust, tr, te, cfg(trials=1, num_fb=3, k=2.0), progress=False)
    assert {k: v for k, v in fresh.baseline.items() if k != "seconds"} == {
        k: v for k, v in r3.baseline.items() if k not in ("seconds", "shared")}
