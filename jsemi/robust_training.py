"""TRADES and ATTA training modes, registered in ``jsemi.train``.

Importing this module (``jsemi.train.make_train_step`` does it) registers three modes, so
``TrainConfig(mode="trades" | "atta" | "atta_trades")`` works wherever a ``TrainConfig`` is
used: pretraining, masked fine-tuning of fb in Algorithm 1, the CLI.

**TRADES** (Zhang et al. 2019, ``mode="trades"``)::

    loss = CE(f(x), y) + beta * KL(softmax f(x) || softmax f(x'))     (batch mean, nats)

with x' found by ``config.attack_steps`` steps of projected steepest ascent (step
``config.attack_step_size``, ``config.attack_norm`` ball of radius ``config.eps``) on the
same KL, from x + 0.001 * N(0, 1) (the reference code's start).  ``beta = config.trades_beta``
(6 by default, the paper's Table S5).  As in the reference code the attack runs the model in
inference mode and the loss runs it in training mode, once on x and once on x' (separate
BatchNorm batch statistics; the running statistics take the mean of the two updates).
Metrics report the accuracy on x'.

**ATTA** (Zheng et al. 2020, "Efficient adversarial training with transferable adversarial
examples", ``mode="atta"``): the perturbation of every training example is stored and
carried across epochs; each time an example is seen, ``config.atta_steps`` PGD steps (CE,
no random start) continue from its stored perturbation, the model is trained on the result
(CE) and the new perturbation is stored back.  All perturbations are reset (to a uniform
random start in the ball) every ``config.atta_reset_every`` epochs.  ``mode="atta_trades"``
is ATTA with the TRADES loss: the carried perturbation is advanced by KL-ascent steps and
the TRADES objective is minimised.

The carried perturbations travel through the step's ``extra`` argument::

    step = make_train_step(model, config)          # config.mode in ("atta", "atta_trades")
    state, metrics, new_delta = step(state, x, y, key, delta)

``delta`` (B, H, W, C) float32 is the stored perturbation of the batch's examples in the
frame of the *un-augmented* images.  With ``config.augment`` the builder applies the same
random crop and flip (``jsemi.data.augment_params``) to the images and their perturbations,
attacks in the augmented frame and maps the new perturbation back (pixels cropped out this
time keep their stored value).  ``PerturbationBuffer`` keeps all of them on the host, keyed
by dataset index, and ``train_epoch`` is the epoch loop that uses it (see its docstring for
the exact protocol).

Epoch loops need no change: ``jsemi.train.train_epoch`` called with an ATTA step (from
``make_train_step`` or ``sharding.shard_train_step``) delegates to this module, which keeps a
buffer per (step function, training set, seed): pretraining, Algorithm 1's fine-tuning (a
trial's seed selects its buffer; epoch 0 resets it) and the CLI work as they are.  Pass a
``PerturbationBuffer`` to ``train_epoch`` here to manage it yourself (e.g. to save it); a
hand-written loop over batches must follow the protocol in ``train_epoch``'s docstring.

Every perturbation is float32 whatever the model's compute dtype (bf16 models are fed
float32 images and differentiated through the cast).
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from jsemi import train as _train

ATTA_MODES = ("atta", "atta_trades")
ROBUST_MODES = ("trades",) + ATTA_MODES
AUGMENT_PAD = 4  # jsemi.data.augment's default padding, used by the training step

__all__ = [
    "ATTA_MODES",
    "ROBUST_MODES",
    "trades_kl",
    "trades_inputs",
    "PerturbationBuffer",
    "needs_buffer",
    "make_buffer",
    "train_epoch",
    "buffer_of",
]


# ----------------------------------------------------------------------------- helpers


def _check_config(config) -> None:
    if isinstance(config.atta_steps, bool) or not isinstance(config.atta_steps, int) or config.atta_steps < 1:
        raise ValueError(f"atta_steps must be a positive int, got {config.atta_steps!r}")
    if (isinstance(config.atta_reset_every, bool) or not isinstance(config.atta_reset_every, int)
            or config.atta_reset_every < 1):
        raise ValueError(f"atta_reset_every must be a positive int (epochs), got {config.atta_reset_every!r}")
    beta = float(config.trades_beta)
    if not np.isfinite(beta) or beta < 0:
        raise ValueError(f"trades_beta must be a finite number >= 0, got {config.trades_beta!r}")


def trades_kl(logits_clean: jnp.ndarray, logits_adv: jnp.ndarray) -> jnp.ndarray:
    """Per-example KL(softmax(clean) || softmax(adv)) in nats, computed in float32."""
    lc = jax.nn.log_softmax(logits_clean.astype(jnp.float32), -1)
    la = jax.nn.log_softmax(logits_adv.astype(jnp.float32), -1)
    return jnp.sum(jnp.exp(lc) * (lc - la), axis=-1)


def _ascend(objective: Callable, x_start, x_ref, threat, steps: int, step_size: float):
    """``steps`` of projected steepest ascent of ``objective(x_adv) -> scalar`` (float32)."""
    alpha = jnp.asarray(step_size, jnp.float32)

    def body(_, xa):
        g = jax.grad(objective)(xa)
        return threat.project(xa + alpha * threat.steepest(g.astype(jnp.float32)), x_ref)

    return jax.lax.fori_loop(0, steps, body, x_start.astype(jnp.float32))


def _kl_ascent(logits_fn, x, x_start, threat, steps, step_size):
    """Maximises sum_i KL(p(x_i) || p(x'_i)) over x' in the ball around x (TRADES' inner problem)."""
    p_clean = jax.lax.stop_gradient(logits_fn(x))
    obj = lambda xa: jnp.sum(trades_kl(p_clean, logits_fn(xa)))
    return _ascend(obj, x_start, x, threat, steps, step_size)


def _ce_ascent(logits_fn, x, y, x_start, threat, steps, step_size):
    obj = lambda xa: jnp.sum(optax.softmax_cross_entropy_with_integer_labels(logits_fn(xa).astype(jnp.float32), y))
    return _ascend(obj, x_start, x, threat, steps, step_size)


def trades_inputs(logits_fn: Callable, x, key, threat, *, steps: int, step_size: float):
    """TRADES adversarial examples: KL ascent from x + 0.001 * N(0, 1) (Zhang et al.'s start)."""
    x = x.astype(jnp.float32)
    start = threat.project(x + 0.001 * jax.random.normal(key, x.shape, jnp.float32), x)
    return _kl_ascent(logits_fn, x, start, threat, steps, step_size)


def _avg_stats(a: Any, b: Any) -> Any:
    return jax.tree_util.tree_map(lambda u, v: (u + v) / 2, a, b)


def _trades_loss_fn(forward, x, x_adv, y, beta, extra):
    def loss_fn(p_tr):
        logits_c, stats_c = forward(p_tr, x)
        logits_a, stats_a = forward(p_tr, x_adv)
        ce = _train.cross_entropy(logits_c, y)
        kl = jnp.mean(trades_kl(logits_c, logits_a))
        return ce + beta * kl, (logits_a, _avg_stats(stats_c, stats_a), extra)

    return loss_fn


# ----------------------------------------------------------------------------- TRADES


def _trades_builder(model, config, forward, eval_vars, x, y, key, extra):
    _check_config(config)
    threat = _train.config_threat(config)
    lf = lambda z: model.apply(eval_vars, z, train=False)
    x_adv = jax.lax.stop_gradient(
        trades_inputs(lf, x, key, threat, steps=config.attack_steps, step_size=config.attack_step_size)
    )
    return _trades_loss_fn(forward, x, x_adv, y, float(config.trades_beta), extra)


# ----------------------------------------------------------------------------- ATTA


def _uncrop_flip(crops, offsets, flips, pad: int, old):
    """Inverse of ``jsemi.data.crop_flip`` for perturbations: pixels not in the crop keep ``old``."""
    b, h, w, c = crops.shape
    crops = jnp.where(flips[:, None, None, None], crops[:, :, ::-1, :], crops)
    canvas = jnp.zeros((h + 2 * pad, w + 2 * pad, c), crops.dtype)
    place = jax.vmap(lambda d, o: jax.lax.dynamic_update_slice(canvas, d, (o[0], o[1], 0)))
    back = place(crops, offsets)[:, pad:pad + h, pad:pad + w, :]
    seen = place(jnp.ones_like(crops), offsets)[:, pad:pad + h, pad:pad + w, :] > 0
    return jnp.where(seen, back, old)


def _atta_builder(model, config, forward, eval_vars, x, y, key, extra, *, trades: bool):
    _check_config(config)
    if extra is None:
        raise ValueError(
            f"training mode {config.mode!r} carries per-example perturbations: call the step as "
            "step(state, x, y, key, delta) with the batch's stored perturbations "
            "(jsemi.robust_training.PerturbationBuffer / train_epoch)"
        )
    if extra.shape != x.shape:
        raise ValueError(f"ATTA perturbations have shape {extra.shape}, the batch {x.shape}")
    threat = _train.config_threat(config)
    delta = extra.astype(jnp.float32)
    k_aug, _ = jax.random.split(key)
    if config.augment:  # the step left x un-augmented (self-augmenting mode)
        from jsemi.data import augment_params, crop_flip

        offsets, flips = augment_params(k_aug, x.shape[0], pad=AUGMENT_PAD, flip=config.flip)
        x_a = crop_flip(x, offsets, flips, pad=AUGMENT_PAD)
        d_a = crop_flip(delta, offsets, flips, pad=AUGMENT_PAD)
    else:
        x_a, d_a = x, delta
    start = threat.project(x_a + d_a, x_a)
    lf = lambda z: model.apply(eval_vars, z, train=False)
    if trades:
        x_adv = _kl_ascent(lf, x_a, start, threat, config.atta_steps, config.attack_step_size)
    else:
        x_adv = _ce_ascent(lf, x_a, y, start, threat, config.atta_steps, config.attack_step_size)
    x_adv = jax.lax.stop_gradient(x_adv)
    d_new = x_adv - x_a
    if config.augment:
        d_new = _uncrop_flip(d_new, offsets, flips, AUGMENT_PAD, delta)
    new_extra = jax.lax.stop_gradient(d_new.astype(jnp.float32))

    if trades:
        return _trades_loss_fn(forward, x_a, x_adv, y, float(config.trades_beta), new_extra)

    def loss_fn(p_tr):
        logits, stats = forward(p_tr, x_adv)
        return _train.cross_entropy(logits, y), (logits, stats, new_extra)

    return loss_fn


def _atta_ce_builder(*args):
    return _atta_builder(*args, trades=False)


def _atta_trades_builder(*args):
    return _atta_builder(*args, trades=True)




# ----------------------------------------------------------------------------- ATTA buffer


class PerturbationBuffer:
    """ATTA's per-example perturbations (float32, host memory), keyed by dataset index.

    ``delta[i]`` is the perturbation of training example i in the frame of the stored
    (un-augmented) image.  ``start_epoch(epoch)`` resets every perturbation to a fresh random
    start in the ball (uniform in the L-inf cube / uniform direction and radius in the L2
    ball, drawn from ``(seed, epoch)``) when ``epoch % reset_every == 0`` or when the buffer
    was never filled (e.g. after resuming a run).  Memory: N x H x W x C x 4 bytes (614 MB
    for CIFAR-10's training set).  ``save``/``load`` use ``.npy`` (no pickle).
    """

    def __init__(self, num_examples: int, image_shape: tuple[int, ...], *, eps: float, norm: str = "linf",
                 reset_every: int = 10, seed: int = 0):
        if num_examples < 1:
            raise ValueError(f"num_examples must be >= 1, got {num_examples}")
        if norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {norm!r}")
        if isinstance(reset_every, bool) or not isinstance(reset_every, int) or reset_every < 1:
            raise ValueError(f"reset_every must be a positive int, got {reset_every!r}")
        self.num_examples = int(num_examples)
        self.image_shape = tuple(int(s) for s in image_shape)
        self.eps = float(eps)
        self.norm = norm
        self.reset_every = reset_every
        self.seed = int(seed)
        self.delta = np.zeros((self.num_examples, *self.image_shape), np.float32)
        self.filled = False
        self.last_reset: int | None = None

    def reset(self, epoch: int = 0) -> None:
        """Fresh random start for every example (deterministic in (seed, epoch))."""
        rng = np.random.default_rng([self.seed, int(epoch), 0xA77A])
        shape = self.delta.shape
        if self.norm == "linf":
            self.delta[...] = rng.uniform(-self.eps, self.eps, size=shape).astype(np.float32)
        else:
            d = rng.standard_normal(size=shape).astype(np.float32)
            flat = d.reshape(shape[0], -1)
            n = np.maximum(np.linalg.norm(flat, axis=1), 1e-12)
            r = rng.uniform(0.0, 1.0, size=shape[0]) * self.eps
            self.delta[...] = (flat * (r / n)[:, None]).reshape(shape).astype(np.float32)
        self.filled = True
        self.last_reset = int(epoch)

    def start_epoch(self, epoch: int) -> bool:
        """Call before each epoch; returns True when the perturbations were reset."""
        if not self.filled or epoch % self.reset_every == 0:
            self.reset(epoch)
            return True
        return False

    def get(self, idx) -> np.ndarray:
        """Stored perturbations of examples ``idx`` (B, H, W, C) float32."""
        return self.delta[np.asarray(idx)]

    def put(self, idx, delta) -> None:
        """Stores the new perturbations of examples ``idx`` (waits for a device array)."""
        d = np.asarray(jax.device_get(delta), dtype=np.float32)
        if d.shape != (len(idx), *self.image_shape):
            raise ValueError(f"put: perturbations of shape {d.shape} for {len(idx)} examples of shape {self.image_shape}")
        self.delta[np.asarray(idx)] = d

    def save(self, path) -> None:
        np.save(path, self.delta, allow_pickle=False)

    def load(self, path) -> None:
        d = np.load(path, allow_pickle=False)
        if d.shape != self.delta.shape:
            raise ValueError(f"ATTA buffer file has shape {d.shape}, expected {self.delta.shape}")
        self.delta[...] = d
        self.filled = True


def needs_buffer(config) -> bool:
    """True for the modes that carry perturbations (ATTA, ATTA+TRADES)."""
    return config.mode in ATTA_MODES


def make_buffer(config, images: np.ndarray, seed: int = 0) -> PerturbationBuffer | None:
    """The buffer for a training set (None for modes without carried perturbations)."""
    if not needs_buffer(config):
        return None
    _check_config(config)
    return PerturbationBuffer(images.shape[0], images.shape[1:], eps=config.eps, norm=config.attack_norm,
                              reset_every=config.atta_reset_every, seed=seed)


def train_epoch(
    state,
    step_fn: Callable,
    images: np.ndarray,
    labels: np.ndarray,
    key: jax.Array,
    *,
    batch_size: int,
    seed: int,
    epoch: int,
    buffer: PerturbationBuffer | None = None,
    progress: bool = False,
    desc: str = "train",
):
    """``jsemi.train.train_epoch`` for every mode; with ``buffer`` it runs the ATTA protocol.

    Protocol (what an epoch loop must do for ``mode in ("atta", "atta_trades")``)::

        buffer = make_buffer(config, images, seed)        # once per training run
        for epoch in range(epochs):
            buffer.start_epoch(epoch)                     # reset every atta_reset_every epochs
            for i, ix in enumerate(train.batch_indices(n, batch_size, seed, epoch)):
                state, m, d = step(state, images[ix], labels[ix], fold_in(key, i), buffer.get(ix))
                buffer.put(ix, d)

    (epoch numbers are 0-based and must count on across the whole run, including after a
    resume).  Here the ``put`` of batch i is deferred until batch i+1 is dispatched, so the
    host copy overlaps the device work; the indices of one epoch are disjoint, so this is
    exact.  Without ``buffer`` this is ``jsemi.train.train_epoch``.
    """
    if buffer is None:
        return _train.train_epoch(state, step_fn, images, labels, key, batch_size=batch_size, seed=seed,
                                  epoch=epoch, progress=progress, desc=desc)
    if buffer.delta.shape[0] != images.shape[0]:
        raise ValueError(f"the ATTA buffer holds {buffer.delta.shape[0]} examples, the training set {images.shape[0]}")
    buffer.start_epoch(epoch)
    idx = _train.batch_indices(images.shape[0], batch_size, seed, epoch)
    pending = []

    def one(st, i, ix):
        st, m, d = step_fn(st, images[ix], labels[ix], jax.random.fold_in(key, i), buffer.get(ix))
        if pending:
            buffer.put(*pending.pop())
        pending.append((ix, d))
        return st, m

    state, stats = _train.run_batches(state, idx, one, progress=progress, desc=desc)
    if pending:
        buffer.put(*pending.pop())
    return state, stats


# ----------------------------------------------------------------------------- automatic buffers

# step function -> ((id(images), shape, seed), buffer): the buffer ``jsemi.train.train_epoch``
# uses for an ATTA step when the caller manages none.  One buffer per step function (a new
# training set or seed replaces it), dropped with the step function.
_AUTO_BUFFERS: "weakref.WeakKeyDictionary[Any, tuple[tuple, PerturbationBuffer]]" = weakref.WeakKeyDictionary()


def buffer_of(step_fn: Callable) -> PerturbationBuffer | None:
    """The buffer ``jsemi.train.train_epoch`` keeps for an ATTA ``step_fn`` (None before its first epoch)."""
    entry = _AUTO_BUFFERS.get(step_fn)
    return None if entry is None else entry[1]


def _auto_epoch(state, step_fn, images, labels, key, *, batch_size, seed, epoch, progress=False, desc="train"):
    """``jsemi.train.train_epoch`` for ATTA steps: a buffer per (step, training set, seed).

    A new trial (another ``seed``) or another training set gets a new buffer; epoch 0 (and
    every ``atta_reset_every``-th epoch) resets it, and so does the first epoch after a
    resume (the perturbations are not checkpointed).
    """
    sig = (id(images), tuple(images.shape), int(seed))
    entry = _AUTO_BUFFERS.get(step_fn)
    if entry is None or entry[0] != sig:
        entry = (sig, make_buffer(step_fn.config, images, seed=seed))
        _AUTO_BUFFERS[step_fn] = entry
    return train_epoch(state, step_fn, images, labels, key, batch_size=batch_size, seed=seed, epoch=epoch,
                       buffer=entry[1], progress=progress, desc=desc)


_train.register_training_mode("trades", _trades_builder)
_train.register_training_mode("atta", _atta_ce_builder, self_augmenting=True, epoch_runner=_auto_epoch)
_train.register_training_mode("atta_trades", _atta_trades_builder, self_augmenting=True, epoch_runner=_auto_epoch)
