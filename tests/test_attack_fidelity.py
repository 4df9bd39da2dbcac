"""Semantics shared with the original AutoAttack (fra31/auto-attack), pinned by closed forms.

- Square's p-schedule with and without ``rescale_schedule`` (the reference's "standard"
  composition uses ``resc_schedule=False``), and the composition passing False.
- APGD's first checkpoint: the reference starts with ``reduced_last_check = 1``, so the
  "no improvement since the last checkpoint" rule cannot halve the step at the first
  checkpoint; only the oscillation rule can.  Hand-computed on one-pixel models.
The side-by-side comparison with the original is benchmarks/bench_fidelity.py.
"""

from __future__ import annotations

import importlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi.attacks import LinfBall, square
from jsemi.attacks.square import p_selection, p_thresholds

apgd_mod = importlib.import_module("jsemi.attacks.apgd")
aa_mod = importlib.import_module("jsemi.attacks.autoattack")

# the reference's p_selection: p = p_init / 2**j, j = number of these bounds that `it` exceeds
BOUNDS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def reference_p(it, n_queries, p_init, rescale):
    if rescale:
        it = (it * 10000) // n_queries  # exact floor of it / n_queries * 10000
    return p_init / 2 ** sum(it > b for b in BOUNDS)


@pytest.mark.parametrize("n_queries", [5000, 1000, 10000, 7])
@pytest.mark.parametrize("rescale", [False, True])
def test_square_p_schedule_matches_closed_form(n_queries, rescale):
    its = np.unique(np.concatenate([np.arange(min(n_queries, 60)), np.array([b + d for b in BOUNDS for d in (-1, 0, 1)]),
                                    np.array([(b * n_queries) // 10000 + d for b in BOUNDS for d in (-1, 0, 1)])]))
    its = its[(its >= 0) & (its < n_queries)]
    got = np.array([float(p_selection(jnp.int32(i), n_queries, 0.8, rescale)) for i in its])
    want = np.array([reference_p(int(i), n_queries, 0.8, rescale) for i in its])
    np.testing.assert_allclose(got, want, rtol=1e-6)


def test_square_p_schedule_values_at_5000_queries():
    # not rescaled (AutoAttack standard): the last halving reached is after query 4000 -> p_init / 128
    assert float(p_selection(4000, 5000, 0.8)) == pytest.approx(0.8 / 64)
    assert float(p_selection(4001, 5000, 0.8)) == pytest.approx(0.8 / 128)
    assert float(p_selection(4999, 5000, 0.8)) == pytest.approx(0.8 / 128)
    # rescaled: query i counts as 2 i, so the schedule runs twice as fast and ends at p_init / 512
    assert float(p_selection(5, 5000, 0.8, True)) == pytest.approx(0.8)
    assert float(p_selection(6, 5000, 0.8, True)) == pytest.approx(0.4)
    assert float(p_selection(4001, 5000, 0.8, True)) == pytest.approx(0.8 / 512)
    assert p_thresholds(5000).tolist() == [11, 51, 201, 501, 1001, 2001, 4001, 6001, 8001]
    assert p_thresholds(5000, True).tolist() == [6, 26, 101, 251, 501, 1001, 2001, 3001, 4001]
    # huge budgets: exact integer thresholds, no int32 overflow of it * 10000
    assert p_thresholds(10**6, True)[0] == 1100


def test_autoattack_square_entry_does_not_rescale():
    bound = aa_mod._component("square", LinfBall(0.1), 100, None, 5000)
    assert bound.settings["n_queries"] == 5000
    assert bound.settings["rescale_schedule"] is False


def test_square_rejects_a_non_bool_rescale_schedule():
    f = lambda x: jnp.zeros((x.shape[0], 2))
    with pytest.raises(TypeError, match="rescale_schedule"):
        square(f, jnp.zeros((1, 4, 4, 1)), jnp.zeros((1,), jnp.int32), jax.random.key(0), LinfBall(0.1),
               rescale_schedule="no")


# ------------------------------------------------------------------------------ APGD
def _one_pixel_run(h, n_iter, steps):
    """APGD-CE on a 2-class model with logits (0, h(pixel)), clean pixel 0.5, eps 0.1, from
    the start 0.6; returns the state after ``steps`` iterations."""
    th = LinfBall(0.1)
    x = jnp.full((1, 1, 1, 1), 0.5, jnp.float32)
    y = jnp.zeros((1,), jnp.int32)
    seed = next(s for s in range(64) if float(apgd_mod._apgd_init_point(th, jax.random.key(s), x)[0, 0, 0, 0]) > 0.55)
    f = lambda a: jnp.stack([jnp.zeros(a.shape[0]), h(a[:, 0, 0, 0])], axis=1)
    spec = apgd_mod._apgd_spec(f, n_iter, "ce", 0.75)
    ctx = {"x": x, "y": y, "key": jax.random.key(seed), "threat": th, "target_rank": jnp.asarray(0, jnp.int32)}
    s = jax.jit(spec.init)(ctx)
    assert float(s["xa"][0, 0, 0, 0]) == pytest.approx(0.6)
    path = [float(s["xa"][0, 0, 0, 0])]
    step = jax.jit(spec.step)
    for i in range(steps):
        s = step(ctx, jnp.int32(i), s)
        path.append(float(s["xa"][0, 0, 0, 0]))
    return s, path


def test_apgd_first_checkpoint_does_not_halve_for_no_improvement_alone():
    # loss = softplus(h), h peaks at 0.56: from 0.6 the gradient points down -> 0.4 (loss drops),
    # then up: z = 0.6, momentum gives 0.4 + 0.75 * 0.2 - 0.25 * 0.2 = 0.5 (loss rises, still below
    # the start's).  n_iter = 10: first checkpoint after 2 iterations (k = 2): the loss rose in
    # both (> rho * k = 1.5), so no oscillation; the best loss did not improve since the start,
    # but the reference's reduced_last_check starts at 1, so the step stays 2 eps = 0.2.
    h = lambda p: -((p - 0.56) ** 2) - 0.01
    assert apgd_mod.apgd_schedule(10)[0][:2].tolist() == [False, True]
    s, path = _one_pixel_run(h, 10, 2)
    np.testing.assert_allclose(path, [0.6, 0.4, 0.5], atol=1e-6)
    assert float(s["step"][0]) == pytest.approx(0.2)
    assert float(s["loss_best"][0]) == pytest.approx(float(jax.nn.softplus(h(0.6))))
    # the next checkpoint (k = 1, after iteration 3) may use the no-improvement rule: the loss
    # at 0.5 + ... is checked against the best at the previous checkpoint
    assert bool(s["reduced_last"][0]) is False


def test_apgd_first_checkpoint_halves_on_oscillation():
    # a linear model: the loss rises with the pixel; from 0.6 (the ball's top) every step stays
    # at 0.6, the loss rose once in k = 2 iterations (<= 1.5): halve to eps = 0.1, reset to the best
    h = lambda p: p - 0.7
    s, path = _one_pixel_run(h, 10, 2)
    np.testing.assert_allclose(path, [0.6, 0.6, 0.6], atol=1e-6)
    assert float(s["step"][0]) == pytest.approx(0.1)
    assert bool(s["reduced_last"][0]) is True
