"""Algorithm S1: least-squares lambda from fa* activations to the logits."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi.attacks import LinfBall, fgsm, pgd
from jsemi.estimators.linear import algorithm_s1, algorithm_s1_sweep, fit_s1, s1_markdown
from jsemi.models import get_model, init_model, layer_outputs
from jsemi.models.base import layer_name, sow_layer


class LinearNoBias(nn.Module):
    """Dense layers without bias or activation: the logits are exactly linear in every layer's output."""

    widths: tuple = (6, 5, 4)

    @nn.compact
    def __call__(self, x, train=False, frozen=()):
        h = x.reshape(x.shape[0], -1)
        for j, width in enumerate(self.widths, start=1):
            h = nn.Dense(width, use_bias=False, name=layer_name(j, "dense"))(h)
            sow_layer(self, j, h)
        return h


@pytest.fixture(scope="module")
def linear_net():
    model = LinearNoBias()
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(0), (96, 4, 4, 1)))
    variables = {"params": model.init(jax.random.PRNGKey(1), jnp.asarray(x))["params"]}
    logits = np.asarray(model.apply(variables, jnp.asarray(x)))
    y = np.argmax(logits, -1).astype(np.int32)  # Acc* = 1 on clean data
    return model, variables, x, y


def test_fit_s1_recovers_an_exactly_linear_network(linear_net):
    model, variables, x, _ = linear_net
    z, outs = layer_outputs(model, variables, jnp.asarray(x))
    a = np.asarray(outs[0])  # fa* = layer 1; z = a @ W2 @ W3 exactly
    lam_avg, lam_glob = fit_s1(a, np.asarray(z), batch_size=32)
    # batches of 32 > 6 columns: every pinv(A_k) Z_k is the exact map, so is their average
    np.testing.assert_allclose(a @ lam_avg, np.asarray(z), rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(a @ lam_glob, np.asarray(z), rtol=1e-3, atol=1e-4)
    p = variables["params"]
    np.testing.assert_allclose(lam_avg, np.asarray(p["L02_dense"]["kernel"] @ p["L03_dense"]["kernel"]), atol=1e-3)


def test_algorithm_s1_linear_network_and_random_control(linear_net):
    model, variables, x, y = linear_net
    r = algorithm_s1(model, variables, 1, x, y, jax.random.PRNGKey(3), lambda_batch_size=32, random_trials=8,
                     holdout=0.25)
    assert r["acc_star"] == 1.0
    assert r["acc_linear"] == r["acc_star"] and r["acc_linear_global"] == r["acc_star"]
    assert r["diff"] == 0.0 and r["agreement_linear"] == 1.0
    assert r["rel_residual_linear"] < 1e-3 and r["rel_residual_linear_global"] < 1e-3
    assert r["heldout_acc_linear"] == r["heldout_acc_star"] == 1.0  # the map is exact off the fitted rows too
    assert r["acc_random"] < 0.75  # 4 classes: random lambda is near chance
    assert r["num_fb"] == 2 and r["feature_dim"] == 6 and r["num_fit"] == 72 and r["heldout_examples"] == 24


def test_algorithm_s1_sweep_on_cnn_with_attacks():
    model = get_model("small_cnn", num_classes=3, widths=(4, 4, 4, 4, 4), hidden=8)
    variables = init_model(model, jax.random.PRNGKey(0), (8, 8, 1))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (40, 8, 8, 1)))
    y = (np.arange(40) % 3).astype(np.int32)
    rows = algorithm_s1_sweep(model, variables, x, y, jax.random.PRNGKey(2), split_points=[5, 2],
                              attacks=[None, fgsm, "pgd"], threat=LinfBall(0.1),
                              attack_settings={"pgd": {"steps": 3}}, lambda_batch_size=16, random_trials=3)
    assert [(r["attack"], r["a"]) for r in rows] == [(n, a) for n in ("none", "fgsm", "pgd") for a in (2, 5)]
    dims = {r["a"]: r["feature_dim"] for r in rows}
    assert dims == {2: 8 * 8 * 4 + 4 * 4 * 4, 5: 8 * 8 * 4 + 2 * (4 * 4 * 4) + 2 * (2 * 2 * 4)}
    for r in rows:
        for k in ("acc_star", "acc_linear", "acc_linear_global", "acc_random"):
            assert 0.0 <= r[k] <= 1.0
        assert r["diff"] == pytest.approx(r["acc_linear"] - r["acc_star"])
        assert (r["settings"]["threat"] is None) == (r["attack"] == "none")
    by = {(r["attack"], r["a"]): r for r in rows}
    assert by[("pgd", 5)]["acc_star"] <= by[("none", 5)]["acc_star"]
    md = s1_markdown(rows)
    assert md.count("\n| ") == 1 + len(rows) and "Acc~" in md
    with pytest.raises(ValueError, match="threat"):
        algorithm_s1(model, variables, 2, x, y, jax.random.PRNGKey(0), attack=pgd)
    with pytest.raises(ValueError, match="split points"):
        algorithm_s1(model, variables, 7, x, y, jax.random.PRNGKey(0))


@pytest.mark.slow
def test_algorithm_s1_with_autoattack_from_the_registry():
    model = get_model("small_cnn", num_classes=3, widths=(4, 4, 4, 4, 4), hidden=8)
    variables = init_model(model, jax.random.PRNGKey(0), (8, 8, 1))
    x = np.asarray(jax.random.uniform(jax.random.PRNGKey(1), (24, 8, 8, 1)))
    y = (np.arange(24) % 3).astype(np.int32)
    clean, aa = algorithm_s1_sweep(model, variables, x, y, jax.random.PRNGKey(2), split_points=[4],
                                   attacks=["none", "autoattack"], threat=LinfBall(0.1), lambda_batch_size=8,
                                   random_trials=2)
    assert aa["attack"] == "autoattack" and aa["acc_star"] <= clean["acc_star"]
