"""FGSM, I-FGSM (BIM) and PGD under L-inf and L2 threat models.

All loops are ``lax.fori_loop`` so the model is traced once per gradient, whatever the
number of steps; restarts run in parallel with ``vmap`` over keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsemi.attacks import losses as L
from jsemi.attacks._common import check_setting_positive_int, dispatch, select, validate

__all__ = ["fgsm", "ifgsm", "pgd", "default_step_size"]


def _loss_fn(loss):
    if callable(loss):
        return loss
    if loss not in L.LOSSES:
        raise ValueError(f"loss must be one of {sorted(L.LOSSES)} or a callable, got {loss!r}")
    return L.LOSSES[loss]


def default_step_size(eps, steps: int):
    """2.5 * eps / steps (Madry et al.): the iterate can cross the ball in a few steps."""
    return 2.5 * eps / steps


def _input_grad(logits_fn, loss_fn, x, y):
    def obj(xa):
        logits = logits_fn(xa)
        return jnp.sum(loss_fn(logits, y)), logits

    return jax.grad(obj, has_aux=True)(x)


# ------------------------------------------------------------------------------------ FGSM
def _fgsm_impl(logits_fn, x, y, key, threat, *, loss):
    del key
    g, _ = _input_grad(logits_fn, _loss_fn(loss), x, y)
    eps = jnp.asarray(threat.eps, x.dtype)
    return threat.project(x + eps * threat.steepest(g), x)


def fgsm(logits_fn, x, y, key, threat, *, loss="ce"):
    """One step of size eps along the steepest-ascent direction of the loss.

    L-inf: x + eps * sign(grad); L2 (fast gradient method): x + eps * grad / ||grad||_2;
    then clipped to [0, 1].  Exact worst case for a binary linear classifier.  ``key`` is
    unused (kept for the common signature).
    """
    validate(logits_fn, x, y, key, threat)
    _loss_fn(loss)
    return dispatch(_fgsm_impl, logits_fn, x, y, key, threat, loss=loss)


# ------------------------------------------------------------------------------------- PGD
def _pgd_run(logits_fn, x, y, key, threat, steps, step_size, random_start, loss_fn, keep_best):
    """One PGD run. Returns (x_adv, margin(x_adv)) or (x_adv, None) when keep_best is False."""
    xa = threat.random_init(key, x) if random_start else x
    alpha = jnp.asarray(step_size, x.dtype)

    if not keep_best:
        def body(_, xa):
            g, _ = _input_grad(logits_fn, loss_fn, xa, y)
            return threat.project(xa + alpha * threat.steepest(g), x)

        return jax.lax.fori_loop(0, steps, body, xa), None

    def body(_, carry):
        xa, bx, bm = carry
        g, logits = _input_grad(logits_fn, loss_fn, xa, y)
        m = L.margin(logits, y)
        better = m < bm
        bx, bm = select(better, xa, bx), jnp.where(better, m, bm)
        return threat.project(xa + alpha * threat.steepest(g), x), bx, bm

    init = (xa, xa, jnp.full((x.shape[0],), jnp.inf, jnp.float32))
    xa, bx, bm = jax.lax.fori_loop(0, steps, body, init)
    m = L.margin(logits_fn(xa), y)
    better = m < bm
    return select(better, xa, bx), jnp.where(better, m, bm)


def _pgd_impl(logits_fn, x, y, key, threat, *, steps, step_size, restarts, random_start, loss, keep_best):
    loss_fn = _loss_fn(loss)
    if step_size is None:
        step_size = default_step_size(threat.eps, steps)
    if restarts == 1:
        return _pgd_run(logits_fn, x, y, key, threat, steps, step_size, random_start, loss_fn, keep_best)[0]
    keys = jax.random.split(key, restarts)
    run = lambda k: _pgd_run(logits_fn, x, y, k, threat, steps, step_size, random_start, loss_fn, True)
    xs, ms = jax.vmap(run)(keys)  # (R, B, ...), (R, B)
    best = jnp.argmin(ms, axis=0)  # per example, the restart with the lowest margin
    return jnp.take_along_axis(xs, best.reshape((1, -1) + (1,) * (x.ndim - 1)), axis=0)[0]


def pgd(logits_fn, x, y, key, threat, *, steps=10, step_size=None, restarts=1, random_start=True,
        loss="ce", keep_best=True):
    """Projected gradient descent (Madry et al. 2018) in the threat's norm.

    Args:
      logits_fn: (B, H, W, C) in [0, 1] -> (B, K) scores; any differentiable function.
      x, y: float32 NHWC images in [0, 1] and int labels (B,).
      key: jax PRNG key (random start; one sub-key per restart).
      threat: ``LinfBall(eps)`` or ``L2Ball(eps)``.
      steps: gradient steps per restart.
      step_size: default 2.5 * eps / steps.
      restarts: independent random starts run in parallel (vmap); per example the run with
        the lowest margin z_y - max_{k != y} z_k is kept.
      random_start: uniform in the L-inf ball / uniform direction and radius in the L2 ball.
      loss: "ce" (maximise cross-entropy), "margin" (minimise z_y - max_{k!=y} z_k),
        "dlr" (Croce & Hein), or a callable (logits, y) -> (B,) loss to maximise.
      keep_best: return, per example, the iterate with the lowest margin seen (at no extra
        gradient cost); False returns the last iterate (classic PGD, one forward cheaper).

    Returns x_adv with ||x_adv - x|| <= eps and x_adv in [0, 1] (up to float32 rounding).
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(steps, "steps")
    check_setting_positive_int(restarts, "restarts")
    _loss_fn(loss)
    if not random_start:
        restarts = 1  # deterministic runs would all be identical
    return dispatch(_pgd_impl, logits_fn, x, y, key, threat, steps=steps, step_size=step_size,
                    restarts=restarts, random_start=bool(random_start), loss=loss, keep_best=bool(keep_best))


def ifgsm(logits_fn, x, y, key, threat, *, steps=10, step_size=None, loss="ce"):
    """Iterative FGSM / BIM (Kurakin et al. 2017): PGD from x itself (no random start),
    last iterate returned.  step_size defaults to 2.5 * eps / steps."""
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(steps, "steps")
    _loss_fn(loss)
    return dispatch(_pgd_impl, logits_fn, x, y, key, threat, steps=steps, step_size=step_size,
                    restarts=1, random_start=False, loss=loss, keep_best=False)
