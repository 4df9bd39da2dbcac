"""FGSM, I-FGSM (BIM) and PGD under L-inf and L2 threat models.

Iterations run through ``jsemi.attacks._common.run_spec`` (unrolled chunks on CPU, see
there); restarts run in parallel with ``vmap`` over keys.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsemi.attacks import losses as L
from jsemi.attacks._common import check_setting_positive_int, dispatch, fn_jit, run_spec, select, Spec, validate

__all__ = ["fgsm", "ifgsm", "pgd", "default_step_size", "input_grad"]


def loss_by_name(loss):
    if callable(loss):
        return loss
    if loss not in L.LOSSES:
        raise ValueError(f"loss must be one of {sorted(L.LOSSES)} or a callable, got {loss!r}")
    return L.LOSSES[loss]


def default_step_size(eps, steps: int):
    """2.5 * eps / steps (Madry et al.): the iterate can cross the ball in a few steps."""
    return 2.5 * eps / steps


def input_grad(logits_fn, loss_fn, x, *args):
    """(d/dx sum_b loss_fn(logits_fn(x), *args)_b, logits): per-example input gradients."""

    def obj(xa):
        logits = logits_fn(xa)
        return jnp.sum(loss_fn(logits, *args)), logits

    return jax.grad(obj, has_aux=True)(x)


# ------------------------------------------------------------------------------------ FGSM
def _fgsm_impl(logits_fn, x, y, key, threat, *, loss):
    del key
    g, _ = input_grad(logits_fn, loss_by_name(loss), x, y)
    eps = jnp.asarray(threat.eps, x.dtype)
    return threat.project(x + eps * threat.steepest(g), x)


_fgsm_compiled = fn_jit(_fgsm_impl)


def fgsm(logits_fn, x, y, key, threat, *, loss="ce"):
    """One step of size eps along the steepest-ascent direction of the loss.

    L-inf: x + eps * sign(grad); L2 (fast gradient method): x + eps * grad / ||grad||_2;
    then clipped to [0, 1].  Exact worst case for a binary linear classifier.  ``key`` is
    unused (kept for the common signature).
    """
    validate(logits_fn, x, y, key, threat)
    loss_by_name(loss)
    return dispatch(_fgsm_compiled, logits_fn, x, y, key, threat, loss=loss)


# ------------------------------------------------------------------------------------- PGD
def _targeted_loss(loss):
    if loss == "ce":
        return lambda logits, yt: -L.ce(logits, yt)
    if loss == "margin":
        return lambda logits, yt: -L.targeted_margin(logits, yt)
    if callable(loss):
        return loss
    raise ValueError(f"a targeted pgd supports loss 'ce', 'margin' or a callable, got {loss!r}")


def _pgd_spec(logits_fn, steps, step_size, restarts, random_start, loss, keep_best, targeted):
    loss_fn = _targeted_loss(loss) if targeted else loss_by_name(loss)
    track = keep_best or restarts > 1

    def labels(ctx):  # what the loss and the margin are computed against
        return ctx["y_target"] if targeted else ctx["y"]

    def score(logits, lab):  # lower is better for the attacker
        return L.targeted_margin(logits, lab) if targeted else L.margin(logits, lab)

    def alpha(ctx):
        th = ctx["threat"]
        a = default_step_size(th.eps, steps) if step_size is None else step_size
        return jnp.asarray(a, ctx["x"].dtype)

    def init1(ctx, key):
        x = ctx["x"]
        xa = ctx["threat"].random_init(key, x) if random_start else x
        if not track:
            return (xa,)
        return (xa, xa, jnp.full((x.shape[0],), jnp.inf, jnp.float32))

    def step1(ctx, state):
        x, y, th = ctx["x"], labels(ctx), ctx["threat"]
        xa = state[0]
        g, logits = input_grad(logits_fn, loss_fn, xa, y)
        xn = th.project(xa + alpha(ctx) * th.steepest(g), x)
        if not track:
            return (xn,)
        _, bx, bm = state
        m = score(logits, y)
        better = m < bm
        return (xn, select(better, xa, bx), jnp.where(better, m, bm))

    def final1(ctx, state):
        if not track:
            return state[0], None
        xa, bx, bm = state
        m = score(logits_fn(xa), labels(ctx))
        better = m < bm
        return select(better, xa, bx), jnp.where(better, m, bm)

    if restarts == 1:
        return Spec(lambda ctx: init1(ctx, ctx["key"]), lambda ctx, i, s: step1(ctx, s),
                    lambda ctx, s: final1(ctx, s)[0], steps)

    def init(ctx):
        keys = jax.random.split(ctx["key"], restarts)
        return jax.vmap(init1, in_axes=(None, 0))(ctx, keys)

    def step(ctx, i, s):
        return jax.vmap(step1, in_axes=(None, 0))(ctx, s)

    def final(ctx, s):
        xs, ms = jax.vmap(final1, in_axes=(None, 0))(ctx, s)  # (R, B, ...), (R, B)
        best = jnp.argmin(ms, axis=0)  # per example the restart with the lowest margin
        x = ctx["x"]
        return jnp.take_along_axis(xs, best.reshape((1, -1) + (1,) * (x.ndim - 1)), axis=0)[0]

    return Spec(init, step, final, steps)


def _run_pgd(logits_fn, x, y, key, threat, *, steps, step_size, restarts, random_start, loss, keep_best,
             y_target=None):
    settings = (steps, step_size, restarts, random_start, loss, keep_best, y_target is not None)
    ctx = {"x": jnp.asarray(x), "y": jnp.asarray(y), "key": key, "threat": threat}
    if y_target is not None:
        ctx["y_target"] = jnp.asarray(y_target)
    return run_spec(_pgd_spec, settings, logits_fn, ctx)


def pgd(logits_fn, x, y, key, threat, *, steps=10, step_size=None, restarts=1, random_start=True,
        loss="ce", keep_best=True, y_target=None):
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
        gradient cost, one extra forward); False returns the last iterate (classic PGD).
      y_target: optional int targets (B,): targeted PGD, minimising CE to the target
        (loss="ce") or max_{k != t} z_k - z_t (loss="margin"); "margin" above then means the
        targeted margin.

    Returns x_adv with ||x_adv - x|| <= eps and x_adv in [0, 1] (up to float32 rounding).
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(steps, "steps")
    check_setting_positive_int(restarts, "restarts")
    loss_by_name(loss)
    if y_target is not None:
        from jsemi.validation import check_labels

        check_labels(y_target, name="y_target", batch=x.shape[0])
        _targeted_loss(loss)
    if not random_start:
        restarts = 1  # deterministic runs would all be identical
    return _run_pgd(logits_fn, x, y, key, threat, steps=int(steps), step_size=step_size, restarts=int(restarts),
                    random_start=bool(random_start), loss=loss, keep_best=bool(keep_best), y_target=y_target)


def ifgsm(logits_fn, x, y, key, threat, *, steps=10, step_size=None, loss="ce"):
    """Iterative FGSM / BIM (Kurakin et al. 2017): PGD from x itself (no random start),
    last iterate returned.  step_size defaults to 2.5 * eps / steps."""
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(steps, "steps")
    loss_by_name(loss)
    return _run_pgd(logits_fn, x, y, key, threat, steps=int(steps), step_size=step_size, restarts=1,
                    random_start=False, loss=loss, keep_best=False)
