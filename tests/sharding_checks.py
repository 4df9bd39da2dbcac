"""Sharded-vs-single-device checks, run by tests/test_sharding.py in a subprocess.

The subprocess sets ``XLA_FLAGS=--xla_force_host_platform_device_count=8`` before JAX is
imported, so this process sees 8 CPU devices.  Prints one JSON line (``RESULT {...}``)
with the measured differences; the test asserts on them.
"""

from __future__ import annotations

import functools
import json
import os
import sys

assert "jax" not in sys.modules, "import this script before jax"
N_DEV = int(os.environ.get("JSEMI_TEST_DEVICES", "8"))
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={N_DEV}").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from jsemi import robust_training, sharding, train, training_modes  # noqa: E402
from jsemi.attacks import LinfBall, pgd  # noqa: E402
from jsemi.models import get_model, init_model  # noqa: E402


def maxdiff(a, b) -> float:
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    assert len(la) == len(lb)
    return max(float(np.max(np.abs(np.asarray(u, np.float64) - np.asarray(v, np.float64)))) for u, v in zip(la, lb))


def main() -> None:
    import time

    t0 = time.perf_counter()
    lap = lambda name: print(f"{name}: {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    out: dict = {"devices": jax.device_count()}
    mesh = sharding.make_mesh()
    out["mesh_shards"] = sharding.num_shards(mesh)

    model = get_model("small_cnn", widths=(8, 16), hidden=16)
    shape = (12, 12, 1)
    variables = init_model(model, jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    x = rng.uniform(0, 1, (16, *shape)).astype(np.float32)
    y = (np.arange(16) % 10).astype(np.int32)
    key = jax.random.key(1)

    # 1. PGD training step (attack inside the compiled step, BatchNorm, augmentation), two steps.
    cfg = train.TrainConfig(mode="pgd", optimizer="sgd", lr=0.05, eps=0.1, attack_steps=2, attack_step_size=0.05,
                            batch_size=16, epochs=1, augment=True, flip=True)
    step = training_modes.make_train_step(model, cfg)
    s_single = train.create_train_state(variables, cfg, 4)
    s_shard = sharding.replicate(train.create_train_state(variables, cfg, 4), mesh)
    sstep = sharding.shard_train_step(step, mesh)
    for i in range(2):
        s_single, m_single = step(s_single, x, y, jax.random.fold_in(key, i))
        s_shard, m_shard = sstep(s_shard, x, y, jax.random.fold_in(key, i))
    out["train_params_diff"] = maxdiff(s_single.params, s_shard.params)
    out["train_stats_diff"] = maxdiff(s_single.batch_stats, s_shard.batch_stats)
    out["train_loss_diff"] = abs(float(m_single["loss"]) - float(m_shard["loss"]))
    out["train_params_moved"] = maxdiff(s_single.params, variables["params"])
    leaf = jax.tree_util.tree_leaves(s_shard.params)[0]
    out["state_replicated"] = bool(leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == N_DEV)

    lap('# 2. ATTA')
    # 2. ATTA step: the carried perturbations are split along "data" and come back sharded.
    cfg_a = train.TrainConfig(mode="atta", optimizer="sgd", lr=0.05, eps=0.1, atta_steps=2, attack_step_size=0.05,
                              batch_size=16, epochs=1, augment=True, flip=True)
    astep = training_modes.make_train_step(model, cfg_a)
    delta = rng.uniform(-0.1, 0.1, x.shape).astype(np.float32)
    sa1, ma1, d1 = astep(train.create_train_state(variables, cfg_a, 4), x, y, key, delta)
    sa2, ma2, d2 = sharding.shard_train_step(astep, mesh)(train.create_train_state(variables, cfg_a, 4), x, y, key, delta)
    out["atta_params_diff"] = maxdiff(sa1.params, sa2.params)
    out["atta_delta_diff"] = maxdiff(d1, d2)
    out["atta_delta_sharded"] = len(d2.sharding.device_set) == N_DEV and not d2.sharding.is_fully_replicated

    lap('# 3. Indivis')
    # 3. Indivisible training batch: a clear error.
    try:
        sstep(s_shard, x[:12], y[:12], key)
        out["train_indivisible_error"] = None
    except ValueError as e:
        out["train_indivisible_error"] = str(e)

    lap('# 4. Attack')
    # 4. Attack (PGD with random start and restarts): divisible and padded batches.
    v = s_single.variables
    attack = functools.partial(pgd, threat=LinfBall(0.1), steps=5, step_size=0.03, restarts=2)
    lf = lambda z: model.apply(v, z, train=False)
    shard_att = sharding.shard_attack(model, attack, mesh)
    # With jax_threefry_partitionable (the default) the random start of example i does not
    # depend on the batch size, so the padded 13-example batch must match rows :13 of 16.
    xa_single = attack(lf, jnp.asarray(x), jnp.asarray(y), key)
    for n in (16, 13):
        xa_shard = shard_att(v, x[:n], y[:n], key)
        out[f"attack_{n}_shape"] = list(xa_shard.shape)
        out[f"attack_{n}_diff"] = maxdiff(xa_single[:n], xa_shard)
        out[f"attack_{n}_dtype"] = str(xa_shard.dtype)
        out[f"attack_{n}_linf"] = float(jnp.max(jnp.abs(xa_shard - x[:n])))

    lap('# 5. Evaluat')
    # 5. Evaluation, clean and attacked, with batches that do not divide by 8.
    # Labels: the model's own predictions for 35 images (so clean accuracy is not trivial).
    xe = rng.uniform(0, 1, (50, *shape)).astype(np.float32)
    ye = np.asarray(jnp.argmax(lf(jnp.asarray(xe)), -1)).astype(np.int32)
    ye[35:] = (ye[35:] + 1) % 10
    ev_attack = functools.partial(pgd, threat=LinfBall(0.01), steps=3, step_size=0.005)
    r1 = train.evaluate(model, v, xe, ye, key, attack=ev_attack, batch_size=20)
    r2 = sharding.evaluate(model, v, xe, ye, key, attack=ev_attack, batch_size=20, mesh=mesh)
    out["eval_single"] = r1
    out["eval_sharded"] = r2

    lap('# 6. Per-exa')
    # 6. Per-example layer outputs for the estimators, padded batch.
    from jsemi.models import layer_outputs

    feats = sharding.shard_apply(lambda vv, z: layer_outputs(model, vv, z)[1][-2], mesh)(v, x[:13])
    out["features_diff"] = maxdiff(layer_outputs(model, v, jnp.asarray(x[:13]))[1][-2], feats)
    out["robust_training_modes"] = list(robust_training.ROBUST_MODES)
    lap('print("RESUL')
    print("RESULT " + json.dumps(out), flush=True)


def multihost(process_id: int, num_processes: int, port: int, out_path: str) -> None:
    """Trains 3 data-parallel steps and evaluates on a mesh over every process's devices.

    ``num_processes`` > 1: this is process ``process_id`` of a ``jax.distributed`` run on
    localhost:``port``; each process feeds its share of every training batch and the full
    evaluation set.  Writes the final parameters and the evaluation to ``out_path`` (.npz),
    on process 0 only.  Typed keys (``jax.random.key``) throughout.
    """
    import time

    t0 = time.perf_counter()
    if num_processes > 1:
        jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=num_processes,
                                   process_id=process_id, initialization_timeout=120)
    from jsemi import training_modes

    mesh = sharding.make_mesh()
    model = get_model("small_cnn", widths=(4, 4, 8, 8, 8), hidden=8)
    shape = (8, 8, 1)
    variables = init_model(model, jax.random.key(0), shape)
    rng = np.random.default_rng(0)
    gb = 8  # global training batch: 2 rows per device
    x = rng.uniform(0, 1, (3 * gb, *shape)).astype(np.float32)
    y = (np.arange(3 * gb) % 10).astype(np.int32)
    key = jax.random.key(1)
    cfg = train.TrainConfig(mode="standard", optimizer="sgd", lr=0.1, momentum=0.9, batch_size=gb, epochs=1,
                            augment=False, flip=False)
    step = sharding.shard_train_step(training_modes.make_train_step(model, cfg), mesh)
    state = sharding.replicate(train.create_train_state(variables, cfg, 3), mesh)
    local = gb // num_processes  # this process's rows of each global batch
    for i in range(3):
        rows = slice(i * gb + process_id * local, i * gb + (process_id + 1) * local)
        state, metrics = step(state, x[rows], y[rows], jax.random.fold_in(key, i))
    # evaluation: every process passes the full set; the counts are summed across processes
    xe = rng.uniform(0, 1, (25, *shape)).astype(np.float32)
    ye = (np.arange(25) % 10).astype(np.int32)
    attack = functools.partial(pgd, threat=LinfBall(0.05), steps=2, step_size=0.03)
    ev = sharding.evaluate(model, state.variables, xe, ye, key, attack=attack, batch_size=6, mesh=mesh)
    params = {jax.tree_util.keystr(p): np.asarray(v) for p, v in jax.tree_util.tree_leaves_with_path(state.params)}
    if process_id == 0:
        np.savez(out_path, acc=ev["acc"], adv_acc=ev["adv_acc"], robust_acc=ev["robust_acc"],
                 loss=float(metrics["loss"]), devices=jax.device_count(), processes=jax.process_count(),
                 seconds=time.perf_counter() - t0, **{f"param{k}": v for k, v in params.items()})
    print(f"RESULT process {process_id}: {ev}", flush=True)
    if num_processes > 1:
        jax.distributed.shutdown()


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "multihost":
        multihost(int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
    else:
        main()
