"""Resumable (pre)training of one model into a run directory.

``pretrain`` trains normally or adversarially, evaluates clean test accuracy
after every epoch, and writes a checkpoint (orbax) plus ``history.json`` after
every epoch, with the curves in ``metrics/`` (TensorBoard and CSV, ``jsemi.metrics``).
Calling it again on the same directory with the same settings
continues from the last complete epoch; with different settings it refuses
(``RunMismatchError``, naming the differing settings) instead of mixing two runs;
only ``epochs`` may grow, which extends a (finished) run.  Every epoch's randomness is
derived from (seed, epoch), so an interrupted-and-resumed run gives the same
weights as an uninterrupted one.

Before any training the inputs are validated, the run directory is checked (not a file,
writable, space for one checkpoint) and locked (``jsemi.runs.lock_run_dir``: one writer
per run directory; a second one fails at once naming the holder's PID).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import json
import os
import time
from pathlib import Path
from typing import Any, Callable

import jax
import numpy as np

from jsemi import checkpoint, metrics
from jsemi.models import get_model, init_model
from jsemi.runs import check_output_location, describe_diff, diff_settings, lock_run_dir, write_json_atomic
from jsemi.train import TrainConfig, create_train_state, evaluate
from jsemi.training_modes import init_carry, make_train_step, train_epoch
from jsemi.validation import check_image_dataset, check_input_shape, check_positive_int


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
    if not Path(run_dir).is_dir():
        raise FileNotFoundError(f"run directory {run_dir} does not exist (write one with `jsemi train --out {run_dir}`)")
    if checkpoint.latest_step(ckpt_dir) is None:
        raise checkpoint.CheckpointError(f"{run_dir} holds no checkpoint: it is not a run directory written by "
                                         "`jsemi train`, or its first epoch has not finished")
    meta = checkpoint.restore_meta(ckpt_dir)
    sig = meta.get("signature")
    if not sig:
        raise checkpoint.CheckpointError(f"{ckpt_dir} has no run signature in its metadata")
    # JSON has no tuples: options such as widths come back as lists; a model is a hashable static jit argument
    model_kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in sig["model_kwargs"].items()}
    model = get_model(sig["model"], num_classes=meta["num_classes"], **model_kwargs)
    config = TrainConfig.from_dict(sig["config"])
    input_shape = tuple(meta["input_shape"])

    def target(k):  # the state's structure and shapes only: traced, never compiled or run
        variables = dict(model.init(k, jax.numpy.zeros((1, *input_shape)), train=False))
        variables.pop("intermediates", None)
        state = create_train_state(variables, config, max(1, meta["steps_per_epoch"]))
        if "train_examples" in meta:
            state = state.replace(carry=init_carry(config, meta["train_examples"], input_shape))
        return _state_tree(state)

    tree, meta = checkpoint.restore(ckpt_dir, jax.eval_shape(target, jax.random.PRNGKey(0)))
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
    check_image_dataset(train_images, train_labels, num_classes, "train_images", "train_labels")
    check_image_dataset(test_images, test_labels, num_classes, "test_images", "test_labels")
    check_input_shape(test_images.shape, train_images.shape[1:], what="the model (from the training images)",
                      data="the test")
    check_positive_int(eval_batch_size, "eval_batch_size")
    if stop_after_epochs is not None and (not isinstance(stop_after_epochs, int) or stop_after_epochs < 0):
        raise ValueError(f"stop_after_epochs must be an int >= 0, got {stop_after_epochs!r}")
    model_kwargs = dict(model_kwargs or {})
    model = get_model(model_name, num_classes=num_classes, **model_kwargs)
    input_shape = tuple(int(s) for s in train_images.shape[1:])
    key = jax.random.PRNGKey(seed)
    steps_per_epoch = train_images.shape[0] // config.batch_size
    if steps_per_epoch < 1:
        raise ValueError(f"batch_size {config.batch_size} exceeds the {train_images.shape[0]} training images")
    signature = run_signature(model_name, model_kwargs, dataset, config, seed, train_subset)
    # before any work (even compiling the model): the output location, the lock, the settings
    check_output_location(run_dir, what="run directory")
    # one writer per run directory; on a multi-process (multi-host) run, process 0 holds it for all
    lock = lock_run_dir(run_dir) if jax.process_index() == 0 else contextlib.nullcontext()
    with lock:
        if checkpoint.latest_step(ckpt_dir) is not None:
            check_resumable(run_dir, checkpoint.restore_meta(ckpt_dir).get("signature"), signature)
        variables = init_model(model, jax.random.fold_in(key, 0), input_shape)
        state = create_train_state(variables, config, steps_per_epoch)
        state = state.replace(carry=init_carry(config, train_images.shape[0], input_shape))  # None for most modes
        check_output_location(run_dir, checkpoint.checkpoint_nbytes(_state_tree(state)) + (1 << 20),
                              what="run directory")  # space for one checkpoint
        return _pretrain_locked(run_dir, ckpt_dir, model, model_name, state, signature, config, key, seed, input_shape,
                                steps_per_epoch, num_classes, train_images, train_labels, test_images, test_labels,
                                progress=progress, log=log, stop_after_epochs=stop_after_epochs,
                                eval_batch_size=eval_batch_size)


def check_resumable(run_dir: Path, saved: dict, signature: dict) -> tuple[int, int] | None:
    """Compares a saved run signature with this call's: raises ``RunMismatchError`` naming every
    differing setting, except a larger ``config.epochs`` (an extension: returns (old, new))."""
    new = json.loads(json.dumps(signature))
    diff = diff_settings(saved or {}, new)
    others = [d for d in diff if d[0] != "config.epochs"]
    if others:
        raise RunMismatchError(
            f"{run_dir} holds a run with other settings ({describe_diff(others)}).\nRerun with the run's settings "
            "to resume it (only --epochs may grow), or use another output directory to start a new run."
        )
    if not diff:
        return None
    old_e, new_e = int(saved["config"]["epochs"]), int(new["config"]["epochs"])
    if new_e < old_e:
        raise RunMismatchError(f"{run_dir} holds a run of {old_e} epochs; epochs may only grow (got {new_e}). "
                               f"Rerun with --epochs {old_e} or more, or use another output directory.")
    return old_e, new_e


def _pretrain_locked(run_dir, ckpt_dir, model, model_name, state, signature, config, key, seed, input_shape,
                     steps_per_epoch, num_classes, train_images, train_labels, test_images, test_labels, *,
                     progress, log, stop_after_epochs, eval_batch_size) -> PretrainResult:
    start_epoch, history, extensions = 0, [], []
    if checkpoint.latest_step(ckpt_dir) is not None:
        meta = checkpoint.restore_meta(ckpt_dir)
        ext = check_resumable(run_dir, meta.get("signature"), signature)
        tree, meta = checkpoint.restore(ckpt_dir, _state_tree(state))
        state = state.replace(**tree)
        start_epoch, history = int(meta["epoch"]), list(meta["history"])
        extensions = list(meta.get("extensions", []))
        if ext is not None:
            extensions.append({"from_epochs": ext[0], "to_epochs": ext[1], "at_epoch": start_epoch})
            note = "" if config.lr_schedule == "constant" else (
                f"; the {config.lr_schedule!r} learning-rate schedule now spans {ext[1]} epochs, so epochs "
                f"1-{start_epoch} followed the {ext[0]}-epoch schedule")
            log(f"extending {run_dir} from {ext[0]} to {ext[1]} epochs{note}")
        log(f"resuming {run_dir} from epoch {start_epoch}/{config.epochs}")

    step_fn = make_train_step(model, config)
    if jax.device_count() > 1:  # data parallel over every device (TPU cores, GPUs, hosts)
        from jsemi.sharding import shard_train_step

        step_fn = shard_train_step(step_fn)

    def meta_now():
        return {"signature": signature, "epoch": len(history), "history": history, "num_classes": num_classes,
                "input_shape": list(input_shape), "steps_per_epoch": steps_per_epoch, "extensions": extensions,
                "train_examples": int(train_images.shape[0])}

    done_now = 0
    adversarial = config.mode != "standard"
    # TensorBoard + metrics.csv curves (jsemi.metrics), written by process 0 only (None on the others)
    curves = metrics.MetricWriter(run_dir / metrics.METRICS_DIR, fresh=True) if jax.process_index() == 0 else None
    metrics.log_train_history(curves, history, adversarial=adversarial)  # epochs of a resumed run
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
        try:
            checkpoint.save(ckpt_dir, epoch + 1, _state_tree(state), meta_now())
            write_json_atomic(run_dir / "history.json", history)
        except OSError as e:
            if e.errno != errno.ENOSPC:
                raise
            last = checkpoint.latest_step(ckpt_dir)
            kept = f"the checkpoint of epoch {last} is intact" if last else "no epoch is saved yet"
            raise OSError(errno.ENOSPC, f"disk full: no space left on device in {run_dir} while saving epoch "
                          f"{epoch + 1}; {kept}. Free some space and rerun the same command to resume.") from e
        metrics.log_train_history(curves, [rec], adversarial=adversarial)
        done_now += 1
    if curves is not None:
        curves.close()
    return PretrainResult(model=model, variables=state.variables, history=history, run_dir=run_dir, meta=meta_now())
