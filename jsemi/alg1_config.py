"""Algorithm 1's configuration: ``Alg1Config`` (one table row) and the per-trial seed rule."""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Mapping

import numpy as np

from jsemi.train import TrainConfig


# Fields added after settings hashes were first written (study.json, run directories): left out of
# ``to_dict`` at their default None, so a configuration that does not use them hashes as before.
_OMIT_WHEN_NONE = ("epoch_eval_examples",)


@dataclasses.dataclass(frozen=True)
class Alg1Config:
    """Settings of one Algorithm 1 row (one split point).

    Split: exactly one of ``num_fb`` (the tables' "# fb" = n - a) and ``a``.
    ``k``: stop when attacked accuracy >= Acc* - k/100 (k in percentage points).
    ``max_epochs``: E.  ``trials``: number of trials (not part of the run's identity, so
    a run can be extended).  ``finetune``: the adversarial fine-tuning ``TrainConfig``
    (its ``epochs`` is replaced by ``max_epochs`` for the learning-rate schedule).
    Evaluation attack: ``eval_attack`` ("none", "fgsm", "pgd", "autoattack", ... any
    name of the attack registry) with ``eval_attack_settings`` under the threat
    ``norm``/``eps`` (pixel units).  Measurements after each trial on
    ``measure_examples`` class-stratified test images (gamma on the first
    ``gamma_examples`` of them in stratified order, default all): rho with every estimator in
    ``rho_estimators`` (the first is the one the tables use), settings per estimator in
    ``rho_settings``; gamma with ``gamma_attack``/``gamma_attack_settings``, the layer-a
    probe fitted on ``probe_examples`` training images.  ``vmap``: number of trials
    trained at once (1 = sequential).  ``net`` and ``dataset`` label the tables.

    ``epoch_eval_examples``: None (default, the paper's procedure) measures every
    fine-tuning epoch's attacked accuracy on the whole test set.  An int m measures it on
    m class-stratified test images (a screen, ``jsemi.alg1_epochs``): the stopping rule
    fires when the subset accuracy reaches Acc* - k *and* the whole test set confirms it,
    and Acc~ is the whole test set's accuracy of the selected epoch (the confirmed one,
    else the best on the subset), so every reported accuracy is still on the full set.
    Omitted from ``to_dict`` while None, so settings hashes written before it existed hold.
    """

    num_fb: int | None = None
    a: int | None = None
    k: float = 0.0
    max_epochs: int = 10
    trials: int = 10
    seed: int = 0
    finetune: TrainConfig = dataclasses.field(default_factory=lambda: TrainConfig(mode="pgd"))
    norm: str = "linf"
    eps: float = 8 / 255
    eval_attack: str = "pgd"
    eval_attack_settings: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"steps": 10, "step_size": 1 / 255, "random_start": True})
    eval_batch_size: int = 500
    measure: bool = True
    measure_examples: int = 1000
    gamma_examples: int | None = None
    probe_examples: int = 1000
    rho_estimators: tuple[str, ...] = ("gaussian", "ksg", "edge")  # primary first: docs/calibration.md
    rho_settings: Mapping[str, Mapping[str, Any]] = dataclasses.field(default_factory=dict)
    gamma_attack: str = "pgd"
    gamma_attack_settings: Mapping[str, Any] = dataclasses.field(
        default_factory=lambda: {"steps": 20, "restarts": 5, "loss": "margin"})
    vmap: int = 1
    net: str = ""
    dataset: str = ""
    epoch_eval_examples: int | None = None

    def __post_init__(self):
        if (self.num_fb is None) == (self.a is None):
            raise ValueError("give exactly one of num_fb ('# fb' = n - a) and a (the split point)")
        for name in ("num_fb", "a"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 1):
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if not (isinstance(self.k, (int, float)) and math.isfinite(self.k) and self.k >= 0):
            raise ValueError(f"k (accuracy points) must be a finite number >= 0, got {self.k!r}")
        if self.gamma_examples is not None and (isinstance(self.gamma_examples, bool)
                                                or not isinstance(self.gamma_examples, int) or self.gamma_examples < 1):
            raise ValueError(f"gamma_examples must be a positive int or None, got {self.gamma_examples!r}")
        if self.epoch_eval_examples is not None and (isinstance(self.epoch_eval_examples, bool) or not isinstance(
                self.epoch_eval_examples, int) or self.epoch_eval_examples < 1):
            raise ValueError(f"epoch_eval_examples must be a positive int or None, got {self.epoch_eval_examples!r}")
        for name in ("max_epochs", "trials", "measure_examples", "probe_examples", "vmap", "eval_batch_size"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be a positive int, got {v!r}")
        if self.norm not in ("linf", "l2"):
            raise ValueError(f"norm must be 'linf' or 'l2', got {self.norm!r}")
        if not (isinstance(self.eps, (int, float)) and math.isfinite(self.eps) and self.eps >= 0):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps!r}")
        if not isinstance(self.finetune, TrainConfig):
            raise TypeError("finetune must be a jsemi.train.TrainConfig")
        if self.finetune.mode == "standard":
            raise ValueError("Algorithm 1 fine-tunes fb adversarially: finetune.mode must not be 'standard'")
        if self.vmap > 1 and self.finetune.mode in ("atta", "atta_trades"):
            raise ValueError("vmapped trials support fine-tuning modes without per-example state "
                             "(pgd, trades); ATTA carries perturbations across epochs: use vmap=1")
        if isinstance(self.rho_estimators, str) or not self.rho_estimators:
            raise ValueError("rho_estimators must be a non-empty tuple of estimator names")
        object.__setattr__(self, "rho_estimators", tuple(self.rho_estimators))
        object.__setattr__(self, "eval_attack_settings", dict(self.eval_attack_settings))
        object.__setattr__(self, "gamma_attack_settings", dict(self.gamma_attack_settings))
        object.__setattr__(self, "rho_settings", {k: dict(v) for k, v in dict(self.rho_settings).items()})

    # -- split point
    def split_point(self, n: int) -> int:
        """The split point a for a network with n weight layers (validated)."""
        a = self.a if self.a is not None else n - self.num_fb
        if not 1 <= a <= n - 1:
            what = f"# fb = {self.num_fb}" if self.num_fb is not None else f"a = {self.a}"
            raise ValueError(f"{what} is impossible for a network with {n} weight layers (need 1 <= # fb <= {n - 1})")
        return a

    # -- JSON
    def to_dict(self) -> dict:
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        d["finetune"] = self.finetune.to_dict()
        d["rho_estimators"] = list(self.rho_estimators)
        for name in _OMIT_WHEN_NONE:  # later additions: absent at their default, so older hashes and run dirs hold
            if d[name] is None:
                del d[name]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Alg1Config":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - names)
        if unknown:
            raise ValueError(f"unknown Algorithm 1 settings {unknown}; known: {sorted(names)}")
        d = dict(d)
        if "finetune" in d and isinstance(d["finetune"], Mapping):
            d["finetune"] = TrainConfig.from_dict(d["finetune"])
        if "rho_estimators" in d:
            d["rho_estimators"] = tuple(d["rho_estimators"])
        return cls(**d)

    def identity(self) -> dict:
        """The settings that define the run directory (everything but ``trials``)."""
        d = self.to_dict()
        d.pop("trials")
        d["finetune"]["epochs"] = self.max_epochs
        return d


def trial_seed(seed: int, trial: int) -> int:
    """The seed of trial ``trial`` of a run seeded ``seed`` (a 31-bit int, independent per trial)."""
    return int(np.random.SeedSequence([int(seed), int(trial), 0xA161]).generate_state(1)[0] & 0x7FFFFFFF)
