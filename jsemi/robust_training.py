"""TRADES and ATTA training modes (loss builders and ATTA's epoch loop).

``jsemi.training_modes`` lists them in its table next to "standard" and "pgd", so
``TrainConfig(mode="trades" | "atta" | "atta_trades")`` works wherever a ``TrainConfig`` is
used: pretraining, masked fine-tuning of fb in Algorithm 1, the CLI.  This module imports
``jsemi.train`` (the step machinery) and nothing imports it at import time.

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

The stored perturbations live in the training state, ``state.carry`` =
``{"delta": (N, H, W, C) float32 host array, "last_reset": () int32}`` (``last_reset`` the
epoch of the last random draw, -1 before the first), so checkpoints save them and a resumed
run continues exactly.  ``atta_epoch`` (what ``jsemi.training_modes.train_epoch`` runs for
these modes) creates the carry on the first epoch and keeps it up to date.  The jitted
step sees only the batch's perturbations, through its ``extra`` argument::

    state, metrics, new_delta = step(state, x, y, key, delta)   # delta = carry["delta"][ix]

``delta`` is in the frame of the *un-augmented* images.  With ``config.augment`` the builder
applies the same random crop and flip (``jsemi.data.augment_params``) to the images and their
perturbations, attacks in the augmented frame and maps the new perturbation back (pixels
cropped out this time keep their stored value).  A carry belongs to one training set and
one seed (the random draws come from ``(seed, epoch)``): start another run from a state
without carry.  Memory: N x H x W x C x 4 bytes (614 MB for CIFAR-10's training set).

Every perturbation is float32 whatever the model's compute dtype (bf16 models are fed
float32 images and differentiated through the cast).
"""

from __future__ import annotations

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
    "trades_loss",
    "atta_loss",
    "atta_trades_loss",
    "init_perturbations",
    "draw_perturbations",
    "start_epoch",
    "atta_epoch",
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


def trades_loss(model, config, forward, eval_vars, x, y, key, extra):
    """Loss builder of mode "trades" (``jsemi.train.build_train_step``'s contract)."""
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
            "(jsemi.training_modes.train_epoch keeps them in state.carry)"
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


def atta_loss(*args):
    """Loss builder of mode "atta" (self-augmenting; ``extra`` = the batch's perturbations)."""
    return _atta_builder(*args, trades=False)


def atta_trades_loss(*args):
    """Loss builder of mode "atta_trades" (self-augmenting; ``extra`` = the batch's perturbations)."""
    return _atta_builder(*args, trades=True)


# ----------------------------------------------------------------------------- ATTA carry


def init_perturbations(config, num_examples: int, image_shape: tuple[int, ...]) -> dict:
    """ATTA's carry before its first draw: {"delta": zeros (N, *image_shape) float32, "last_reset": -1}."""
    _check_config(config)
    if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
        raise ValueError(f"num_examples must be a positive int, got {num_examples!r}")
    shape = (int(num_examples), *(int(s) for s in image_shape))
    return {"delta": np.zeros(shape, np.float32), "last_reset": np.asarray(-1, np.int32)}


def draw_perturbations(config, shape: tuple[int, ...], seed: int, epoch: int) -> np.ndarray:
    """Fresh random perturbations (float32, ``shape`` = (N, H, W, C)), deterministic in (seed, epoch):
    uniform in the L-inf cube of radius ``config.eps``, or uniform direction and radius in the L2 ball."""
    rng = np.random.default_rng([int(seed), int(epoch), 0xA77A])
    eps = float(config.eps)
    if config.attack_norm == "linf":
        return rng.uniform(-eps, eps, size=shape).astype(np.float32)
    d = rng.standard_normal(size=shape).astype(np.float32)
    flat = d.reshape(shape[0], -1)
    n = np.maximum(np.linalg.norm(flat, axis=1), 1e-12)
    r = rng.uniform(0.0, 1.0, size=shape[0]) * eps
    return (flat * (r / n)[:, None]).reshape(shape).astype(np.float32)


def start_epoch(carry: dict, config, seed: int, epoch: int) -> tuple[dict, bool]:
    """The carry to start ``epoch`` from, and whether it was redrawn: fresh perturbations when
    ``epoch % config.atta_reset_every == 0`` or when none were ever drawn; else ``carry`` itself."""
    if int(carry["last_reset"]) < 0 or epoch % config.atta_reset_every == 0:
        delta = draw_perturbations(config, tuple(np.shape(carry["delta"])), seed, epoch)
        return {"delta": delta, "last_reset": np.asarray(epoch, np.int32)}, True
    return carry, False


def atta_epoch(state, step_fn: Callable, images: np.ndarray, labels: np.ndarray, key: jax.Array, *,
               batch_size: int, seed: int, epoch: int, progress: bool = False, desc: str = "train"):
    """Epoch loop of the ATTA modes (``jsemi.train.run_epoch``'s signature and batches).

    Protocol, for a hand-written loop (epochs are 0-based and count on across the whole run,
    including after a resume)::

        carry = state.carry or init_perturbations(config, N, image_shape)
        carry, _ = start_epoch(carry, config, seed, epoch)
        for i, ix in enumerate(train.batch_indices(N, batch_size, seed, epoch)):
            state, m, d = step(state, images[ix], labels[ix], fold_in(key, i), carry["delta"][ix])
            carry["delta"][ix] = d

    Here the step runs on the state without its carry (the jitted program never sees the whole
    buffer), the write-back of batch i is deferred until batch i+1 is dispatched (the indices
    of one epoch are disjoint, so this is exact), and the input state is left unchanged (the
    epoch works on a copy).  Returns the state with the new carry, and the epoch's metrics.
    """
    config = state.config
    n, shape = images.shape[0], tuple(images.shape[1:])
    carry = state.carry if state.carry is not None else init_perturbations(config, n, shape)
    if tuple(np.shape(carry["delta"])) != (n, *shape):
        raise ValueError(
            f"state.carry holds ATTA perturbations of shape {tuple(np.shape(carry['delta']))}, the training set "
            f"is {(n, *shape)}: start a run on another training set from a state without carry"
        )
    carry, fresh = start_epoch(carry, config, seed, epoch)
    delta = carry["delta"] if fresh else np.array(carry["delta"], np.float32)  # copy: the input state stays valid
    idx = _train.batch_indices(n, batch_size, seed, epoch)
    pending = []

    def put(ix, d):
        delta[np.asarray(ix)] = np.asarray(jax.device_get(d), np.float32)

    def one(st, i, ix):
        st, m, d = step_fn(st, images[ix], labels[ix], jax.random.fold_in(key, i), delta[np.asarray(ix)])
        if pending:
            put(*pending.pop())
        pending.append((ix, d))
        return st, m

    core, stats = _train.run_batches(state.replace(carry=None), idx, one, progress=progress, desc=desc)
    if pending:
        put(*pending.pop())
    return core.replace(carry={"delta": delta, "last_reset": carry["last_reset"]}), stats
