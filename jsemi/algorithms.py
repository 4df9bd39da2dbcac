"""Algorithm 1 of the paper (semirobust transfer, PAPER_NOTES section 4), resumable.

Given a normally trained network (fa, fb) and an adversarially trained one (fa*, fb*) of
the same architecture, and a split point a (or "# fb" = n - a):

1. ``Acc``  = attacked test accuracy of (fa, fb); ``Acc*`` = the same for (fa*, fb*).
   Both are computed once per run (key from ``config.seed``) and stored in
   ``baseline.json``; every trial record repeats them.
2. Per trial t (seed ``trial_seed(config.seed, t)``; trials differ in the order of the
   training data and in the randomness of the training and evaluation attacks):

   - glue (fa*, fb): fa* from the robust network, fb from the normal one, for every
     collection (params AND BatchNorm statistics);
   - ``Acc_sr`` = attacked test accuracy of the glued network before any training.  The
     glued network is the same in every trial, so it is measured once per run
     (``glued_accuracy``, ``RUN/acc_sr.json``; from the initial rho measurement's attacked
     inputs when they cover the test set) and every record carries it;
   - fine-tune fb only, adversarially (``config.finetune``, a ``TrainConfig``; the
     paper uses PGD-10 training).  fa* is frozen: ``create_train_state`` with
     ``trainable_layers`` = fb, so fa*'s weights get no update and no weight decay and
     its BatchNorm layers run on their running statistics without updating them.  After
     every epoch the attacked test accuracy is measured; the trial stops as soon as
     accuracy >= Acc* - k (``k`` in accuracy points, i.e. percent) or after
     ``max_epochs`` epochs (the paper's E = 10).  The check runs before each epoch too,
     so a glued network already within k of Acc* trains for 0 epochs (``epoch_eval_examples``:
     epochs screened on a test subset, confirmed on the whole set, ``jsemi.alg1_epochs``);
   - ``Acc~`` = the best attacked accuracy over the fine-tuning epochs (Acc_sr when 0
     epochs were trained); ``Diff`` = Acc~ - Acc*; ``converged`` = the threshold was met;
   - on ``measure_examples`` test images, with the network as it stands when the trial
     stops: rho_j for every consecutive weight-layer pair (j-1, j), j = a+1..n (the sum
     in Theorem 2; the first pair straddles the fa*/fb boundary), each with its
     within-class permutation null, excess and p-value
     (``jsemi.estimators.network.network_rhos``), on inputs attacked with the evaluation
     attack (clean inputs when it is "none"); gamma_a and gamma_b = gamma_n
     (``layer_gammas``, upper estimates) with the Theorem 2/3 report
     (``bound_report``); and the sensitivity of every layer (Zhang et al. 2019);
   - a check that every fa* variable is bit-identical to the robust network's.

   The record is written to ``RUN/trials/trial_XXX.json`` atomically the moment the
   trial finishes (``jsemi.runs``); a rerun skips finished trials.  Its curves (attacked
   accuracy per epoch, threshold, rho per pair) go to ``RUN/metrics/trial_XXX/`` as
   TensorBoard events and CSV (``jsemi.metrics``).

Accuracies are fractions in [0, 1] in the records; ``k`` is in percentage points, as in
the paper.  Every record is a deterministic function of (networks, data, config, trial
index) on a given machine, except the ``timing`` entry (wall-clock seconds).

Vectorised trials (``config.vmap > 1``): that many trials are trained at once as fb
replicas stacked along a leading axis, with ``jax.vmap`` over the jitted train step and
the attacked evaluation, in one compiled program (the authors ran trials one after
another).  Each replica keeps its own data order and keys, identical to the sequential
trial's, and its own stopping epoch (its variables are snapshotted when it stops;
replicas that stopped keep computing until the group ends, which wastes some work).
Records of the two modes agree up to floating-point reassociation, not bit for bit, so
the mode is part of the run configuration.  **Use it on an accelerator, not on a CPU**:
vmapping over the weights turns every convolution into a batched-weight (grouped)
convolution, which XLA's CPU backend runs slowly -- measured on the 2-core CPU with the
SmallCNN, 3 replicas at batch 128 took 3.5 s per PGD-3 step against 3 x 0.2 s in sequence
(0.17x), and PGD-10 evaluation of 1,000 images 59 s against 3 x 3.4 s.  AutoAttack
evaluation (host mode) runs the replicas one after another.
"""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jsemi import metrics, partition
from jsemi.alg1_config import Alg1Config, trial_seed  # noqa: F401  (public here too)
from jsemi.alg1_epochs import EpochEval, TrialSelection, _reached, shared_baseline
from jsemi.alg1_measure import _measure_inputs, glued_accuracy, initial_measure, measure
from jsemi.attacks.threat import make_threat
from jsemi.evaluation import AttackedAccuracy, bind_eval_attack  # noqa: F401
from jsemi.runs import RunDir, canonical_json, fingerprint
from jsemi.train import (
    batch_indices,
    create_train_state,
    frozen_leaves_equal,
)
from jsemi.training_modes import make_train_step, train_epoch

ALGORITHM_VERSION = 1


# ----------------------------------------------------------------------------- networks


def check_same_architecture(normal: Mapping, robust: Mapping) -> None:
    """Raises ValueError unless both variable trees have the same paths, shapes and dtypes."""
    def sig(tree):
        return {jax.tree_util.keystr(p): (tuple(np.shape(v)), str(np.asarray(v).dtype))
                for p, v in jax.tree_util.tree_flatten_with_path(partition._as_dict(tree))[0]}

    a, b = sig(normal), sig(robust)
    if a != b:
        only_a, only_b = sorted(set(a) - set(b)), sorted(set(b) - set(a))
        diff = [k for k in set(a) & set(b) if a[k] != b[k]]
        raise ValueError(
            "the normal and the robust network must have the same architecture; "
            f"only in normal: {only_a[:3]}, only in robust: {only_b[:3]}, different shapes: {sorted(diff)[:3]}"
        )


def glue(robust: Mapping, normal: Mapping, a: int) -> dict:
    """(fa*, fb): layers 1..a (params and batch_stats) from ``robust``, layers a+1..n from ``normal``."""
    fa_star, _ = partition.split(robust, a)
    _, fb = partition.split(normal, a)
    return partition.merge(fa_star, fb)


def _copy_tree(tree: Any) -> Any:
    return jax.tree_util.tree_map(lambda v: np.array(v, copy=True), partition._as_dict(tree))


def _evaluator(model, config: "Alg1Config", attack: Callable | None) -> AttackedAccuracy:
    """The run's evaluator: compiled once per run by jit (weights are arguments)."""
    return AttackedAccuracy(model, attack, config.eval_batch_size)


# ----------------------------------------------------------------------------- data helpers


def _arrays(data: Any, name: str) -> tuple[np.ndarray, np.ndarray]:
    if hasattr(data, "images") and hasattr(data, "labels"):
        x, y = data.images, data.labels
    elif isinstance(data, (tuple, list)) and len(data) == 2:
        x, y = data
    else:
        raise TypeError(f"{name} must be a jsemi.data.Dataset or an (images, labels) pair")
    x, y = np.asarray(x), np.asarray(y)
    if x.ndim != 4:
        raise ValueError(f"{name} images must be NHWC (rank 4), got shape {x.shape}")
    if y.ndim != 1 or y.shape[0] != x.shape[0] or not np.issubdtype(y.dtype, np.integer):
        raise ValueError(f"{name} labels must be a rank-1 int array with one label per image, got {y.dtype} {y.shape}")
    if x.dtype != np.uint8:
        from jsemi.validation import check_images

        check_images(x, f"{name} images")
    return x, y.astype(np.int32)


# ----------------------------------------------------------------------------- the run


@dataclasses.dataclass
class Alg1Result:
    """Outcome of ``algorithm1``: the configuration, baseline (Acc, Acc*) and trial records."""

    config: Alg1Config
    baseline: dict
    trials: list[dict]
    run_dir: Path | None
    ran: list[int]  # trial indices computed by this call (the others were loaded)
    initial: dict | None = None  # rho of the glued network before fine-tuning


class _Context:
    """Everything a trial needs, prepared once per run."""

    def __init__(self, model, normal, robust, train, test, config: Alg1Config):
        self.model, self.config = model, config
        self.normal, self.robust = partition._as_dict(normal), partition._as_dict(robust)
        check_same_architecture(self.normal, self.robust)
        self.n = max(partition.layer_indices(self.normal["params"]))
        self.a = config.split_point(self.n)
        self.fa = tuple(range(1, self.a + 1))
        self.fb = tuple(range(self.a + 1, self.n + 1))
        self.train_x, self.train_y = _arrays(train, "train")
        self.test_x, self.test_y = _arrays(test, "test")
        self.tcfg = dataclasses.replace(config.finetune, epochs=config.max_epochs)
        self.steps_per_epoch = self.train_x.shape[0] // self.tcfg.batch_size
        if self.steps_per_epoch < 1:
            raise ValueError(f"finetune batch_size {self.tcfg.batch_size} exceeds the {self.train_x.shape[0]} training images")
        self.threat = make_threat(config.norm, config.eps)
        self.eval_attack = bind_eval_attack(config.eval_attack, self.threat, config.eval_attack_settings)
        self.evaluator = _evaluator(model, config, self.eval_attack)
        self.glued = glue(self.robust, self.normal, self.a)
        self.epoch_eval = EpochEval(self)  # where each epoch is evaluated (config.epoch_eval_examples)
        self.measure_inputs = lambda variables, key: _measure_inputs(self, variables, key)
        self._step_fn = None
        self._vstep = None
        self._state0 = None

    @property
    def initial_state(self):
        """The train state of the glued network (fb trainable), built once: every trial starts
        from it, and reusing its optimizer object keeps the compiled step in jit's cache."""
        if self._state0 is None:
            self._state0 = create_train_state(self.glued, self.tcfg, self.steps_per_epoch, trainable_layers=self.fb)
        return self._state0

    @property
    def step_fn(self):
        if self._step_fn is None:
            self._step_fn = make_train_step(self.model, self.tcfg)
        return self._step_fn

    @property
    def vstep(self):
        if self._vstep is None:
            self._vstep = jax.jit(jax.vmap(self.step_fn))
        return self._vstep

    def threshold(self, acc_star: float) -> float:
        return acc_star - self.config.k / 100.0

    def run_identity(self) -> dict:
        return {
            "algorithm": "algorithm1",
            "version": ALGORITHM_VERSION,
            "model": type(self.model).__name__,
            "n": self.n,
            "a": self.a,
            "normal": fingerprint(self.normal),
            "robust": fingerprint(self.robust),
            "train_data": fingerprint((self.train_x, self.train_y)),
            "test_data": fingerprint((self.test_x, self.test_y)),
            "config": self.config.identity(),
        }


def _baseline(ctx: _Context) -> dict:
    key = jax.random.fold_in(jax.random.PRNGKey(ctx.config.seed), 0xBA5E)
    t0 = time.perf_counter()
    acc = ctx.evaluator(ctx.normal, ctx.test_x, ctx.test_y, key)
    acc_star = ctx.evaluator(ctx.robust, ctx.test_x, ctx.test_y, key)
    clean = AttackedAccuracy(ctx.model, None, ctx.config.eval_batch_size)
    return {
        "acc": acc,
        "acc_star": acc_star,
        "clean_acc_normal": clean(ctx.normal, ctx.test_x, ctx.test_y, key),
        "clean_acc_robust": clean(ctx.robust, ctx.test_x, ctx.test_y, key),
        "threshold": ctx.threshold(acc_star),
        "n_test": int(ctx.test_x.shape[0]),
        "eval_attack": ctx.config.eval_attack,
        "eval_attack_settings": dict(ctx.config.eval_attack_settings),
        "threat": {"norm": ctx.config.norm, "eps": float(ctx.config.eps)},
        "seconds": time.perf_counter() - t0,
    }


def _finish_record(ctx: _Context, t: int, seed: int, baseline: dict, acc_sr: float, history: list[dict],
                   converged: bool, final_vars: Mapping, key: jax.Array, timing: dict, mode: str,
                   sel: TrialSelection) -> dict:
    acc_star = baseline["acc_star"]
    t_meas = time.perf_counter()
    measured = None
    if ctx.config.measure:
        measured = measure(ctx, final_vars, jax.random.fold_in(key, 0x3EA5), inputs=sel.final_inputs,
                           attacked_acc=sel.needs_measured_accuracy(len(history)))
    acc_tilde, extra = sel.acc_tilde(history, acc_sr, (measured or {}).pop("attacked_acc", None))
    rec = {
        "trial": t,
        "seed": seed,
        "mode": mode,
        "net": ctx.config.net,
        "dataset": ctx.config.dataset,
        "n": ctx.n,
        "a": ctx.a,
        "num_fb": ctx.n - ctx.a,
        "k": ctx.config.k,
        "max_epochs": ctx.config.max_epochs,
        "acc": baseline["acc"],
        "acc_star": acc_star,
        "threshold": ctx.threshold(acc_star),
        "acc_sr": acc_sr,
        "acc_tilde": acc_tilde,
        "diff": acc_tilde - acc_star,
        "converged": bool(converged),
        "epochs": len(history),
        "history": history,
        "fa_star_bit_identical": bool(frozen_leaves_equal(ctx.robust, partition._as_dict(final_vars), ctx.fa)),
        **extra,
    }
    rec.update(measured or {})
    timing = dict(timing)
    timing["measure_s"] = time.perf_counter() - t_meas
    timing["wall_s"] = timing.get("train_eval_s", 0.0) + timing["measure_s"]
    rec["timing"] = timing
    return rec


def run_trial(ctx: _Context, t: int, baseline: dict, acc_sr: float, *, progress: bool = False) -> dict:
    """Trial ``t`` sequentially from the glued network (attacked accuracy ``acc_sr``, see
    ``glued_accuracy``): fine-tune fb until Acc* - k or E epochs, measure."""
    cfg = ctx.config
    seed = trial_seed(cfg.seed, t)
    key = jax.random.PRNGKey(seed)
    k_eval = jax.random.fold_in(key, 0xE7A1)
    thr = ctx.threshold(baseline["acc_star"])
    t0 = time.perf_counter()
    state = ctx.initial_state
    history, epoch_s = [], []
    converged = _reached(acc_sr, thr)
    ee = ctx.epoch_eval
    sel = ee.trial(ctx, k_eval, thr)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_epochs, desc=f"trial {t} (# fb {ctx.n - ctx.a})", unit="epoch", leave=False)
        bar.set_postfix(acc=f"{acc_sr:.3f}", target=f"{thr:.3f}")
    epoch = 0
    while not converged and epoch < cfg.max_epochs:
        te = time.perf_counter()
        state, m = train_epoch(state, ctx.step_fn, ctx.train_x, ctx.train_y, jax.random.fold_in(key, 1000 + epoch),
                               batch_size=ctx.tcfg.batch_size, seed=seed, epoch=epoch, progress=False)
        acc = sel.epoch_accuracy(epoch + 1, state.variables, jax.random.fold_in(k_eval, epoch + 1),
                                 jax.random.fold_in(jax.random.fold_in(key, 0x3EA5), 1))  # measure's x_adv key
        epoch += 1
        history.append({"epoch": epoch, "adv_acc": acc, "train_loss": m["loss"], "train_acc": m["acc"]})
        converged = sel.update(epoch, state.variables, acc, history[-1])
        epoch_s.append(time.perf_counter() - te)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(acc=f"{acc:.3f}", target=f"{thr:.3f}")
    if bar is not None:
        bar.close()
    timing = {"train_eval_s": time.perf_counter() - t0, "epoch_s": epoch_s}
    return _finish_record(ctx, t, seed, baseline, acc_sr, history, converged, state.variables, key, timing, "sequential",
                          sel)


def _stack(tree: Any, r: int) -> Any:
    return jax.tree_util.tree_map(lambda v: jnp.broadcast_to(v, (r,) + jnp.shape(v)), tree)


def _unstack(tree: Any, i: int) -> Any:
    return jax.tree_util.tree_map(lambda v: np.asarray(v[i]), tree)


def run_trials_vmapped(ctx: _Context, trials: Sequence[int], baseline: dict, acc_sr: float, *,
                       progress: bool = False, on_record: Callable[[int, dict], None] | None = None) -> list[dict]:
    """Trials ``trials`` trained at once (fb replicas stacked, ``jax.vmap`` over the train step),
    each from the glued network (attacked accuracy ``acc_sr``, see ``glued_accuracy``)."""
    cfg = ctx.config
    R = len(trials)
    seeds = [trial_seed(cfg.seed, t) for t in trials]
    keys = [jax.random.PRNGKey(s) for s in seeds]
    k_evals = jnp.stack([jax.random.fold_in(k, 0xE7A1) for k in keys])
    thr = ctx.threshold(baseline["acc_star"])
    t0 = time.perf_counter()
    fold = jax.vmap(jax.random.fold_in, in_axes=(0, None))
    state = _stack(ctx.initial_state, R)
    histories: list[list[dict]] = [[] for _ in range(R)]
    epoch_s: list[list[float]] = [[] for _ in range(R)]
    done = [_reached(acc_sr, thr)] * R
    final: list[Any] = [ctx.glued if done[r] else None for r in range(R)]
    converged = list(done)
    ee = ctx.epoch_eval
    sels = [ee.trial(ctx, k_evals[r], thr) for r in range(R)]
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=cfg.max_epochs, desc=f"trials {trials[0]}..{trials[-1]} vmapped (# fb {ctx.n - ctx.a})",
                   unit="epoch", leave=False)
    epoch = 0
    B = ctx.tcfg.batch_size
    N = ctx.train_x.shape[0]
    while not all(done) and epoch < cfg.max_epochs:
        te = time.perf_counter()
        order = [batch_indices(N, B, s, epoch) for s in seeds]
        ekeys = jnp.stack([jax.random.fold_in(k, 1000 + epoch) for k in keys])
        losses, accs_tr = [], []
        for i in range(len(order[0])):
            ix = np.stack([order[r][i] for r in range(R)])
            state, m = ctx.vstep(state, ctx.train_x[ix], ctx.train_y[ix], fold(ekeys, i))
            losses.append(m["loss"])
            accs_tr.append(m["acc"])
        losses = np.mean(np.asarray(jax.device_get(losses)), 0)
        accs_tr = np.mean(np.asarray(jax.device_get(accs_tr)), 0)
        stacked_vars = {"params": state.params}
        if state.batch_stats:
            stacked_vars["batch_stats"] = state.batch_stats
        accs = ctx.evaluator.many(stacked_vars, ee.x, ee.y, fold(k_evals, epoch + 1))
        epoch += 1
        dt = time.perf_counter() - te
        for r in range(R):
            if done[r]:
                continue
            acc = float(accs[r])
            histories[r].append({"epoch": epoch, "adv_acc": acc, "train_loss": float(losses[r]),
                                 "train_acc": float(accs_tr[r])})
            epoch_s[r].append(dt)
            reached = sels[r].update(epoch, lambda r=r: _unstack(stacked_vars, r), acc, histories[r][-1])
            if reached or epoch == cfg.max_epochs:
                converged[r] = reached
                done[r] = True
                final[r] = _unstack(stacked_vars, r)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(active=R - sum(done), best=f"{float(np.max(accs)):.3f}", target=f"{thr:.3f}")
    if bar is not None:
        bar.close()
    for r in range(R):
        if final[r] is None:  # cannot happen (loop ends at max_epochs), kept for safety
            final[r] = _unstack({"params": state.params, "batch_stats": state.batch_stats}, r)
    train_s = time.perf_counter() - t0
    records = []
    for r, t in enumerate(trials):
        timing = {"train_eval_s": train_s / R, "epoch_s": epoch_s[r], "group_train_eval_s": train_s, "group_size": R}
        rec = _finish_record(ctx, t, seeds[r], baseline, acc_sr, histories[r], converged[r], final[r],
                             keys[r], timing, "vmap", sels[r])
        if on_record is not None:
            on_record(t, rec)
        records.append(rec)
    return records


def algorithm1(
    model,
    normal_variables: Mapping,
    robust_variables: Mapping,
    train: Any,
    test: Any,
    config: Alg1Config,
    run_dir: str | Path | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    after_trial: Callable[[int, dict], None] | None = None,
) -> Alg1Result:
    """Runs Algorithm 1 for one split point; resumable when ``run_dir`` is given.

    ``train`` / ``test``: ``jsemi.data.Dataset`` or (images, labels) with uint8 or [0, 1]
    float NHWC images.  ``train`` is the fine-tuning data, ``test`` the data on which
    every attacked accuracy (Acc, Acc*, Acc_sr, per epoch) is measured.  With
    ``run_dir``, finished trials are loaded instead of recomputed, each new trial's
    record is written atomically the moment it finishes, and a directory created with
    another configuration (or other networks / data) raises
    ``jsemi.runs.ConfigMismatchError``.  ``after_trial(t, record)`` is called after each
    record is saved.  Returns an ``Alg1Result`` with every trial in index order.
    """
    say = log or (lambda s: None)
    ctx = _Context(model, normal_variables, robust_variables, train, test, config)
    rd = RunDir.open(run_dir, ctx.run_identity(), kind="algorithm1") if run_dir is not None else None
    if rd is not None:
        rd.save("settings", {"config": config.to_dict(), "n": ctx.n, "a": ctx.a, "fa": ctx.fa, "fb": ctx.fb,
                             "n_train": int(ctx.train_x.shape[0]), "n_test": int(ctx.test_x.shape[0])})
        baseline = rd.cached("baseline", lambda: shared_baseline(ctx, lambda: _baseline(ctx)))
        initial = rd.cached("initial", lambda: initial_measure(ctx)) if config.measure else None
        glued = rd.cached("acc_sr", lambda: glued_accuracy(ctx, initial))
        pending = rd.pending(config.trials)
        have = {i: rd.load_trial(i) for i in range(config.trials) if i not in pending}
    else:
        import json

        baseline = json.loads(canonical_json(shared_baseline(ctx, lambda: _baseline(ctx))))
        initial = json.loads(canonical_json(initial_measure(ctx))) if config.measure else None
        glued = json.loads(canonical_json(glued_accuracy(ctx, initial)))
        pending = list(range(config.trials))
        have = {}
    say(f"Algorithm 1: n={ctx.n}, a={ctx.a} (# fb {ctx.n - ctx.a}), Acc={baseline['acc']:.4f}, "
        f"Acc*={baseline['acc_star']:.4f}, Acc_sr={glued['acc_sr']:.4f}, target >= {baseline['threshold']:.4f}; "
        f"{len(have)} trial(s) done, {len(pending)} to run")

    ran: list[int] = []

    def save(t: int, rec: dict) -> None:
        import json

        rec = json.loads(canonical_json(rec))
        if rd is not None:
            rd.save_trial(t, rec)
            rec = rd.load_trial(t)
            metrics.log_alg1_trial(rd.path / metrics.METRICS_DIR, rec)  # TensorBoard + metrics.csv curves
        have[t] = rec
        ran.append(t)
        say(f"  trial {t}: Acc_sr={rec['acc_sr']:.4f} Acc~={rec['acc_tilde']:.4f} epochs={rec['epochs']} "
            f"converged={rec['converged']} ({rec['timing']['wall_s']:.1f} s)")
        if after_trial is not None:
            after_trial(t, rec)

    bar = None
    if progress and pending:
        from tqdm.auto import tqdm

        bar = tqdm(total=config.trials, initial=config.trials - len(pending), unit="trial",
                   desc=f"Algorithm 1, # fb {ctx.n - ctx.a}")
    try:
        if config.vmap > 1:
            for s in range(0, len(pending), config.vmap):
                group = pending[s:s + config.vmap]

                def on_record(t, rec):
                    save(t, rec)
                    if bar is not None:
                        bar.update(1)

                run_trials_vmapped(ctx, group, baseline, glued["acc_sr"], progress=progress, on_record=on_record)
        else:
            for t in pending:
                save(t, run_trial(ctx, t, baseline, glued["acc_sr"], progress=progress))
                if bar is not None:
                    bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    trials = [have[i] for i in sorted(have)]
    return Alg1Result(config=config, baseline=baseline, trials=trials,
                      run_dir=None if rd is None else rd.path, ran=ran, initial=initial)
