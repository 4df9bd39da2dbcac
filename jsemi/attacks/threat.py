"""Threat models: the perturbation budget ``eps`` is tied to its norm.

``LinfBall(eps)`` and ``L2Ball(eps)`` are frozen, hashable dataclasses (usable as a
static argument of ``jax.jit``) and are also registered as pytrees whose single leaf is
``eps``, so a budget can be traced (vmap over an eps grid, or pass the threat as a
dynamic jit argument to avoid one compilation per eps).  An L2 budget can never be
mistaken for an L-inf one: every attack reads the norm from the threat's type.

Geometry helpers used by all attacks operate per example on NHWC batches:
``project`` maps x_adv back into ``{||x_adv - x|| <= eps} ∩ [0, 1]^d``, ``random_init``
draws a random start inside the ball, ``steepest`` returns the steepest-ascent direction
of unit norm (sign for L-inf, normalised gradient for L2) and ``dist`` the per-example
distance.
"""

from __future__ import annotations

import dataclasses
from typing import Union

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LinfBall", "L2Ball", "Threat", "as_threat", "make_threat", "NORMS"]

_TINY = 1e-12


def _check_eps(eps, cls_name: str) -> None:
    if isinstance(eps, jax.core.Tracer):
        return
    try:
        arr = np.asarray(eps, dtype=np.float64)
    except (TypeError, ValueError):  # placeholders used by jax tree utilities
        return
    if arr.shape != ():
        raise ValueError(f"{cls_name}.eps must be a scalar, got shape {arr.shape}")
    if not np.isfinite(arr) or arr < 0:
        raise ValueError(f"{cls_name}.eps must be a finite number >= 0, got {eps!r}")


def _bcast(v: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:
    """Reshapes a per-example vector (B,) to broadcast against x (B, ...)."""
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def _flat(x: jnp.ndarray) -> jnp.ndarray:
    return x.reshape(x.shape[0], -1)


class _Ball:
    eps: float
    norm: str = ""

    def __post_init__(self):
        _check_eps(self.eps, type(self).__name__)

    # ---- pytree protocol: eps is the only leaf -------------------------------------
    def _flatten(self):
        return (self.eps,), None

    @classmethod
    def _unflatten(cls, aux, children):
        obj = object.__new__(cls)
        object.__setattr__(obj, "eps", children[0])
        return obj

    def with_eps(self, eps):
        """Same norm, another budget (eps may be a tracer)."""
        return type(self)._unflatten(None, (eps,))

    # ---- geometry ------------------------------------------------------------------
    def dist(self, x_adv: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:  # pragma: no cover
        raise NotImplementedError

    def project(self, x_adv: jnp.ndarray, x: jnp.ndarray) -> jnp.ndarray:  # pragma: no cover
        raise NotImplementedError

    def steepest(self, g: jnp.ndarray) -> jnp.ndarray:  # pragma: no cover
        raise NotImplementedError

    def random_init(self, key, x: jnp.ndarray) -> jnp.ndarray:  # pragma: no cover
        raise NotImplementedError


@dataclasses.dataclass(frozen=True)
class LinfBall(_Ball):
    """L-inf ball ``{d : max_i |d_i| <= eps}`` intersected with the pixel box [0, 1]."""

    eps: float
    norm: str = dataclasses.field(default="linf", init=False, repr=False)

    def dist(self, x_adv, x):
        return jnp.max(jnp.abs(_flat(x_adv - x)), axis=1)

    def project(self, x_adv, x):
        eps = jnp.asarray(self.eps, x.dtype)
        return jnp.clip(jnp.clip(x_adv, x - eps, x + eps), 0.0, 1.0)

    def steepest(self, g):
        return jnp.sign(g)

    def random_init(self, key, x):
        eps = jnp.asarray(self.eps, x.dtype)
        d = jax.random.uniform(key, x.shape, x.dtype, -1.0, 1.0) * eps
        return jnp.clip(x + d, 0.0, 1.0)

    def dual_norm(self, g):
        """||g||_1 per example: the first-order change of a linear function over the ball."""
        return jnp.sum(jnp.abs(_flat(g)), axis=1)


@dataclasses.dataclass(frozen=True)
class L2Ball(_Ball):
    """L2 ball ``{d : ||d||_2 <= eps}`` (over all pixels of an example) intersected with [0, 1]."""

    eps: float
    norm: str = dataclasses.field(default="l2", init=False, repr=False)

    def dist(self, x_adv, x):
        return jnp.sqrt(jnp.sum(jnp.square(_flat(x_adv - x)), axis=1))

    def project(self, x_adv, x):
        # Project onto the ball, then clip to the box: clipping only moves each coordinate
        # towards x (x is in the box), so the result stays in the ball.
        d = x_adv - x
        n = jnp.sqrt(jnp.sum(jnp.square(_flat(d)), axis=1))
        eps = jnp.asarray(self.eps, x.dtype)
        scale = jnp.minimum(1.0, eps / jnp.maximum(n, _TINY))
        return jnp.clip(x + d * _bcast(scale, d), 0.0, 1.0)

    def steepest(self, g):
        n = jnp.sqrt(jnp.sum(jnp.square(_flat(g)), axis=1))
        return g / _bcast(jnp.maximum(n, _TINY), g)

    def random_init(self, key, x):
        # uniform direction, radius eps * U(0, 1)
        k1, k2 = jax.random.split(key)
        d = jax.random.normal(k1, x.shape, x.dtype)
        n = jnp.sqrt(jnp.sum(jnp.square(_flat(d)), axis=1))
        r = jax.random.uniform(k2, (x.shape[0],), x.dtype) * jnp.asarray(self.eps, x.dtype)
        d = d * _bcast(r / jnp.maximum(n, _TINY), d)
        return jnp.clip(x + d, 0.0, 1.0)

    def dual_norm(self, g):
        return jnp.sqrt(jnp.sum(jnp.square(_flat(g)), axis=1))


for _cls in (LinfBall, L2Ball):
    jax.tree_util.register_pytree_node(_cls, _cls._flatten, _cls._unflatten)

Threat = Union[LinfBall, L2Ball]


def as_threat(threat) -> Threat:
    """Checks that ``threat`` is a threat model (raises TypeError with a hint otherwise)."""
    if isinstance(threat, (LinfBall, L2Ball)):
        return threat
    raise TypeError(
        "threat must be LinfBall(eps) or L2Ball(eps) from jsemi.attacks (the budget is tied to "
        f"its norm so L2 and L-inf eps cannot be confused), got {threat!r}"
    )


NORMS = ("linf", "l2")


def make_threat(norm: str, eps) -> Threat:
    """The threat model named by ``norm`` ("linf" or "l2") with budget ``eps`` (pixel units)."""
    if norm == "linf":
        return LinfBall(float(eps))
    if norm == "l2":
        return L2Ball(float(eps))
    raise ValueError(f"unknown norm {norm!r}; choose one of {NORMS}")
