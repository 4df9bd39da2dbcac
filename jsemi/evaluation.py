"""One evaluator of clean and attacked accuracy over a dataset.

Every accuracy in jsemi (training curves, ``jsemi eval``, Algorithm 1, ``robust_accuracy``,
``sharding.evaluate``) is computed here, with one batching rule:

- batches of ``bs = min(batch_size, N)`` examples in dataset order; the last one is padded
  to the common shape by repeating its last example (padded rows are masked out of every
  count), and, with a ``mesh``, to a multiple of the mesh's device count; so each program
  compiles once per (model, attack, batch shape);
- batch ``b`` is attacked with ``jax.random.fold_in(key, b)``, so results depend only on the
  data, the key and ``batch_size``, not on the device or process count.

**Weights are jit arguments.**  ``logits_fn`` is any model function; a pytree callable
(``jsemi.models.bind(model, variables)``) has its arrays passed to the compiled program as
arguments, so new weights of the same shapes reuse it (one compilation per training run,
per Algorithm 1 run).  A plain closure works but compiles once per closure.  The attack is
part of jit's cache key (by identity for a function): build it once per run.  The only
cache is jit's own (``compiled_batch._cache_size()`` counts compilations).

**Host mode.**  Attacks that need concrete arrays (AutoAttack: it gathers the still-robust
points on the host between its attacks, ``attacks._common.attack_remaining``) are called
on each concrete padded batch instead of being traced into the compiled program; only the
forward passes are compiled here.  ``host=None`` picks host mode for AutoAttack.

**Sharding.**  With ``mesh`` (``jsemi.sharding.make_mesh()``) each batch is split along the
mesh's "data" axis and the weights and keys are replicated; counts are summed inside the
compiled program.  Multi-host (after ``jax.distributed.initialize``): every process passes
the same full dataset; each process computes only its devices' rows of every batch, the
counts are summed across processes by the compiled program, and every process gets the
same result, equal to the single-process one.

Units: accuracies are fractions in [0, 1]; images are uint8 or float32 in [0, 1], NHWC.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks._common import join_fn, split_fn
from jsemi.data import unit_float
from jsemi.validation import (
    check_image_dataset,
    check_key,
    check_positive_int,
    num_classes_of,
)

__all__ = ["evaluate", "evaluate_many", "AttackedAccuracy", "bind_eval_attack", "attacked_inputs", "needs_host", "batch_plan",
           "compiled_batch", "compiled_batch_many", "compiled_predict", "compiled_adversarial"]


def _unit_float(x):
    from jsemi.train import to_unit_float

    return to_unit_float(x)


def needs_host(attack: Callable | None) -> bool:
    """True for attacks that must run on concrete batches: AutoAttack, also bound by
    ``get_attack("autoattack", ...)``, ``functools.partial`` or ``functools.wraps``."""
    from jsemi.attacks.autoattack import autoattack

    f, seen = attack, 0
    while f is not None and seen < 16:
        if f is autoattack:
            return True
        if isinstance(f, functools.partial):
            f = f.func
        else:  # a registry BoundAttack keeps the function in .fn; functools.wraps in __wrapped__
            f = getattr(f, "__wrapped__", None) or getattr(f, "fn", None)
        seen += 1
    return False


# ----------------------------------------------------------------------------- compiled parts


def _constrain(tree, mesh, spec):
    if mesh is None:
        return tree
    from jax.sharding import NamedSharding

    return jax.lax.with_sharding_constraint(tree, NamedSharding(mesh, spec))


def _counts(clean, adv, valid):
    """[clean, attacked, both] correct among the valid rows (int32 (3,))."""
    c = lambda m: jnp.sum(m & valid, dtype=jnp.int32)  # noqa: E731
    return jnp.stack([c(clean), c(adv), c(clean & adv)])


def _batch(arrays, x, y, key, valid, fn, attack, mesh):
    """Per-example (clean, attacked) correctness (B,) bool and their counts (3,)."""
    from jax.sharding import PartitionSpec as P

    f = join_fn(fn, arrays)
    x = _unit_float(x)
    clean = jnp.argmax(f(x), -1) == y
    if attack is None:
        adv = clean
    else:
        adv = jnp.argmax(f(jax.lax.stop_gradient(attack(f, x, y, key))), -1) == y
    counts = _counts(clean, adv, valid)
    return _constrain((clean, adv), mesh, P("data")), _constrain(counts, mesh, P())


def _batch_many(arrays, x, y, keys, valid, fn, attack, mesh):
    """:func:`_batch` for R weight sets stacked on the leading axis of ``arrays`` (keys (R,))."""
    one = lambda a, k: _batch(a, x, y, k, valid, fn, attack, None)[1]  # noqa: E731
    return _constrain(jax.vmap(one)(arrays, keys), mesh, jax.sharding.PartitionSpec())


def _predict(arrays, x, y, x_adv, valid, fn, mesh):
    """Host mode: correctness at x and at the given attacked inputs, and the counts."""
    from jax.sharding import PartitionSpec as P

    f = join_fn(fn, arrays)
    clean = jnp.argmax(f(_unit_float(x)), -1) == y
    adv = jnp.argmax(f(x_adv), -1) == y
    counts = _counts(clean, adv, valid)
    return _constrain((clean, adv), mesh, P("data")), _constrain(counts, mesh, P())


def _adversarial(arrays, x, y, key, fn, attack, mesh):
    from jax.sharding import PartitionSpec as P

    return _constrain(attack(join_fn(fn, arrays), _unit_float(x), y, key), mesh, P("data"))


# One jit object each, made at import: jit's cache keys on the model function's static part
# (module, tree structure), the attack, the mesh and the shapes, never on weight values.
compiled_batch = jax.jit(_batch, static_argnums=(5, 6, 7))
compiled_batch_many = jax.jit(_batch_many, static_argnums=(5, 6, 7))
compiled_predict = jax.jit(_predict, static_argnums=(5, 6))
compiled_adversarial = jax.jit(_adversarial, static_argnums=(4, 5, 6))


# ----------------------------------------------------------------------------- batching


def batch_plan(n: int, batch_size: int, multiple: int = 1) -> tuple[int, int]:
    """(bs, padded): batches of ``bs = min(batch_size, n)`` rows, each padded to ``padded``
    (``bs`` rounded up to a multiple of ``multiple``, the device count)."""
    bs = min(int(batch_size), int(n))
    return bs, -(-bs // multiple) * multiple


def _batches(n: int, bs: int, padded: int):
    """(b, row indices (padded,), valid mask (padded,), real rows m) per batch; padding
    repeats the batch's last example."""
    for b, s in enumerate(range(0, n, bs)):
        m = min(bs, n - s)
        idx = np.concatenate([np.arange(s, s + m), np.full(padded - m, s + m - 1)])
        yield b, idx, np.arange(padded) < m, m


def _to_host(a) -> np.ndarray:
    """A (possibly multi-process, sharded) array as a host NumPy array."""
    if getattr(a, "is_fully_addressable", True) or getattr(a, "is_fully_replicated", False):
        return np.asarray(a)
    from jax.experimental import multihost_utils

    return np.asarray(multihost_utils.process_allgather(a, tiled=True))


class _Placer:
    """Puts batches on the mesh (split along "data") and weights / keys replicated on it."""

    def __init__(self, mesh):
        self.mesh = mesh

    def batch(self, *arrays):
        if self.mesh is None:
            return arrays
        from jsemi import sharding

        return tuple(sharding.shard_global_batch(self.mesh, a) for a in arrays)

    def rep(self, tree):
        if self.mesh is None:
            return tree
        from jsemi import sharding

        return sharding.replicate(tree, self.mesh)


def _prepare(logits_fn, images, labels, key, attack, batch_size, mesh, host):
    """Validates the inputs; returns (labels int32, fn static, arrays, bs, padded, host, placer)."""
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable (x -> logits), e.g. jsemi.models.bind(model, variables); "
                        f"got {type(logits_fn).__name__}")
    if attack is not None and not callable(attack):
        raise TypeError(f"attack must be callable (logits_fn, x, y, key) -> x_adv or None, got {type(attack).__name__}")
    check_positive_int(batch_size, "batch_size")
    check_key(key)
    images = images if hasattr(images, "shape") else np.asarray(images)
    k = num_classes_of(logits_fn, jax.ShapeDtypeStruct(tuple(images.shape), jnp.float32))
    check_image_dataset(images, labels, k)
    labels = np.asarray(labels).astype(np.int32, copy=False)
    host = needs_host(attack) if host is None else (bool(host) and attack is not None)
    multiple = 1
    if mesh is not None:
        from jsemi import sharding

        multiple = sharding.num_shards(mesh)
        if host and sharding._multiprocess(mesh):
            raise ValueError("host-mode attacks (AutoAttack) run on one process: evaluate them with a mesh of "
                             "this process's devices, sharding.make_mesh(jax.local_devices())")
    bs, padded = batch_plan(images.shape[0], batch_size, multiple)
    fn, arrays = split_fn(logits_fn)
    return labels, fn, arrays, bs, padded, host, _Placer(mesh)


def _progress(it, total, progress, desc):
    if not progress:
        return it
    from tqdm.auto import tqdm

    return tqdm(it, total=total, desc=desc, leave=False, unit="batch")


# ----------------------------------------------------------------------------- public API


def evaluate(logits_fn: Callable, images, labels, key: jax.Array, attack: Callable | None = None, *,
             batch_size: int = 500, mesh=None, host: bool | None = None, per_example: bool = False,
             progress: bool = False, desc: str = "eval") -> dict:
    """Clean and attacked accuracy of ``logits_fn`` on (images, labels).

    Args:
      logits_fn: x (B, H, W, C) float32 in [0, 1] -> logits (B, K); preferably
        ``jsemi.models.bind(model, variables)`` (weights as jit arguments).
      images: (N, H, W, C) uint8 or float in [0, 1]; labels: (N,) ints in [0, K).
      key: PRNG key; batch b is attacked with ``fold_in(key, b)``.
      attack: ``attack(logits_fn, x, y, key) -> x_adv`` (e.g. ``jsemi.attacks.get_attack``) or None.
      batch_size: rows per batch (the last batch is padded; see the module docstring).
      mesh: a ``jsemi.sharding`` mesh to split each batch over (None: the default device).
      host: call the attack on concrete batches (None: only for AutoAttack).
      per_example: also return the (N,) bool masks.

    Returns {'n', 'acc' (clean), 'adv_acc' (argmax f(x_adv) == y), 'robust_acc' (correct on
    x and on x_adv)}; the attacked entries are None without ``attack``.  With
    ``per_example``: 'correct' and 'adv_correct' (N,) bool as well.
    """
    labels, fn, arrays, bs, padded, host, place = _prepare(logits_fn, images, labels, key, attack, batch_size,
                                                           mesh, host)
    n = images.shape[0]
    arrays_p = place.rep(arrays)
    counts, masks = [], []
    for b, idx, valid, m in _progress(_batches(n, bs, padded), -(-n // bs), progress, desc):
        xb, yb = images[idx], labels[idx]
        kb = jax.random.fold_in(key, b)
        if host:
            x_adv = np.asarray(attack(logits_fn, unit_float(xb), yb, kb), np.float32)
            xs, ys, xas, vs = place.batch(xb, yb, x_adv, valid)
            ok, c = compiled_predict(arrays_p, xs, ys, xas, vs, fn, mesh)
        else:
            xs, ys, vs = place.batch(xb, yb, valid)
            ok, c = compiled_batch(arrays_p, xs, ys, place.rep(kb), vs, fn, attack, mesh)
        counts.append(c)
        if per_example:
            masks.append(tuple(_to_host(a)[:m] for a in ok))
    total = np.sum(np.stack([np.asarray(c) for c in jax.device_get(counts)]), axis=0)
    frac = [float(t) / n for t in total]
    out = {"n": int(n), "acc": frac[0], "adv_acc": frac[1] if attack is not None else None,
           "robust_acc": frac[2] if attack is not None else None}
    if per_example:
        out["correct"] = np.concatenate([a for a, _ in masks])
        out["adv_correct"] = np.concatenate([a for _, a in masks])
    return out


def evaluate_many(logits_fn: Callable, images, labels, keys: jax.Array, attack: Callable | None = None, *,
                  batch_size: int = 500, mesh=None, host: bool | None = None) -> dict:
    """:func:`evaluate` for R weight sets at once: ``logits_fn``'s arrays carry a leading
    replica axis R (e.g. ``bind(model, stacked_variables)``) and replica r is attacked with
    ``fold_in(keys[r], b)`` on batch b.  Returns {'n', 'acc', 'adv_acc', 'robust_acc'} with
    (R,) float arrays (attacked entries None without ``attack``).  Traced attacks are vmapped
    over the replicas (one compiled program); host-mode attacks run replica by replica."""
    keys_arr = keys
    first = jax.tree_util.tree_leaves(logits_fn)
    if not first or not all(hasattr(a, "shape") for a in first):
        raise TypeError("evaluate_many needs a pytree model function with stacked arrays "
                        "(jsemi.models.bind(model, stacked_variables))")
    r = int(first[0].shape[0])
    if int(np.shape(keys_arr)[0]) != r:
        raise ValueError(f"evaluate_many: {np.shape(keys_arr)[0]} keys for {r} weight sets")
    labels, fn, arrays, bs, padded, host, place = _prepare(
        jax.tree_util.tree_map(lambda a: a[0], logits_fn), images, labels, keys_arr[0], attack, batch_size,
        mesh, host)
    n = images.shape[0]
    if host:
        res = [evaluate(jax.tree_util.tree_map(lambda a: np.asarray(a[i]), logits_fn), images, labels, keys_arr[i],
                        attack, batch_size=batch_size, mesh=mesh, host=True) for i in range(r)]
        return {"n": int(n), **{k: np.array([q[k] for q in res]) for k in ("acc", "adv_acc", "robust_acc")}}
    _, arrays = split_fn(logits_fn)
    arrays_p = place.rep(arrays)
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    counts = []
    for b, idx, valid, m in _batches(n, bs, padded):
        xs, ys, vs = place.batch(images[idx], labels[idx], valid)
        counts.append(compiled_batch_many(arrays_p, xs, ys, place.rep(fold(keys_arr, b)), vs, fn, attack, mesh))
    total = np.sum(np.stack([np.asarray(c) for c in jax.device_get(counts)]), axis=0)  # (R, 3)
    frac = total / n
    return {"n": int(n), "acc": frac[:, 0], "adv_acc": frac[:, 1] if attack is not None else None,
            "robust_acc": frac[:, 2] if attack is not None else None}


def attacked_inputs(logits_fn: Callable, images, labels, key: jax.Array, attack: Callable, *,
                    batch_size: int = 500, mesh=None, host: bool | None = None) -> np.ndarray:
    """The attacked inputs (N, H, W, C) float32 in [0, 1] (host array), with the batching and
    keys of :func:`evaluate` (so they are the points whose accuracy it reports)."""
    if attack is None:
        raise ValueError("attacked_inputs needs an attack")
    labels, fn, arrays, bs, padded, host, place = _prepare(logits_fn, images, labels, key, attack, batch_size,
                                                           mesh, host)
    n = images.shape[0]
    arrays_p = place.rep(arrays)
    out = []
    for b, idx, valid, m in _batches(n, bs, padded):
        xb, yb = images[idx], labels[idx]
        kb = jax.random.fold_in(key, b)
        if host:
            out.append(np.asarray(attack(logits_fn, unit_float(xb), yb, kb))[:m])
        else:
            xs, ys = place.batch(xb, yb)
            out.append(_to_host(compiled_adversarial(arrays_p, xs, ys, place.rep(kb), fn, attack, mesh))[:m])
    return np.concatenate(out).astype(np.float32, copy=False)


# ----------------------------------------------------------------------------- a model-bound front


def bind_eval_attack(name: str, threat, settings: Mapping[str, Any]) -> Callable | None:
    """The bound attack ``(logits_fn, x, y, key) -> x_adv`` for ``name`` (None for "none")."""
    if name in (None, "none", "clean"):
        return None
    from jsemi.estimators.semirobust import bind_attack

    return bind_attack(name, threat, dict(settings), defaults=False)[0]


class AttackedAccuracy:
    """Attacked accuracy of ``model`` under ``attack`` (``attack=None``: clean accuracy) over a
    dataset: a thin front of ``jsemi.evaluation`` with the variables as jit arguments.

    Accuracy counts argmax(f(x_adv)) == y.  Batch b uses ``fold_in(key, b)``; the last batch
    is padded.  Every call with weights of the same shapes reuses one compiled program (jit's
    cache keys on the module, the attack and the shapes).  AutoAttack runs on concrete batches
    (host mode, its still-robust points compacted between attacks; ``host=None`` detects it).
    """

    def __init__(self, model, attack: Callable | None, batch_size: int = 500, host: bool | None = None):
        self.model, self.attack, self.batch_size, self.host = model, attack, int(batch_size), host

    def _fn(self, variables):
        from jsemi.models import bind

        return bind(self.model, variables)

    def __call__(self, variables, images: np.ndarray, labels: np.ndarray, key: jax.Array) -> float:
        res = evaluate(self._fn(variables), images, labels, key, self.attack, batch_size=self.batch_size,
                       host=self.host)
        return res["acc"] if self.attack is None else res["adv_acc"]

    def adversarial(self, variables, images: np.ndarray, labels: np.ndarray, key: jax.Array) -> np.ndarray:
        """The attacked inputs (float32 in [0, 1], host array) with the same batching and keys as ``__call__``."""
        if self.attack is None:
            return unit_float(np.asarray(images))
        return attacked_inputs(self._fn(variables), images, labels, key, self.attack, batch_size=self.batch_size,
                               host=self.host)

    def many(self, stacked_variables, images: np.ndarray, labels: np.ndarray, keys: jax.Array) -> np.ndarray:
        """Accuracies (R,) of R stacked variable sets, replica r attacked with ``keys[r]``."""
        res = evaluate_many(self._fn(stacked_variables), images, labels, keys, self.attack,
                            batch_size=self.batch_size, host=self.host)
        return res["acc"] if self.attack is None else res["adv_acc"]
