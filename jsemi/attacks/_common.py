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

from jsemi.attacks import losses
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


# ------------------------------------------------------------------ iterative attacks
# XLA's CPU backend does not canonicalise the input-gradient convolution (kernel labels
# "01oi") inside a while-loop body, so a conv net's backward pass inside lax.fori_loop runs
# on a naive emitter, about 10x slower than the same step outside a loop.  Iterative attacks
# are therefore written as (init, step, final) and run
#   - under a caller's trace: unrolled when n <= UNROLL_MAX on CPU, else lax.fori_loop;
#   - with concrete inputs: as a host loop over a jit-compiled chunk of CHUNK unrolled steps
#     (one compilation per chunk size, early exit when ``done`` says every point is finished).
UNROLL_MAX = 32
CHUNK = 10


class Spec:
    """An iterative attack: ``init(ctx) -> state``, ``step(ctx, i, state) -> state`` for
    i = 0..n-1, ``final(ctx, state) -> out``; optional ``done(state) -> bool`` (host early exit,
    only used where stopping early cannot change the result)."""

    def __init__(self, init, step, final, n, done=None):
        self.init, self.step, self.final, self.n, self.done = init, step, final, int(n), done


def on_cpu() -> bool:
    return jax.default_backend() == "cpu"


def traced_loop(n: int, body, carry):
    if n <= 0:
        return carry
    if on_cpu() and n <= UNROLL_MAX:
        return jax.lax.fori_loop(0, n, body, carry, unroll=True)
    return jax.lax.fori_loop(0, n, body, carry)


_SPEC_CACHE: dict = {}
_SPEC_CACHE_MAX = 64


def _compiled(cache_key, build):
    hit = _SPEC_CACHE.get(cache_key)
    if hit is not None:
        return hit
    spec = build()

    def chunk(ctx, i0, state, size):
        for c in range(size):
            state = spec.step(ctx, i0 + c, state)
        return state

    parts = (
        spec,
        jax.jit(spec.init),
        jax.jit(chunk, static_argnums=3),
        jax.jit(spec.final),
        jax.jit(spec.done) if spec.done is not None else None,
    )
    if len(_SPEC_CACHE) >= _SPEC_CACHE_MAX:
        _SPEC_CACHE.pop(next(iter(_SPEC_CACHE)))
    _SPEC_CACHE[cache_key] = parts
    return parts


def run_spec(cache_key, build, ctx):
    """Runs the iterative attack built by ``build()`` on ``ctx`` (a pytree of arrays).

    ``cache_key`` must identify ``build`` completely (attack name, logits_fn, static settings).
    """
    if is_traced(ctx):
        spec = build()
        state = spec.init(ctx)
        state = traced_loop(spec.n, lambda i, s: spec.step(ctx, i, s), state)
        return spec.final(ctx, state)
    spec, init, chunk, final, done = _compiled(cache_key, build)
    state = init(ctx)
    i = 0
    while i < spec.n:
        size = min(CHUNK, spec.n - i)
        state = chunk(ctx, jnp.int32(i), state, size)
        i += size
        if done is not None and i < spec.n and bool(done(state)):
            break
    return final(ctx, state)


# ----------------------------------------------------------------------------- host-side worst case


def remaining_bucket(n: int, full: int) -> int:
    """Padded size for n remaining points: 16, 32, 64, then multiples of 32 (at most ``full``).
    Each size is one compilation per attack; finer sizes waste less compute on padding."""
    if n > full:
        return n
    b = 16
    while b < n and b < 64:
        b *= 2
    if n > 64:
        b = -(-n // 32) * 32
    return min(b, full)


@functools.partial(jax.jit, static_argnums=0)
def fooled_and_margin(logits_fn, x, y):
    """(misclassified (B,) bool, margin (B,) logit units) of ``logits_fn`` at ``x``."""
    logits = logits_fn(x)
    return jnp.argmax(logits, 1) != y, losses.margin(logits, y)


def attack_remaining(attack, logits_fn, x_np: np.ndarray, y_np: np.ndarray, key, robust: np.ndarray,
                     best: np.ndarray, m_best: np.ndarray) -> None:
    """Runs ``attack(xs, ys, key)`` on the points of ``x_np`` still marked ``robust`` and merges the result.

    The remaining points are gathered on the host and padded (with copies of the first) to
    :func:`remaining_bucket`, as in the reference AutoAttack.  In place, per point attacked:
    ``best``/``m_best`` take the attack's output when it fools the model or lowers the margin,
    and ``robust`` turns False where it fools the model.  Nothing is run when no point remains.
    """
    ids = np.nonzero(robust)[0]
    if not ids.size:
        return
    size = remaining_bucket(ids.size, x_np.shape[0])
    ids_p = np.concatenate([ids, np.full(size - ids.size, ids[0])])
    xs, ys = jnp.asarray(x_np[ids_p]), jnp.asarray(y_np[ids_p])
    xa = attack(xs, ys, key)
    fooled, m = fooled_and_margin(logits_fn, xa, ys)
    fooled, m = np.asarray(fooled)[: ids.size], np.asarray(m)[: ids.size]
    xa = np.asarray(xa)[: ids.size]
    upd = fooled | (m < m_best[ids])
    best[ids[upd]] = xa[upd]
    m_best[ids[upd]] = m[upd]
    robust[ids[fooled]] = False
