"""Compilation counts: weights are jit arguments, so new weights never recompile.

Counts XLA compilations through jax's monitoring events.  Each attack is called with three
weight sets of one architecture; the first call may compile, calls 2 and 3 must not.
"""

from __future__ import annotations

import contextlib

import jax
import jax.numpy as jnp
import pytest
from jax.tree_util import Partial

from jsemi.attacks import LinfBall, apgd, apgd_t, autoattack, fgsm, pgd, square
from jsemi.models import bind, get_model, init_model

_EVENT = "/jax/core/compile/backend_compile_duration"
_COUNT = [0]


def _listener(event, *args, **kwargs):
    if event == _EVENT:
        _COUNT[0] += 1


jax.monitoring.register_event_duration_secs_listener(_listener)


@contextlib.contextmanager
def compilations():
    """Yields a list whose single entry is, on exit, the number of XLA compilations inside."""
    out = [0]
    start = _COUNT[0]
    try:
        yield out
    finally:
        out[0] = _COUNT[0] - start


MODEL = get_model("small_cnn", num_classes=10, widths=(4, 4, 8, 8, 8), hidden=16)
WEIGHTS = [init_model(MODEL, jax.random.key(s), (8, 8, 1)) for s in range(3)]
X = jax.random.uniform(jax.random.key(7), (16, 8, 8, 1))
Y = jnp.arange(16) % 10
TH = LinfBall(0.1)

ATTACKS = {
    "fgsm": lambda f, k: fgsm(f, X, Y, k, TH),
    # restarts; the chunked path (more than CHUNK steps) is counted in test_short_attack_...
    "pgd": lambda f, k: pgd(f, X, Y, k, TH, steps=3, restarts=2),
    "apgd-ce": lambda f, k: apgd(f, X, Y, k, TH, n_iter=6),
    "apgd-t": lambda f, k: apgd_t(f, X, Y, k, TH, n_iter=4, n_targets=2),
    "square": lambda f, k: square(f, X, Y, k, TH, n_queries=8),
    # batch 16 = the smallest bucket, so every weight set runs the same padded shapes
    "autoattack": lambda f, k: autoattack(f, X, Y, k, TH, n_iter=3, n_targets=2, n_queries=8),
}


def _counts(run, make_fn):
    out = []
    for i, w in enumerate(WEIGHTS):
        with compilations() as c:
            jax.block_until_ready(run(make_fn(w), jax.random.key(i)))
        out.append(c[0])
    return out


@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_new_weights_reuse_the_compiled_attack(name):
    counts = _counts(ATTACKS[name], lambda w: bind(MODEL, w))
    assert counts[0] > 0, "the first call must compile (otherwise this test measures nothing)"
    assert counts[1:] == [0, 0], f"{name}: compilations per call {counts}; weights must be jit arguments"


def test_partial_is_a_pytree_model_function_too():
    # FGSM: one program; every attack splits its model function the same way (attacks._common.split_fn)
    counts = _counts(ATTACKS["fgsm"], lambda w: Partial(MODEL.apply, w))
    assert counts[0] > 0, counts
    assert counts[1:] == [0, 0], counts


def test_a_closure_still_works_but_compiles_per_closure():
    # the documented slow form: a closure is keyed by identity, its weights are constants
    counts = _counts(ATTACKS["fgsm"], lambda w: (lambda z: MODEL.apply(w, z, train=False)))
    assert all(c > 0 for c in counts), counts
    f = bind(MODEL, WEIGHTS[0])
    ref = fgsm(f, X, Y, jax.random.key(0), TH)
    got = fgsm(lambda z: MODEL.apply(WEIGHTS[0], z, train=False), X, Y, jax.random.key(0), TH)
    assert jnp.array_equal(ref, got)


@jax.jit
def _apply_fn(fn, x):
    return fn(x)


def test_bound_function_equals_apply_and_traces_inside_user_jit():
    f = bind(MODEL, WEIGHTS[1])
    # both compiled (eagerly, each would compile ~15 one-op programs)
    assert jnp.allclose(_apply_fn(f, X), jax.jit(lambda v, x: MODEL.apply(v, x, train=False))(WEIGHTS[1], X))

    @jax.jit
    def user_step(fn, x, y, key):
        return pgd(fn, x, y, key, TH, steps=3)

    a = user_step(bind(MODEL, WEIGHTS[0]), X, Y, jax.random.key(0))
    with compilations() as c:
        b = user_step(bind(MODEL, WEIGHTS[2]), X, Y, jax.random.key(0))
    assert c[0] == 0
    assert a.shape == b.shape and not jnp.array_equal(a, b)
    # the traced path and the host path agree
    host = pgd(bind(MODEL, WEIGHTS[0]), X, Y, jax.random.key(0), TH, steps=3)
    assert jnp.allclose(a, host, atol=1e-6)


def test_short_attack_is_one_program_longer_ones_run_in_chunks(monkeypatch):
    """<= CHUNK steps with concrete inputs: init, steps and final in one program (as under a
    caller's jit); more: init, a CHUNK-step program, the remainder's program, final.  With
    CHUNK lowered to 3 (the rule does not depend on its value; 3-step programs compile in a
    third of the time of 10-step ones)."""
    from jsemi.attacks import _common

    monkeypatch.setattr(_common, "CHUNK", 3)
    CHUNK = _common.CHUNK
    x, y, key = X[:5], Y[:5], jax.random.key(0)  # a batch size no other test here uses: nothing is cached yet
    counts = []
    for w in WEIGHTS:  # new weights reuse both the one program and the chunked ones
        f = bind(MODEL, w)
        with compilations() as short:
            jax.block_until_ready(pgd(f, x, y, key, TH, steps=CHUNK, step_size=0.02))
        with compilations() as long:
            jax.block_until_ready(pgd(f, x, y, key, TH, steps=CHUNK + 2, step_size=0.02))
        counts.append((short[0], long[0]))
    assert counts == [(1, 4), (0, 0), (0, 0)], counts
