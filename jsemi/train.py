"""Jitted training: standard and adversarial steps with a frozen part, and batched evaluation.

This module holds the step machinery (``build_train_step``, ``run_epoch``) and the
"standard" and "pgd" losses; TRADES and ATTA live in ``jsemi.robust_training`` and the
table of modes, with the public ``make_train_step`` / ``train_epoch``, in
``jsemi.training_modes`` (which imports both; neither imports it).

Design:

- ``TrainState`` holds the full variables (``params`` and ``batch_stats``) and an
  optax transformation built by ``make_optimizer``: ``optax.multi_transform``
  sends trainable leaves to the base optimizer (SGD/Adam with weight decay) and
  frozen leaves to ``optax.set_to_zero`` (no update, no weight decay, no
  optimizer state).
- The loss is differentiated only with respect to the trainable parameters
  (frozen ones are closed over as constants), so the parameter backward pass
  stops at the fa/fb boundary.  The adversarial example is still computed with
  the input gradient through the whole network.
- Frozen layers run their BatchNorm on running statistics (``frozen=`` argument
  of every jsemi model), and after every step the frozen leaves of both
  collections are copied back from the previous state, so they stay
  bit-identical by construction.
- Attacks inside training use the model in inference mode (running BatchNorm
  statistics), like every attack in jsemi.

Units: learning rates per step, ``eps`` and ``attack_step_size`` in pixel units
of [0, 1] images.
"""

from __future__ import annotations

import dataclasses
import functools
import time
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax import struct

from jsemi import partition
from jsemi.validation import check_eps

# Every training mode's name; ``jsemi.training_modes.MODES`` has exactly one entry per name.
TRAIN_MODES = ("standard", "pgd", "trades", "atta", "atta_trades")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Training hyperparameters (defaults: the paper's CIFAR settings, section 6 of the notes).

    ``mode``: one of ``TRAIN_MODES`` ("pgd": PGD adversarial training; "trades", "atta",
    "atta_trades": see ``jsemi.robust_training``).  ``lr_schedule``:
    "step" (x0.1 at 1/3 and 2/3 of training, i.e. epochs 40 and 80 of 120),
    "cosine" or "constant".  ``optimizer``: "sgd" (momentum), "adam" or "adamw".
    """

    mode: str = "standard"
    optimizer: str = "sgd"
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 5e-4
    lr_schedule: str = "step"
    epochs: int = 120
    batch_size: int = 512
    eps: float = 8 / 255
    attack_steps: int = 10
    attack_step_size: float = 2 / 255
    attack_norm: str = "linf"
    augment: bool = True
    flip: bool = True
    trades_beta: float = 6.0
    atta_steps: int = 3
    atta_reset_every: int = 10

    def __post_init__(self):
        if self.mode not in TRAIN_MODES:
            raise ValueError(f"unknown training mode {self.mode!r}; choose from {TRAIN_MODES}")
        if self.optimizer not in ("sgd", "adam", "adamw"):
            raise ValueError(f"unknown optimizer {self.optimizer!r}; choose sgd, adam or adamw")
        if self.lr_schedule not in ("step", "cosine", "constant"):
            raise ValueError(f"unknown lr_schedule {self.lr_schedule!r}; choose step, cosine or constant")
        if self.attack_norm not in ("linf", "l2"):
            raise ValueError(f"attack_norm must be 'linf' or 'l2', got {self.attack_norm!r}")
        check_eps(self.eps, "eps")
        check_eps(self.attack_step_size, "attack_step_size")
        if self.lr <= 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        for name in ("epochs", "batch_size", "attack_steps"):
            v = getattr(self, name)
            if not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


# Named presets for ``TrainConfig``: "paper" is section 6 of the notes (CIFAR scale);
# "cpu" is the Fashion-MNIST CNN setting of ``jsemi train --preset cpu`` (Adam, eps 0.1, PGD-3), chosen
# because SGD at lr 0.01 needs far more epochs than a 2-core CPU allows (the demo's own experiment,
# ``jsemi.experiments.configs.CPU``, trains with PGD-2 and fewer epochs).
PRESETS: dict[str, dict] = {
    "paper": {},
    "cpu": dict(optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant", epochs=3, batch_size=128,
                eps=0.1, attack_steps=3, attack_step_size=0.05, augment=False, flip=False),
}


def config_from_preset(preset: str, **overrides) -> TrainConfig:
    """``TrainConfig`` of a named preset with ``overrides`` (None values are ignored)."""
    if preset not in PRESETS:
        raise ValueError(f"unknown preset {preset!r}; choose from {sorted(PRESETS)}")
    kw = dict(PRESETS[preset])
    kw.update({k: v for k, v in overrides.items() if v is not None})
    return TrainConfig(**kw)


class TrainState(struct.PyTreeNode):
    """Full variables plus optimizer state; ``trainable`` is the static set of trainable layers.

    ``config``: the ``TrainConfig`` the state was built for and ``steps_per_epoch`` (static;
    with ``trainable`` they define the optimizer ``tx``, rebuilt on demand, so the static part
    of a state compares by value and equal settings reuse one compiled step across runs;
    ``jsemi.training_modes.train_epoch`` runs the epoch loop of ``config.mode``).
    ``carry``: the mode's state carried across epochs outside the jitted step (None for
    most modes; ATTA's per-example perturbations, see ``jsemi.robust_training``); epoch
    runners keep it up to date and checkpoints save it.
    """

    step: jnp.ndarray
    params: Any
    batch_stats: Any
    opt_state: Any
    trainable: tuple[int, ...] = struct.field(pytree_node=False)
    n_layers: int = struct.field(pytree_node=False)
    config: TrainConfig = struct.field(pytree_node=False)
    steps_per_epoch: int = struct.field(pytree_node=False)
    carry: Any = None

    @property
    def tx(self) -> optax.GradientTransformation:
        """The optimizer: ``make_optimizer`` on the trainable/frozen labels of ``params``."""
        return make_optimizer(self.config, _optimizer_labels(self.params, self.trainable), self.steps_per_epoch)

    @property
    def variables(self) -> dict:
        v = {"params": self.params}
        if self.batch_stats:
            v["batch_stats"] = self.batch_stats
        return v

    @property
    def frozen(self) -> tuple[int, ...]:
        return tuple(j for j in range(1, self.n_layers + 1) if j not in self.trainable)


def lr_schedule(config: TrainConfig, steps_per_epoch: int) -> optax.Schedule:
    """Learning rate per step for ``config.epochs`` epochs of ``steps_per_epoch`` steps."""
    total = max(1, config.epochs * steps_per_epoch)
    if config.lr_schedule == "constant":
        return optax.constant_schedule(config.lr)
    if config.lr_schedule == "cosine":
        return optax.cosine_decay_schedule(config.lr, total)
    b1, b2 = round(total / 3), round(2 * total / 3)
    return optax.piecewise_constant_schedule(config.lr, {b1: 0.1, b2: 0.1})


def make_optimizer(config: TrainConfig, labels: Any, steps_per_epoch: int) -> optax.GradientTransformation:
    """Optax transform: base optimizer on leaves labelled 'train', ``set_to_zero`` on 'frozen'.

    Weight decay (L2 added to the gradient for SGD/Adam, decoupled for AdamW) applies to
    the trainable leaves only.
    """
    sched = lr_schedule(config, steps_per_epoch)
    if config.optimizer == "sgd":
        base = optax.chain(
            optax.add_decayed_weights(config.weight_decay),
            optax.sgd(sched, momentum=config.momentum),
        )
    elif config.optimizer == "adam":
        base = optax.chain(optax.add_decayed_weights(config.weight_decay), optax.adam(sched))
    else:
        base = optax.adamw(sched, weight_decay=config.weight_decay)
    return optax.multi_transform({"train": base, "frozen": optax.set_to_zero()}, labels)


def create_train_state(
    variables: dict,
    config: TrainConfig,
    steps_per_epoch: int,
    trainable_layers: Iterable[int] | None = None,
) -> TrainState:
    """Builds a ``TrainState``; ``trainable_layers`` (1-based weight-layer indices) default to all.

    Raises ValueError for unknown layer indices or an empty trainable set.
    """
    params = variables["params"]
    n = max(partition.layer_indices(params))
    if trainable_layers is None:
        trainable = tuple(range(1, n + 1))
    else:
        trainable = tuple(sorted(set(int(j) for j in trainable_layers)))
        if not trainable:
            raise ValueError("trainable_layers is empty: nothing would be trained")
        partition.layer_mask(variables, trainable)  # validates the indices
    params = partition._as_dict(params)
    tx = make_optimizer(config, _optimizer_labels(params, trainable), steps_per_epoch)
    return TrainState(
        step=jnp.zeros((), jnp.int32),
        params=params,
        batch_stats=partition._as_dict(variables.get("batch_stats", {})),
        opt_state=tx.init(params),
        trainable=trainable,
        n_layers=n,
        config=config,
        steps_per_epoch=int(steps_per_epoch),
    )


def _optimizer_labels(params: Any, trainable: tuple[int, ...]) -> Any:
    """'train' / 'frozen' per leaf of ``params`` (``make_optimizer``'s labels)."""
    labels = partition.mask_by(params, lambda p, _: partition.layer_index(p) in trainable)
    return jax.tree_util.tree_map(lambda t: "train" if t else "frozen", labels)


def _split_trainable(tree: Any, trainable: tuple[int, ...]) -> tuple[dict, dict]:
    train, frozen = {}, {}
    for p, leaf in partition._leaves_with_paths(tree):
        partition._insert(train if partition.layer_index(p) in trainable else frozen, p, leaf)
    return train, frozen


def to_unit_float(x: jnp.ndarray) -> jnp.ndarray:
    """uint8 images -> float32 in [0, 1]; floating images are cast to float32 unchanged."""
    if x.dtype == jnp.uint8:
        return x.astype(jnp.float32) / 255.0
    return x.astype(jnp.float32)


def cross_entropy(logits: jnp.ndarray, y: jnp.ndarray) -> jnp.ndarray:
    """Mean softmax cross-entropy (nats) of integer labels."""
    return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), y).mean()


def config_threat(config: TrainConfig):
    """The training attack's threat model: ``config.attack_norm`` ball of radius ``config.eps``."""
    from jsemi.attacks.threat import make_threat

    return make_threat(config.attack_norm, config.eps)


def adversarial_inputs(model: nn.Module, variables: dict, x, y, key, config: TrainConfig):
    """PGD examples against the model in inference mode (``config.attack_steps`` steps, random start)."""
    from jsemi.attacks import pgd

    def logits_fn(z):
        return model.apply(variables, z, train=False)

    return pgd(
        logits_fn, x, y, key, config_threat(config),
        steps=config.attack_steps, step_size=config.attack_step_size, random_start=True, keep_best=False,
    )


def build_train_step(model: nn.Module, config: TrainConfig, loss_builder: Callable, *,
                     self_augmenting: bool = False) -> Callable:
    """Jitted ``step(state, x, y, key, extra=None) -> (state, metrics[, new_extra])`` of one mode.

    ``loss_builder(model, config, forward, eval_vars, x, y, key, extra)`` returns
    ``loss_fn(p_train) -> (loss, (logits, new_batch_stats, new_extra))`` (see ``standard_loss``).
    ``self_augmenting``: the step skips its own augmentation and the builder gets the raw
    batch (it augments itself when ``config.augment``).  ``x`` may be uint8 or float NHWC;
    metrics are the mean loss (nats) and the accuracy on the inputs actually trained on
    (adversarial ones in adversarial modes).  ``new_extra`` is returned when ``extra`` is
    given (ATTA's perturbations of the batch).  ``state.carry`` passes through untouched.
    The step is one module-level jitted function with (model, config, loss_builder,
    self_augmenting) static: equal settings (a resumed run, the next trial, another test)
    reuse its compiled program from jit's cache.
    Use ``jsemi.training_modes.make_train_step``, which picks the builder of ``config.mode``.
    """
    return functools.partial(_train_step, model=model, config=config, loss_builder=loss_builder,
                             self_augmenting=bool(self_augmenting))


def _step(state: TrainState, x, y, key, extra=None, *, model: nn.Module, config: TrainConfig,
          loss_builder: Callable, self_augmenting: bool):
    """``build_train_step``'s step, un-jitted."""
    x = to_unit_float(x)
    k_aug, k_adv = jax.random.split(key)
    if config.augment and not self_augmenting:
        from jsemi.data import augment

        x = augment(k_aug, x, flip=config.flip)
    frozen = state.frozen
    p_train, p_frozen = _split_trainable(state.params, state.trainable)
    s_train, s_frozen = _split_trainable(state.batch_stats, state.trainable)

    def forward(p_tr, xin, train=True):
        variables = {"params": partition.merge(p_tr, p_frozen)}
        if state.batch_stats:
            variables["batch_stats"] = state.batch_stats
            if train:
                logits, upd = model.apply(variables, xin, train=True, frozen=frozen, mutable=["batch_stats"])
                return logits, upd["batch_stats"]
        return model.apply(variables, xin, train=False), state.batch_stats

    eval_vars = state.variables
    loss_and_aux = loss_builder(model, config, forward, eval_vars, x, y, k_adv, extra)
    (loss, (logits, new_stats, new_extra)), grads = jax.value_and_grad(loss_and_aux, has_aux=True)(p_train)
    # Frozen leaves get zero gradients; multi_transform maps them to set_to_zero.
    full_grads = partition.merge(grads, jax.tree_util.tree_map(jnp.zeros_like, p_frozen)) if p_frozen else grads
    updates, opt_state = state.tx.update(full_grads, state.opt_state, state.params)
    new_params = optax.apply_updates(state.params, updates)
    np_train, _ = _split_trainable(new_params, state.trainable)
    params = partition.merge(np_train, p_frozen) if p_frozen else np_train
    if state.batch_stats:
        ns_train, _ = _split_trainable(new_stats, state.trainable)
        batch_stats = partition.merge(ns_train, s_frozen) if s_frozen else ns_train
    else:
        batch_stats = state.batch_stats
    acc = jnp.mean(jnp.argmax(logits, -1) == y)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats, opt_state=opt_state)
    metrics = {"loss": loss, "acc": acc}
    if extra is not None:
        return new_state, metrics, new_extra
    return new_state, metrics


_train_step = jax.jit(_step, static_argnames=("model", "config", "loss_builder", "self_augmenting"))


def standard_loss(model, config, forward, eval_vars, x, y, key, extra):
    """Loss builder of mode "standard": mean cross-entropy (nats) on the (augmented) batch."""

    def loss_fn(p_tr):
        logits, stats = forward(p_tr, x)
        return cross_entropy(logits, y), (logits, stats, extra)

    return loss_fn


def pgd_loss(model, config, forward, eval_vars, x, y, key, extra):
    """Loss builder of mode "pgd": cross-entropy on PGD examples (``adversarial_inputs``)."""
    x_adv = jax.lax.stop_gradient(adversarial_inputs(model, eval_vars, x, y, key, config))

    def loss_fn(p_tr):
        logits, stats = forward(p_tr, x_adv)
        return cross_entropy(logits, y), (logits, stats, extra)

    return loss_fn


# ----------------------------------------------------------------------------- evaluation


def evaluate(
    model: nn.Module,
    variables: dict,
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    attack: Callable | None = None,
    batch_size: int = 500,
    progress: bool = False,
    desc: str = "eval",
    mesh=None,
) -> dict:
    """Clean (and attacked, if ``attack(logits_fn, x, y, key)`` is given) accuracy in [0, 1]
    (on ``mesh``, a ``jsemi.sharding`` mesh, when given).

    ``jsemi.evaluation.evaluate`` of ``jsemi.models.bind(model, variables)``: the weights are
    jit arguments, so every epoch of a run reuses one compiled program.  Returns {'n', 'acc',
    'adv_acc' (argmax f(x_adv) == y; None without attack), 'robust_acc'}.
    """
    from jsemi.evaluation import evaluate as _evaluate
    from jsemi.models import bind

    return _evaluate(bind(model, variables), images, labels, key, attack, batch_size=batch_size, mesh=mesh,
                     progress=progress, desc=desc)


# ----------------------------------------------------------------------------- epoch loop


def batch_indices(n: int, batch_size: int, seed: int, epoch: int) -> list[np.ndarray]:
    """Deterministic shuffled full batches of indices for (seed, epoch); the remainder is dropped."""
    from jsemi.data import epoch_order

    perm = epoch_order(n, seed=seed, epoch=epoch)
    nb = n // batch_size
    if nb == 0:
        raise ValueError(f"batch_size {batch_size} exceeds the {n} training examples")
    return [perm[i * batch_size:(i + 1) * batch_size] for i in range(nb)]


def run_epoch(
    state: TrainState,
    step_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    progress: bool = False,
    desc: str = "train",
) -> tuple[TrainState, dict]:
    """Epoch loop of the modes without carried state: one pass over shuffled full batches
    (``batch_indices``), batch i with key ``fold_in(key, i)``.  Returns the new state and mean
    loss / accuracy / seconds.  Use ``jsemi.training_modes.train_epoch``, which picks the
    loop of ``state.config.mode`` (ATTA has its own)."""
    idx = batch_indices(images.shape[0], batch_size, seed, epoch)
    one = lambda st, i, ix: step_fn(st, images[ix], labels[ix], jax.random.fold_in(key, i))
    return run_batches(state, idx, one, progress=progress, desc=desc)


def run_batches(state, idx: Sequence[np.ndarray], one_batch: Callable, *, progress: bool = False,
                desc: str = "train") -> tuple[Any, dict]:
    """Threads ``state`` through ``one_batch(state, i, ix) -> (state, metrics)`` for each batch ``ix``.

    Returns the final state and {"loss", "acc": means over batches of the step's metrics,
    "seconds": wall time}; device values are fetched once, at the end.  With ``progress``
    a tqdm bar shows the batches and, every 10th, the current loss and accuracy.
    """
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=len(idx), desc=desc, leave=False)
    t0 = time.perf_counter()
    losses, accs = [], []
    for i, ix in enumerate(idx):
        state, m = one_batch(state, i, ix)
        losses.append(m["loss"])
        accs.append(m["acc"])
        if bar is not None:
            bar.update(1)
            if i % 10 == 0:
                bar.set_postfix(loss=f"{float(m['loss']):.3f}", acc=f"{float(m['acc']):.3f}")
    if bar is not None:
        bar.close()
    loss = float(np.mean(jax.device_get(losses)))
    acc = float(np.mean(jax.device_get(accs)))
    return state, {"loss": loss, "acc": acc, "seconds": time.perf_counter() - t0}


def frozen_leaves_equal(before: dict, after: dict, layers: Sequence[int]) -> bool:
    """True when every leaf of the given layers is bit-identical in both variable trees."""
    a = partition.select(before, layers)
    b = partition.select(after, layers)
    la, lb = jax.tree_util.tree_leaves(a), jax.tree_util.tree_leaves(b)
    return len(la) == len(lb) and all(
        np.array_equal(np.asarray(u).view(np.uint8), np.asarray(v).view(np.uint8)) for u, v in zip(la, lb)
    )
