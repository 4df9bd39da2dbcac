"""TRADES and ATTA training modes (jsemi.robust_training)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import robust_training as rt
from jsemi import train
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
    step = train.make_train_step(model, cfg)
    buf = rt.make_buffer(cfg, xs, seed=0)
    for epoch in range(cfg.epochs):
        state, _ = rt.train_epoch(state, step, xs, ys, jax.random.key(epoch), batch_size=cfg.batch_size,
                                  seed=0, epoch=epoch, buffer=buf)
    return state, buf


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
    state, _ = _fit(net, digits, _config("standard"))
    return accuracy(state, digits)


def _check_more_robust(mode, net, digits, accuracy, normal):
    state, _ = _fit(net, digits, _config(mode))
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
        _, m = train.make_train_step(model, cfg)(train.create_train_state(v0, cfg, 1), x, y, key)
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
    step = train.make_train_step(model, cfg)
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


def test_atta_buffer_carries_and_resets(net, digits):
    model, v0 = net
    xs, ys = digits[0][:256], digits[1][:256]
    cfg = _config("atta", atta_reset_every=2, augment=True, flip=False)
    buf = rt.make_buffer(cfg, xs, seed=3)
    assert isinstance(buf, rt.PerturbationBuffer) and buf.delta.shape == (256, 8, 8, 1)
    assert rt.make_buffer(_config("trades"), xs) is None
    step = train.make_train_step(model, cfg)
    state = train.create_train_state(v0, cfg, 4)
    snapshots, resets = [], []
    for epoch in range(3):
        before = buf.delta.copy()
        state, m = rt.train_epoch(state, step, xs, ys, jax.random.key(epoch), batch_size=64, seed=0,
                                  epoch=epoch, buffer=buf)
        resets.append(buf.last_reset)
        snapshots.append((before, buf.delta.copy()))
        assert np.isfinite(m["loss"])
        assert np.abs(buf.delta).max() <= EPS + 1e-6
    assert resets == [0, 0, 2]  # reset at epochs 0 and 2 (every 2 epochs)
    # Epoch 1 starts from epoch 0's final perturbations (carried), epoch 2 from a fresh draw.
    np.testing.assert_array_equal(snapshots[1][0], snapshots[0][1])
    assert not np.array_equal(snapshots[0][1], snapshots[1][1])  # the steps moved them
    fresh = rt.PerturbationBuffer(256, (8, 8, 1), eps=EPS, reset_every=2, seed=3)
    fresh.reset(2)
    assert not np.array_equal(fresh.delta, snapshots[2][1])  # epoch 2 attacked its fresh start


def test_buffer_validation_and_roundtrip(tmp_path):
    buf = rt.PerturbationBuffer(4, (3, 3, 1), eps=0.1, norm="l2", reset_every=5, seed=0)
    assert buf.start_epoch(3)  # never filled: reset even off-schedule (resumed run)
    assert not buf.start_epoch(4)
    assert np.all(np.linalg.norm(buf.delta.reshape(4, -1), axis=1) <= 0.1 + 1e-6)
    buf.put([1, 2], np.ones((2, 3, 3, 1), np.float32))
    np.testing.assert_array_equal(buf.get([2]), np.ones((1, 3, 3, 1)))
    with pytest.raises(ValueError, match="shape"):
        buf.put([0], np.ones((2, 3, 3, 1)))
    buf.save(tmp_path / "atta.npy")
    other = rt.PerturbationBuffer(4, (3, 3, 1), eps=0.1, norm="l2")
    other.load(tmp_path / "atta.npy")
    np.testing.assert_array_equal(other.delta, buf.delta)
    with pytest.raises(ValueError):
        rt.PerturbationBuffer(4, (3, 3, 1), eps=0.1, reset_every=0)
    with pytest.raises(ValueError, match="atta_steps"):
        rt.make_buffer(_config("atta", atta_steps=0), np.zeros((4, 3, 3, 1), np.uint8))


def test_train_epoch_of_jsemi_train_runs_atta_with_an_automatic_buffer(net, digits):
    """Epoch loops written for jsemi.train.train_epoch (pretraining, Algorithm 1) run ATTA unchanged."""
    model, v0 = net
    xs, ys = digits[0][:128], digits[1][:128]
    cfg = _config("atta")
    step = train.make_train_step(model, cfg)
    state = train.create_train_state(v0, cfg, 2)
    assert rt.buffer_of(step) is None
    state, m = train.train_epoch(state, step, xs, ys, jax.random.key(0), batch_size=64, seed=5, epoch=0)
    buf = rt.buffer_of(step)
    assert buf is not None and buf.seed == 5 and buf.last_reset == 0 and np.isfinite(m["loss"])
    state, _ = train.train_epoch(state, step, xs, ys, jax.random.key(1), batch_size=64, seed=5, epoch=1)
    assert rt.buffer_of(step) is buf and buf.last_reset == 0  # carried, not reset
    train.train_epoch(state, step, xs, ys, jax.random.key(2), batch_size=64, seed=6, epoch=0)
    assert rt.buffer_of(step) is not buf and rt.buffer_of(step).seed == 6  # a new trial, a new buffer
