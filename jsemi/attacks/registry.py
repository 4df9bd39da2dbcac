"""Attacks by name, for the CLI (``jsemi eval --attack NAME --eps E``) and experiments.

``get_attack(name, threat, **settings)`` returns ``attack(logits_fn, x, y, key) -> x_adv``
with the threat and settings bound; ``default_threat(name, eps)`` builds the threat model
the name implies (L2 for "pgd-l2" and "cw", else L-inf).
"""

from __future__ import annotations

import dataclasses
import inspect
from typing import Callable

from jsemi.attacks.apgd import apgd, apgd_t
from jsemi.attacks.autoattack import autoattack
from jsemi.attacks.cw import cw_l2
from jsemi.attacks.fab import fab_t
from jsemi.attacks.pgd import fgsm, ifgsm, pgd
from jsemi.attacks.square import square
from jsemi.attacks.threat import L2Ball, LinfBall, as_threat

__all__ = ["ATTACK_NAMES", "BoundAttack", "bind", "get_attack", "default_threat"]

# name -> (function, fixed settings, required threat type or None)
_TABLE = {
    "fgsm": (fgsm, {}, None),
    "ifgsm": (ifgsm, {}, None),
    "pgd": (pgd, {}, None),
    "pgd-l2": (pgd, {}, L2Ball),
    "cw": (cw_l2, {}, None),
    "apgd-ce": (apgd, {"loss": "ce"}, None),
    "apgd-dlr": (apgd, {"loss": "dlr"}, None),
    "apgd-t": (apgd_t, {}, None),
    "fab-t": (fab_t, {}, None),
    "square": (square, {}, LinfBall),
    "autoattack": (autoattack, {"version": "standard"}, None),
    "autoattack-rand": (autoattack, {"version": "rand"}, None),
    "autoattack-custom": (autoattack, {"version": "custom"}, None),
}
ATTACK_NAMES = tuple(_TABLE)


def default_threat(name: str, eps: float):
    """L2Ball(eps) for "pgd-l2" and "cw", LinfBall(eps) for every other attack name."""
    if name not in _TABLE:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(ATTACK_NAMES)}")
    return L2Ball(eps) if name in ("pgd-l2", "cw") else LinfBall(eps)


def _aliases(fn, settings: dict) -> dict:
    """CLI-friendly aliases: ``steps`` means ``n_iter`` (APGD, FAB, AutoAttack) or
    ``n_queries`` (Square) where the attack has no ``steps`` setting."""
    params = inspect.signature(fn).parameters
    out = dict(settings)
    if "steps" in out and "steps" not in params:
        for alt in ("n_iter", "n_queries"):
            if alt in params and alt not in out:
                out[alt] = out.pop("steps")
                break
    return out


def _frozen(v):
    """Settings as hashable values (lists -> tuples), so a bound attack can key jit's cache."""
    if isinstance(v, (list, tuple)):
        return tuple(_frozen(e) for e in v)
    if isinstance(v, dict):
        return tuple(sorted((k, _frozen(e)) for k, e in v.items()))
    return v


@dataclasses.dataclass(frozen=True)
class BoundAttack:
    """``attack(logits_fn, x, y, key) -> x_adv``: an attack with its threat and settings bound.

    A frozen value (hashable by name, function, threat and settings), so two bindings of the
    same attack are equal and a jitted function taking it as a static argument compiles once.
    """

    name: str
    fn: Callable
    threat: object
    items: tuple  # ((setting, value), ...) sorted, hashable

    @property
    def settings(self) -> dict:
        return dict(self.items)

    @property
    def __name__(self) -> str:  # progress bars and records use the attack's name
        return self.name

    def __call__(self, logits_fn, x, y, key):
        return self.fn(logits_fn, x, y, key, self.threat, **self.settings)


def bind(fn: Callable, threat, settings: dict | None = None, name: str | None = None) -> BoundAttack:
    """Binds any attack with the common signature ``fn(logits_fn, x, y, key, threat, **settings)``."""
    return BoundAttack(name or getattr(fn, "__name__", "custom"), fn, threat, _frozen(dict(settings or {})))


def get_attack(name: str, threat, **settings) -> BoundAttack:
    """Returns ``attack(logits_fn, x, y, key) -> x_adv`` for ``name`` under ``threat``.

    ``settings`` are the keyword settings of the underlying function (e.g. steps=10,
    step_size=2/255 for "pgd"; n_iter=100 for "apgd-ce"; c=1.0, kappa=0.0, steps=50,
    lr=0.01 for "cw"); ``steps`` is accepted as an alias of ``n_iter`` / ``n_queries``;
    unknown settings raise TypeError here.
    """
    if name not in _TABLE:
        raise ValueError(f"unknown attack {name!r}; available: {', '.join(ATTACK_NAMES)}")
    threat = as_threat(threat)
    fn, fixed, need = _TABLE[name]
    if need is not None and not isinstance(threat, need):
        raise ValueError(f"attack {name!r} needs a {need.__name__} threat, got {threat!r}")
    kw = {**fixed, **_aliases(fn, settings)}
    params = inspect.signature(fn).parameters
    unknown = sorted(k for k in kw if k not in params)
    if unknown:
        raise TypeError(f"attack {name!r} has no setting(s) {unknown}; its settings: "
                        f"{[p for p, v in params.items() if v.kind is inspect.Parameter.KEYWORD_ONLY]}")
    return bind(fn, threat, kw, name)
