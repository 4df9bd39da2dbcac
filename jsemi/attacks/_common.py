"""Shared plumbing: validation at the API boundary and jit dispatch.

Every public attack is a pure, traceable function.  Called from inside a caller's
``jax.jit`` (any argument is a tracer) it simply traces into the caller's graph; called
with concrete arrays it validates them on the host and runs a jit-compiled version whose
static arguments are ``logits_fn`` (hashed by identity: reuse the same function object to
reuse the compiled code) and the attack's keyword settings.  The threat model is passed
as a pytree, so changing ``eps`` does not recompile.
"""

from __future__ import annotations

import functools
import inspect
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks.threat import as_threat
from jsemi.validation import check_images, check_labels

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def is_traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


def check_key(key) -> None:
    if key is None:
        raise TypeError("an explicit jax PRNG key is required (jax.random.key(seed)); jsemi never seeds from the clock")
    if isinstance(key, (int, np.integer)):
        raise TypeError(f"key must be a jax PRNG key (jax.random.key({key})), not the int {key}")
    if is_traced(key):
        return
    dt = getattr(key, "dtype", None)
    if dt is None:
        raise TypeError(f"key must be a jax PRNG key, got {type(key).__name__}")
    if not jnp.issubdtype(dt, jax.dtypes.prng_key) and not (dt == jnp.uint32 and key.shape[-1:] == (2,)):
        raise TypeError(f"key must be a jax PRNG key, got an array of dtype {dt} and shape {key.shape}")


def validate(logits_fn, x, y, key, threat) -> None:
    """Host-side checks; skipped for traced values (inside a caller's jit)."""
    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable (x -> logits), got {type(logits_fn).__name__}")
    as_threat(threat)
    check_images(x, "x")
    check_labels(y, name="y", batch=x.shape[0])
    check_key(key)


def check_setting_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


@functools.lru_cache(maxsize=None)
def _jitted(impl):
    sig = inspect.signature(impl)
    static = tuple(n for n, p in sig.parameters.items() if p.kind is inspect.Parameter.KEYWORD_ONLY)
    return jax.jit(impl, static_argnums=(0,), static_argnames=static)


def dispatch(impl, logits_fn, x, y, key, threat, *args, **settings):
    """Runs ``impl`` directly under a trace, else its jit-compiled version."""
    if is_traced(x, y, key, threat, args):
        return impl(logits_fn, x, y, key, threat, *args, **settings)
    return _jitted(impl)(logits_fn, jnp.asarray(x), jnp.asarray(y), key, threat, *args, **settings)


def bcast(v, x):
    return v.reshape(v.shape + (1,) * (x.ndim - v.ndim))


def select(mask, a, b):
    """Per-example where: mask (B,) picks rows of a over b."""
    return jnp.where(bcast(mask, a), a, b)
