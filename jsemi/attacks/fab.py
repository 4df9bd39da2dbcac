"""FAB-T: targeted Fast Adaptive Boundary attack (Croce & Hein, ICML 2020), L-inf and L2.

Each iteration linearises the difference z_t - z_y at the current point x_k, projects both
x_k and the original x onto the resulting hyperplane intersected with the box [0, 1]^d
(minimal norm, closed form below), and moves to a convex combination of the two projections
with extrapolation eta and bias alpha <= alpha_max towards the original point.  When x_k is
adversarial, the smallest such perturbation is recorded and x_k is pulled back towards x by
beta.  Targets are the 2nd .. (n_targets+1)-th most likely classes on the clean input.
A success counts only if its norm is <= eps; the returned point always lies in the ball
(unsuccessful examples get the ball projection of the closest point found).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jsemi.attacks import losses as L
from jsemi.attacks._common import bcast, check_setting_positive_int, run_spec, select, Spec, validate
from jsemi.attacks.apgd import default_n_targets, num_classes_of, sequential_targets
from jsemi.attacks.threat import LinfBall

__all__ = ["fab_t", "project_hyperplane_box"]

_BIG = 1e20


def project_hyperplane_box(p, w, b, norm: str):
    """Minimal-norm d with <w, p + d> = b and p + d in [0, 1]^d, per row of p (B, d).

    L-inf: d_i = sign(u_i) min(lam, cap_i); L2: d_i = sign(u_i) min(mu |u_i|, cap_i), where
    u = sign(beta) w, beta = b - <w, p>, cap_i the room to the box in direction sign(u_i) and
    lam / mu the smallest value whose (piecewise-linear, increasing) gain reaches |beta|.
    If the hyperplane cannot be reached inside the box, d moves to the best box corner.
    """
    beta = b - jnp.sum(w * p, axis=1)
    s = jnp.sign(beta)
    u = w * s[:, None]
    tgt = jnp.abs(beta)
    au = jnp.abs(u)
    cap = jnp.where(u > 0, 1.0 - p, p)
    if norm == "linf":
        bp, a = cap, au
    else:
        bp = jnp.where(au > 0, cap / jnp.where(au > 0, au, 1.0), _BIG)
        a = au * au
    v = au * cap
    order = jnp.argsort(bp, axis=1)
    bp_s = jnp.take_along_axis(bp, order, 1)
    a_s = jnp.take_along_axis(a, order, 1)
    v_s = jnp.take_along_axis(v, order, 1)
    cum_v = jnp.cumsum(v_s, axis=1)
    suffix = jnp.flip(jnp.cumsum(jnp.flip(a_s, 1), axis=1), 1)  # sum_{i >= j}
    rest = jnp.concatenate([suffix[:, 1:], jnp.zeros_like(suffix[:, :1])], axis=1)  # sum_{i > j}
    gain = cum_v + bp_s * rest  # gain at each breakpoint, non-decreasing
    cnt = jnp.sum(gain < tgt[:, None], axis=1)
    n = p.shape[1]
    cum_v_pad = jnp.concatenate([jnp.zeros_like(cum_v[:, :1]), cum_v], axis=1)
    rest_pad = jnp.concatenate([suffix[:, :1], rest], axis=1)
    c_v = jnp.take_along_axis(cum_v_pad, cnt[:, None], 1)[:, 0]
    c_r = jnp.take_along_axis(rest_pad, cnt[:, None], 1)[:, 0]
    lam = (tgt - c_v) / jnp.maximum(c_r, 1e-30)
    lam = jnp.where(cnt < n, jnp.maximum(lam, 0.0), jnp.inf)
    if norm == "linf":
        mag = jnp.minimum(lam[:, None], cap)
    else:
        mag = jnp.minimum(lam[:, None] * au, cap)
    return jnp.sign(u) * mag


def _fab_spec(logits_fn, n_iter, alpha_max, eta, beta, random_start):
    def norm_name(th):
        return "linf" if isinstance(th, LinfBall) else "l2"

    def diff(xa, y, yt):
        logits = logits_fn(xa)
        return jnp.sum(L._true_logit(logits, yt) - L._true_logit(logits, y)), logits

    def init(ctx):
        x, th = ctx["x"], ctx["threat"]
        yt = jnp.take(jnp.argsort(-logits_fn(x), axis=1), ctx["target_rank"], axis=1)
        x1 = x
        if random_start:
            if norm_name(th) == "linf":
                t = jax.random.uniform(ctx["key"], x.shape, x.dtype, -1.0, 1.0)
                t = t / bcast(jnp.max(jnp.abs(t.reshape(x.shape[0], -1)), 1), t)
            else:
                t = jax.random.normal(ctx["key"], x.shape, x.dtype)
                t = t / bcast(jnp.sqrt(jnp.sum(jnp.square(t.reshape(x.shape[0], -1)), 1)) + 1e-12, t)
            x1 = jnp.clip(x + 0.5 * jnp.asarray(th.eps, x.dtype) * t, 0.0, 1.0)
        b = x.shape[0]
        return dict(yt=yt, x1=x1, adv=x, res=jnp.full((b,), 1e10, jnp.float32))

    def step(ctx, i, s):
        x, y, th = ctx["x"], ctx["y"], ctx["threat"]
        nm = norm_name(th)
        bsz = x.shape[0]
        x1 = s["x1"]
        dg, logits = jax.grad(diff, has_aux=True)(x1, y, s["yt"])
        df = L._true_logit(logits, s["yt"]) - L._true_logit(logits, y)
        w = dg.reshape(bsz, -1)
        x1f, x0f = x1.reshape(bsz, -1), x.reshape(bsz, -1)
        bb = -df + jnp.sum(w * x1f, axis=1)
        d = project_hyperplane_box(jnp.concatenate([x1f, x0f]), jnp.concatenate([w, w]), jnp.concatenate([bb, bb]), nm)
        if nm == "linf":
            a0 = jnp.max(jnp.abs(d), axis=1)
        else:
            a0 = jnp.sqrt(jnp.sum(d * d, axis=1))
        a0 = jnp.maximum(a0, 1e-8)
        a1, a2 = a0[:bsz], a0[bsz:]
        alpha = jnp.clip(a1 / (a1 + a2), 0.0, alpha_max)[:, None]
        d1, d2 = d[:bsz], d[bsz:]
        xn = jnp.clip((x1f + eta * d1) * (1 - alpha) + (x0f + eta * d2) * alpha, 0.0, 1.0).reshape(x.shape)
        is_adv = jnp.argmax(logits_fn(xn), 1) != y
        t = th.dist(xn, x)
        better = is_adv & (t < s["res"])
        adv = select(better, xn, s["adv"])
        res = jnp.where(better, t, s["res"])
        xn = select(is_adv, x + (xn - x) * beta, xn)
        return dict(yt=s["yt"], x1=xn, adv=adv, res=res)

    def final(ctx, s):
        x, th = ctx["x"], ctx["threat"]
        found = s["res"] < 1e10
        return th.project(select(found, s["adv"], s["x1"]), x)

    return Spec(init, step, final, n_iter)


def _run_fab(logits_fn, x, y, key, threat, *, n_iter, alpha_max, eta, beta, random_start, target_rank):
    ctx = {"x": jnp.asarray(x), "y": jnp.asarray(y), "key": key, "threat": threat,
           "target_rank": jnp.asarray(target_rank, jnp.int32)}
    settings = (int(n_iter), float(alpha_max), float(eta), float(beta), bool(random_start))
    return run_spec(_fab_spec, settings, logits_fn, ctx)


def fab_t(logits_fn, x, y, key, threat, *, n_iter=100, n_targets=None, restarts=1, alpha_max=0.1, eta=1.05, beta=0.9):
    """FAB-T (targeted FAB) under the threat's norm (L-inf or L2).

    n_targets defaults to min(9, K - 1); restarts after the first start at a random point at
    half the budget.  Per example the first run that finds an adversarial point inside the
    ball wins; otherwise the point with the lowest margin.
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(n_iter, "n_iter")
    check_setting_positive_int(restarts, "restarts")
    k = num_classes_of(logits_fn, x)
    if n_targets is None:
        n_targets = default_n_targets(k)
    check_setting_positive_int(n_targets, "n_targets")
    if n_targets > k - 1:
        raise ValueError(f"n_targets={n_targets} exceeds the {k - 1} classes other than the true one (K={k})")
    run = lambda xs, ys, kr, t, r: _run_fab(logits_fn, xs, ys, kr, threat, n_iter=n_iter, alpha_max=alpha_max, eta=eta,
                                          beta=beta, random_start=r > 0, target_rank=t)
    return sequential_targets(run, logits_fn, x, y, key, threat, n_targets, restarts)
