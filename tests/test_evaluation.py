"""The one evaluator (jsemi.evaluation): batching, padding, keys, host mode, weights as jit
arguments (compilation counts), and the fronts that call it (train / sharding / attacks /
Algorithm 1)."""

from __future__ import annotations

import contextlib
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import monitoring

from jsemi import evaluation as E
from jsemi import sharding, train
from jsemi.attacks import LinfBall, get_attack, pgd, robust_accuracy
from jsemi.models import bind, get_model, init_model

SHAPE = (12, 12, 1)
N = 23  # not a multiple of any batch size used below: the tail is always padded


@contextlib.contextmanager
def count_compiles():
    """Counts XLA backend compilations (jax's own monitoring event) inside the block."""
    n = [0]

    def listener(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            n[0] += 1

    monitoring.register_event_duration_secs_listener(listener)
    try:
        yield n
    finally:
        monitoring.unregister_event_duration_listener(listener)


@pytest.fixture(scope="module")
def setup():
    # an architecture no other test module uses, so jit cache deltas belong to these tests
    model = get_model("small_cnn", widths=(3, 5), hidden=7)
    vs = [init_model(model, jax.random.key(i), SHAPE) for i in range(3)]
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (N, *SHAPE)).astype(np.float32)
    pred = np.asarray(jnp.argmax(model.apply(vs[0], jnp.asarray(x), train=False), -1)).astype(np.int32)
    y = pred.copy()
    y[15:] = (y[15:] + 1) % 10  # exactly 15 of 23 correct for weight set 0
    return model, vs, x, y


ATTACK = functools.partial(pgd, threat=LinfBall(0.05), steps=2, step_size=0.03)


def test_clean_accuracy_is_exact_for_every_batch_size(setup):
    """Padded rows never count: 15/23 whatever the batch size (and uint8 input works)."""
    model, vs, x, y = setup
    f = bind(model, vs[0])
    for bs in (1, 4, 7, 23, 100):
        r = E.evaluate(f, x, y, jax.random.key(0), batch_size=bs, per_example=True)
        assert r["n"] == N and r["acc"] == 15 / N and r["adv_acc"] is None and r["robust_acc"] is None
        np.testing.assert_array_equal(r["correct"], np.arange(N) < 15)


def test_key_schedule_and_padding_match_a_hand_loop(setup):
    """Batch b of min(bs, N) rows, tail padded by repeating its last row, attacked with fold_in(key, b)."""
    model, vs, x, y = setup
    f = bind(model, vs[1])
    key, bs = jax.random.key(3), 7
    r = E.evaluate(f, x, y, key, ATTACK, batch_size=bs, host=True, per_example=True)
    adv = []
    for b, s in enumerate(range(0, N, bs)):
        xb, yb = x[s:s + bs], y[s:s + bs]
        m = len(yb)
        xb = np.concatenate([xb, np.repeat(xb[-1:], bs - m, 0)])
        yb = np.concatenate([yb, np.repeat(yb[-1:], bs - m, 0)])
        xa = ATTACK(f, jnp.asarray(xb), jnp.asarray(yb), jax.random.fold_in(key, b))
        adv.append(np.asarray(jnp.argmax(f(xa), -1) == yb)[:m])
    np.testing.assert_array_equal(r["adv_correct"], np.concatenate(adv))
    assert r["robust_acc"] == np.mean(r["correct"] & r["adv_correct"])
    # the traced (compiled-in) attack gives the same per-example results as host mode
    t = E.evaluate(f, x, y, key, ATTACK, batch_size=bs, host=False, per_example=True)
    np.testing.assert_array_equal(t["adv_correct"], r["adv_correct"])
    # the attacked inputs are the ones evaluated
    xa = E.attacked_inputs(f, x, y, key, ATTACK, batch_size=bs)
    assert xa.shape == x.shape and xa.dtype == np.float32
    np.testing.assert_array_equal(np.asarray(jnp.argmax(f(jnp.asarray(xa)), -1) == y), t["adv_correct"])


def test_three_weight_sets_compile_once(setup):
    """Forward and PGD evaluator: one compilation for three weight sets of one architecture.

    Before (the per-call jax.jit of jsemi.train.evaluate): 3 backend compilations for the clean
    forward and 8 with PGD, for three weight sets."""
    model, vs, x, y = setup
    key = jax.random.key(0)
    for attack in (None, ATTACK):
        size0 = E.compiled_batch._cache_size()
        with count_compiles() as first:
            E.evaluate(bind(model, vs[0]), x, y, key, attack, batch_size=8)
        with count_compiles() as later:
            for v in vs[1:]:
                E.evaluate(bind(model, v), x, y, key, attack, batch_size=8)
                train.evaluate(model, v, x, y, key, attack=attack, batch_size=8)  # the old name, same program
        assert E.compiled_batch._cache_size() == size0 + 1
        assert first[0] >= 1 and later[0] == 0, (first[0], later[0])


def test_host_mode_autoattack_compiles_once_per_run(setup):
    """AutoAttack (host mode, still-robust points compacted) with three weight sets: everything
    compiles during the first evaluation, nothing afterwards.  Needs the attacks to take the
    model function's arrays as jit arguments (jsemi.attacks._common.fn_jit)."""
    model, vs, x, y = setup
    aa = get_attack("autoattack", LinfBall(0.05), version="custom", attacks=["apgd-ce"], n_iter=2)
    assert E.needs_host(aa) and E.needs_host(functools.partial(aa)) and not E.needs_host(ATTACK)
    key = jax.random.key(0)
    from jsemi.algorithms import AttackedAccuracy

    first = E.evaluate(bind(model, vs[0]), x, y, key, aa, batch_size=8)
    ev = AttackedAccuracy(model, aa, 8)  # Algorithm 1's evaluator: the same compiled programs
    with count_compiles() as later:
        accs = [ev(v, x, y, key) for v in vs]
    assert accs[0] == first["adv_acc"] and all(0.0 <= a <= 1.0 for a in accs)
    assert later[0] == 0, later[0]


def test_evaluate_many_equals_one_by_one(setup):
    model, vs, x, y = setup
    stacked = jax.tree_util.tree_map(lambda *a: jnp.stack(a), *vs)
    keys = jnp.stack([jax.random.fold_in(jax.random.key(5), r) for r in range(3)])
    many = E.evaluate_many(bind(model, stacked), x, y, keys, ATTACK, batch_size=8)
    one = [E.evaluate(bind(model, v), x, y, keys[r], ATTACK, batch_size=8) for r, v in enumerate(vs)]
    for k in ("acc", "adv_acc", "robust_acc"):
        np.testing.assert_array_equal(many[k], [o[k] for o in one])


def test_fronts_agree(setup):
    """train.evaluate, sharding.evaluate (1-device mesh), robust_accuracy and AttackedAccuracy
    are the same evaluator."""
    from jsemi.algorithms import AttackedAccuracy

    model, vs, x, y = setup
    key = jax.random.key(2)
    a = train.evaluate(model, vs[0], x, y, key, attack=ATTACK, batch_size=5)
    b = sharding.evaluate(model, vs[0], x, y, key, attack=ATTACK, batch_size=5)
    assert a == b
    assert AttackedAccuracy(model, ATTACK, 5)(vs[0], x, y, key) == a["adv_acc"]
    assert AttackedAccuracy(model, None, 5)(vs[0], x, y, key) == a["acc"] == 15 / N
    host = E.evaluate(bind(model, vs[0]), x, y, key, ATTACK, batch_size=5, host=True)
    assert robust_accuracy(bind(model, vs[0]), x, y, key, ATTACK, batch_size=5) == host["robust_acc"]
    assert robust_accuracy(bind(model, vs[0]), x, y, key, None, batch_size=5) == 15 / N


def test_bad_inputs_are_named_before_any_work(setup):
    model, vs, x, y = setup
    f = bind(model, vs[0])
    with pytest.raises(ValueError, match="batch_size"):
        E.evaluate(f, x, y, jax.random.key(0), batch_size=0)
    with pytest.raises(ValueError, match=r"\[0, 10\)"):
        E.evaluate(f, x, np.full(N, 10, np.int32), jax.random.key(0))
    with pytest.raises(TypeError, match="PRNG key"):
        E.evaluate(f, x, y, 0)
    with pytest.raises(ValueError, match="empty"):
        E.evaluate(f, x[:0], y[:0], jax.random.key(0))
    with pytest.raises(TypeError, match="callable"):
        E.evaluate(vs[0], x, y, jax.random.key(0))


def test_training_run_evaluates_with_one_compilation(tmp_path):
    """``jsemi.pretrain`` evaluates after each of 3 epochs: one evaluator compilation in all
    (before: one per epoch, as ``jax.jit`` of a closure over the epoch's weights)."""
    from jsemi.pretrain import pretrain

    rng = np.random.default_rng(1)
    x = rng.uniform(0, 1, (32, 8, 8, 1)).astype(np.float32)
    y = (np.arange(32) % 10).astype(np.int32)
    cfg = train.TrainConfig(mode="standard", optimizer="adam", lr=1e-2, weight_decay=0.0, lr_schedule="constant",
                            epochs=3, batch_size=16, augment=False, flip=False)
    size0 = E.compiled_batch._cache_size()
    res = pretrain(tmp_path / "run", "small_cnn", x, y, x[:20], y[:20], cfg, num_classes=10,
                   model_kwargs={"widths": (2, 3, 2, 3, 2), "hidden": 5}, progress=False, log=lambda s: None,
                   eval_batch_size=8)
    assert [h["epoch"] for h in res.history] == [1, 2, 3]
    assert all(0.0 <= h["test_acc"] <= 1.0 for h in res.history)
    assert E.compiled_batch._cache_size() == size0 + 1
