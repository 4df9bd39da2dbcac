"""Semirobustness gamma_j of every weight layer (PAPER_NOTES section 2).

Definition.  Weight layer j is gamma_j-semirobust when some map G_j from its output to
the label space satisfies E_{(X,y)} [ inf_{delta in S} margin(G_j(F(j)(X + delta)), y) ]
>= gamma_j.  The paper states this for binary y in {-1, +1} with ``y * G_j``; for K
classes jsemi uses the K-class margin ``z_y - max_{k != y} z_k`` of G_j's scores z in
its place (for K = 2 with z = (-g/2, g/2) this is exactly y * g).

Estimate.  For layer j < n, G_j is a probe fitted in closed form (ridge least squares
from the flattened layer output to one-hot targets, with an intercept; ``fit_probe``);
for the last layer G_n is the identity on the logits.  The infimum over the threat set S
is approximated by a strong attack against the composition G_j o F(j) (default: PGD on
the margin loss with random restarts; any attack of ``jsemi.attacks`` or any callable
with the attack signature can be used).  Per example jsemi keeps
``min(margin at x, margin at x_adv)`` because delta = 0 lies in S.

**The attacked margin is an UPPER estimate** of gamma_j(G_j) = E[inf_delta margin]: an
attack finds some delta, the infimum can only be lower.  It is also the semirobustness
achieved by *this* probe; the layer's gamma_j (a supremum over all G_j) may be larger.

Units: margins are in the units of G_j's scores -- logits for the last layer, and for a
probe the units of its one-hot regression targets (a perfectly fitted probe has margin 1
on clean data), so probe margins and the network's logit margin are not on one scale.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from jsemi.attacks.losses import margin
from jsemi.estimators.bounds import jsonable
from jsemi.models import bind, layer_outputs
from jsemi.validation import check_images, check_labels, check_positive_int

# The attack used for gamma unless the caller picks another: PGD with restarts on the margin
# loss (the quantity being minimised), random start, the attack's default step size.
DEFAULT_GAMMA_ATTACK = "pgd"
DEFAULT_ATTACK_SETTINGS: dict[str, dict[str, Any]] = {
    "pgd": {"steps": 20, "restarts": 5, "loss": "margin", "random_start": True},
}

GAMMA_NOTE = (
    "attacked_margin is the mean over examples of min(margin at x, margin at the attack's x_adv) "
    "of G_j's scores (K-class margin z_y - max_{k!=y} z_k): an UPPER estimate of "
    "gamma_j = E[min_delta margin] for this probe G_j (a stronger attack can only lower it)."
)


# ----------------------------------------------------------------------------- closed-form probes


@functools.partial(jax.jit, static_argnames=("fit_intercept",))
def ridge_solve(a: jnp.ndarray, z: jnp.ndarray, ridge: float = 1e-3, fit_intercept: bool = True):
    """Closed-form ridge least squares ``min_W,b ||a W + b - z||^2 + lam ||W||^2``.

    ``a``: (N, ...) features (flattened to (N, D)), ``z``: (N, K) targets.  The penalty is
    relative: ``lam = ridge * trace(Gram) / min(N, D)`` (``ridge`` times the mean
    eigenvalue of the centred Gram matrix), so ``ridge`` is dimensionless and invariant to
    the scale of the features.  Solved in the primal (D x D) when D <= N and in the dual
    (N x N, ``W = a^T (a a^T + lam I)^-1 z``) otherwise; both give the same W.
    Returns (W (D, K), b (K,)); b = 0 when ``fit_intercept`` is False.
    """
    a = a.reshape(a.shape[0], -1).astype(jnp.float32)
    z = z.astype(jnp.float32)
    n, d = a.shape
    if fit_intercept:
        mu_a, mu_z = jnp.mean(a, 0), jnp.mean(z, 0)
        a, z = a - mu_a, z - mu_z
    hp = jax.lax.Precision.HIGHEST
    if d <= n:
        gram = jnp.matmul(a.T, a, precision=hp)
        lam = ridge * jnp.maximum(jnp.trace(gram) / d, 1e-20)
        chol = jax.scipy.linalg.cho_factor(gram + lam * jnp.eye(d, dtype=gram.dtype))
        w = jax.scipy.linalg.cho_solve(chol, jnp.matmul(a.T, z, precision=hp))
    else:
        gram = jnp.matmul(a, a.T, precision=hp)
        lam = ridge * jnp.maximum(jnp.trace(gram) / n, 1e-20)
        chol = jax.scipy.linalg.cho_factor(gram + lam * jnp.eye(n, dtype=gram.dtype))
        w = jnp.matmul(a.T, jax.scipy.linalg.cho_solve(chol, z), precision=hp)
    b = (mu_z - jnp.matmul(mu_a, w, precision=hp)) if fit_intercept else jnp.zeros((z.shape[1],), jnp.float32)
    return w, b


def fit_probe(features, labels, num_classes: int, ridge: float = 1e-3) -> tuple[jnp.ndarray, jnp.ndarray]:
    """Fits the linear probe G(f) = flatten(f) @ W + b to one-hot targets (ridge LS, closed form).

    ``features``: (N, ...) layer outputs; ``labels``: (N,) ints in [0, num_classes).
    ``ridge`` > 0 is relative (see ``ridge_solve``).  Returns (W (D, K), b (K,)).
    """
    check_positive_int(num_classes, "num_classes")
    if not (isinstance(ridge, (int, float)) and ridge > 0 and math.isfinite(ridge)):
        raise ValueError(f"ridge must be a finite number > 0, got {ridge!r}")
    features = jnp.asarray(features)
    labels = np.asarray(labels)
    check_labels(labels, num_classes, "labels", batch=features.shape[0])
    if features.shape[0] < 2:
        raise ValueError(f"fit_probe needs at least 2 examples, got {features.shape[0]}")
    onehot = jax.nn.one_hot(labels, num_classes, dtype=jnp.float32)
    return ridge_solve(features, onehot, float(ridge), fit_intercept=True)


def apply_probe(w: jnp.ndarray, b: jnp.ndarray, features: jnp.ndarray) -> jnp.ndarray:
    """Scores of the probe (W, b) on (B, ...) features: flatten(features) @ W + b."""
    f = features.reshape(features.shape[0], -1).astype(jnp.float32)
    return jnp.matmul(f, w, precision=jax.lax.Precision.HIGHEST) + b


# ----------------------------------------------------------------------------- batching helpers


def pad_rows(arr: np.ndarray, size: int) -> np.ndarray:
    """Pads ``arr`` to ``size`` rows by repeating its last row (so a jitted function compiles once)."""
    n = arr.shape[0]
    if n == size:
        return arr
    return np.concatenate([arr, np.repeat(arr[-1:], size - n, axis=0)], axis=0)


def batch_slices(n: int, batch_size: int) -> list[slice]:
    """Consecutive slices of at most ``batch_size`` covering range(n)."""
    check_positive_int(batch_size, "batch_size")
    return [slice(s, min(s + batch_size, n)) for s in range(0, n, batch_size)]


def map_batches(fn: Callable, arrays: Sequence[np.ndarray], batch_size: int, key: jax.Array | None = None) -> list[np.ndarray]:
    """Applies a jitted ``fn(*batch[, key_b])`` over padded batches; returns its outputs concatenated.

    Every batch has the same shape (the last one is padded and trimmed), so ``fn`` compiles
    once.  With ``key`` the batch index is folded into it.
    """
    n = arrays[0].shape[0]
    bs = min(batch_size, n)
    outs: list[list[np.ndarray]] = []
    for i, sl in enumerate(batch_slices(n, bs)):
        m = sl.stop - sl.start
        args = [pad_rows(np.asarray(a[sl]), bs) for a in arrays]
        if key is not None:
            args.append(jax.random.fold_in(key, i))
        res = fn(*args)
        res = res if isinstance(res, tuple) else (res,)
        outs.append([np.asarray(r)[:m] for r in res])
    return [np.concatenate(parts, axis=0) for parts in zip(*outs)]


# ----------------------------------------------------------------------------- attacks


def threat_dict(threat) -> dict:
    """JSON description of a threat model: {'norm': 'linf'|'l2'|<class name>, 'eps': float}."""
    norm = getattr(threat, "norm", None) or type(threat).__name__
    return {"norm": str(norm), "eps": float(getattr(threat, "eps", float("nan")))}


def bind_attack(attack: str | Callable, threat, settings: Mapping[str, Any] | None = None,
                defaults: bool = True) -> tuple[Callable, str, dict]:
    """Returns (bound attack ``(logits_fn, x, y, key) -> x_adv``, name, settings).

    ``attack`` is a name of the attack registry (``jsemi.attacks.registry.get_attack``) or
    a callable with the common signature ``attack(logits_fn, x, y, key, threat, **settings)``
    (e.g. ``jsemi.attacks.pgd``).  With ``defaults`` the settings of
    ``DEFAULT_ATTACK_SETTINGS`` for that name are applied first and overridden by ``settings``.
    The bound attack is a hashable ``BoundAttack`` value, so jitted evaluators keyed on it
    compile once per (attack, settings, threat).
    """
    from jsemi.attacks.registry import bind, get_attack

    if callable(attack):
        name = getattr(attack, "__name__", "custom")
    elif isinstance(attack, str):
        name = attack
    else:
        raise TypeError(f"attack must be a name or a callable, got {type(attack).__name__}")
    merged = {**(DEFAULT_ATTACK_SETTINGS.get(name, {}) if defaults else {}), **dict(settings or {})}
    bound = bind(attack, threat, merged, name) if callable(attack) else get_attack(attack, threat, **merged)
    return bound, name, merged


@functools.partial(jax.jit, static_argnames=("score_fn", "attack", "targets"))
def _margins(params, x, y, key, *, score_fn, attack, targets):
    f = lambda xx: score_fn(params, xx)
    z0 = f(x)
    m0 = margin(z0, y)
    k0, kt = jax.random.split(key)
    xa = jax.lax.stop_gradient(attack(f, x, y, k0))
    worst = jnp.minimum(m0, margin(f(xa), y))
    if targets:
        order = jnp.argsort(-(z0 - 1e30 * jax.nn.one_hot(y, z0.shape[-1])), axis=-1)  # runner-ups first
        zeros = jnp.zeros_like(y)
        for i in range(targets):
            t = order[:, i]

            def pair(xx, t=t):
                z = f(xx)
                return jnp.stack([jnp.take_along_axis(z, y[:, None], 1)[:, 0], jnp.take_along_axis(z, t[:, None], 1)[:, 0]], -1)

            xt = jax.lax.stop_gradient(attack(pair, x, zeros, jax.random.fold_in(kt, i)))
            worst = jnp.minimum(worst, margin(f(xt), y))
    return m0, worst


def make_margin_evaluator(score_fn: Callable, attack: Callable, targets: int = 0) -> Callable:
    """Jitted ``run(params, x, y, key) -> (clean_margin, attacked_margin)`` per example.

    ``score_fn(params, x) -> (B, K)`` scores; ``attack(logits_fn, x, y, key) -> x_adv`` a bound
    attack (``bind_attack``).  attacked_margin = min(clean, margin at the
    untargeted attack's x_adv, and, for ``targets`` = T > 0, the margins z_y - z_t after a
    margin attack on each of the T runner-up classes t of the clean scores).  Each targeted
    attack runs the same attack on the two-column scores (z_y, z_t) with label 0, whose
    margin is z_y - z_t (the exact minimiser for a linear model, like APGD-T's targets).
    ``params`` are jit arguments; ``score_fn`` and ``attack`` are static (hashable values such
    as ``LayerScore`` and ``BoundAttack`` compile once however often they are rebuilt).
    """
    return functools.partial(_margins, score_fn=score_fn, attack=attack, targets=int(targets))


def attacked_margins(score_fn: Callable, params: Any, x, y, key, *, threat, attack: str | Callable = DEFAULT_GAMMA_ATTACK,
                     attack_settings: Mapping[str, Any] | None = None, targets: int = 0,
                     batch_size: int = 256) -> tuple[np.ndarray, np.ndarray, str, dict]:
    """Per-example (clean margin, attacked margin) of ``score_fn(params, .)`` over batches.

    Compiles the attack once (fixed padded batch shape).  Returns (clean, attacked, name, settings).
    """
    bound, name, settings = bind_attack(attack, threat, attack_settings)
    if isinstance(targets, bool) or not isinstance(targets, int) or targets < 0:
        raise ValueError(f"targets must be an int >= 0, got {targets!r}")
    run = make_margin_evaluator(score_fn, bound, targets)
    clean, worst = map_batches(lambda xb, yb, kb: run(params, xb, yb, kb), [np.asarray(x), np.asarray(y)], batch_size, key)
    return clean, worst, name, settings


# ----------------------------------------------------------------------------- layer features


def check_network_data(model, variables, x, y, split_points) -> tuple[np.ndarray, np.ndarray, int, list[int]]:
    """Checks images, labels in [0, K) and split points a in 1..n-1 of a network before any work;
    returns (x, y, n, sorted split points)."""
    x = np.asarray(x)
    y = np.asarray(y)
    check_images(x, "x")
    n, num_classes = network_info(model, variables, x)
    check_labels(y, num_classes, "y", batch=x.shape[0])
    splits = sorted(set(int(a) for a in split_points))
    bad = [a for a in splits if not 1 <= a <= n - 1]
    if not splits or bad:
        raise ValueError(f"split points {bad or list(split_points)} out of range 1..{n - 1} for {n} weight layers")
    return x, y, n, splits


def network_info(model, variables, x) -> tuple[int, int]:
    """(number of weight layers n, number of classes K) from the shapes of a forward pass on ``x[:1]``."""
    logits, outs = jax.eval_shape(lambda xb: layer_outputs(model, variables, xb), jnp.asarray(x[:1], jnp.float32))
    return len(outs), int(logits.shape[-1])


def collect_layer_outputs(model, variables, x, layers: Iterable[int], *, batch_size: int = 256,
                          flatten: bool = True) -> dict[int, np.ndarray]:
    """Outputs of the given weight layers (1-based) on ``x`` as host float32 arrays.

    One jitted forward pass per batch returns every requested layer (flattened to (N, D)
    unless ``flatten`` is False).
    """
    layers = tuple(sorted(set(int(j) for j in layers)))
    if not layers:
        return {}
    fn = bind(model, variables)
    res = map_batches(lambda xb: _selected_outputs(fn, xb, layers=layers, flatten=flatten), [np.asarray(x)], batch_size)
    return {j: r.astype(np.float32, copy=False) for j, r in zip(layers, res)}


@functools.partial(jax.jit, static_argnames=("layers", "flatten"))
def _selected_outputs(fn, xb, *, layers: tuple, flatten: bool):
    """Outputs of weight layers ``layers`` (1-based) of the bound model ``fn`` on a batch."""
    _, outs = layer_outputs(fn.model, fn.variables, xb)
    if layers[-1] > len(outs) or layers[0] < 1:
        raise ValueError(f"layer indices {layers} out of range 1..{len(outs)}")
    sel = [outs[j - 1] for j in layers]
    return tuple(o.reshape(o.shape[0], -1) if flatten else o for o in sel)


# ----------------------------------------------------------------------------- gamma


@dataclasses.dataclass(frozen=True)
class LayerScore:
    """Scores of G_j o F(j) as ``score(params, x)``, params = (variables, W, b): the network's
    logits for the last layer (``identity``), else the ridge probe (W, b) on layer j's output.
    A hashable value (the Flax module by value), so jitted evaluators compile once per layer."""

    model: Any
    j: int
    identity: bool

    def __call__(self, params, xx):
        v, w, b = params
        logits, outs = layer_outputs(self.model, v, xx)
        return logits.astype(jnp.float32) if self.identity else apply_probe(w, b, outs[self.j - 1])


def layer_gammas(model, variables, x, y, key, *, threat, layers: Iterable[int] | None = None,
                 attack: str | Callable = DEFAULT_GAMMA_ATTACK, attack_settings: Mapping[str, Any] | None = None,
                 targets: int = 0, probe_x=None, probe_y=None, ridge: float = 1e-3, batch_size: int = 256,
                 identity_last: bool = True, per_example: bool = False) -> list[dict]:
    """gamma_j estimates for every weight layer j in ``layers`` (default: all 1..n), one dict each.

    Per layer: fits the probe G_j on the clean features of ``probe_x`` / ``probe_y``
    (default: ``x`` / ``y``, i.e. an in-sample probe; pass held-out images for a
    train/test split), identity on the logits for the last layer (``identity_last``; with
    False the last layer gets a ridge probe too, so every gamma_j is in the same one-hot
    target units -- gamma scales with G, so a probe's gamma and the logits' gamma are on
    different scales); then attacks G_j o F(j) on ``x`` (compiled once per layer).  Keys
    of each dict:

    - ``clean_margin``: mean margin of G_j's scores on clean ``x``;
    - ``attacked_margin``: mean of min(clean, attacked) margin -- an UPPER estimate of
      gamma_j (see the module docstring); ``attacked_margin_sem`` its standard error;
    - ``clean_acc`` / ``attacked_acc``: fraction of examples with margin > 0 (probe accuracy);
    - ``probe``: "identity" or "ridge"; ``probe_fit_acc``: probe accuracy on its fitting data;
    - ``attack``, ``attack_settings``, ``threat``, ``targets``, ``num_examples``, ``feature_dim``,
      ``units``, ``note``; with ``per_example`` also ``clean_margins`` / ``attacked_margins``.
    """
    x = np.asarray(x)
    y = np.asarray(y)
    check_images(x, "x")
    n, num_classes = network_info(model, variables, x)
    check_labels(y, num_classes, "y", batch=x.shape[0])
    if probe_x is None:
        probe_x, probe_y = x, y
    elif probe_y is None:
        raise ValueError("probe_y is required when probe_x is given")
    probe_x, probe_y = np.asarray(probe_x), np.asarray(probe_y)
    check_images(probe_x, "probe_x")
    check_labels(probe_y, num_classes, "probe_y", batch=probe_x.shape[0])
    layers = list(range(1, n + 1)) if layers is None else sorted(set(int(j) for j in layers))
    bad = [j for j in layers if not 1 <= j <= n]
    if bad:
        raise ValueError(f"layer indices {bad} out of range 1..{n}")
    _, name, settings = bind_attack(attack, threat, attack_settings)

    results = []
    for j in layers:
        identity = j == n and identity_last
        if identity:
            w = b = jnp.zeros((0,), jnp.float32)
            fit_acc, dim = None, num_classes
        else:
            feats = collect_layer_outputs(model, variables, probe_x, [j], batch_size=batch_size)[j]
            dim = int(feats.shape[1])
            w, b = fit_probe(feats, probe_y, num_classes, ridge)
            fit_acc = float(np.mean(np.argmax(np.asarray(apply_probe(w, b, jnp.asarray(feats))), -1) == probe_y))
            del feats
        clean, worst, _, _ = attacked_margins(
            LayerScore(model, j, identity), (variables, w, b), x, y, jax.random.fold_in(key, j),
            threat=threat, attack=attack, attack_settings=attack_settings, targets=targets, batch_size=batch_size)
        row = {
            "layer": j,
            "probe": "identity" if identity else "ridge",
            "ridge": None if identity else float(ridge),
            "feature_dim": dim,
            "clean_margin": float(np.mean(clean)),
            "attacked_margin": float(np.mean(worst)),
            "attacked_margin_sem": float(np.std(worst, ddof=1) / math.sqrt(len(worst))) if len(worst) > 1 else float("nan"),
            "clean_acc": float(np.mean(clean > 0)),
            "attacked_acc": float(np.mean(worst > 0)),
            "probe_fit_acc": fit_acc,
            "attack": name,
            "attack_settings": jsonable(settings),
            "threat": threat_dict(threat),
            "targets": int(targets),
            "num_examples": int(x.shape[0]),
            "units": "logit units" if identity else "probe score units (one-hot regression targets)",
            "note": GAMMA_NOTE,
        }
        if per_example:
            row["clean_margins"] = clean
            row["attacked_margins"] = worst
        results.append(row)
    return results


def layer_gamma(model, variables, j: int, x, y, key, *, threat, **kwargs) -> dict:
    """gamma_j estimate for one weight layer ``j`` (see ``layer_gammas`` for the keys and options)."""
    return layer_gammas(model, variables, x, y, key, threat=threat, layers=[j], **kwargs)[0]

