"""Resumable (pre)training of one model into a run directory.

``pretrain`` trains normally or adversarially, evaluates clean test accuracy
after every epoch, and writes a checkpoint (orbax) plus ``history.json`` after
every epoch.  Calling it again on the same directory with the same settings
continues from the last complete epoch; with different settings it refuses
(``RunMismatchError``) instead of mixing two runs.  Every epoch's randomness is
derived from (seed, epoch), so an interrupted-and-resumed run gives the same
weights as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jsemi import checkpoint
from jsemi.models import get_model, init_model
from jsemi.train import TrainConfig, create_train_state, evaluate
from jsemi.training_modes import init_carry, make_train_step, train_epoch


class RunMismatchError(ValueError):
    """The run directory holds a run with different settings."""


@dataclasses.dataclass
class PretrainResult:
    """Outcome of ``pretrain``: the module, its variables, per-epoch history and the run directory."""

    model: Any
    variables: dict
    history: list[dict]
    run_dir: Path
    meta: dict


def write_json_atomic(path: str | os.PathLike, obj: Any) -> None:
    """Writes JSON to ``path`` via a temporary file and ``os.replace`` (never half-written)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def run_signature(model_name: str, model_kwargs: dict, dataset: str, config: TrainConfig, seed: int,
                  train_subset: int | None) -> dict:
    """The settings that define a run; a resumed run must have the same signature."""
    return {
        "model": model_name,
        "model_kwargs": dict(model_kwargs or {}),
        "dataset": dataset,
        "config": config.to_dict(),
        "seed": int(seed),
        "train_subset": train_subset,
    }


def _state_tree(state) -> dict:
    tree = {"params": state.params, "batch_stats": state.batch_stats, "opt_state": state.opt_state, "step": state.step}
    if state.carry is not None:  # the mode's per-run state (ATTA's perturbations): resume continues exactly
        tree["carry"] = state.carry
    return tree


def load_trained(run_dir: str | os.PathLike) -> tuple[Any, dict, dict]:
    """Restores (model, variables, meta) from the latest checkpoint of a run directory."""
    ckpt_dir = Path(run_dir) / "ckpt"
    meta = checkpoint.restore_meta(ckpt_dir)
    sig = meta.get("signature")
    if not sig:
        raise checkpoint.CheckpointError(f"{ckpt_dir} has no run signature in its metadata")
    model = get_model(sig["model"], num_classes=meta["num_classes"], **sig["model_kwargs"])
    variables = init_model(model, jax.random.PRNGKey(0), tuple(meta["input_shape"]))
    config = TrainConfig.from_dict(sig["config"])
    state = create_train_state(variables, config, max(1, meta["steps_per_epoch"]))
    if "train_examples" in meta:
        state = state.replace(carry=init_carry(config, meta["train_examples"], tuple(meta["input_shape"])))
    tree, meta = checkpoint.restore(ckpt_dir, _state_tree(state))
    variables = {"params": tree["params"]}
    if tree["batch_stats"]:
        variables["batch_stats"] = tree["batch_stats"]
    return model, variables, meta


def pretrain(
    run_dir: str | os.PathLike,
    model_name: str,
    train_images: np.ndarray,
    train_labels: np.ndarray,
    test_images: np.ndarray,
    test_labels: np.ndarray,
    config: TrainConfig,
    *,
    num_classes: int,
    dataset: str = "custom",
    seed: int = 0,
    model_kwargs: dict | None = None,
    train_subset: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    stop_after_epochs: int | None = None,
    eval_batch_size: int = 1000,
) -> PretrainResult:
    """Trains ``model_name`` for ``config.epochs`` epochs into ``run_dir`` (resumable).

    ``stop_after_epochs`` ends this call after that many new epochs (as an
    interruption would); a later call resumes.  Returns a ``PretrainResult``.
    """
    run_dir = Path(run_dir)
    ckpt_dir = run_dir / "ckpt"
    model_kwargs = dict(model_kwargs or {})
    model = get_model(model_name, num_classes=num_classes, **model_kwargs)
    input_shape = tuple(int(s) for s in train_images.shape[1:])
    key = jax.random.PRNGKey(seed)
    variables = init_model(model, jax.random.fold_in(key, 0), input_shape)
    steps_per_epoch = train_images.shape[0] // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {train_images.shape[0]} training images")
    state = create_train_state(variables, config, steps_per_epoch)
    state = state.replace(carry=init_carry(config, train_images.shape[0], input_shape))  # None for most modes
    signature = run_signature(model_name, model_kwargs, dataset, config, seed, train_subset)

    start_epoch, history = 0, []
    if checkpoint.latest_step(ckpt_dir) is not None:
        meta = checkpoint.restore_meta(ckpt_dir)
        if meta.get("signature") != json.loads(json.dumps(signature)):
            raise RunMismatchError(
                f"{run_dir} holds a run with other settings ({meta.get('signature')}); "
                "use another output directory or delete it"
            )
        tree, meta = checkpoint.restore(ckpt_dir, _state_tree(state))
        state = state.replace(**tree)
        start_epoch, history = int(meta["epoch"]), list(meta["history"])
        log(f"resuming {run_dir} from epoch {start_epoch}/{config.epochs}")

    step_fn = make_train_step(model, config)
    if jax.device_count() > 1:  # data parallel over every device (TPU cores, GPUs, hosts)
        from jsemi.sharding import shard_train_step

        step_fn = shard_train_step(step_fn)
    done_now = 0
    for epoch in range(start_epoch, config.epochs):
        if stop_after_epochs is not None and done_now >= stop_after_epochs:
            break
        t0 = time.perf_counter()
        state, m = train_epoch(
            state, step_fn, train_images, train_labels, jax.random.fold_in(key, 1000 + epoch),
            batch_size=config.batch_size, seed=seed, epoch=epoch, progress=progress,
            desc=f"{config.mode} epoch {epoch + 1}/{config.epochs}",
        )
        ev = evaluate(model, state.variables, test_images, test_labels, key, batch_size=eval_batch_size)
        rec = {"epoch": epoch + 1, "train_loss": m["loss"], "train_acc": m["acc"], "test_acc": ev["acc"],
               "seconds": time.perf_counter() - t0}
        history.append(rec)
        log(f"[{model_name}/{config.mode}] epoch {epoch + 1}/{config.epochs}: loss {m['loss']:.4f} "
            f"train acc {m['acc']:.4f} test acc {ev['acc']:.4f} ({rec['seconds']:.1f} s)")
        meta = {"signature": signature, "epoch": epoch + 1, "history": history, "num_classes": num_classes,
                "input_shape": list(input_shape), "steps_per_epoch": steps_per_epoch,
                "train_examples": int(train_images.shape[0])}
        checkpoint.save(ckpt_dir, epoch + 1, _state_tree(state), meta)
        write_json_atomic(run_dir / "history.json", history)
        done_now += 1
    meta = {"signature": signature, "epoch": len(history), "history": history, "num_classes": num_classes,
            "input_shape": list(input_shape), "steps_per_epoch": steps_per_epoch,
                "train_examples": int(train_images.shape[0])}
    return PretrainResult(model=model, variables=state.variables, history=history, run_dir=run_dir, meta=meta)
