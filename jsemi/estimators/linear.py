"""Algorithm S1 (PAPER_NOTES section 5): how linearly do a robust network's logits depend on fa*?

Freeze a (robust) network.  On clean or attacked data (the attack runs against the full
network) record A = the flattened outputs of weight layers 1..a (fa*), concatenated, and
Z = the network's logits.  Then

- the paper's estimate: per batch lambda_k = pinv(A_k) Z_k, averaged over batches with equal
  weights (``lambda_avg``), labels predicted by argmax(A lambda_avg): accuracy ``acc_linear``
  (Acc~), compared with the network's accuracy ``acc_star`` (Acc*) on the same inputs,
  ``diff`` = Acc~ - Acc*;
- the exact global solution of the ridge problem min ||A lambda - Z||^2 + lam ||lambda||^2
  (``lambda_global``, ``jsemi.estimators.semirobust.ridge_solve``): ``acc_linear_global``;
- a control: random lambda with i.i.d. normal entries of the same scale as lambda_avg:
  ``acc_random`` (mean over ``random_trials`` draws).

Like the paper, lambda is fitted and evaluated on the same examples.  With more features
than examples the global solution can interpolate Z on them, so ``holdout`` > 0 keeps a
random fraction of the examples out of the fit and reports every accuracy on it as well
(``heldout_*``).  No intercept is fitted unless ``intercept=True`` (the paper has none).
Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.estimators.network import adversarial_examples
from jsemi.estimators.semirobust import batch_slices, check_network_data, map_batches, ridge_solve, threat_dict
from jsemi.models import bind, layer_outputs
from jsemi.validation import check_positive_int

_HP = jax.lax.Precision.HIGHEST


@jax.jit
def _pinv_solve(a, z):
    return jnp.matmul(jnp.linalg.pinv(a), z, precision=_HP)


def _with_intercept(a: np.ndarray, intercept: bool) -> np.ndarray:
    return np.concatenate([a, np.ones((a.shape[0], 1), a.dtype)], axis=1) if intercept else a


def fit_s1(a, z, *, batch_size: int = 256, ridge: float = 1e-6, intercept: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """(lambda_avg, lambda_global) mapping features ``a`` (N, D) to logits ``z`` (N, K).

    ``lambda_avg``: mean over consecutive batches of ``batch_size`` rows of pinv(A_k) Z_k
    (every batch weighs the same, the last, possibly smaller, one included).
    ``lambda_global``: exact ridge solution over all rows (relative ``ridge``, see
    ``ridge_solve``; no centring).  With ``intercept`` a column of ones is appended to ``a``
    (the last row of each lambda is then the intercept).
    """
    a = _with_intercept(np.asarray(a, np.float32).reshape(np.shape(a)[0], -1), intercept)
    z = np.asarray(z, np.float32)
    if a.shape[0] != z.shape[0]:
        raise ValueError(f"a and z must have the same number of rows, got {a.shape[0]} and {z.shape[0]}")
    if not (ridge > 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    lams = [np.asarray(_pinv_solve(a[sl], z[sl])) for sl in batch_slices(a.shape[0], batch_size)]
    lam_avg = np.mean(np.stack(lams), axis=0)
    lam_global, _ = ridge_solve(a, z, float(ridge), fit_intercept=False)
    return lam_avg, np.asarray(lam_global)


def _predict(a: np.ndarray, lam: np.ndarray) -> np.ndarray:
    return np.asarray(jnp.matmul(jnp.asarray(a), jnp.asarray(lam), precision=_HP))


def _rel_residual(pred: np.ndarray, z: np.ndarray) -> float:
    return float(np.linalg.norm(pred - z) / max(np.linalg.norm(z), 1e-30))


@functools.partial(jax.jit, static_argnames=("max_a",))
def _logits_and_features(fn, xb, *, max_a: int):
    """(logits (B, K), outputs of weight layers 1..max_a flattened and concatenated (B, D))."""
    logits, outs = layer_outputs(fn.model, fn.variables, xb)
    return logits.astype(jnp.float32), jnp.concatenate([o.reshape(o.shape[0], -1).astype(jnp.float32)
                                                        for o in outs[:max_a]], axis=1)


def _features(model, variables, x, max_a: int, batch_size: int) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """(A for layers 1..max_a concatenated, logits, cumulative column counts per layer)."""

    fn = bind(model, variables)
    logits, a = map_batches(lambda xb: _logits_and_features(fn, xb, max_a=max_a), [np.asarray(x)], batch_size)
    _, outs = jax.eval_shape(lambda xb: layer_outputs(model, variables, xb), jnp.asarray(x[:1]))
    ends = list(np.cumsum([math.prod(o.shape[1:]) for o in outs[:max_a]]))
    return a, logits, [int(e) for e in ends]


def _acc(pred_scores: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(np.argmax(pred_scores, -1) == y))


def algorithm_s1_sweep(model, variables, x, y, key, *, split_points: Iterable[int], attacks: Sequence[str | Callable | None] = (None,),
                       threat=None, attack_settings: Mapping[str, Mapping[str, Any]] | None = None,
                       lambda_batch_size: int = 256, ridge: float = 1e-6, intercept: bool = False,
                       random_trials: int = 10, holdout: float = 0.0, batch_size: int = 256) -> list[dict]:
    """Algorithm S1 for every (attack, split point a): one dict per pair (see the module doc).

    ``attacks``: None / "none" (clean data) or attack names of ``jsemi.attacks`` (or
    callables) run against the full network with ``threat``; ``attack_settings`` maps an
    attack name to its settings.  Attacked inputs and activations are computed once per
    attack and shared by all split points.
    """
    x, y, n, splits = check_network_data(model, variables, x, y, split_points)
    check_positive_int(lambda_batch_size, "lambda_batch_size")
    check_positive_int(random_trials, "random_trials")
    if not 0.0 <= holdout < 1.0:
        raise ValueError(f"holdout must be in [0, 1), got {holdout}")
    rng = np.random.default_rng(int(jax.random.randint(jax.random.fold_in(key, 7), (), 0, 2**31 - 1)))
    perm = rng.permutation(x.shape[0])
    n_eval = int(round(holdout * x.shape[0]))
    fit_idx, eval_idx = np.sort(perm[n_eval:]), np.sort(perm[:n_eval])
    if len(fit_idx) < 2:
        raise ValueError("too few examples left to fit lambda")

    rows = []
    for ai, attack in enumerate(attacks):
        name = "none" if attack is None or attack == "none" else (attack if isinstance(attack, str) else getattr(attack, "__name__", "custom"))
        settings = dict((attack_settings or {}).get(name, {}))
        if name == "none":
            x_in = x
        else:
            if threat is None:
                raise ValueError(f"attack {name!r} needs a threat model (LinfBall / L2Ball)")
            x_in = adversarial_examples(model, variables, x, y, jax.random.fold_in(key, 1000 + ai), threat=threat,
                                        attack=attack, attack_settings=settings, batch_size=batch_size)
        a_all, z, ends = _features(model, variables, x_in, max(splits), batch_size)
        for a in splits:
            feats = _with_intercept(a_all[:, : ends[a - 1]], intercept)
            lam_avg, lam_glob = fit_s1(feats[fit_idx], z[fit_idx], batch_size=lambda_batch_size, ridge=ridge, intercept=False)
            p_avg, p_glob = _predict(feats, lam_avg), _predict(feats, lam_glob)
            scale = float(np.std(lam_avg)) or 1.0
            rkey = np.random.default_rng(rng.integers(1 << 31))
            p_rand = [_predict(feats, rkey.normal(0.0, scale, lam_avg.shape).astype(np.float32)) for _ in range(random_trials)]
            net_pred = np.argmax(z, -1)
            row = {
                "attack": name, "a": a, "num_fb": n - a, "feature_dim": int(feats.shape[1]),
                "num_examples": int(x.shape[0]), "num_fit": int(len(fit_idx)),
                "acc_star": _acc(z[fit_idx], y[fit_idx]),
                "acc_linear": _acc(p_avg[fit_idx], y[fit_idx]),
                "acc_linear_global": _acc(p_glob[fit_idx], y[fit_idx]),
                "acc_random": float(np.mean([_acc(p[fit_idx], y[fit_idx]) for p in p_rand])),
                "acc_random_std": float(np.std([_acc(p[fit_idx], y[fit_idx]) for p in p_rand])),
                "agreement_linear": float(np.mean(np.argmax(p_avg[fit_idx], -1) == net_pred[fit_idx])),
                "agreement_linear_global": float(np.mean(np.argmax(p_glob[fit_idx], -1) == net_pred[fit_idx])),
                "rel_residual_linear": _rel_residual(p_avg[fit_idx], z[fit_idx]),
                "rel_residual_linear_global": _rel_residual(p_glob[fit_idx], z[fit_idx]),
            }
            row["diff"] = row["acc_linear"] - row["acc_star"]
            row["diff_global"] = row["acc_linear_global"] - row["acc_star"]
            if n_eval:
                e = eval_idx
                row.update({
                    "heldout_examples": int(n_eval),
                    "heldout_acc_star": _acc(z[e], y[e]),
                    "heldout_acc_linear": _acc(p_avg[e], y[e]),
                    "heldout_acc_linear_global": _acc(p_glob[e], y[e]),
                    "heldout_acc_random": float(np.mean([_acc(p[e], y[e]) for p in p_rand])),
                })
                row["heldout_diff"] = row["heldout_acc_linear"] - row["heldout_acc_star"]
                row["heldout_diff_global"] = row["heldout_acc_linear_global"] - row["heldout_acc_star"]
            row["settings"] = {
                "lambda_batch_size": lambda_batch_size, "ridge": ridge, "intercept": intercept,
                "random_trials": random_trials, "holdout": holdout, "attack_settings": settings,
                "threat": None if name == "none" else threat_dict(threat),
            }
            rows.append(row)
    return rows


def algorithm_s1(model, variables, a: int, x, y, key, *, attack: str | Callable | None = None, threat=None,
                 attack_settings: Mapping[str, Any] | None = None, **kwargs) -> dict:
    """Algorithm S1 for one split point ``a`` and one attack (None = clean data); see the module doc."""
    name = "none" if attack is None else (attack if isinstance(attack, str) else getattr(attack, "__name__", "custom"))
    return algorithm_s1_sweep(model, variables, x, y, key, split_points=[a], attacks=[attack], threat=threat,
                              attack_settings={name: dict(attack_settings or {})}, **kwargs)[0]


def s1_markdown(rows: Sequence[Mapping[str, Any]], title: str = "Algorithm S1: linear dependency of the logits on fa*") -> str:
    """Markdown table of ``algorithm_s1_sweep`` rows (accuracies as fractions in [0, 1])."""
    held = any("heldout_acc_linear" in r for r in rows)
    head = ["attack", "a (fa* layers)", "# fb", "dim A", "Acc*", "Acc~ (batch-avg lambda)", "Diff",
            "Acc~ (global ridge)", "Diff (global)", "Acc_rand", "rel. residual"]
    if held:
        head += ["held-out Acc*", "held-out Acc~", "held-out Acc~ (global)", "held-out Acc_rand"]
    lines = [f"# {title}", "",
             "Acc* = network accuracy, Acc~ = accuracy of argmax(A lambda) on the same inputs, Diff = Acc~ - Acc* "
             "(fractions in [0, 1]); lambda fitted and evaluated on the same examples as in the paper, "
             "held-out columns on examples left out of the fit. Acc_rand: random lambda (mean ± std over draws). "
             "rel. residual: norm(A lambda - Z) / norm(Z) (Frobenius) of the batch-averaged lambda.", "",
             "| " + " | ".join(head) + " |", "|" + "|".join([":---"] + ["---:"] * (len(head) - 1)) + "|"]
    f = lambda v: "-" if v is None else f"{v:.4f}"
    for r in rows:
        cells = [r["attack"], str(r["a"]), str(r["num_fb"]), str(r["feature_dim"]), f(r["acc_star"]), f(r["acc_linear"]),
                 f"{r['diff']:+.4f}", f(r["acc_linear_global"]), f"{r['diff_global']:+.4f}",
                 f"{r['acc_random']:.4f} ± {r['acc_random_std']:.4f}", f(r["rel_residual_linear"])]
        if held:
            cells += [f(r.get("heldout_acc_star")), f(r.get("heldout_acc_linear")), f(r.get("heldout_acc_linear_global")),
                      f(r.get("heldout_acc_random"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"
