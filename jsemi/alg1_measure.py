"""Algorithm 1's measurements of one run (``jsemi.algorithms``): the attacked inputs, rho,
gamma and the bound report of a trial's final network, the initial rho of the glued
network and Acc_sr (measured once per run).  ``ctx`` is ``jsemi.algorithms._Context``."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Mapping, Sequence

import jax
import numpy as np

from jsemi.data import stratified_indices, unit_float
from jsemi.evaluation import AttackedAccuracy

if TYPE_CHECKING:
    from jsemi.algorithms import _Context


def _stratified(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of min(n, len(labels)) class-stratified examples."""
    n = min(int(n), labels.shape[0])
    return np.sort(stratified_indices(labels, n, seed=seed))


def _measure_inputs(ctx: _Context, variables: Mapping, key: jax.Array) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(x, x_adv, y) on ``measure_examples`` class-stratified test images (x_adv = x for attack "none").

    x_adv: the evaluation attack against the network ``variables`` (compiled once per run).
    """
    cfg = ctx.config
    idx = _stratified(ctx.test_y, cfg.measure_examples, cfg.seed)
    x = unit_float(ctx.test_x[idx])
    y = ctx.test_y[idx]
    if ctx.eval_attack is None:
        return x, x, y
    return x, ctx.evaluator.adversarial(variables, x, y, key), y


def _rhos(ctx: _Context, variables: Mapping, x_adv: np.ndarray, y: np.ndarray, key: jax.Array,
          estimators: Sequence[str] | None = None) -> dict:
    from jsemi.estimators.network import network_rhos

    cfg = ctx.config
    return {est: [_strip(r) for r in network_rhos(ctx.model, variables, x_adv, y, key, layers=ctx.fb, estimator=est,
                                                  **dict(cfg.rho_settings.get(est, {})))]
            for est in (estimators or cfg.rho_estimators)}


def initial_measure(ctx: _Context) -> dict:
    """rho (primary estimator only) of the glued (fa*, fb) network before any fine-tuning (once
    per run; the network is the same for every trial), for "fine-tuning raises rho"
    (PAPER_NOTES section 7).  When the measurement covers the test set, its attacked inputs
    also give Acc_sr (``acc_sr``: the evaluation attack on the same images; see ``glued_accuracy``)."""
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), 0x1417)
    k_adv, k_rho = jax.random.split(key)
    _, x_adv, y = _measure_inputs(ctx, ctx.glued, k_adv)
    primary = ctx.config.rho_estimators[0]
    out = {"rho": _rhos(ctx, ctx.glued, x_adv, y, k_rho, [primary]), "rho_estimator": primary,
           "measure_examples": int(y.shape[0])}
    if ctx.epoch_eval.measure_covers_test:
        out["acc_sr"] = AttackedAccuracy(ctx.model, None, ctx.config.eval_batch_size)(ctx.glued, x_adv, y, k_adv)
    return {**out, "seconds": time.perf_counter() - t0}


def glued_accuracy(ctx: _Context, initial: Mapping | None) -> dict:
    """Acc_sr: the attacked test accuracy of the glued (fa*, fb) network before fine-tuning.

    Every trial starts from the same glued network (PAPER_NOTES section 4, step 3), so Acc_sr
    is measured once per run and every trial's record carries it: read from the initial
    measurement's attacked inputs when they are the evaluation attack on the whole test set
    (``initial["acc_sr"]``), else one run of the evaluation attack on the test set.
    Returns {"acc_sr", "source", "seconds"}.
    """
    if initial is not None and initial.get("acc_sr") is not None:
        return {"acc_sr": float(initial["acc_sr"]), "seconds": 0.0,
                "source": "the initial measurement's attacked inputs (evaluation attack, whole test set)"}
    t0 = time.perf_counter()
    key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), 0x5A5A)
    return {"acc_sr": ctx.evaluator(ctx.glued, ctx.test_x, ctx.test_y, key),
            "source": "evaluation attack on the whole test set", "seconds": time.perf_counter() - t0}


def measure(ctx: _Context, variables: Mapping, key: jax.Array, *, attacked_acc: bool = False,
            inputs: tuple | None = None) -> dict:
    """rho (every estimator) for pairs j = a+1..n, gamma_a and gamma_n, bound report, sensitivities
    (``jsemi.estimators.measure.measure_network`` on the evaluation attack's x_adv); with
    ``attacked_acc`` also the network's accuracy on that x_adv (``attacked_acc``)."""
    from jsemi.estimators.measure import measure_network

    cfg = ctx.config
    pidx = _stratified(ctx.train_y, cfg.probe_examples, cfg.seed + 1)
    px, py = unit_float(ctx.train_x[pidx]), ctx.train_y[pidx]
    x, x_adv, y = inputs or _measure_inputs(ctx, variables, jax.random.fold_in(key, 1))  # inputs: same key
    gx, gy = x, y
    if cfg.gamma_examples is not None and cfg.gamma_examples < y.shape[0]:
        gi = _stratified(y, cfg.gamma_examples, cfg.seed + 2)
        gx, gy = x[gi], y[gi]
    m = measure_network(
        ctx.model, variables, x, y, key, threat=ctx.threat, splits=[ctx.a], x_adv=x_adv, rho_layers=ctx.fb,
        rho_estimators=cfg.rho_estimators, rho_settings=cfg.rho_settings, gamma_layers=[ctx.a, ctx.n],
        gamma_x=gx, gamma_y=gy, gamma_attack=cfg.gamma_attack, gamma_attack_settings=cfg.gamma_attack_settings,
        probe_x=px, probe_y=py, batch_size=min(cfg.eval_batch_size, 256),
        settings={"measure_examples": int(x.shape[0]),
                  "rho_inputs": "clean" if x_adv is x else f"{cfg.eval_attack} (eval attack)"})
    g = {int(r["layer"]): r for r in m.gammas}
    extra = {}
    if attacked_acc:  # the evaluation attack's accuracy on the measured images: one clean pass over x_adv
        extra["attacked_acc"] = AttackedAccuracy(ctx.model, None, cfg.eval_batch_size)(variables, x_adv, y, key)
    return {**extra,
        "rho": {est: [_strip(r) for r in rs] for est, rs in m.rhos.items()},
        "rho_estimator": m.primary,
        "gamma_a": _strip(g[ctx.a]),
        "gamma_b": _strip(g[ctx.n]),
        "bound": m.report.to_dict(),
        "bound_markdown": m.report.to_markdown(),
        "sensitivity": m.sensitivities,
        "measure_examples": int(x.shape[0]),
    }


def _strip(d: Mapping) -> dict:
    """Drops per-example arrays from an estimator's result dict (keeps the records small)."""
    return {k: v for k, v in d.items() if k not in ("clean_margins", "attacked_margins")}
