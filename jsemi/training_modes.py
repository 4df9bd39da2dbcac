"""The table of training modes, and the entry points that use it.

One ``TrainingMode`` per name of ``jsemi.train.TRAIN_MODES``, listed in ``MODES`` (read-only):
"standard" and "pgd" from ``jsemi.train``, "trades", "atta" and "atta_trades" from
``jsemi.robust_training``.  This module imports both; neither imports it, and nothing is
registered at import time.  Usage::

    state = train.create_train_state(variables, config, steps_per_epoch)
    step = make_train_step(model, config)             # jitted, compiled once per shapes
    for epoch in range(config.epochs):
        state, metrics = train_epoch(state, step, images, labels, key, batch_size=..., seed=..., epoch=epoch)

``train_epoch`` runs the epoch loop of ``state.config.mode``; ATTA's loop keeps the
per-example perturbations in ``state.carry`` (checkpoint the state with its carry, see
``init_carry``, and a resumed run continues exactly).
"""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable

import flax.linen as nn
import jax
import numpy as np

from jsemi import robust_training, train


@dataclasses.dataclass(frozen=True)
class TrainingMode:
    """One training mode.

    ``loss_builder``: ``(model, config, forward, eval_vars, x, y, key, extra) -> loss_fn``
    (see ``jsemi.train.build_train_step``).  ``self_augmenting``: the builder augments the raw
    batch itself.  ``epoch_runner``: the epoch loop (``jsemi.train.run_epoch``'s signature).
    ``init_carry``: ``(config, num_examples, image_shape) -> carry`` the empty per-run state
    the epoch runner keeps in ``TrainState.carry`` (None: the mode carries nothing).
    """

    name: str
    loss_builder: Callable
    self_augmenting: bool = False
    epoch_runner: Callable = train.run_epoch
    init_carry: Callable | None = None


MODES: types.MappingProxyType = types.MappingProxyType({m.name: m for m in (
    TrainingMode("standard", train.standard_loss),
    TrainingMode("pgd", train.pgd_loss),
    TrainingMode("trades", robust_training.trades_loss),
    TrainingMode("atta", robust_training.atta_loss, self_augmenting=True, epoch_runner=robust_training.atta_epoch,
                 init_carry=robust_training.init_perturbations),
    TrainingMode("atta_trades", robust_training.atta_trades_loss, self_augmenting=True,
                 epoch_runner=robust_training.atta_epoch, init_carry=robust_training.init_perturbations),
)})


def get_mode(name: str) -> TrainingMode:
    """The ``TrainingMode`` called ``name``; ValueError naming the known modes otherwise."""
    if name not in MODES:
        raise ValueError(f"unknown training mode {name!r}; choose from {tuple(MODES)}")
    return MODES[name]


def make_train_step(model: nn.Module, config: train.TrainConfig) -> Callable:
    """Jitted ``step(state, x, y, key[, extra])`` of ``config.mode`` (``jsemi.train.build_train_step``)."""
    mode = get_mode(config.mode)
    return train.build_train_step(model, config, mode.loss_builder, self_augmenting=mode.self_augmenting)


def train_epoch(state: train.TrainState, step_fn: Callable, images: np.ndarray, labels: np.ndarray, key: jax.Array,
                *, batch_size: int, seed: int, epoch: int, progress: bool = False,
                desc: str = "train") -> tuple[train.TrainState, dict]:
    """One pass over the data with the epoch loop of ``state.config.mode``.

    Batches: ``jsemi.train.batch_indices(N, batch_size, seed, epoch)`` (full, shuffled), batch
    i with key ``fold_in(key, i)``.  Returns the new state (with its updated ``carry``) and
    {"loss", "acc": means over batches, "seconds"}.  ``step_fn`` is ``make_train_step``'s step
    (or a sharded one) for the same config.
    """
    if state.config is None:
        raise ValueError("train_epoch: the state has no config; build it with jsemi.train.create_train_state")
    return get_mode(state.config.mode).epoch_runner(
        state, step_fn, images, labels, key, batch_size=batch_size, seed=seed, epoch=epoch, progress=progress,
        desc=desc)


def init_carry(config: train.TrainConfig, num_examples: int, image_shape: tuple[int, ...]) -> Any:
    """The empty carry of ``config.mode`` for a training set of ``num_examples`` images of
    ``image_shape`` (None for modes that carry nothing): the restore target of a checkpoint
    that saved ``state.carry``."""
    mode = get_mode(config.mode)
    return None if mode.init_carry is None else mode.init_carry(config, num_examples, image_shape)
