"""The one measurement pipeline: attacked inputs -> layer outputs -> gamma, rho with nulls,
sensitivities -> the Theorem 2/3 report.

``measure_network`` is what ``jsemi estimate``, Algorithm 1 (``jsemi.algorithms.measure``)
and the demo's bound stage call.  Given a network (``model``, ``variables``), images ``x``
(N, H, W, C) float32 in [0, 1] with labels ``y`` (N,), a threat model and split points a:

1. x_adv: ``attack`` against the whole network (or the caller's ``x_adv``; x itself for
   attack "none");
2. rho_j for the layer pairs (j-1, j), with each estimator, on x_adv, every value beside its
   within-class permutation null (bits);
3. gamma_j for ``gamma_layers`` (default: the split points and n): a probe per layer fitted
   on ``probe_x`` and attacked (an upper estimate, logit or probe-score units);
4. the sensitivity of every layer (x against x_adv);
5. ``bound_report`` of Theorems 2 and 3 at the split points with the first estimator's rho.

Keys: the attack uses ``fold_in(key, 1)``, rho ``fold_in(key, 2)`` (the same key for every
estimator, so they see the same permutations) and gamma ``fold_in(key, 3)``.
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np

from jsemi.estimators.bounds import BoundReport, bound_report
from jsemi.estimators.network import adversarial_examples, layer_sensitivities, network_rhos
from jsemi.estimators.semirobust import check_network_data, layer_gammas

__all__ = ["Measurement", "measure_network"]


@dataclasses.dataclass
class Measurement:
    """What ``measure_network`` found.

    Attributes:
      x_adv: (N, H, W, C) float32 attacked inputs (x itself without an attack).
      rhos: estimator -> one dict per pair (``network_rhos``: rho, null, excess, p_value in bits).
      gammas: one dict per gamma layer (``layer_gammas``).
      sensitivities: one dict per weight layer (``layer_sensitivities``).
      report: the Theorem 2/3 ``BoundReport`` (first estimator's rho).
      timings: seconds per stage ("attack_s", "rhos_s", "gammas_s", "sensitivity_s").
    """

    x_adv: np.ndarray
    rhos: dict[str, list[dict]]
    gammas: list[dict]
    sensitivities: list[dict]
    report: BoundReport
    timings: dict[str, float]

    @property
    def primary(self) -> str:
        return next(iter(self.rhos))


def measure_network(model, variables, x, y, key, *, threat, splits: Sequence[int], x_adv=None,
                    attack: str | Callable | None = "pgd", attack_settings: Mapping[str, Any] | None = None,
                    rho_layers: Sequence[int] | None = None, rho_estimators: Sequence[str] = ("ksg",),
                    rho_settings: Mapping[str, Mapping[str, Any]] | None = None,
                    gamma_layers: Sequence[int] | None = None, gamma_x=None, gamma_y=None,
                    gamma_attack: str | Callable = "pgd", gamma_attack_settings: Mapping[str, Any] | None = None,
                    probe_x=None, probe_y=None, ridge: float = 1e-3, identity_last: bool = True, targets: int = 0,
                    sensitivities: bool = True, batch_size: int = 256,
                    settings: Mapping[str, Any] | None = None) -> Measurement:
    """Runs the pipeline of the module docstring; see ``Measurement`` for the result.

    Args:
      splits: split points a (fa = weight layers 1..a), each in 1..n-1.
      x_adv: precomputed attacked inputs (skips step 1); ``attack`` None or "none" uses x.
      rho_layers: pairs j (default: every j > min(splits), what Theorem 2 needs).
      rho_estimators: the first is the report's; ``rho_settings[est]`` go to the estimator.
      gamma_layers: default the split points and n.  ``gamma_x``/``gamma_y`` default to x/y.
      probe_x, probe_y: images that fit the gamma probes (default: the gamma images).
      settings: extra entries recorded in the report's settings.
    """
    x, y, n, splits = check_network_data(model, variables, x, y, splits)
    rho_estimators = tuple(rho_estimators)
    if not rho_estimators:
        raise ValueError("rho_estimators is empty")
    rho_settings = dict(rho_settings or {})
    timings: dict[str, float] = {}

    t = time.perf_counter()
    if x_adv is None:
        if attack is None or attack == "none":
            x_adv = x
        else:
            x_adv = adversarial_examples(model, variables, x, y, jax.random.fold_in(key, 1), threat=threat,
                                         attack=attack, attack_settings=attack_settings, batch_size=batch_size)
    x_adv = np.asarray(x_adv, np.float32)
    if x_adv.shape != x.shape:
        raise ValueError(f"x_adv must have the shape of x {x.shape}, got {x_adv.shape}")
    timings["attack_s"] = time.perf_counter() - t

    t = time.perf_counter()
    pairs = list(range(splits[0] + 1, n + 1)) if rho_layers is None else list(rho_layers)
    k_rho = jax.random.fold_in(key, 2)
    rhos = {est: network_rhos(model, variables, x_adv, y, k_rho, layers=pairs, estimator=est, batch_size=batch_size,
                              **dict(rho_settings.get(est, {})))
            for est in rho_estimators}
    timings["rhos_s"] = time.perf_counter() - t

    t = time.perf_counter()
    gx, gy = (x, y) if gamma_x is None else (np.asarray(gamma_x), np.asarray(gamma_y))
    g_layers = sorted(set(splits) | {n}) if gamma_layers is None else sorted(set(int(j) for j in gamma_layers))
    gammas = layer_gammas(model, variables, gx, gy, jax.random.fold_in(key, 3), threat=threat, layers=g_layers,
                          attack=gamma_attack, attack_settings=gamma_attack_settings, targets=targets,
                          probe_x=probe_x, probe_y=probe_y, ridge=ridge, identity_last=identity_last,
                          batch_size=batch_size)
    timings["gammas_s"] = time.perf_counter() - t

    t = time.perf_counter()
    sens = layer_sensitivities(model, variables, x, x_adv, batch_size=batch_size) if sensitivities else []
    timings["sensitivity_s"] = time.perf_counter() - t

    primary = rho_estimators[0]
    recorded = {"rho_estimator": primary, "rho_settings": dict(rho_settings.get(primary, {})),
                "gamma_attack": gamma_attack if isinstance(gamma_attack, str) else getattr(gamma_attack, "__name__", "custom"),
                "gamma_attack_settings": dict(gamma_attack_settings or {}), "examples": int(len(y)),
                "gamma_examples": int(len(gy)), "probe_examples": int(len(gy if probe_x is None else probe_x)),
                **dict(settings or {})}
    report = bound_report(gammas, rhos[primary], n, splits, sensitivities=sens or None, settings=recorded)
    return Measurement(x_adv=x_adv, rhos=rhos, gammas=gammas, sensitivities=sens, report=report, timings=timings)
