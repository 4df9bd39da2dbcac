"""Carlini & Wagner L2 attack (tanh reparametrisation, Adam)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from jsemi.attacks import losses as L
from jsemi.attacks._common import check_setting_positive_int, run_spec, select, Spec, validate

__all__ = ["cw_l2"]


def _tanh_space(w):
    return 0.5 * (jnp.tanh(w) + 1.0)


def _inverse_tanh_space(x):
    return jnp.arctanh(jnp.clip(2.0 * x - 1.0, -1.0, 1.0) * 0.999999)


def _cw_spec(logits_fn, c, kappa, steps, lr):
    opt = optax.adam(lr)

    def l2sq(xa, x):
        return jnp.sum(jnp.square((xa - x).reshape(x.shape[0], -1)), axis=1)

    def cost(w, x, y):
        xa = _tanh_space(w)
        logits = logits_fn(xa)
        per = l2sq(xa, x) + c * L.cw(logits, y, kappa)
        return jnp.sum(per), (xa, logits)

    def init(ctx):
        x = ctx["x"]
        w = _inverse_tanh_space(x)
        return dict(w=w, opt=opt.init(w), best=x, best_l2=jnp.full((x.shape[0],), jnp.inf, jnp.float32))

    def step(ctx, i, s):
        x, y, th = ctx["x"], ctx["y"], ctx["threat"]
        (_, (xa, logits)), g = jax.value_and_grad(cost, has_aux=True)(s["w"], x, y)
        upd, opt_state = opt.update(g, s["opt"], s["w"])
        w = optax.apply_updates(s["w"], upd)
        # bookkeeping on the iterate the gradient was taken at (as in the reference code)
        succ = jnp.argmax(logits, 1) != y
        d2 = l2sq(xa, x)
        inside = th.dist(xa, x) <= jnp.asarray(th.eps, jnp.float32) * (1 + 1e-6)
        better = succ & inside & (d2 < s["best_l2"])
        return dict(w=w, opt=opt_state, best=select(better, xa, s["best"]), best_l2=jnp.where(better, d2, s["best_l2"]))

    def final(ctx, s):
        x, y, th = ctx["x"], ctx["y"], ctx["threat"]
        found = jnp.isfinite(s["best_l2"])
        # no adversarial inside the ball: the last iterate projected onto the ball
        return select(found, th.project(s["best"], x), th.project(_tanh_space(s["w"]), x))

    return Spec(init, step, final, steps)


def cw_l2(logits_fn, x, y, key, threat, *, c=1.0, kappa=0.0, steps=50, lr=0.01):
    """C&W-L2: minimise ||x' - x||_2^2 + c * max(z_y - max_{k != y} z_k, -kappa) over
    x' = (tanh(w) + 1) / 2 with Adam(lr) for ``steps`` steps.

    Returns, per example, the closest misclassified iterate that lies inside the threat's
    ball; where there is none, the last iterate projected onto the ball.  The C&W loss uses
    a -inf mask for the best other class, so it is right for negative logits.  For the
    unbounded attack of the paper use ``L2Ball(eps=math.sqrt(x[0].size))`` (every point of
    the box is inside).  All ``steps`` are run (no early stop on a rising total cost, unlike
    torchattacks).  ``key`` is unused (the attack is deterministic).
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(steps, "steps")
    if not c > 0:
        raise ValueError(f"c must be > 0, got {c}")
    if not kappa >= 0:
        raise ValueError(f"kappa must be >= 0, got {kappa}")
    if not lr > 0:
        raise ValueError(f"lr must be > 0, got {lr}")
    settings = (float(c), float(kappa), int(steps), float(lr))
    ctx = {"x": jnp.asarray(x), "y": jnp.asarray(y), "key": key, "threat": threat}
    return run_spec(_cw_spec, settings, logits_fn, ctx)
