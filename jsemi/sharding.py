"""Data parallelism on JAX's own sharding engine: one ``Mesh`` axis "data" over all devices.

Design (no hand-written collectives anywhere):

- ``make_mesh()`` builds a 1-D ``jax.sharding.Mesh`` whose single axis ``"data"`` spans
  every device JAX sees: all local devices, and every host's devices after
  ``jax.distributed.initialize()``.  On one CPU it is a mesh of one device and the same
  code path runs.
- Batches (images, labels, ATTA perturbations, ...) are placed with
  ``NamedSharding(mesh, P("data"))`` (split along their leading axis); variables, optimizer
  state, PRNG keys and scalar metrics are replicated (``P()``).  ``jax.jit`` with these
  in/out shardings lets XLA's SPMD partitioner insert the all-reduces: the gradient of a
  mean loss over a sharded batch, BatchNorm batch statistics over the *global* batch and
  accuracy sums are exactly the single-device computation (up to float summation order).
- Indivisible batches.  Per-example computations (attacks in inference mode, evaluation,
  layer outputs for the estimators) **pad and trim**: the batch is padded to a multiple of
  the device count by repeating its last example, and outputs are cut back to the real
  examples, so results are those of the unpadded batch.  (Random starts agree too: with
  ``jax_threefry_partitionable`` on, the default, the random bits of example i do not
  depend on the batch size or the sharding.)  A **training step raises** a ``ValueError``
  instead: padding would change the mean loss and the BatchNorm batch statistics, and a
  silent change of the optimisation is worse than an error.  Choose a batch size that is
  a multiple of ``num_shards(mesh)`` (the epoch loops drop the remainder batch).
- Multi-host: after ``jax.distributed.initialize()`` every process calls the same
  functions with its *process-local* share of the batch (``local batch x process count =
  global batch``); ``shard_batch`` assembles the global array with
  ``jax.make_array_from_process_local_data``.  Outputs sharded along "data" are global
  arrays: read them with ``jax.experimental.multihost_utils.process_allgather`` (or use
  the replicated metrics) on multi-host runs.  Evaluation (``evaluate``, i.e.
  ``jsemi.evaluation.evaluate`` with a mesh) instead takes the same full dataset on every
  process; each process computes its devices' rows of each batch and the counts are summed
  across processes inside the compiled program.  PRNG keys may be typed
  (``jax.random.key``) or legacy uint32 keys.

Typical use::

    mesh = sharding.make_mesh()
    step = sharding.shard_train_step(training_modes.make_train_step(model, config), mesh)
    state = sharding.replicate(state, mesh)
    state, metrics = step(state, x, y, key)                       # x, y: host arrays
    x_adv = sharding.shard_attack(model, functools.partial(pgd, threat=LinfBall(0.1)), mesh)(
        state.variables, x, y, key)
    res = sharding.evaluate(model, state.variables, images, labels, key, attack=..., mesh=mesh)

Mixed precision is orthogonal: build the model with ``dtype=jnp.bfloat16`` (see
``jsemi.precision``); parameters, optimizer state, loss and attack perturbations stay float32.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

DATA_AXIS = "data"

__all__ = [
    "DATA_AXIS",
    "make_mesh",
    "num_shards",
    "data_sharding",
    "replicated",
    "replicate",
    "shard_batch",
    "shard_global_batch",
    "pad_to_multiple",
    "check_divisible",
    "data_parallel",
    "shard_train_step",
    "shard_attack",
    "shard_apply",
    "evaluate",
]


# ----------------------------------------------------------------------------- mesh


def make_mesh(devices: Sequence[jax.Device] | None = None) -> Mesh:
    """A 1-D mesh with axis ``"data"`` over ``devices`` (default: ``jax.devices()``, all hosts)."""
    devs = list(jax.devices() if devices is None else devices)
    if not devs:
        raise ValueError("make_mesh: no devices")
    return Mesh(np.asarray(devs, dtype=object), (DATA_AXIS,))


def _default_mesh(mesh: Mesh | None) -> Mesh:
    return make_mesh() if mesh is None else mesh


def num_shards(mesh: Mesh) -> int:
    """Number of devices along the data axis (the global batch must split into this many)."""
    return int(mesh.shape[DATA_AXIS])


def data_sharding(mesh: Mesh) -> NamedSharding:
    """Leading (batch) axis split along "data", other axes whole."""
    return NamedSharding(mesh, P(DATA_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    """Every device holds the whole array (variables, optimizer state, keys, metrics)."""
    return NamedSharding(mesh, P())


def _multiprocess(mesh: Mesh) -> bool:
    """True when the mesh spans devices of more than one process (multi-host)."""
    return len({d.process_index for d in mesh.devices.flat}) > 1


def _local_multiple(mesh: Mesh) -> int:
    """Per-process batch multiple: the devices of this process on the mesh."""
    me = jax.process_index()
    return max(1, sum(1 for d in mesh.devices.flat if d.process_index == me))


# ----------------------------------------------------------------------------- placement


def _same_sharding(a, s: NamedSharding) -> bool:
    sh = getattr(a, "sharding", None)
    try:
        return sh is not None and sh.is_equivalent_to(s, a.ndim)
    except Exception:  # pragma: no cover - older jax without is_equivalent_to
        return sh == s


def _is_key(a) -> bool:
    return hasattr(a, "dtype") and jax.dtypes.issubdtype(a.dtype, jax.dtypes.prng_key)


def _replicate_multiprocess(a, rep: NamedSharding):
    """One leaf replicated over a multi-process mesh; typed PRNG keys travel as their key
    data and are re-wrapped with the same implementation (NumPy cannot hold key arrays)."""
    if not hasattr(a, "shape"):
        return a
    if _is_key(a):
        data = jax.make_array_from_process_local_data(rep, np.asarray(jax.random.key_data(a)))
        return jax.random.wrap_key_data(data, impl=jax.random.key_impl(a))
    if isinstance(a, jax.Array) and not a.is_fully_addressable:
        return a  # already a global array
    return jax.make_array_from_process_local_data(rep, np.asarray(a))


def replicate(tree: Any, mesh: Mesh) -> Any:
    """Places every leaf of ``tree`` replicated on ``mesh`` (a no-op for leaves already there).

    Typed keys (``jax.random.key``) and legacy uint32 keys both work, on one or many processes.
    """
    rep = replicated(mesh)
    leaves = jax.tree_util.tree_leaves(tree)
    if leaves and all(_same_sharding(l, rep) for l in leaves if isinstance(l, jax.Array)):
        return tree
    if _multiprocess(mesh):
        return jax.tree_util.tree_map(lambda a: _replicate_multiprocess(a, rep), tree)
    return jax.device_put(tree, rep)


def check_divisible(n: int, mesh: Mesh, what: str = "batch") -> None:
    """Raises ValueError unless ``n`` (a process-local batch size) splits evenly over the devices."""
    m = _local_multiple(mesh)
    if n % m:
        lo, hi = (n // m) * m, -(-n // m) * m
        raise ValueError(
            f"{what} size {n} is not divisible by the {m} devices of the data axis"
            f"{' on this process' if _multiprocess(mesh) else ''}: use a batch size that is a "
            f"multiple of {m} (e.g. {lo or m} or {hi}); training never pads, because padding "
            "would change the mean loss and the BatchNorm batch statistics"
        )


def pad_to_multiple(arrays: Sequence[Any], multiple: int) -> tuple[list[Any], int]:
    """Pads each array's leading axis to a multiple of ``multiple`` by repeating its last row.

    Returns (padded arrays, original length).  Repeating a real example keeps images in
    [0, 1] and labels valid, so padded rows never trigger input checks or NaNs.
    """
    n = int(arrays[0].shape[0])
    if n == 0:
        raise ValueError("pad_to_multiple: empty batch")
    for a in arrays:
        if a.shape[0] != n:
            raise ValueError(f"batch arrays disagree on the batch size: {[x.shape[0] for x in arrays]}")
    target = -(-n // multiple) * multiple
    if target == n:
        return list(arrays), n
    out = []
    for a in arrays:
        xp = jnp if isinstance(a, jax.Array) else np
        reps = xp.repeat(a[-1:], target - n, axis=0)
        out.append(xp.concatenate([a, reps], axis=0))
    return out, n


def shard_batch(mesh: Mesh, *arrays: Any) -> tuple[Any, ...] | Any:
    """Places arrays split along their leading axis over "data" (batch must be divisible).

    Single process: ``device_put`` of the (host or device) array.  Multi-host: each process
    passes its local share and gets the global array.  Returns one array or a tuple.
    """
    ds = data_sharding(mesh)
    out = []
    for a in arrays:
        if a is None:
            out.append(None)
            continue
        check_divisible(int(a.shape[0]), mesh)
        if _multiprocess(mesh):
            out.append(jax.make_array_from_process_local_data(ds, np.asarray(a)))
        elif isinstance(a, jax.Array) and _same_sharding(a, ds):
            out.append(a)
        else:
            out.append(jax.device_put(a, ds))
    return out[0] if len(out) == 1 else tuple(out)


def shard_global_batch(mesh: Mesh, a: Any) -> jax.Array:
    """A *global* batch (the same host array on every process) split along "data".

    Unlike :func:`shard_batch` (each process passes its own share), every process passes the
    whole batch and materialises only the rows of its own devices, so single- and
    multi-process runs see the same global batch.  The length must divide by the device count.
    """
    n = int(a.shape[0])
    if n % num_shards(mesh):
        raise ValueError(f"global batch of {n} rows does not split over the {num_shards(mesh)} devices of the mesh")
    ds = data_sharding(mesh)
    if not _multiprocess(mesh):
        return a if isinstance(a, jax.Array) and _same_sharding(a, ds) else jax.device_put(a, ds)
    host = np.asarray(a)
    return jax.make_array_from_callback(host.shape, ds, lambda idx: host[idx])


# ----------------------------------------------------------------------------- generic wrapper


def data_parallel(
    fn: Callable,
    mesh: Mesh | None = None,
    *,
    batch_argnums: Sequence[int],
    out_batched: bool | Sequence[bool] = True,
    pad: bool = True,
    static_argnames: Sequence[str] = (),
    donate_argnums: Sequence[int] = (),
) -> Callable:
    """Jits ``fn`` with the ``batch_argnums`` arguments sharded along "data", the rest replicated.

    ``out_batched``: True/False for every output, or one bool per element of a tuple output
    (True: sharded along "data" and trimmed; False: replicated).  ``pad=True`` (for
    per-example functions only) pads indivisible batches and trims batched outputs;
    ``pad=False`` raises on an indivisible batch.  Arguments that are ``None`` stay ``None``.
    """
    mesh = _default_mesh(mesh)
    ds, rep = data_sharding(mesh), replicated(mesh)
    batch_argnums = tuple(batch_argnums)
    out_sh = (ds if out_batched else rep) if isinstance(out_batched, bool) else tuple(
        ds if b else rep for b in out_batched)
    # Input shardings are those of the placed arguments (batch split, the rest replicated), so
    # one jit object serves every call; its cache keys on shapes, shardings and None-ness.
    jitted = jax.jit(fn, out_shardings=out_sh, static_argnames=tuple(static_argnames) or None,
                     donate_argnums=tuple(donate_argnums))

    def trim(out, n):
        if isinstance(out_batched, bool):
            return jax.tree_util.tree_map(lambda a: a[:n], out) if out_batched else out
        return tuple(jax.tree_util.tree_map(lambda a: a[:n], o) if b else o for o, b in zip(out, out_batched))

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        args = list(args)
        batch = [i for i in batch_argnums if i < len(args) and args[i] is not None]
        if not batch:
            raise ValueError("data_parallel: no batch argument given")
        n = int(args[batch[0]].shape[0])
        padded = False
        if pad and n % _local_multiple(mesh):
            vals, _ = pad_to_multiple([args[i] for i in batch], _local_multiple(mesh))
            for i, v in zip(batch, vals):
                args[i] = v
            padded = True
        for i in range(len(args)):
            if args[i] is None:
                continue
            if i in batch_argnums:
                args[i] = shard_batch(mesh, args[i])
            else:
                args[i] = replicate(args[i], mesh)
        out = jitted(*args, **kwargs)
        return trim(out, n) if padded else out

    return wrapped


# ----------------------------------------------------------------------------- training


def shard_train_step(step_fn: Callable, mesh: Mesh | None = None, *, donate: bool = False) -> Callable:
    """Data-parallel version of a ``jsemi.training_modes.make_train_step`` step.

    Returns ``step(state, x, y, key, extra=None)`` with the same results as ``step_fn``:
    (state, metrics) or, when ``extra`` (the ATTA perturbations of the batch) is given,
    (state, metrics, new_extra).  ``x``, ``y`` and ``extra`` are split along "data"; the state
    and the metrics are replicated.  The batch size must be a multiple of the device count
    (ValueError otherwise; see the module docstring).  ``donate=True`` donates the incoming
    state's buffers (do not reuse the old state afterwards).
    """
    mesh = _default_mesh(mesh)
    ds, rep = data_sharding(mesh), replicated(mesh)
    donate_argnums = (0,) if donate else ()
    plain = jax.jit(step_fn, in_shardings=(rep, ds, ds, rep), out_shardings=(rep, rep), donate_argnums=donate_argnums)
    carried = jax.jit(
        step_fn, in_shardings=(rep, ds, ds, rep, ds), out_shardings=(rep, rep, ds), donate_argnums=donate_argnums
    )

    def step(state, x, y, key, extra=None):
        state = replicate(state, mesh)
        x, y = shard_batch(mesh, x, y)
        key = replicate(key, mesh)
        if extra is None:
            return plain(state, x, y, key)
        return carried(state, x, y, key, shard_batch(mesh, extra))

    step.mesh = mesh  # type: ignore[attr-defined]
    return step


# ----------------------------------------------------------------------------- attacks, inference


def shard_attack(model, attack: Callable, mesh: Mesh | None = None) -> Callable:
    """Data-parallel attack against ``model`` in inference mode.

    ``attack(logits_fn, x, y, key) -> x_adv`` (e.g. ``functools.partial(pgd, threat=LinfBall(eps),
    steps=10)``).  Returns ``f(variables, x, y, key) -> x_adv`` (x float in [0, 1]); indivisible
    batches are padded and trimmed.  Perturbations stay in float32 whatever the model's dtype.
    """

    def run(variables, x, y, key):
        x = x.astype(jnp.float32)
        lf = lambda z: model.apply(variables, z, train=False)
        return attack(lf, x, y, key)

    return data_parallel(run, mesh, batch_argnums=(1, 2), out_batched=True, pad=True)


def shard_apply(fn: Callable, mesh: Mesh | None = None) -> Callable:
    """Data-parallel ``fn(variables, x) -> per-example outputs`` (pytree of (B, ...) arrays).

    For features / layer outputs used by the estimators, e.g.
    ``shard_apply(lambda v, x: jsemi.models.layer_outputs(model, v, x)[1])``.
    Indivisible batches are padded and trimmed.
    """
    return data_parallel(fn, mesh, batch_argnums=(1,), out_batched=True, pad=True)


def evaluate(model, variables: dict, images: np.ndarray, labels: np.ndarray, key: jax.Array,
             attack: Callable | None = None, batch_size: int = 500, mesh: Mesh | None = None, **kwargs) -> dict:
    """``jsemi.train.evaluate`` on ``mesh`` (default: all devices).

    Same batching and keys as on one device, so both give the same accuracies on any device
    or process count.  Multi-host: every process passes the same full dataset and gets the
    same counts (summed across processes).  Returns {'n', 'acc', 'adv_acc', 'robust_acc'}.
    """
    from jsemi.train import evaluate as _evaluate

    return _evaluate(model, variables, images, labels, key, attack, batch_size, mesh=_default_mesh(mesh), **kwargs)
