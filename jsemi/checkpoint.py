"""Checkpoints with orbax: train state + run metadata (model, dataset, config, metrics) as JSON.

Layout of a run directory::

    RUN/ckpt/<step>/state     orbax StandardSave of {params, batch_stats, opt_state, step}
    RUN/ckpt/<step>/meta      orbax JsonSave of {model, model_kwargs, dataset, config, metrics, epoch}

Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never replaces the last good checkpoint.  Restoring into a
model whose variables do not match raises ``CheckpointError`` naming the
mismatch; an unreadable or truncated checkpoint raises ``CheckpointError`` too.
No pickle is involved anywhere.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class CheckpointError(RuntimeError):
    """A checkpoint is missing, corrupt, or does not match the model it is restored into."""


def _manager(directory: str | os.PathLike, max_to_keep: int | None = 2, create: bool = True) -> ocp.CheckpointManager:
    directory = Path(directory).absolute()
    options = ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=create, enable_async_checkpointing=False)
    return ocp.CheckpointManager(directory, options=options, item_names=("state", "meta"))


def _to_jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_to_jsonable(v) for v in obj]
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, (jax.Array, np.ndarray)):
        return np.asarray(obj).tolist()
    return obj


def save(directory: str | os.PathLike, step: int, state_tree: dict, meta: dict, max_to_keep: int | None = 2) -> Path:
    """Saves ``state_tree`` (arrays) and ``meta`` (JSON-able) as checkpoint ``step``; returns its path."""
    json.dumps(_to_jsonable(meta))  # fail before writing anything if meta is not JSON-able
    mngr = _manager(directory, max_to_keep)
    try:
        mngr.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(_to_jsonable(meta))),
            force=True,
        )
        mngr.wait_until_finished()
    finally:
        mngr.close()
    return Path(directory).absolute() / str(int(step))


def latest_step(directory: str | os.PathLike) -> int | None:
    """Newest complete checkpoint step in ``directory`` (None if there is none)."""
    if not Path(directory).exists():
        return None
    mngr = _manager(directory, create=False)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def restore_meta(directory: str | os.PathLike, step: int | None = None) -> dict:
    """Reads only the JSON metadata of a checkpoint (latest step by default)."""
    directory = Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint found in {directory}")
    path = directory.absolute() / str(step) / "meta" / "metadata"
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"checkpoint metadata {path} is unreadable or corrupt: {e}") from e


def restore(directory: str | os.PathLike, target: dict, step: int | None = None) -> tuple[dict, dict]:
    """Restores (state_tree, meta) of a checkpoint into the structure and shapes of ``target``.

    ``target`` is a pytree of arrays (or ``jax.ShapeDtypeStruct``) with the expected
    structure, e.g. the freshly initialised state of the same model.  Raises
    ``CheckpointError`` when the checkpoint is missing, corrupt or does not match.
    """
    directory = Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint found in {directory}")
    meta = restore_meta(directory, step)
    abstract = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(np.shape(a), np.asarray(a).dtype) if not isinstance(a, jax.ShapeDtypeStruct) else a, target)
    _check_structure(directory / str(step) / "state", abstract)
    mngr = _manager(directory, create=False)
    try:
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # orbax raises many types for corrupt data
        raise CheckpointError(f"checkpoint {directory}/{step} could not be restored (corrupt or mismatched): {e}") from e
    finally:
        mngr.close()
    return out["state"], meta


def _key_name(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def _check_structure(state_dir: Path, abstract: dict) -> None:
    """Compares the saved tree's paths and shapes with the target's; raises CheckpointError on mismatch."""
    try:
        saved = ocp.StandardCheckpointHandler().metadata(state_dir.absolute())  # the handler: no step-level lookup
        saved_tree = getattr(saved, "item_metadata", saved)
        saved_tree = getattr(saved_tree, "tree", saved_tree)
    except Exception as e:
        raise CheckpointError(f"checkpoint {state_dir} is unreadable or corrupt: {e}") from e

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {"/".join(_key_name(k) for k in p): tuple(getattr(v, "shape", ())) for p, v in leaves}

    want, have = flat(abstract), flat(saved_tree) if saved_tree is not None else {}
    if not have:
        raise CheckpointError(f"checkpoint {state_dir} is unreadable or corrupt: its tree metadata is missing")
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing or extra:
        raise CheckpointError(
            f"checkpoint {state_dir} does not match the model: missing {missing[:4]}{'...' if len(missing) > 4 else ''}, "
            f"unexpected {extra[:4]}{'...' if len(extra) > 4 else ''}"
        )
    bad = [(k, have[k], want[k]) for k in want if have[k] != want[k]]
    if bad:
        k, h, w = bad[0]
        raise CheckpointError(f"checkpoint {state_dir} does not match the model: {k} has shape {h}, model expects {w}")
