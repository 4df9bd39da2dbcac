"""Checkpoints with orbax: train state + run metadata (model, dataset, config, metrics) as JSON.

Layout of a run directory::

    RUN/ckpt/<step>/state     orbax StandardSave of {params, batch_stats, opt_state, step}
    RUN/ckpt/<step>/meta      orbax JsonSave of {model, model_kwargs, dataset, config, metrics, epoch}

Orbax writes each step into a temporary directory and renames it when complete,
so an interrupted save never replaces the last good checkpoint.  Restoring into a
model whose variables do not match raises ``CheckpointError`` naming the
mismatch; an unreadable or truncated checkpoint raises ``CheckpointError`` in a few
lines that name the earlier checkpoint still intact (if any) and how to resume from it.
A save that runs out of disk space raises ``OSError(ENOSPC)`` saying so (the earlier
checkpoints are untouched).  No pickle is involved anywhere.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
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


def checkpoint_nbytes(state_tree: dict) -> int:
    """Bytes of the arrays of ``state_tree``: about the size of one checkpoint on disk."""
    return int(sum(np.asarray(a).nbytes if not hasattr(a, "nbytes") else int(a.nbytes)
                   for a in jax.tree_util.tree_leaves(state_tree)))


def _short(e: BaseException, limit: int = 160) -> str:
    """First line of an exception's message, at most ``limit`` characters (orbax and
    TensorStore put whole specs in their messages)."""
    first = (str(e).strip().splitlines() or [type(e).__name__])[0]
    return first if len(first) <= limit else first[: limit - 3] + "..."


def is_disk_full(e: BaseException) -> bool:
    """True when ``e`` or an exception it was raised from is a full disk (ENOSPC)."""
    seen = set()
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if isinstance(e, OSError) and e.errno == errno.ENOSPC:
            return True
        if "no space left on device" in str(e).lower():
            return True
        e = e.__cause__ or e.__context__
    return False


def save(directory: str | os.PathLike, step: int, state_tree: dict, meta: dict, max_to_keep: int | None = 2) -> Path:
    """Saves ``state_tree`` (arrays) and ``meta`` (JSON-able) as checkpoint ``step``; returns its path.

    Raises ``OSError(ENOSPC)`` naming the directory when the disk fills up (the partial step
    is removed; earlier checkpoints are intact)."""
    json.dumps(_to_jsonable(meta))  # fail before writing anything if meta is not JSON-able
    mngr = _manager(directory, max_to_keep)
    try:
        mngr.save(
            int(step),
            args=ocp.args.Composite(state=ocp.args.StandardSave(state_tree), meta=ocp.args.JsonSave(_to_jsonable(meta))),
            force=True,
        )
        mngr.wait_until_finished()
    except Exception as e:
        if not is_disk_full(e):
            raise
        _remove_partial(Path(directory).absolute(), int(step))
        prev = [s for s in mngr.all_steps() if s < int(step)] if hasattr(mngr, "all_steps") else []
        kept = f"checkpoint {max(prev)} is intact; " if prev else ""
        raise OSError(errno.ENOSPC, f"no space left on device while writing checkpoint {Path(directory)}/{int(step)} "
                      f"({shutil.disk_usage(Path(directory).absolute()).free / 2**20:.1f} MiB free); {kept}free some "
                      "space and rerun the same command to resume") from e
    finally:
        mngr.close()
    return Path(directory).absolute() / str(int(step))


def _remove_partial(directory: Path, step: int) -> None:
    """Deletes the temporary directories a failed save of ``step`` left behind (never a finished step)."""
    for p in directory.glob(f"{step}.orbax-checkpoint-tmp*"):
        shutil.rmtree(p, ignore_errors=True)


def latest_step(directory: str | os.PathLike) -> int | None:
    """Newest complete checkpoint step in ``directory`` (None if there is none)."""
    if not Path(directory).exists():
        return None
    mngr = _manager(directory, create=False)
    try:
        return mngr.latest_step()
    finally:
        mngr.close()


def all_steps(directory: str | os.PathLike) -> list[int]:
    """Every complete checkpoint step in ``directory``, ascending."""
    if not Path(directory).exists():
        return []
    mngr = _manager(directory, create=False)
    try:
        return sorted(int(s) for s in mngr.all_steps())
    finally:
        mngr.close()


def _read_meta(directory: Path, step: int) -> dict:
    path = directory.absolute() / str(step) / "meta" / "metadata"
    with open(path) as f:
        return json.load(f)


def restore_meta(directory: str | os.PathLike, step: int | None = None) -> dict:
    """Reads only the JSON metadata of a checkpoint (latest step by default)."""
    directory = Path(directory)
    step = latest_step(directory) if step is None else step
    if step is None:
        raise CheckpointError(f"no checkpoint found in {directory}")
    try:
        return _read_meta(directory, step)
    except (OSError, json.JSONDecodeError) as e:
        raise corrupt_error(directory, step, f"its metadata is unreadable: {_short(e)}") from e


def corrupt_error(directory: str | os.PathLike, step: int, reason: str, target: dict | None = None) -> CheckpointError:
    """A ``CheckpointError`` for a corrupt checkpoint ``step`` that names the newest earlier
    step that restores (into ``target`` when given, else whose metadata reads) and how to resume."""
    directory = Path(directory)
    intact = None
    for s in reversed([s for s in all_steps(directory) if s < step]):
        try:
            _read_meta(directory, s)
            if target is not None:
                _restore_state(directory, s, target)
            intact = s
            break
        except Exception:  # noqa: BLE001 - any failure means "not intact"
            continue
    bad = directory / str(step)
    if intact is not None:
        fix = (f"The earlier checkpoint {directory / str(intact)} is intact: delete {bad} and rerun the same "
               f"command to resume from step {intact}.")
    else:
        fix = f"No earlier checkpoint is intact: delete {directory} to start over."
    return CheckpointError(f"checkpoint {bad} is corrupt ({reason}).\n{fix}")


def _restore_state(directory: Path, step: int, abstract: dict) -> dict:
    _check_structure(directory / str(step) / "state", abstract)
    mngr = _manager(directory, create=False)
    try:
        return mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))["state"]
    finally:
        mngr.close()


class _Corrupt(Exception):
    """Internal: the checkpoint's files cannot be read (as opposed to a model mismatch)."""


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
    try:
        _check_structure(directory / str(step) / "state", abstract)
    except _Corrupt as e:
        raise corrupt_error(directory, step, str(e), abstract) from e.__cause__
    mngr = _manager(directory, create=False)
    try:
        out = mngr.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract)))
    except Exception as e:  # orbax raises many types for corrupt data
        raise corrupt_error(directory, step, f"its arrays cannot be read: {_short(e)}", abstract) from e
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
        raise _Corrupt(f"its tree metadata is unreadable: {_short(e)}") from e

    def flat(tree):
        leaves = jax.tree_util.tree_flatten_with_path(tree, is_leaf=lambda x: hasattr(x, "shape"))[0]
        return {"/".join(_key_name(k) for k in p): tuple(getattr(v, "shape", ())) for p, v in leaves}

    want, have = flat(abstract), flat(saved_tree) if saved_tree is not None else {}
    if not have:
        raise _Corrupt("its tree metadata is missing")
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
