"""Auto-PGD (Croce & Hein, ICML 2020): APGD-CE, APGD-DLR and the targeted APGD-T.

Semantics follow the paper and the authors' reference implementation (re-written here):

- start: L-inf x + eps * t / max|t| with t ~ U(-1, 1)^d; L2 x + eps * t / ||t||_2, t ~ N(0, I);
- step size 2 * eps per example, momentum alpha = 0.75 (1.0 at the first step):
  z = P(x_k + eta * s(grad)), x_{k+1} = P(x_k + alpha (z - x_k) + (1 - alpha)(x_k - x_{k-1}));
- checkpoints: the first after p1 = 0.22 * n_iter iterations, then every
  max(k - 0.03 n_iter, 0.06 n_iter) iterations; at a checkpoint the step size of an example
  is halved (and its iterate reset to its best point) when (1) the loss increased in at most
  rho = 75% of the steps since the last checkpoint, or (2) the step size was not reduced at
  the last checkpoint and the best loss did not improve since (at the first checkpoint only
  (1) applies: the reference's ``reduced_last_check`` starts at 1);
- the result per example is the last misclassified iterate if any (success), else the point
  of highest loss.
- APGD-T uses the targeted DLR loss with the target = the t-th most likely class on the
  clean input, t = 2..n_targets+1; n_targets = min(9, K - 1) by default.  Few classes: see
  ``jsemi.attacks.losses`` for the DLR fallbacks (K = 2, 3), ``n_targets > K - 1`` is a
  ValueError.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks import losses as L
from jsemi.attacks._common import (
    attack_remaining, bcast, check_setting_positive_int, fooled_and_margin, is_traced, margin_at, run_spec, select, Spec,
    validate,
)
from jsemi.attacks.pgd import input_grad
from jsemi.attacks.threat import LinfBall

__all__ = ["apgd", "apgd_t", "apgd_schedule", "num_classes_of"]


def apgd_schedule(n_iter: int):
    """Static checkpoint schedule: (is_check (n_iter,) bool, k (n_iter,) int window length)."""
    n_iter_2 = max(int(0.22 * n_iter), 1)
    n_iter_min = max(int(0.06 * n_iter), 1)
    size_decr = max(int(0.03 * n_iter), 1)
    is_check = np.zeros(n_iter, bool)
    ks = np.zeros(n_iter, np.int32)
    k, counter = n_iter_2, 0
    for i in range(n_iter):
        counter += 1
        ks[i] = k
        if counter == k:
            is_check[i] = True
            k = max(k - size_decr, n_iter_min)
            counter = 0
    return is_check, ks


def num_classes_of(logits_fn, x) -> int:
    shape = jax.eval_shape(logits_fn, jax.ShapeDtypeStruct(x.shape, x.dtype)).shape
    if len(shape) != 2:
        raise ValueError(f"logits_fn must return (batch, classes), got shape {shape}")
    return int(shape[1])


def _apgd_init_point(threat, key, x):
    if isinstance(threat, LinfBall):
        t = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0)
        t = t / bcast(jnp.max(jnp.abs(t.reshape(x.shape[0], -1)), axis=1), t)
    else:
        t = jax.random.normal(key, x.shape, x.dtype)
        t = t / bcast(jnp.sqrt(jnp.sum(jnp.square(t.reshape(x.shape[0], -1)), axis=1)) + 1e-12, t)
    return jnp.clip(x + jnp.asarray(threat.eps, x.dtype) * t, 0.0, 1.0)


def _apgd_spec(logits_fn, n_iter, loss, rho):
    """One APGD run.  loss: "ce" | "dlr" | "dlr-targeted" (then ctx["target_rank"] >= 1 selects
    the (target_rank+1)-th most likely clean class as target)."""
    is_check_np, ks_np = apgd_schedule(n_iter)

    def loss_fn(logits, y, yt):
        if loss == "ce":
            return L.ce(logits, y)
        if loss == "dlr":
            return L.dlr(logits, y)
        return L.dlr_targeted(logits, y, yt)

    def init(ctx):
        x, y, th = ctx["x"], ctx["y"], ctx["threat"]
        if loss == "dlr-targeted":
            order = jnp.argsort(-logits_fn(x), axis=1)
            yt = jnp.take(order, ctx["target_rank"], axis=1)
        else:
            yt = y
        xa = _apgd_init_point(th, ctx["key"], x)
        g, logits = input_grad(logits_fn, loss_fn, xa, y, yt)
        lv = loss_fn(logits, y, yt)
        acc = jnp.argmax(logits, 1) == y
        b = x.shape[0]
        return dict(
            yt=yt, xa=xa, xold=xa, g=g, x_best=xa, g_best=g, loss_best=lv, x_best_adv=xa, acc=acc,
            step=jnp.full((b,), 2.0, x.dtype) * jnp.asarray(th.eps, x.dtype),
            loss_steps=jnp.zeros((n_iter, b), jnp.float32), loss_best_last=lv,
            reduced_last=jnp.ones((b,), bool),
        )

    def step(ctx, i, s):
        x, y, th = ctx["x"], ctx["y"], ctx["threat"]
        xa, g = s["xa"], s["g"]
        grad2 = xa - s["xold"]
        a = jnp.where(i > 0, 0.75, 1.0).astype(x.dtype)
        z = th.project(xa + bcast(s["step"], xa) * th.steepest(g), x)
        x1 = th.project(xa + (z - xa) * a + grad2 * (1 - a), x)
        g1, logits = input_grad(logits_fn, loss_fn, x1, y, s["yt"])
        lv = loss_fn(logits, y, s["yt"])
        pred = jnp.argmax(logits, 1) == y
        acc = s["acc"] & pred
        x_best_adv = select(~pred, x1, s["x_best_adv"])
        loss_steps = s["loss_steps"].at[i].set(lv)
        imp = lv > s["loss_best"]
        x_best = select(imp, x1, s["x_best"])
        g_best = select(imp, g1, s["g_best"])
        loss_best = jnp.where(imp, lv, s["loss_best"])
        # ---- checkpoint (static schedule) ------------------------------------------------
        is_check = jnp.asarray(is_check_np)[i]
        k = jnp.asarray(ks_np)[i]
        idx = jnp.arange(n_iter)
        prev = jnp.roll(loss_steps, 1, axis=0)  # prev[j] = loss_steps[j - 1], [-1] wraps (reference)
        window = (idx > i - k) & (idx <= i)
        n_incr = jnp.sum(jnp.where(window[:, None], loss_steps > prev, False), axis=0)
        fl_osc = n_incr <= k.astype(jnp.float32) * rho
        fl_no_impr = (~s["reduced_last"]) & (s["loss_best_last"] >= loss_best)
        fl = (fl_osc | fl_no_impr) & is_check
        new = dict(
            yt=s["yt"], xold=xa, acc=acc, x_best_adv=x_best_adv, loss_steps=loss_steps,
            x_best=x_best, g_best=g_best, loss_best=loss_best,
            step=jnp.where(fl, s["step"] / 2.0, s["step"]),
            xa=select(fl, x_best, x1), g=select(fl, g_best, g1),
            reduced_last=jnp.where(is_check, fl, s["reduced_last"]),
            loss_best_last=jnp.where(is_check, loss_best, s["loss_best_last"]),
        )
        return new

    def final(ctx, s):
        return select(~s["acc"], s["x_best_adv"], s["x_best"])

    return Spec(init, step, final, n_iter)


def _run_apgd(logits_fn, x, y, key, threat, *, n_iter, loss, rho, target_rank=0):
    ctx = {"x": jnp.asarray(x), "y": jnp.asarray(y), "key": key, "threat": threat,
           "target_rank": jnp.asarray(target_rank, jnp.int32)}
    settings = (n_iter, loss, float(rho))
    return run_spec(_apgd_spec, settings, logits_fn, ctx)


def _keep_better(logits_fn, x_cur, m_cur, x_new, y):
    """Per example keep the candidate with the lower margin (misclassified first)."""
    m_new = margin_at(logits_fn, x_new, y)
    better = m_new < m_cur
    return select(better, x_new, x_cur), jnp.where(better, m_new, m_cur)


def apgd(logits_fn, x, y, key, threat, *, n_iter=100, loss="ce", restarts=1, rho=0.75):
    """APGD (untargeted) with loss "ce" (APGD-CE) or "dlr" (APGD-DLR).

    Restarts run sequentially with fresh keys; per example the run with the lowest margin
    is kept.  Returns x_adv (last misclassified iterate, else the highest-loss point).
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(n_iter, "n_iter")
    check_setting_positive_int(restarts, "restarts")
    if loss not in ("ce", "dlr"):
        raise ValueError(f"apgd loss must be 'ce' or 'dlr', got {loss!r} (use apgd_t for targeted DLR)")
    if loss == "dlr":
        num_classes_of(logits_fn, x)
    best, m = None, None
    for r in range(restarts):
        kr = key if restarts == 1 else jax.random.fold_in(key, r)
        xa = _run_apgd(logits_fn, x, y, kr, threat, n_iter=int(n_iter), loss=loss, rho=rho)
        if restarts == 1:
            return xa
        if best is None:
            best, m = xa, margin_at(logits_fn, xa, y)
        else:
            best, m = _keep_better(logits_fn, best, m, xa, y)
    return best


def default_n_targets(num_classes: int) -> int:
    return min(9, num_classes - 1)


def apgd_t(logits_fn, x, y, key, threat, *, n_iter=100, n_targets=None, restarts=1, rho=0.75):
    """APGD-T: APGD with the targeted DLR loss, one run per target class.

    Targets are the 2nd, 3rd, ... most likely classes on the clean input; n_targets defaults
    to min(9, K - 1).  Each target's run only changes examples not yet misclassified; per
    example the first successful run is kept, else the run with the lowest margin.
    """
    validate(logits_fn, x, y, key, threat)
    check_setting_positive_int(n_iter, "n_iter")
    check_setting_positive_int(restarts, "restarts")
    k = num_classes_of(logits_fn, x)
    if k < 2:
        raise ValueError(f"APGD-T needs at least 2 classes, got {k}")
    if n_targets is None:
        n_targets = default_n_targets(k)
    check_setting_positive_int(n_targets, "n_targets")
    if n_targets > k - 1:
        raise ValueError(f"n_targets={n_targets} exceeds the {k - 1} classes other than the true one (K={k})")
    run = lambda xs, ys, kr, t, r: _run_apgd(logits_fn, xs, ys, kr, threat, n_iter=int(n_iter), loss="dlr-targeted",
                                           rho=rho, target_rank=t)
    return sequential_targets(run, logits_fn, x, y, key, threat, n_targets, restarts)


def sequential_targets(run, logits_fn, x, y, key, threat, n_targets, restarts):
    """Runs ``run(x, y, key, target_rank, restart)`` for target ranks 1..n_targets.

    Concrete inputs: each run only sees the points not yet misclassified (gathered on the
    host, padded to a ``remaining_bucket`` size), as in the reference implementation; under a
    trace every run covers the whole batch and earlier successes are kept.  Per example the
    first success wins, else the lowest margin; points misclassified on clean inputs keep x.
    """
    if is_traced(logits_fn, x, y, key, threat):
        best, m = None, None
        for t in range(1, n_targets + 1):
            for r in range(restarts):
                xa = run(x, y, jax.random.fold_in(key, t * 1000 + r), t, r)
                if best is None:
                    best, m = xa, margin_at(logits_fn, xa, y)
                else:
                    cand, mc = _keep_better(logits_fn, best, m, xa, y)
                    keep = m < 0
                    best, m = select(keep, best, cand), jnp.where(keep, m, mc)
        return best
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    fooled0, m0 = fooled_and_margin(logits_fn, x, y)
    robust = ~np.asarray(fooled0)
    x_np, y_np = np.array(x), np.asarray(y)
    best = x_np.copy()
    m_best = np.asarray(m0).copy()
    for t in range(1, n_targets + 1):
        for r in range(restarts):
            attack_remaining(lambda xs, ys, kr: run(xs, ys, kr, t, r), logits_fn, x_np, y_np,
                             jax.random.fold_in(key, t * 1000 + r), robust, best, m_best)
    return jnp.asarray(best)
