"""TRADES and ATTA training modes (jsemi.robust_training) and the table of modes (jsemi.training_modes)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ast
from pathlib import Path

from jsemi import checkpoint
from jsemi import robust_training as rt
from jsemi import train
from jsemi import training_modes as tm
from jsemi.attacks import LinfBall, pgd
from jsemi.data import augment_params, crop_flip, load_dataset
from jsemi.models import get_model, init_model

EPS = 0.2  # digits are 8x8 with 17 grey levels: a large budget is needed to break a normal model


@pytest.fixture(scope="module")
def digits():
    tr, te = load_dataset("digits", "train"), load_dataset("digits", "test")
    return tr.images, tr.labels, te.images.astype(np.float32) / 255.0, te.labels


@pytest.fixture(scope="module")
def net(digits):
    model = get_model("small_cnn", widths=(8, 16), hidden=32)
    return model, init_model(model, jax.random.key(0), digits[0].shape[1:])


def _config(mode: str, **kw) -> train.TrainConfig:
    base = dict(mode=mode, optimizer="adam", lr=3e-3, weight_decay=0.0, lr_schedule="constant", epochs=4,
                batch_size=64, eps=EPS, attack_steps=3, attack_step_size=EPS / 2, atta_steps=2,
                atta_reset_every=10, augment=False, flip=False)
    base.update(kw)
    return train.TrainConfig(**base)


def _fit(net, digits, cfg):
    model, v0 = net
    xs, ys = digits[0], digits[1]
    state = train.create_train_state(v0, cfg, xs.shape[0] // cfg.batch_size)
    step = tm.make_train_step(model, cfg)
    for epoch in range(cfg.epochs):
        state, _ = tm.train_epoch(state, step, xs, ys, jax.random.key(epoch), batch_size=cfg.batch_size,
                                  seed=0, epoch=epoch)
    return state


@pytest.fixture(scope="module")
def accuracy(net):
    model, _ = net

    @jax.jit
    def acc(variables, x, y, key):  # compiled once for every trained model
        lf = lambda z: model.apply(variables, z, train=False)
        xa = pgd(lf, x, y, key, LinfBall(EPS), steps=10, step_size=EPS / 4)
        return jnp.mean(jnp.argmax(lf(x), -1) == y), jnp.mean(jnp.argmax(lf(xa), -1) == y)

    return lambda state, d: tuple(float(a) for a in acc(state.variables, d[2], d[3], jax.random.key(9)))


@pytest.fixture(scope="module")
def normal(net, digits, accuracy):
    state = _fit(net, digits, _config("standard"))
    return accuracy(state, digits)


def _check_more_robust(mode, net, digits, accuracy, normal):
    state = _fit(net, digits, _config(mode))
    clean, robust = accuracy(state, digits)
    n_clean, n_robust = normal
    assert n_clean > 0.85 and n_robust < 0.1, (n_clean, n_robust)  # the normal model is accurate and fragile
    assert clean > 0.6, clean
    assert robust > n_robust + 0.1, f"{mode}: robust {robust:.3f} vs normal {n_robust:.3f}"


@pytest.mark.parametrize("mode", ["trades", "atta"])
def test_robust_modes_raise_robust_accuracy(mode, net, digits, accuracy, normal):
    _check_more_robust(mode, net, digits, accuracy, normal)


@pytest.mark.slow
def test_atta_trades_raises_robust_accuracy(net, digits, accuracy, normal):
    _check_more_robust("atta_trades", net, digits, accuracy, normal)


# ----------------------------------------------------------------------------- mechanics


def test_trades_with_beta_zero_is_clean_cross_entropy(net, digits):
    model, v0 = net
    x, y = digits[0][:64], digits[1][:64]
    key = jax.random.key(1)
    out = {}
    for mode in ("standard", "trades"):
        cfg = _config(mode, trades_beta=0.0)
        _, m = tm.make_train_step(model, cfg)(train.create_train_state(v0, cfg, 1), x, y, key)
        out[mode] = float(m["loss"])
    assert out["trades"] == pytest.approx(out["standard"], abs=1e-6)


def test_trades_inputs_increase_kl_inside_the_ball(net, digits):
    model, v0 = net
    x = jnp.asarray(digits[2][:32])
    lf = lambda z: model.apply(v0, z, train=False)
    xa = rt.trades_inputs(lf, x, jax.random.key(0), LinfBall(0.1), steps=5, step_size=0.03)
    assert xa.dtype == jnp.float32
    assert float(jnp.max(jnp.abs(xa - x))) <= 0.1 + 1e-6 and float(xa.min()) >= 0 and float(xa.max()) <= 1
    kl = lambda z: float(jnp.mean(rt.trades_kl(lf(x), lf(z))))
    assert kl(xa) > 10 * max(kl(jnp.clip(x + 0.001, 0, 1)), 1e-9)


def test_atta_step_requires_the_perturbations(net, digits):
    model, v0 = net
    cfg = _config("atta")
    step = tm.make_train_step(model, cfg)
    with pytest.raises(ValueError, match="carries per-example perturbations"):
        step(train.create_train_state(v0, cfg, 1), digits[0][:64], digits[1][:64], jax.random.key(0))


def test_uncrop_inverts_crop_flip():
    key = jax.random.key(0)
    d = jax.random.uniform(key, (6, 10, 10, 2))
    offsets, flips = augment_params(key, 6, pad=4, flip=True)
    old = jnp.full_like(d, -7.0)
    back = rt._uncrop_flip(crop_flip(d, offsets, flips, pad=4), offsets, flips, 4, old)
    seen = back != -7.0
    assert bool(jnp.all(jnp.where(seen, back == d, True)))
    assert 0.3 < float(seen.mean()) < 1.0  # shifted crops hide some pixels, which keep `old`


def test_atta_carry_carries_and_resets(net, digits):
    model, v0 = net
    xs, ys = digits[0][:256], digits[1][:256]
    cfg = _config("atta", atta_reset_every=2, augment=True, flip=False)
    step = tm.make_train_step(model, cfg)
    state = train.create_train_state(v0, cfg, 4)
    assert state.carry is None and tm.init_carry(_config("trades"), 256, (8, 8, 1)) is None
    snapshots, resets = [], []
    for epoch in range(3):
        before = None if state.carry is None else state.carry["delta"].copy()
        state, m = tm.train_epoch(state, step, xs, ys, jax.random.key(epoch), batch_size=64, seed=3, epoch=epoch)
        assert state.carry["delta"].shape == (256, 8, 8, 1) and state.carry["delta"].dtype == np.float32
        resets.append(int(state.carry["last_reset"]))
        snapshots.append((before, state.carry["delta"].copy()))
        assert np.isfinite(m["loss"])
        assert np.abs(state.carry["delta"]).max() <= EPS + 1e-6
    assert resets == [0, 0, 2]  # reset at epochs 0 and 2 (every 2 epochs)
    # Epoch 1 starts from epoch 0's final perturbations (carried), epoch 2 from a fresh draw.
    np.testing.assert_array_equal(snapshots[1][0], snapshots[0][1])
    assert not np.array_equal(snapshots[0][1], snapshots[1][1])  # the steps moved them
    fresh = rt.draw_perturbations(cfg, (256, 8, 8, 1), seed=3, epoch=2)
    assert not np.array_equal(fresh, snapshots[2][1])  # epoch 2 attacked its fresh start
    with pytest.raises(ValueError, match="training set"):  # a carry belongs to one training set
        tm.train_epoch(state, step, xs[:128], ys[:128], jax.random.key(0), batch_size=64, seed=3, epoch=3)


def test_atta_carry_draws_validation_and_checkpoint_roundtrip(tmp_path):
    cfg = _config("atta", eps=0.1, attack_norm="l2", atta_reset_every=5)
    carry = rt.init_perturbations(cfg, 4, (3, 3, 1))
    assert int(carry["last_reset"]) == -1 and not carry["delta"].any()
    carry, drawn = rt.start_epoch(carry, cfg, seed=0, epoch=3)
    assert drawn and int(carry["last_reset"]) == 3  # never drawn: drawn even off-schedule (resumed run)
    again, drawn = rt.start_epoch(carry, cfg, seed=0, epoch=4)
    assert not drawn and again is carry
    norms = np.linalg.norm(carry["delta"].reshape(4, -1), axis=1)
    assert np.all(norms <= 0.1 + 1e-6) and np.all(norms > 0)
    linf = rt.draw_perturbations(_config("atta", eps=0.1), (64, 3, 3, 1), seed=0, epoch=0)
    assert np.abs(linf).max() <= 0.1 and np.abs(linf).max() > 0.09  # uniform in the cube
    np.testing.assert_array_equal(linf, rt.draw_perturbations(_config("atta", eps=0.1), (64, 3, 3, 1), 0, 0))
    # the carry is part of the checkpointed state tree and comes back bit for bit
    checkpoint.save(tmp_path, 1, {"carry": carry}, {"epoch": 1})
    back, _ = checkpoint.restore(tmp_path, {"carry": rt.init_perturbations(cfg, 4, (3, 3, 1))})
    np.testing.assert_array_equal(np.asarray(back["carry"]["delta"]), carry["delta"])
    assert int(back["carry"]["last_reset"]) == 3
    with pytest.raises(ValueError, match="num_examples"):
        rt.init_perturbations(cfg, 0, (3, 3, 1))
    with pytest.raises(ValueError, match="atta_reset_every"):
        rt.init_perturbations(_config("atta", atta_reset_every=0), 4, (3, 3, 1))
    with pytest.raises(ValueError, match="atta_steps"):
        tm.init_carry(_config("atta", atta_steps=0), 4, (3, 3, 1))


def test_train_epoch_keeps_atta_perturbations_in_the_state(net, digits):
    """Epoch loops (pretraining, Algorithm 1) run ATTA through training_modes.train_epoch; the
    perturbations travel in state.carry, and the input state is never modified."""
    model, v0 = net
    xs, ys = digits[0][:128], digits[1][:128]
    cfg = _config("atta")
    step = tm.make_train_step(model, cfg)
    assert not hasattr(step, "config")  # nothing is stuck on the jitted function
    state0 = train.create_train_state(v0, cfg, 2)
    s1, m = tm.train_epoch(state0, step, xs, ys, jax.random.key(0), batch_size=64, seed=5, epoch=0)
    assert state0.carry is None and int(s1.carry["last_reset"]) == 0 and np.isfinite(m["loss"])
    d1 = s1.carry["delta"].copy()
    s2, _ = tm.train_epoch(s1, step, xs, ys, jax.random.key(1), batch_size=64, seed=5, epoch=1)
    assert int(s2.carry["last_reset"]) == 0  # carried, not reset
    np.testing.assert_array_equal(s1.carry["delta"], d1)  # the input state's carry is untouched
    assert not np.array_equal(s2.carry["delta"], d1)
    s3, _ = tm.train_epoch(state0, step, xs, ys, jax.random.key(1), batch_size=64, seed=6, epoch=0)
    assert not np.array_equal(s3.carry["delta"], s1.carry["delta"])  # a new trial (seed), a new draw


def test_pretrain_resume_of_atta_is_exact(digits, tmp_path):
    """The carried perturbations are checkpointed: 1 epoch + resume == 2 epochs, bit for bit."""
    from jsemi.pretrain import load_trained, pretrain

    xs, ys = digits[0][:128], digits[1][:128]
    xt, yt = digits[0][128:192], digits[1][128:192]
    cfg = _config("atta", epochs=2, atta_reset_every=10)
    kw = dict(num_classes=10, model_kwargs=dict(widths=(8,), hidden=16), progress=False, log=lambda s: None)
    full = pretrain(tmp_path / "full", "small_cnn", xs, ys, xt, yt, cfg, **kw)
    pretrain(tmp_path / "part", "small_cnn", xs, ys, xt, yt, cfg, stop_after_epochs=1, **kw)
    part = pretrain(tmp_path / "part", "small_cnn", xs, ys, xt, yt, cfg, **kw)
    assert [r["train_loss"] for r in part.history] == [r["train_loss"] for r in full.history]
    for u, v in zip(jax.tree_util.tree_leaves(full.variables), jax.tree_util.tree_leaves(part.variables)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))
    _, loaded, _ = load_trained(tmp_path / "part")
    for u, v in zip(jax.tree_util.tree_leaves(full.variables), jax.tree_util.tree_leaves(loaded)):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


def test_the_table_lists_every_mode_explicitly():
    assert tuple(tm.MODES) == train.TRAIN_MODES
    assert {m for m, spec in tm.MODES.items() if spec.self_augmenting} == set(rt.ATTA_MODES)
    assert {m for m, spec in tm.MODES.items() if spec.init_carry is not None} == set(rt.ATTA_MODES)
    assert all(tm.MODES[m].epoch_runner is train.run_epoch for m in ("standard", "pgd", "trades"))
    with pytest.raises(TypeError):
        tm.MODES["mine"] = tm.MODES["pgd"]  # read-only: no registration at run time
    with pytest.raises(ValueError, match="unknown training mode"):
        tm.get_mode("fancy")
    # no cycle: train.py and robust_training.py never import the table; train.py never imports robust_training
    src = Path(train.__file__).parent

    def imports(name):
        tree = ast.parse((src / name).read_text())
        return {a.name if isinstance(n, ast.Import) else f"{n.module}.{a.name}"
                for n in ast.walk(tree) if isinstance(n, (ast.Import, ast.ImportFrom)) for a in n.names}

    assert not [i for i in imports("train.py") if "robust_training" in i or "training_modes" in i]
    assert not [i for i in imports("robust_training.py") if "training_modes" in i]
