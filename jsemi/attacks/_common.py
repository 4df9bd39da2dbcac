"""Shared plumbing: validation at the API boundary and jit dispatch.

Every public attack is a pure, traceable function.  Called from inside a caller's
``jax.jit`` (any argument is a tracer) it simply traces into the caller's graph; called
with concrete arrays it validates them on the host and runs a jit-compiled version.

**Weights are jit arguments.**  ``logits_fn`` is split by :func:`split_fn` into its array
leaves, which are passed to the compiled program as ordinary arguments, and a hashable
static part (its tree structure and non-array leaves), which is part of jit's cache key
together with the attack's keyword settings.  A pytree model function
(``jsemi.models.bind(model, variables)`` or ``jax.tree_util.Partial(f, variables)``) with
new weights of the same shapes therefore reuses the compiled program.  A plain closure is a
single non-array leaf: it is keyed by identity and its captured weights are compile-time
constants, so every new closure compiles again (still correct, only slower).  The threat
model is a pytree too, so changing ``eps`` does not recompile.  The only cache is jit's own.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks import losses
from jsemi.attacks.threat import as_threat
from jsemi.validation import check_images, check_labels

LogitsFn = Callable[[jnp.ndarray], jnp.ndarray]


def _is_array(leaf) -> bool:
    return isinstance(leaf, (jax.Array, np.ndarray))


class FnStatic:
    """The hashable, static part of a model function: tree structure and non-array leaves
    (functions by identity, modules and Python scalars by value)."""

    __slots__ = ("treedef", "consts")

    def __init__(self, treedef, consts: tuple):
        self.treedef, self.consts = treedef, consts

    def __hash__(self):
        return hash((self.treedef, self.consts))

    def __eq__(self, other):
        return isinstance(other, FnStatic) and self.treedef == other.treedef and self.consts == other.consts

    def __repr__(self):
        return f"FnStatic({self.treedef}, {len(self.consts)} static leaves)"


def split_fn(fn) -> tuple[FnStatic, tuple]:
    """(static, arrays): ``fn``'s array leaves become jit arguments, the rest the cache key."""
    leaves, treedef = jax.tree_util.tree_flatten(fn)
    consts = tuple((i, leaf) for i, leaf in enumerate(leaves) if not _is_array(leaf))
    arrays = tuple(leaf for leaf in leaves if _is_array(leaf))
    return FnStatic(treedef, consts), arrays


def join_fn(static: FnStatic, arrays) -> Any:
    """Inverse of :func:`split_fn` (arrays may be tracers)."""
    const = dict(static.consts)
    it = iter(arrays)
    leaves = [const[i] if i in const else next(it) for i in range(static.treedef.num_leaves)]
    return jax.tree_util.tree_unflatten(static.treedef, leaves)


def fn_jit(f: Callable) -> Callable:
    """``f(logits_fn, *args, **settings)`` compiled with ``logits_fn``'s arrays as arguments.

    ``args`` are pytrees of arrays (dynamic); ``settings`` must be hashable (static).  Under
    a caller's trace ``f`` runs directly.  One ``jax.jit`` object per ``f`` (made once, at
    import); its cache keys on the function's static part, the settings and the shapes.
    """

    def run(arrays, args, static, settings):
        return f(join_fn(static, arrays), *args, **dict(settings))

    compiled = jax.jit(run, static_argnums=(2, 3))

    @functools.wraps(f)
    def call(logits_fn, *args, **settings):
        if is_traced(logits_fn, args):
            return f(logits_fn, *args, **settings)
        static, arrays = split_fn(logits_fn)
        return compiled(arrays, args, static, tuple(sorted(settings.items())))

    return call


def is_traced(*trees) -> bool:
    return any(isinstance(a, jax.core.Tracer) for a in jax.tree_util.tree_leaves(trees))


def check_key(key) -> None:
    """An explicit jax PRNG key (ints refused with the fix): ``jsemi.validation.check_key``."""
    from jsemi.validation import check_key as _check_key

    _check_key(key)


def validate(logits_fn, x, y, key, threat) -> None:
    """Host-side checks before any work; value checks are skipped for traced values (inside a
    caller's jit).  ``x``: a non-empty float batch in [0, 1]; ``y``: integer labels in [0, K),
    K read from ``logits_fn``'s output shape (``jsemi.validation.num_classes_of``: traced once
    per function and input shape, never run); ``key``: a PRNG key.  An L-inf eps > 1 warns
    (every image is in the ball: usually 8 meant as 8/255); an L2 eps > 1 is normal and warns
    only beyond the image cube's diameter sqrt(H*W*C) (``jsemi.validation.warn_large_eps``)."""
    from jsemi.validation import check_not_empty, num_classes_of, warn_large_eps

    if not callable(logits_fn):
        raise TypeError(f"logits_fn must be callable (x -> logits), got {type(logits_fn).__name__}")
    threat = as_threat(threat)
    check_images(x, "x")
    check_not_empty(x, "x")
    check_labels(y, name="y", batch=x.shape[0])
    check_key(key)
    if not is_traced(y):
        check_labels(y, num_classes_of(logits_fn, x), name="y")
    warn_large_eps(threat.eps, threat.norm, int(np.prod(x.shape[1:])), name=f"{type(threat).__name__}.eps")


def check_setting_positive_int(value, name: str) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


def dispatch(compiled, logits_fn, x, y, key, threat, *args, **settings):
    """Runs ``compiled`` (an :func:`fn_jit` of the attack's implementation) on host arrays,
    or traces the implementation directly when any input is a tracer."""
    if not is_traced(logits_fn, x, y, key, threat, args):
        x, y = jnp.asarray(x), jnp.asarray(y)
    return compiled(logits_fn, x, y, key, threat, *args, **settings)


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
#   - with concrete inputs: n <= CHUNK steps as one jit-compiled program (init, the unrolled
#     steps and final: one compilation, as under a caller's trace); more as a host loop over a
#     jit-compiled chunk of CHUNK unrolled steps (one compilation per chunk size, early exit
#     when ``done`` says every point is finished) between a compiled init and final.
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


def _spec_init(logits_fn, ctx, *, build, settings):
    return build(logits_fn, *settings).init(ctx)


def _spec_chunk(logits_fn, ctx, i0, state, *, build, settings, size):
    spec = build(logits_fn, *settings)
    for c in range(size):
        state = spec.step(ctx, i0 + c, state)
    return state


def _spec_whole(logits_fn, ctx, *, build, settings):
    """The whole attack in one trace: init, ``traced_loop`` over the steps, final."""
    spec = build(logits_fn, *settings)
    state = traced_loop(spec.n, lambda i, s: spec.step(ctx, i, s), spec.init(ctx))
    return spec.final(ctx, state)


def _spec_final(logits_fn, ctx, state, *, build, settings):
    return build(logits_fn, *settings).final(ctx, state)


def _spec_done(logits_fn, state, *, build, settings):
    return build(logits_fn, *settings).done(state)


spec_init, spec_chunk, spec_final, spec_done, spec_whole = (
    fn_jit(f) for f in (_spec_init, _spec_chunk, _spec_final, _spec_done, _spec_whole))


def run_spec(build, settings: tuple, logits_fn, ctx):
    """Runs the iterative attack ``build(logits_fn, *settings) -> Spec`` on ``ctx`` (a pytree of arrays).

    ``build`` is a module-level function and ``settings`` a hashable tuple: with the static
    part of ``logits_fn`` they key jit's cache, so each (attack, settings, architecture,
    shapes) compiles once whatever the weights.
    """
    kw = dict(build=build, settings=tuple(settings))
    if is_traced(logits_fn, ctx):
        return _spec_whole(logits_fn, ctx, **kw)
    host = build(logits_fn, *settings)  # cheap: reads n and whether the attack can stop early
    if host.n <= CHUNK:  # the same trace, compiled as one program (no chunk boundary, no early exit)
        return spec_whole(logits_fn, ctx, **kw)
    state = spec_init(logits_fn, ctx, **kw)
    i = 0
    while i < host.n:
        size = min(CHUNK, host.n - i)
        state = spec_chunk(logits_fn, ctx, np.int32(i), state, size=size, **kw)
        i += size
        if host.done is not None and i < host.n and bool(spec_done(logits_fn, state, **kw)):
            break
    return spec_final(logits_fn, ctx, state, **kw)


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


@fn_jit
def fooled_and_margin(logits_fn, x, y):
    """(misclassified (B,) bool, margin (B,) logit units) of ``logits_fn`` at ``x``."""
    logits = logits_fn(x)
    return jnp.argmax(logits, 1) != y, losses.margin(logits, y)


@fn_jit
def margin_at(logits_fn, x, y):
    """Margin z_y - max_{k != y} z_k (B,) of ``logits_fn`` at ``x`` (logit units)."""
    return losses.margin(logits_fn(x), y)


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
