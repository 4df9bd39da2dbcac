"""Masked (adversarial) training: frozen parts stay bit-identical, trainable parts learn."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import partition as P
from jsemi.data import load_dataset
from jsemi.models import get_model, init_model, layer_outputs
from jsemi.train import (
    TrainConfig, config_from_preset, create_train_state, evaluate, frozen_leaves_equal, lr_schedule,
)
from jsemi.training_modes import make_train_step, train_epoch


@pytest.fixture(scope="module")
def data():
    tr = load_dataset("synthetic", "train", num_examples=512, seed=1)
    te = load_dataset("synthetic", "test", num_examples=256, seed=1)
    return tr, te


@pytest.fixture(scope="module")
def model_and_vars():
    model = get_model("small_cnn", widths=(8, 8, 16, 16, 16), hidden=32)
    return model, init_model(model, jax.random.PRNGKey(0), (28, 28, 1))


def test_masked_adversarial_training_freezes_fa_bit_for_bit(data, model_and_vars):
    tr, _ = data
    model, variables = model_and_vars
    cfg = TrainConfig(mode="pgd", optimizer="sgd", lr=0.05, weight_decay=5e-4, epochs=3, batch_size=64,
                      eps=0.1, attack_steps=2, attack_step_size=0.05, augment=True, flip=False)
    a = 3
    state = create_train_state(variables, cfg, steps_per_epoch=8, trainable_layers=P.fb_layers(variables, a))
    step = make_train_step(model, cfg)
    for e in range(2):
        state, _ = train_epoch(state, step, tr.images, tr.labels, jax.random.PRNGKey(e), batch_size=64, seed=0, epoch=e)
    assert int(state.step) == 16
    after = state.variables
    assert frozen_leaves_equal(variables, after, range(1, a + 1)), "fa changed"
    # every fb leaf (params and batch_stats) changed
    fb_before, fb_after = P.split(variables, a)[1], P.split(after, a)[1]
    for u, v in zip(jax.tree_util.tree_leaves(fb_before), jax.tree_util.tree_leaves(fb_after)):
        assert not np.array_equal(u, v)
    # no optimizer state is kept for frozen leaves (set_to_zero is stateless)
    n_state = sum(x.size for x in jax.tree_util.tree_leaves(state.opt_state))
    n_fb = sum(x.size for x in jax.tree_util.tree_leaves(fb_before["params"]))
    assert n_state <= n_fb + 8


def test_frozen_batchnorm_uses_running_statistics(model_and_vars):
    model, variables = model_and_vars
    # make running stats differ from batch stats
    bs = jax.tree_util.tree_map(lambda s: s + 0.3, variables["batch_stats"])
    v = {**variables, "batch_stats": bs}
    x = jax.random.uniform(jax.random.PRNGKey(1), (16, 28, 28, 1))
    _, st = model.apply(v, x, train=True, frozen=(1, 2, 3), mutable=["batch_stats", "intermediates"])
    _, eval_outs = layer_outputs(model, v, x)
    train_l3 = st["intermediates"]["L03"]
    np.testing.assert_allclose(np.asarray(train_l3), np.asarray(eval_outs[2]), rtol=1e-5, atol=1e-5)
    for j in (1, 2, 3):
        k = f"L{j:02d}_bn"
        assert np.array_equal(st["batch_stats"][k]["mean"], bs[k]["mean"])
    assert not np.array_equal(st["batch_stats"]["L04_bn"]["mean"], bs["L04_bn"]["mean"])


def test_standard_training_learns(data, model_and_vars):
    tr, te = data
    model, variables = model_and_vars
    cfg = config_from_preset("cpu", mode="standard", epochs=3, batch_size=64)
    state = create_train_state(variables, cfg, steps_per_epoch=8)
    step = make_train_step(model, cfg)
    before = evaluate(model, state.variables, te.images, te.labels, jax.random.PRNGKey(0))["acc"]
    for e in range(3):
        state, m = train_epoch(state, step, tr.images, tr.labels, jax.random.PRNGKey(e), batch_size=64, seed=0, epoch=e)
    after = evaluate(model, state.variables, te.images, te.labels, jax.random.PRNGKey(0))["acc"]
    assert after > 0.8 and after > before + 0.3


def test_lr_schedule_steps_down_at_thirds():
    cfg = TrainConfig(lr=0.01, epochs=120, lr_schedule="step")
    s = lr_schedule(cfg, steps_per_epoch=10)
    np.testing.assert_allclose([s(0), s(399), s(401), s(801)], [0.01, 0.01, 0.001, 0.0001], rtol=1e-6)


@pytest.mark.parametrize("kw, msg", [
    (dict(mode="fancy"), "unknown training mode"),
    (dict(eps=-0.1), "eps must be >= 0"),
    (dict(optimizer="lbfgs"), "unknown optimizer"),
    (dict(epochs=0), "epochs must be a positive int"),
])
def test_bad_config_raises(kw, msg):
    with pytest.raises(ValueError, match=msg):
        TrainConfig(**kw)


def test_bad_trainable_layers_raise(model_and_vars):
    _, variables = model_and_vars
    with pytest.raises(ValueError, match="unknown weight layer"):
        create_train_state(variables, TrainConfig(), 1, trainable_layers=[9])
    with pytest.raises(ValueError, match="empty"):
        create_train_state(variables, TrainConfig(), 1, trainable_layers=[])


def test_evaluate_rejects_bad_inputs(model_and_vars):
    model, variables = model_and_vars
    x = np.full((4, 28, 28, 1), 0.5, np.float32)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, variables, x * 3, np.zeros(4, np.int32), jax.random.PRNGKey(0))
    with pytest.raises(TypeError, match="integer"):
        evaluate(model, variables, x, np.zeros(4, np.float32), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match="batch size"):
        evaluate(model, variables, x, np.zeros(3, np.int32), jax.random.PRNGKey(0))
    with pytest.raises(ValueError, match=r"must lie in \[0, 10\)"):
        evaluate(model, variables, x, np.array([0, 1, 2, 10], np.int32), jax.random.PRNGKey(0))


def test_equal_settings_reuse_the_compiled_step(data):
    """The step is one jitted function with (model, config) static and the optimizer rebuilt from
    the state's static fields: a second run with equal settings (a resume, the next trial) compiles
    nothing, and gives the same numbers."""
    from jsemi import train as T

    tr, _ = data
    cfg = TrainConfig(mode="standard", optimizer="adam", lr=1e-3, weight_decay=0.0, epochs=1, batch_size=32,
                      augment=False, flip=False)
    out = []
    for run in range(2):
        model = get_model("small_cnn", widths=(4, 4), hidden=8)  # a new, equal module each run
        state = create_train_state(init_model(model, jax.random.key(0), (28, 28, 1)), cfg, steps_per_epoch=2)
        before = T._train_step._cache_size()
        state, m = make_train_step(model, cfg)(state, tr.images[:32], tr.labels[:32], jax.random.key(1))
        out.append((T._train_step._cache_size() - before, float(m["loss"])))
    assert out[0][0] == 1 and out[1][0] == 0, out  # the first run compiles once, the second not at all
    assert out[0][1] == out[1][1]
