"""Algorithm 1 (jsemi.algorithms), run directories (jsemi.runs), tables (jsemi.report), experiment configs.

Tiny settings throughout: a 7-layer SmallCNN with narrow widths on synthetic 12x12 data,
random (untrained) normal and robust networks -- Algorithm 1's bookkeeping does not
depend on how good the networks are.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import algorithms as A
from jsemi import partition as P
from jsemi import report as R
from jsemi.attacks import make_threat
from jsemi.data import load_dataset
from jsemi.models import get_model, init_model
from jsemi.runs import ConfigMismatchError, RunDir, config_hash, read_json, write_json_atomic
from jsemi.train import TrainConfig

REPO = Path(__file__).resolve().parents[1]

TINY_KW = dict(widths=(4, 4, 8, 8, 8), hidden=16)
SHAPE = (12, 12, 1)  # small images: the same programs as 28x28, a fifth of the run time


def tiny_data():
    """(train, test): 256 and 64 synthetic SHAPE images."""
    tr = load_dataset("synthetic", "train", num_examples=256, seed=3, image_shape=SHAPE)
    te = load_dataset("synthetic", "test", num_examples=64, seed=3, image_shape=SHAPE)
    return tr, te


@pytest.fixture
def data(alg1_data):  # tests/conftest.py: one copy for this file and test_epoch_eval
    return alg1_data


EPS = 0.02

FT = TrainConfig(mode="pgd", optimizer="sgd", lr=0.05, weight_decay=5e-4, lr_schedule="constant", epochs=2,
                 batch_size=64, eps=EPS, attack_steps=2, attack_step_size=EPS / 2, augment=False, flip=False)


def make_nets(tr):
    """An untrained 'normal' net and a briefly adversarially trained 'robust' one (so Acc* > Acc_sr)."""
    from jsemi.train import create_train_state
    from jsemi.training_modes import make_train_step, train_epoch

    model = get_model("small_cnn", **TINY_KW)
    normal = init_model(model, jax.random.PRNGKey(0), SHAPE)
    robust = init_model(model, jax.random.PRNGKey(1), SHAPE)
    tc = dataclasses.replace(FT, optimizer="adam", lr=3e-3, weight_decay=0.0, epochs=4)
    st = create_train_state(robust, tc, steps_per_epoch=4)
    step = make_train_step(model, tc)
    for e in range(4):
        st, _ = train_epoch(st, step, tr.images, tr.labels, jax.random.PRNGKey(e), batch_size=64, seed=0, epoch=e)
    return model, normal, jax.tree_util.tree_map(np.asarray, st.variables)


@pytest.fixture
def nets(alg1_nets):  # tests/conftest.py: trained once per session
    return alg1_nets


def cfg(**kw) -> A.Alg1Config:
    base = dict(num_fb=2, k=0.0, max_epochs=2, trials=3, seed=5, finetune=FT, eps=EPS, eval_attack="pgd",
                eval_attack_settings={"steps": 2}, eval_batch_size=64, measure=False)
    base.update(kw)
    return A.Alg1Config(**base)


def strip_timing(rec: dict) -> dict:
    return {k: v for k, v in rec.items() if k != "timing"}


# ----------------------------------------------------------------------------- runs


def test_run_dir_atomic_records_and_config_hash(tmp_path):
    rd = RunDir.open(tmp_path / "r", {"a": 1, "b": [1, 2]})
    rd.save_trial(0, {"x": np.float32(1.5), "y": np.arange(3), "z": float("nan")})
    rec = rd.load_trial(0)
    assert rec["x"] == 1.5 and rec["y"] == [0, 1, 2] and rec["z"] == "nan" and rec["trial"] == 0
    assert rec["config_hash"] == config_hash({"a": 1, "b": [1, 2]})
    assert not [p for p in (tmp_path / "r" / "trials").iterdir() if p.suffix == ".tmp"]
    assert RunDir.open(tmp_path / "r", {"b": [1, 2], "a": 1}).finished_trials() == [0]  # key order irrelevant
    with pytest.raises(ConfigMismatchError, match="differing settings: a"):
        RunDir.open(tmp_path / "r", {"a": 2, "b": [1, 2]})
    assert rd.pending(3) == [1, 2]


def test_atomic_write_never_leaves_a_partial_file(tmp_path, monkeypatch):
    path = tmp_path / "x.json"
    write_json_atomic(path, {"v": 1})

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(path, {"v": 2})
    monkeypatch.undo()
    assert read_json(path) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.json"]


# ----------------------------------------------------------------------------- Algorithm 1


def test_glue_takes_fa_star_and_normal_fb_for_params_and_batch_stats(nets):
    _, normal, robust = nets
    g = A.glue(robust, normal, 4)
    assert P.split(g, 4)[0] == jax.tree_util.tree_map(lambda v: v, P.split(robust, 4)[0])
    for u, v in zip(jax.tree_util.tree_leaves(P.split(g, 4)[1]), jax.tree_util.tree_leaves(P.split(normal, 4)[1])):
        assert np.array_equal(u, v)
    assert "batch_stats" in g and "L01_bn" in g["batch_stats"] and "L05_bn" in g["batch_stats"]
    np.testing.assert_array_equal(g["batch_stats"]["L01_bn"]["mean"], robust["batch_stats"]["L01_bn"]["mean"])
    np.testing.assert_array_equal(g["batch_stats"]["L05_bn"]["mean"], normal["batch_stats"]["L05_bn"]["mean"])


def test_config_validation():
    with pytest.raises(ValueError, match="exactly one"):
        A.Alg1Config(num_fb=2, a=3)
    with pytest.raises(ValueError, match="k"):
        A.Alg1Config(num_fb=2, k=-1)
    with pytest.raises(ValueError, match="adversarially"):
        A.Alg1Config(num_fb=2, finetune=TrainConfig(mode="standard"))
    with pytest.raises(ValueError, match="impossible"):
        A.Alg1Config(num_fb=7).split_point(7)
    c = cfg(num_fb=3)
    assert A.Alg1Config.from_dict(json.loads(json.dumps(c.to_dict()))) == c
    assert "trials" not in c.identity()


def test_trial_records_fa_star_frozen_bit_for_bit(data, nets, monkeypatch):
    tr, te = data
    model, normal, robust = nets
    finals = {}
    real = A._finish_record

    def spy(ctx, t, seed, baseline, acc_sr, history, converged, final_vars, *a, **k):
        finals[t] = final_vars
        return real(ctx, t, seed, baseline, acc_sr, history, converged, final_vars, *a, **k)

    monkeypatch.setattr(A, "_finish_record", spy)
    c = cfg(num_fb=3, k=100.0 - 0.0, max_epochs=2, trials=1)  # k = 100 points: converges at epoch 0
    res = A.algorithm1(model, normal, robust, tr, te, c, progress=False)
    assert res.trials[0]["epochs"] == 0 and res.trials[0]["converged"]
    c = cfg(num_fb=3, k=0.0, max_epochs=2, trials=1)
    res = A.algorithm1(model, normal, robust, tr, te, c, progress=False)
    rec = res.trials[0]
    a = rec["a"]
    assert a == 4 and rec["epochs"] >= 1 and rec["fa_star_bit_identical"] is True
    fin = finals[0]
    for coll in ("params", "batch_stats"):
        fa_r, fb_n = P.split({coll: robust[coll]}, a)
        fa_f, fb_f = P.split({coll: fin[coll]}, a)
        for u, v in zip(jax.tree_util.tree_leaves(fa_r), jax.tree_util.tree_leaves(fa_f)):
            assert np.asarray(u).tobytes() == np.asarray(v).tobytes(), f"fa* {coll} changed"
        _, fb_norm = P.split({coll: normal[coll]}, a)
        changed = [not np.array_equal(u, v) for u, v in zip(jax.tree_util.tree_leaves(fb_norm), jax.tree_util.tree_leaves(fb_f))]
        assert any(changed), f"fb {coll} did not train"


def test_kill_between_trials_then_resume(tmp_path, data, nets):
    tr, te = data
    model, normal, robust = nets
    c = cfg(trials=3)
    run = tmp_path / "run"

    class Killed(Exception):
        pass

    def kill_after_first(t, rec):
        if t == 0:
            raise Killed()

    with pytest.raises(Killed):
        A.algorithm1(model, normal, robust, tr, te, c, run, progress=False, after_trial=kill_after_first)
    rd = RunDir.load(run)
    assert rd.finished_trials() == [0]
    first = rd.trial_path(0)
    before_bytes, before_mtime = first.read_bytes(), first.stat().st_mtime_ns
    res = A.algorithm1(model, normal, robust, tr, te, c, run, progress=False)
    assert res.ran == [1, 2], "the finished trial was redone"
    assert first.read_bytes() == before_bytes and first.stat().st_mtime_ns == before_mtime
    assert [t["trial"] for t in res.trials] == [0, 1, 2]
    seeds = [t["seed"] for t in res.trials]
    assert len(set(seeds)) == 3 and res.trials[0]["history"] != res.trials[1]["history"]  # trials differ
    # an uninterrupted run in a fresh directory gives the same records
    fresh = A.algorithm1(model, normal, robust, tr, te, c, tmp_path / "fresh", progress=False)
    assert [strip_timing(t) for t in fresh.trials] == [strip_timing(t) for t in res.trials]
    # a third call does nothing
    assert A.algorithm1(model, normal, robust, tr, te, c, run, progress=False).ran == []
    # more trials extend the run; a changed setting is refused
    assert A.algorithm1(model, normal, robust, tr, te, dataclasses.replace(c, trials=4), run, progress=False).ran == [3]
    with pytest.raises(ConfigMismatchError, match="k"):
        A.algorithm1(model, normal, robust, tr, te, dataclasses.replace(c, k=1.0), run, progress=False)
    other = jax.tree_util.tree_map(lambda v: v * 1.0001, robust)
    with pytest.raises(ConfigMismatchError, match="robust"):
        A.algorithm1(model, normal, other, tr, te, c, run, progress=False)


def test_same_seed_same_records_with_measurements(tmp_path, data, nets):
    """Same seed, same machine: identical records (all but wall times), rho / gamma / bounds included."""
    tr, te = data
    model, normal, robust = nets
    c = cfg(trials=1, max_epochs=1, measure=True, measure_examples=64, probe_examples=64, rho_estimators=("ksg", "edge"),
            rho_settings={"ksg": {"permutations": 3}, "edge": {"permutations": 3}},
            gamma_attack_settings={"steps": 2, "restarts": 1, "loss": "margin"})
    r1 = A.algorithm1(model, normal, robust, tr, te, c, tmp_path / "a", progress=False)
    r2 = A.algorithm1(model, normal, robust, tr, te, c, tmp_path / "b", progress=False)
    assert [strip_timing(t) for t in r1.trials] == [strip_timing(t) for t in r2.trials]
    assert r1.initial == {**r2.initial, "seconds": r1.initial["seconds"]}
    t0 = r1.trials[0]
    # measured quantities: every pair (j-1, j) with j in fb = {6, 7}, for both estimators, with nulls
    assert {int(e["layer"]) for e in t0["rho"]["ksg"]} == {6, 7} and {e["pair"][0] for e in t0["rho"]["edge"]} == {5, 6}
    for e in t0["rho"]["ksg"]:
        assert {"rho", "null", "excess", "p_value"} <= set(e)
    assert t0["gamma_a"]["layer"] == 5 and t0["gamma_b"]["layer"] == 7
    assert t0["bound"]["splits"][0]["a"] == 5 and len(t0["sensitivity"]) == 7
    assert set(r1.initial["rho"]) == {"ksg"}  # primary estimator only
    # Acc_sr: the glued network's accuracy on the initial measurement's attacked inputs (they cover
    # the 64 test images), recomputed here with a plain forward pass on the documented key
    ctx = A._Context(model, normal, robust, tr, te, c)
    k_adv = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x1417))[0]
    _, x_adv, y = A._measure_inputs(ctx, ctx.glued, k_adv)
    logits = jax.jit(lambda v, z: model.apply(v, z, train=False))(ctx.glued, jnp.asarray(x_adv))  # one program
    pred = np.argmax(np.asarray(logits), -1)
    assert r1.initial["acc_sr"] == float(np.mean(pred == y)) == t0["acc_sr"]
    assert json.loads((tmp_path / "a" / "acc_sr.json").read_text())["acc_sr"] == t0["acc_sr"]


def test_acc_sr_is_measured_once_per_run(tmp_path, data, nets, monkeypatch):
    """Every trial starts from the same glued network: one attack run gives Acc_sr for all of them
    (without a measurement: the evaluation attack on the whole test set), also after a resume."""
    tr, te = data
    model, normal, robust = nets
    calls = []
    real = A.glued_accuracy
    monkeypatch.setattr(A, "glued_accuracy", lambda ctx, initial: calls.append(1) or real(ctx, initial))
    c = cfg(trials=2, max_epochs=1)
    r = A.algorithm1(model, normal, robust, tr, te, c, tmp_path / "r", progress=False)
    want = A.AttackedAccuracy(model, A.bind_eval_attack("pgd", make_threat("linf", EPS), {"steps": 2}), 64)(
        A.glue(robust, normal, 5), te.images, te.labels, jax.random.fold_in(jax.random.PRNGKey(c.seed), 0x5A5A))
    assert [t["acc_sr"] for t in r.trials] == [want, want] and len(calls) == 1
    r3 = A.algorithm1(model, normal, robust, tr, te, dataclasses.replace(c, trials=3), tmp_path / "r", progress=False)
    assert r3.trials[2]["acc_sr"] == want and len(calls) == 1  # read back from acc_sr.json


def test_vmapped_trials_match_sequential(tmp_path, data, nets):
    tr, te = data
    model, normal, robust = nets
    seq = A.algorithm1(model, normal, robust, tr, te, cfg(trials=2), tmp_path / "s", progress=False)
    vm = A.algorithm1(model, normal, robust, tr, te, cfg(trials=2, vmap=2), tmp_path / "v", progress=False)
    for a, b in zip(seq.trials, vm.trials):
        assert b["mode"] == "vmap" and a["seed"] == b["seed"] and b["fa_star_bit_identical"]
        assert a["epochs"] == b["epochs"] and a["acc_sr"] == b["acc_sr"]
        for ha, hb in zip(a["history"], b["history"]):
            assert abs(ha["train_loss"] - hb["train_loss"]) < 1e-3
            assert abs(ha["adv_acc"] - hb["adv_acc"]) <= 2 / len(te)


def test_architecture_mismatch_is_an_error(data, nets):
    tr, te = data
    model, normal, _ = nets
    other = init_model(get_model("small_cnn", widths=(4, 4, 8, 8, 16), hidden=16), jax.random.PRNGKey(0), SHAPE)
    with pytest.raises(ValueError, match="same architecture"):
        A.algorithm1(model, normal, other, tr, te, cfg(trials=1), progress=False)


_KILL_SCRIPT = textwrap.dedent("""
    import sys, time, jax, numpy as np
    sys.path.insert(0, {tests!r})
    import test_algorithms as T
    from jsemi import algorithms as A
    from jsemi.data import load_dataset
    from jsemi.models import get_model, init_model
    tr = load_dataset("synthetic", "train", num_examples=256, seed=3, image_shape=T.SHAPE)
    te = load_dataset("synthetic", "test", num_examples=64, seed=3, image_shape=T.SHAPE)
    model = get_model("small_cnn", **T.TINY_KW)
    template = init_model(model, jax.random.PRNGKey(0), T.SHAPE)
    nets = np.load(sys.argv[2])
    def load(prefix):
        flat, tdef = jax.tree_util.tree_flatten_with_path(template)
        return jax.tree_util.tree_unflatten(tdef, [nets[prefix + jax.tree_util.keystr(p)] for p, _ in flat])
    normal, robust = load("normal"), load("robust")
    def slow(t, rec):
        time.sleep(30)  # the parent kills us here, between trials
    A.algorithm1(model, normal, robust, tr, te, T.cfg(trials=3), sys.argv[1], progress=False, after_trial=slow)
""")


@pytest.mark.slow  # a real SIGKILL'd subprocess re-imports jax and recompiles (~23 CPU-s); resume: test_kill_between_trials_then_resume, atomic records: test_atomic_write_never_leaves_a_partial_file
def test_sigkill_between_trials_then_resume(tmp_path, data, nets):
    """A real process killed (SIGKILL) after its first trial record appears; the rerun resumes."""
    model, normal, robust = nets
    arrays = {}
    for prefix, tree in (("normal", normal), ("robust", robust)):
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
            arrays[prefix + jax.tree_util.keystr(path)] = np.asarray(leaf)
    np.savez(tmp_path / "nets.npz", **arrays)
    script = tmp_path / "run.py"
    script.write_text(_KILL_SCRIPT.format(tests=str(Path(__file__).parent)))
    run = tmp_path / "run"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, str(script), str(run), str(tmp_path / "nets.npz")], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    first = run / "trials" / "trial_000.json"
    t0 = time.time()
    while not first.exists():
        if p.poll() is not None:
            raise AssertionError(f"worker exited early: {p.stderr.read().decode()[-2000:]}")
        if time.time() - t0 > 300:
            p.kill()
            raise AssertionError("no trial record after 300 s")
        time.sleep(0.2)
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert sorted(x.name for x in (run / "trials").iterdir()) == ["trial_000.json"]
    saved = first.read_bytes()
    # resume in this process (same networks, data and config: the hash check passes)
    tr, te = data
    res = A.algorithm1(model, normal, robust, tr, te, cfg(trials=3), run, progress=False)
    assert res.ran == [1, 2] and first.read_bytes() == saved
    assert [t["trial"] for t in res.trials] == [0, 1, 2]


# ----------------------------------------------------------------------------- report


def _fake_trial(t, fb, converged, rhos, acc_sr=0.3, acc_tilde=0.5, epochs=2):
    n = 7
    return {"trial": t, "seed": t, "net": "SmallCNN", "dataset": "FMNIST", "n": n, "a": n - fb, "num_fb": fb, "k": 0.0,
            "max_epochs": 4, "acc": 0.1, "acc_star": 0.52, "threshold": 0.52, "acc_sr": acc_sr, "acc_tilde": acc_tilde,
            "diff": acc_tilde - 0.52, "converged": converged, "epochs": epochs,
            "history": [{"epoch": 1, "adv_acc": acc_tilde}], "fa_star_bit_identical": True, "rho_estimator": "ksg",
            "rho": {"ksg": [{"layer": j, "rho": r, "null": 0.01, "excess": r - 0.01, "p_value": 0.04}
                            for j, r in rhos.items()]},
            "timing": {"wall_s": 1.0}}


def test_summary_rules_and_table_layout():
    trials = [_fake_trial(0, 4, True, {4: 3.0, 5: 2.0, 6: 1.5, 7: 0.5}, epochs=2),
              _fake_trial(1, 4, False, {4: 4.0, 5: 2.5, 6: 1.0, 7: 0.9}, epochs=4),
              _fake_trial(2, 4, True, {4: 2.0, 5: 2.2, 6: 1.2, 7: 0.7}, epochs=3)]
    row = R.summarize(trials)
    # lowest rho among converged trials (0 and 2), not the unconverged trial 1
    assert row["rho_columns"] == {"rho_n": 0.5, "rho_{n-3}": 2.0}
    assert row["epochs"][0] == pytest.approx(2.5)  # mean over converged trials only
    none_conv = [_fake_trial(i, 2, False, {6: 1.0 + i, 7: 0.2 + i}) for i in range(2)]
    row2 = R.summarize(none_conv)
    assert row2["rho_columns"] == {"rho_n": 1.2} and row2["epochs"][0] is None  # largest over all trials
    md = R.table_markdown([row2, row])
    head = md.splitlines()[0]
    assert head.startswith("| Net | Dataset | # fb | Acc | Acc* | Acc_sr | Acc~ | Diff | # Epochs | rho_n")
    assert "rho_{n-3}" in head
    lines = md.splitlines()
    assert lines[2].split("|")[9].strip() == "-"  # '-' epochs when none converged
    assert "52.00" in md and "30.00" in md
    claims = R.check_claims([row, row2])
    assert [c["holds"] for c in claims] == [True, True, True, True]
    assert "NOT REPRODUCED" not in R.claims_markdown(claims)
    # a row that contradicts the paper is reported as such, with its numbers
    bad = R.summarize([_fake_trial(0, 2, False, {6: 0.1, 7: 0.9}, acc_sr=0.6, acc_tilde=0.4)])
    claims = R.check_claims([bad, row])
    assert [c["holds"] for c in claims[:3]] == [False, False, False]
    text = R.claims_markdown(claims)
    assert text.count("NOT REPRODUCED") == 3 and "60.00" in text and "12.00 points" in text
    # rows of a k sweep get a k column in both tables; rows of one k do not
    row_k5 = R.summarize([dict(t, k=5.0) for t in trials])
    md = R.table_markdown([row, row_k5]).splitlines()
    assert md[0].startswith("| Net | Dataset | # fb | k | Acc |")
    assert [ln.split("|")[4].strip() for ln in md[2:]] == ["0", "5"]
    rho_md = R.rho_table_markdown([row, row_k5]).splitlines()
    assert rho_md[0].startswith("| # fb | k | pair")
    assert sum(ln.split("|")[2].strip() == "5" for ln in rho_md[2:]) == len(row_k5["rho_pairs"])
    assert "| k |" not in R.rho_table_markdown([row]).splitlines()[0]
    # rows of independently pretrained pairs get a pretraining-seed column
    seeds = [dict(row, pretrain_seed=0), dict(row, pretrain_seed=3)]
    md = R.table_markdown(seeds).splitlines()
    assert md[0].startswith("| Net | Dataset | # fb | pretraining seed | Acc |")
    assert [ln.split("|")[4].strip() for ln in md[2:]] == ["0", "3"]
    assert R.rho_table_markdown(seeds).splitlines()[0].startswith("| # fb | pretraining seed | pair")


def test_figures_are_written(tmp_path):
    pytest.importorskip("matplotlib")
    trials = [_fake_trial(0, 4, True, {4: 3.0, 5: 2.0, 6: 1.5, 7: 0.5}),
              _fake_trial(1, 2, True, {6: 1.0, 7: 0.3})]
    rows = [R.summarize([trials[0]]), R.summarize([trials[1]])]
    for p in (R.plot_rho_per_layer(rows, tmp_path / "a.png"), R.plot_accuracy_per_epoch(trials, tmp_path / "b.png"),
              R.plot_rho_vs_k([dict(rows[0], k=0.0), dict(rows[0], k=2.0)], tmp_path / "c.png"),
              R.plot_rho_across_models({"seed 0": {6: {"rho": 1.0, "null": 0.1}, 7: {"rho": 0.5}}}, tmp_path / "d.png")):
        assert p.exists() and p.read_bytes()[:4] == b"\x89PNG"


# ----------------------------------------------------------------------------- CLI


def test_cli_alg1_on_pretrained_runs(tmp_path, digits_runs):
    from jsemi.cli import main

    # the session's tiny digits runs (tests/conftest.py): the command line loads a dataset by name
    args = ["alg1", "--normal", str(digits_runs["normal"]), "--robust", str(digits_runs["robust"]), "--num-fb", "2",
            "--trials", "2", "--epochs", "1", "--attack-steps", "2", "--train-subset", "256", "--test-subset", "40",
            "--no-measure", "--no-progress", "--out", str(tmp_path / "alg1")]
    assert main(args) == 0
    out = tmp_path / "alg1"
    assert (out / "fb2" / "trials" / "trial_001.json").exists() and (out / "fb2" / "baseline.json").exists()
    text = (out / "REPORT.md").read_text()
    assert "| Net | Dataset | # fb |" in text and "digits" in text
    assert main(args) == 0  # rerun: everything reused
    assert main(args[:-2] + ["--k", "5", "--out", str(tmp_path / "alg1")]) == 2  # changed setting refused


# ----------------------------------------------------------------------------- experiment configs


def test_experiment_configs_roundtrip_and_paper_settings(tmp_path):
    from jsemi.experiments import configs

    assert set(configs.PAPER) == {f"{m}-{d}" for m in configs.PAPER_MODELS for d in configs.PAPER_DATASETS}
    for name, exp in configs.EXPERIMENTS.items():
        back = configs.Experiment.from_dict(json.loads(json.dumps(exp.to_dict())))
        assert back == exp, name
    e = configs.PAPER["vgg16-cifar10"]
    n = e.pretrain.normal
    assert (n.optimizer, n.lr, n.momentum, n.weight_decay, n.epochs, n.batch_size) == ("sgd", 0.01, 0.9, 5e-4, 120, 512)
    r = e.pretrain.robust
    assert (r.mode, r.attack_steps, r.eps, r.attack_step_size) == ("pgd", 10, 8 / 255, 2 / 255)
    assert configs.PAPER["vit_b-cifar10"].pretrain.normal.optimizer == "adamw"
    assert configs.PAPER["resnet18-tiny_imagenet"].pretrain.normal.batch_size == 256
    assert e.fb_values == (4, 8, 12) and set(e.attacks) == {"none", "fgsm", "pgd", "autoattack"}
    assert e.alg1.max_epochs == 10 and e.alg1.trials == 10 and e.alg1.k == 0.0
    row = e.row_config(8, attack="fgsm", k=1.0)
    assert row.num_fb == 8 and row.eval_attack == "fgsm" and row.k == 1.0
    assert configs.get_experiment("cpu") is configs.CPU


def _paper_smoke(model_name: str, dataset: str, tmp_path, attack_steps: int | None = None):
    """One normal step, one adversarial step and one Algorithm 1 trial of one step, with the paper's
    configuration of this (model, dataset), on mocked data (tfds.testing.mock_data for CIFAR,
    synthetic 64x64x3 images with 200 classes for Tiny ImageNet)."""
    from jsemi.experiments import configs
    import tensorflow_datasets as tfds

    from jsemi.train import create_train_state
    from jsemi.training_modes import make_train_step

    exp = configs.PAPER[f"{model_name}-{dataset}"]
    if dataset == "tiny_imagenet":
        opts = dict(num_examples=8, image_shape=(64, 64, 3), num_classes=200)
        tr = load_dataset("synthetic", "train", **opts)
        te = load_dataset("synthetic", "test", **opts)
    else:
        with tfds.testing.mock_data(num_examples=8):
            tr = load_dataset(dataset, "train", data_dir=tmp_path)
            te = load_dataset(dataset, "test", data_dir=tmp_path)
    model = get_model(exp.pretrain.model, num_classes=tr.num_classes, **exp.pretrain.model_kwargs)
    v = init_model(model, jax.random.PRNGKey(0), tr.input_shape)
    n = P.layer_indices(v["params"])[-1]
    assert n == configs.PAPER_N[model_name]
    tiny = dict(batch_size=4)
    if attack_steps is not None:  # fewer unrolled attack steps compile faster; the settings are otherwise the paper's
        tiny["attack_steps"] = attack_steps
    for tc in (exp.pretrain.normal, exp.pretrain.robust):
        tc = dataclasses.replace(tc, **tiny)
        st = create_train_state(v, tc, steps_per_epoch=1)
        st2, m = make_train_step(model, tc)(st, tr.images[:4], tr.labels[:4], jax.random.PRNGKey(1))
        assert np.isfinite(float(m["loss"])) and int(st2.step) == 1
    robust = jax.tree_util.tree_map(lambda x: x * 1.0, v)
    fb = min(exp.fb_values)
    ev_settings = dict(exp.alg1.eval_attack_settings)
    if attack_steps is not None:
        ev_settings["steps"] = attack_steps
    c = exp.row_config(fb, trials=1, max_epochs=1, measure=False, eval_batch_size=4, eval_attack_settings=ev_settings,
                       finetune=dataclasses.replace(exp.alg1.finetune, **tiny))
    res = A.algorithm1(model, v, robust, (tr.images[:4], tr.labels[:4]), (te.images[:4], te.labels[:4]), c,
                       tmp_path / "alg1", progress=False)
    rec = res.trials[0]
    assert rec["num_fb"] == fb and rec["a"] == n - fb and rec["fa_star_bit_identical"]
    return rec


# slow: compiles a whole VGG16 on CPU (~44 CPU s); the paper configurations are checked in the default suite by
# test_experiments_cli (reproduce --list / --write-configs) and the configs round trip here
@pytest.mark.slow
def test_paper_config_smoke_vgg16_cifar10(tmp_path):
    """Fast: VGG16 with the paper's CIFAR-10 configuration, one step of everything (attacks at 1 step)."""
    _paper_smoke("vgg16", "cifar10", tmp_path, attack_steps=1)


@pytest.mark.slow
@pytest.mark.parametrize("model_name,dataset", [
    ("vgg16", "cifar10"), ("vgg16", "cifar100"), ("resnet18", "cifar10"), ("resnet18", "cifar100"),
    ("resnet18", "tiny_imagenet"),
    ("wrn34_10", "cifar10"), ("vit_b", "cifar10"), ("vgg16", "tiny_imagenet"), ("vit_b", "tiny_imagenet"),
])
def test_paper_config_smoke_slow(model_name, dataset, tmp_path):
    _paper_smoke(model_name, dataset, tmp_path)


def tiny_experiment():
    """The CPU experiment shrunk to seconds: tiny SmallCNN on synthetic data, 2 trials of 1 epoch."""
    from jsemi.experiments import configs

    exp = configs.CPU
    tiny_ft = dataclasses.replace(exp.alg1.finetune, batch_size=64, attack_steps=1)
    return dataclasses.replace(
        exp, name="tiny",
        pretrain=dataclasses.replace(exp.pretrain, dataset="synthetic", model_kwargs=TINY_KW, train_subset=None,
                                     data_options={"num_examples": 256}, pretrain_eval_subset=64,
                                     normal=dataclasses.replace(exp.pretrain.normal, epochs=1, batch_size=64),
                                     robust=dataclasses.replace(exp.pretrain.robust, epochs=1, batch_size=64,
                                                                attack_steps=1)),
        alg1=dataclasses.replace(exp.alg1, max_epochs=1, trials=2, finetune=tiny_ft, measure_examples=64,
                                 gamma_examples=None, probe_examples=64, eval_attack_settings={"steps": 2},
                                 rho_settings={"gaussian": {"permutations": 3, "reduce_dim": 2}, "ksg": {"permutations": 3},
                                               "edge": {"permutations": 3}},
                                 gamma_attack_settings={"steps": 2, "restarts": 1, "loss": "margin"}),
        finetune_train_subset=128, eval_test_subset=64, s1_examples=64, k_values=(0.0, 5.0), independent_seeds=(0, 1),
    )


@pytest.mark.slow
def test_demo_pipeline_end_to_end_on_tiny_synthetic_experiment(tmp_path):
    from jsemi.experiments import demo

    exp = tiny_experiment()
    path = demo.run_demo(exp, tmp_path / "demo", progress=False)
    text = path.read_text()
    for needle in ("Result table", "Claim-by-claim", "permutation null", "Wall time per stage", "Algorithm S1",
                   "Bound report", "pretrain robust"):
        assert needle in text, needle
    assert (tmp_path / "demo" / "figures" / "rho_per_layer.png").exists()
    pre = json.loads((tmp_path / "demo" / "pretrained_accuracy.json").read_text())
    assert (pre["n"], pre["n_pgd_normal"]) == (exp.eval_test_subset, exp.eval_test_subset // 4)  # Algorithm 1's images
    demo.run_demo(exp, tmp_path / "demo", progress=False)  # rerun: everything reused
    assert "(reused)" in path.read_text()


@pytest.mark.slow
def test_experiment_scripts_on_tiny_experiment(tmp_path):
    from jsemi.cli import main as cli
    from jsemi.experiments import configs

    cfg_path = tmp_path / "tiny.json"
    configs.save(tiny_experiment(), cfg_path)
    common = [str(cfg_path), "--out", str(tmp_path / "run"), "--no-progress"]
    assert cli(["reproduce"] + common + ["--pretrain-only"]) == 0
    assert cli(["reproduce"] + common + ["--fb", "2"]) == 0
    assert (tmp_path / "run" / "alg1" / "pgd" / "REPORT.md").exists()
    assert cli(["s1"] + common + ["--attacks", "none", "pgd", "--split-points", "5"]) == 0
    assert cli(["sweep", "layers"] + common + ["--fb", "2", "3"]) == 0
    assert cli(["sweep", "k"] + common + ["--fb", "2"]) == 0
    assert cli(["sweep", "models"] + common + ["--fb", "2"]) == 0
    out = tmp_path / "run"
    for name in ("rho_per_layer.png", "rho_vs_k_fb2.png", "rho_across_models_fb2.png"):
        assert (out / "sweeps" / name).exists(), name
    # rows shared between scripts are computed once: fb2 (k = 0, seed 0), fb2-k5, fb3, fb2-seed1
    assert sorted(p.name for p in (out / "alg1" / "pgd").iterdir() if p.is_dir()) == ["fb2", "fb2-k5", "fb2-seed1", "fb3"]


def test_fixture_networks_give_a_nontrivial_acc_star(data, nets):
    tr, te = data
    model, normal, robust = nets
    ev = A.AttackedAccuracy(model, A.bind_eval_attack("pgd", make_threat("linf", EPS), {"steps": 2}), 64)
    acc_star = ev(robust, te.images, te.labels, jax.random.PRNGKey(0))
    acc_sr = ev(A.glue(robust, normal, 5), te.images, te.labels, jax.random.PRNGKey(0))
    assert acc_star > acc_sr + 0.1, (acc_star, acc_sr)
