"""Algorithm 1's per-epoch evaluation (``Alg1Config.epoch_eval_examples``) and its shared baseline.

After every fine-tuning epoch Algorithm 1 measures the attacked test accuracy, for two
uses: the stopping rule (stop once accuracy >= Acc* - k) and Acc~ (the best accuracy over
the epochs).  By default (``epoch_eval_examples=None``, the paper's procedure) every epoch
is attacked on the whole test set.  With ``epoch_eval_examples = m`` (fewer than the test
images) each epoch is attacked on m class-stratified test images only, as a screen:

- stopping: when the subset accuracy reaches the threshold, the same network is attacked
  on the whole test set, and the trial stops (``converged``) only if that confirms it.  A
  trial therefore never stops on a lucky subset; it can train on where the whole set
  would have been over the threshold and the subset was not (at most to E epochs);
- Acc~: the whole test set's attacked accuracy of the selected epoch -- the confirmed
  epoch of a converged trial, else the epoch with the best subset accuracy (the latest of
  ties); Acc_sr when no epoch was trained.  Selection and reported value come from
  different attack runs, so Acc~ is not the maximum of several noisy measurements of
  one set (the default's Acc~ is, and sits about one standard error above the selected
  network's accuracy when the epochs are close);
- the whole set is attacked at most once per epoch, and when the trial measures rho on
  the whole test set (``measure_examples`` >= the test images) the final network's
  attacked inputs serve both: the last epoch E (sequential trials) is evaluated from
  the measurement's x_adv (the evaluation attack on the same images, same key as the
  measurement would use), giving its subset and whole-set accuracy at once, and a final
  network selected for Acc~ is read from them too.

Each epoch's history entry keeps ``adv_acc`` (the subset's accuracy, the curve) and, where
the whole set was attacked, ``adv_acc_full``; the record gains ``epoch_eval_examples``,
``acc_tilde_epoch`` and ``acc_tilde_source``.  Every number in the tables (Acc, Acc*,
Acc_sr, Acc~, Diff) is on the whole test set in both modes.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import numpy as np

from jsemi.runs import config_hash, fingerprint

_FULL_KEY = 0xF011  # key of the whole-set evaluation of epoch e: fold_in(fold_in(k_eval, _FULL_KEY), e)


def _reached(acc: float, threshold: float) -> bool:
    return acc >= threshold - 1e-12


class EpochEval:
    """Where a run's epochs are evaluated: ``x``/``y`` (the subset, or the whole test set)."""

    def __init__(self, ctx):
        cfg = ctx.config
        m = cfg.epoch_eval_examples
        self.n_test = int(ctx.test_y.shape[0])
        self.subset = m is not None and m < self.n_test
        self.examples = int(m) if self.subset else self.n_test
        if self.subset:
            from jsemi.data import stratified_indices

            self.idx = np.sort(stratified_indices(ctx.test_y, m, seed=cfg.seed + 3))
            self.x, self.y = ctx.test_x[self.idx], ctx.test_y[self.idx]
        else:
            self.idx = None
            self.x, self.y = ctx.test_x, ctx.test_y
        # the measurement's x_adv is the evaluation attack on the whole test set (same images, same order)
        self.measure_covers_test = bool(cfg.measure and cfg.measure_examples >= self.n_test)

    def trial(self, ctx, k_eval: jax.Array, threshold: float) -> "TrialSelection":
        return TrialSelection(self, ctx, k_eval, threshold)


class TrialSelection:
    """One trial's stopping decisions and its Acc~ (one fb replica in vmapped mode)."""

    def __init__(self, ee: EpochEval, ctx, k_eval: jax.Array, threshold: float):
        self.ee, self.ctx, self.threshold = ee, ctx, threshold
        self.k_full = jax.random.fold_in(k_eval, _FULL_KEY)
        self.full: dict[int, float] = {}  # epoch -> whole-set accuracy, where measured
        self.best: tuple[float, int, Any] | None = None  # (subset acc, epoch, variables)
        self.stopped_at: int | None = None
        self.final_inputs: tuple | None = None  # (x, x_adv, y) of the measurement, when computed here

    def epoch_accuracy(self, epoch: int, variables: Mapping, key: jax.Array, measure_key: jax.Array) -> float:
        """Attacked accuracy of epoch ``epoch`` (1-based) on ``ee.x``; the last epoch E of a subset run
        whose measurement covers the test set is read from the measurement's x_adv (see the module)."""
        ee, ctx = self.ee, self.ctx
        if not (ee.subset and ee.measure_covers_test and epoch == ctx.config.max_epochs):
            return ctx.evaluator(variables, ee.x, ee.y, key)
        from jsemi.evaluation import AttackedAccuracy

        x, x_adv, y = self.final_inputs = ctx.measure_inputs(variables, measure_key)
        clean = AttackedAccuracy(ctx.model, None, ctx.config.eval_batch_size)
        self.full[epoch] = clean(variables, x_adv, y, key)
        return clean(variables, x_adv[ee.idx], y[ee.idx], key)

    def full_accuracy(self, epoch: int, variables: Mapping) -> float:
        if epoch not in self.full:
            ctx = self.ctx
            self.full[epoch] = ctx.evaluator(variables, ctx.test_x, ctx.test_y, jax.random.fold_in(self.k_full, epoch))
        return self.full[epoch]

    def update(self, epoch: int, variables: Mapping | Callable[[], Mapping], acc: float, entry: dict) -> bool:
        """After epoch ``epoch`` (1-based) with accuracy ``acc`` on ``ee.x``: True when the trial stops
        converged.  ``variables`` may be a thunk (vmapped replicas are unstacked only when needed)."""
        if not self.ee.subset:
            return _reached(acc, self.threshold)
        get = variables if callable(variables) else (lambda: variables)
        if self.best is None or acc >= self.best[0]:
            self.best = (acc, epoch, get())
        if epoch in self.full:  # the whole set was attacked anyway: it decides
            entry["adv_acc_full"] = self.full[epoch]
            if _reached(self.full[epoch], self.threshold):
                self.stopped_at = epoch
                self.best = (acc, epoch, self.best[2] if self.best[1] == epoch else get())
                return True
            return False
        if not _reached(acc, self.threshold):
            return False
        full = self.full_accuracy(epoch, self.best[2] if self.best[1] == epoch else get())
        entry["adv_acc_full"] = full
        if _reached(full, self.threshold):
            self.stopped_at = epoch
            self.best = (acc, epoch, self.best[2] if self.best[1] == epoch else get())
            return True
        return False

    def selected_epoch(self, epochs: int) -> int | None:
        if epochs == 0 or not self.ee.subset:
            return None
        return self.stopped_at if self.stopped_at is not None else self.best[1]

    def needs_measured_accuracy(self, epochs: int) -> bool:
        """True when Acc~ is the final network's whole-set accuracy that the measurement's x_adv gives."""
        e = self.selected_epoch(epochs)
        return e is not None and e == epochs and e not in self.full and self.ee.measure_covers_test

    def acc_tilde(self, history: list[dict], acc_sr: float, measured: float | None = None) -> tuple[float, dict]:
        """(Acc~, extra record fields)."""
        if not self.ee.subset:
            accs = [h["adv_acc"] for h in history]
            return (max(accs) if accs else acc_sr), {}
        extra = {"epoch_eval_examples": self.ee.examples}
        e = self.selected_epoch(len(history))
        if e is None:
            return acc_sr, {**extra, "acc_tilde_epoch": 0, "acc_tilde_source": "acc_sr (no epoch trained)"}
        if e in self.full:
            source = "whole test set (the confirmation, or the last epoch's measurement inputs)"
        elif measured is not None and e == len(history):
            self.full[e] = float(measured)
            source = "whole test set, the measurement's attacked inputs (final network)"
        else:
            self.full_accuracy(e, self.best[2])
            source = "whole test set, attacked after the trial"
        return self.full[e], {**extra, "acc_tilde_epoch": e, "acc_tilde_source": source}


# ----------------------------------------------------------------------------- baseline shared by rows

_BASELINES: dict[str, dict] = {}


def shared_baseline(ctx, compute: Callable[[], dict]) -> dict:
    """Acc, Acc* and both clean accuracies of a run, computed once per process for the same networks,
    test data, evaluation attack, batch size and seed: they do not depend on the split point or k, so
    every row of a table shares them (bit-identical: same program, same key).  The threshold is the
    row's own (it depends on k)."""
    c = ctx.config
    key = config_hash({"normal": fingerprint(ctx.normal), "robust": fingerprint(ctx.robust),
                       "test": fingerprint((ctx.test_x, ctx.test_y)), "model": repr(ctx.model),
                       "attack": c.eval_attack, "settings": dict(c.eval_attack_settings), "norm": c.norm,
                       "eps": float(c.eps), "batch": c.eval_batch_size, "seed": c.seed})
    if key not in _BASELINES:
        if len(_BASELINES) >= 8:
            _BASELINES.pop(next(iter(_BASELINES)))
        _BASELINES[key] = compute()
        return dict(_BASELINES[key])
    return {**_BASELINES[key], "threshold": ctx.threshold(_BASELINES[key]["acc_star"]), "seconds": 0.0,
            "shared": "computed by an earlier row of this process (same networks, test data, attack, seed)"}
