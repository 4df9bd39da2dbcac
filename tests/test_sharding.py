"""Data parallelism (jsemi.sharding) and mixed precision (jsemi.precision).

The multi-device checks (make test-slow) run in a subprocess (tests/sharding_checks.py) that sets
``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before importing JAX, and compare a
training step, an ATTA step, an attack, an evaluation and per-example features on 8 CPU
devices with the single-device results.  The remaining tests run in-process on the
default (single) device, where the same code path must also work.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import precision, sharding, train, training_modes
from jsemi.attacks import L2Ball, LinfBall, pgd
from jsemi.models import get_model, init_model

ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5


# The eight-device checks: one subprocess that imports JAX and compiles every program twice
# (single device and sharded), ~30 CPU-s whatever the device count: make test-slow, which CI
# runs (.ci/run). make test keeps the same sharding functions on the default single device
# (the in-process tests below).
eight = pytest.mark.slow


@pytest.fixture(scope="module")
def eight_devices() -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "tests" / "sharding_checks.py")],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=300,
    )
    lines = [l for l in proc.stdout.splitlines() if l.startswith("RESULT ")]
    assert proc.returncode == 0 and lines, f"sharding subprocess failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads(lines[-1][len("RESULT "):])


@eight
def test_eight_forced_devices(eight_devices):
    r = eight_devices
    assert r["devices"] == 8 and r["mesh_shards"] == 8


@eight
def test_sharded_train_step_matches_single_device(eight_devices):
    r = eight_devices
    assert r["train_params_moved"] > 1e-3  # the steps really changed the parameters
    assert r["train_params_diff"] < TOL
    assert r["train_stats_diff"] < TOL  # BatchNorm statistics over the global batch
    assert r["train_loss_diff"] < TOL
    assert r["state_replicated"]


@eight
def test_sharded_atta_step_carries_sharded_perturbations(eight_devices):
    r = eight_devices
    assert r["atta_params_diff"] < TOL
    assert r["atta_delta_diff"] < TOL
    assert r["atta_delta_sharded"]


@eight
def test_indivisible_training_batch_is_a_clear_error(eight_devices):
    msg = eight_devices["train_indivisible_error"]
    assert msg is not None and "not divisible by the 8 devices" in msg and "multiple of 8" in msg


@eight
def test_sharded_attack_matches_and_pads(eight_devices):
    r = eight_devices
    for n in (16, 13):  # 13: padded to 16 over 8 devices, trimmed back
        assert r[f"attack_{n}_shape"][0] == n
        assert r[f"attack_{n}_diff"] < TOL
        assert r[f"attack_{n}_dtype"] == "float32"
        assert r[f"attack_{n}_linf"] <= 0.1 + 1e-6


@eight
def test_sharded_evaluation_matches(eight_devices):
    a, b = eight_devices["eval_single"], eight_devices["eval_sharded"]
    assert a["n"] == b["n"] == 50
    assert 0.3 < a["acc"] < 1.0  # labels chosen so that clean accuracy is not trivial
    assert abs(a["acc"] - b["acc"]) <= 1 / 50
    assert abs(a["adv_acc"] - b["adv_acc"]) <= 1 / 50


@eight
def test_sharded_features_for_estimators(eight_devices):
    assert eight_devices["features_diff"] < 1e-5


# ----------------------------------------------------------------------------- in-process, 1 device


@pytest.fixture(scope="module")
def tiny():
    model = get_model("small_cnn", widths=(8, 16), hidden=16)
    variables = init_model(model, jax.random.key(0), (12, 12, 1))
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (8, 12, 12, 1)).astype(np.float32)
    y = (np.arange(8) % 10).astype(np.int32)
    return model, variables, x, y


def test_mesh_on_default_devices():
    mesh = sharding.make_mesh()
    assert mesh.axis_names == (sharding.DATA_AXIS,)
    assert sharding.num_shards(mesh) == jax.device_count()


def test_pad_to_multiple_repeats_last_example():
    x = np.arange(5 * 2).reshape(5, 2)
    y = np.arange(5)
    (xp, yp), n = sharding.pad_to_multiple([x, y], 4)
    assert n == 5 and xp.shape == (8, 2) and list(yp) == [0, 1, 2, 3, 4, 4, 4, 4]
    (xq, _), n = sharding.pad_to_multiple([x, y], 5)
    assert xq is x and n == 5
    with pytest.raises(ValueError, match="disagree"):
        sharding.pad_to_multiple([x, y[:4]], 4)


def test_single_device_path_equals_plain_step(tiny):
    model, variables, x, y = tiny
    cfg = train.TrainConfig(mode="standard", optimizer="adam", lr=1e-3, batch_size=8, epochs=1, augment=False)
    step = training_modes.make_train_step(model, cfg)
    key = jax.random.key(3)
    s1, m1 = step(train.create_train_state(variables, cfg, 2), x, y, key)
    s2, m2 = sharding.shard_train_step(step, sharding.make_mesh())(train.create_train_state(variables, cfg, 2), x, y, key)
    for u, v in zip(jax.tree_util.tree_leaves(s1.params), jax.tree_util.tree_leaves(s2.params)):
        np.testing.assert_allclose(np.asarray(u), np.asarray(v), atol=1e-6)
    assert abs(float(m1["loss"]) - float(m2["loss"])) < 1e-6


def test_sharded_evaluate_single_device_equals_train_evaluate(tiny):
    model, variables, x, y = tiny
    att = functools.partial(pgd, threat=LinfBall(0.05), steps=2, step_size=0.03)
    a = train.evaluate(model, variables, x, y, jax.random.key(1), attack=att, batch_size=3)
    b = sharding.evaluate(model, variables, x, y, jax.random.key(1), attack=att, batch_size=3)
    assert a == b


# ----------------------------------------------------------------------------- mixed precision


def test_compute_dtype_names():
    assert precision.compute_dtype("bf16") == jnp.bfloat16
    assert precision.compute_dtype("float32") == jnp.float32
    assert precision.compute_dtype("auto") == (jnp.float32 if jax.default_backend() == "cpu" else jnp.bfloat16)
    with pytest.raises(ValueError, match="loss scaling"):
        precision.compute_dtype(jnp.float16)
    with pytest.raises(ValueError, match="unknown compute dtype"):
        precision.compute_dtype("int8")


@pytest.mark.parametrize("threat", [LinfBall(0.1), L2Ball(0.5)])
def test_bf16_model_attack_keeps_float32_perturbation(tiny, threat):
    model, variables, x, y = tiny
    m16 = precision.with_dtype(model, "bfloat16")
    assert precision.is_low_precision(m16)
    lf = lambda z: m16.apply(variables, z, train=False)  # same float32 variables
    assert jax.jit(lf)(jnp.asarray(x)).dtype == jnp.float32  # compiled: eagerly, ~40 one-op programs
    g = jax.jit(jax.grad(lambda z: jnp.sum(lf(z))))(jnp.asarray(x))
    assert g.dtype == jnp.float32  # the input gradient comes back in float32
    xa = pgd(lf, jnp.asarray(x), jnp.asarray(y), jax.random.key(0), threat, steps=3)
    assert xa.dtype == jnp.float32
    d = np.asarray(xa - x).reshape(len(x), -1)
    dist = np.abs(d).max(1) if isinstance(threat, LinfBall) else np.linalg.norm(d, axis=1)
    assert dist.max() <= threat.eps + 1e-5
    # The perturbation has float32 resolution, not bf16's 8 bits of mantissa.
    assert len(np.unique(np.asarray(xa))) > len(np.unique(np.asarray(xa).astype(jnp.bfloat16)))


def test_bf16_training_keeps_float32_params_and_loss(tiny):
    model, variables, x, y = tiny
    m16 = precision.with_dtype(model, jnp.bfloat16)
    for mode in ("trades",):  # two bf16 forward passes, a KL attack and a KL loss
        cfg = train.TrainConfig(mode=mode, optimizer="sgd", lr=0.05, eps=0.1, attack_steps=2, attack_step_size=0.05,
                                batch_size=8, epochs=1, augment=False)
        state = train.create_train_state(variables, cfg, 2)
        state, m = training_modes.make_train_step(m16, cfg)(state, x, y, jax.random.key(0))
        assert m["loss"].dtype == jnp.float32 and np.isfinite(float(m["loss"]))
        for leaf in jax.tree_util.tree_leaves((state.params, state.batch_stats, state.opt_state)):
            if jnp.issubdtype(leaf.dtype, jnp.floating):
                assert leaf.dtype == jnp.float32
