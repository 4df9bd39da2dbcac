"""Path-based partition of variable pytrees into the subnetwork fa and the remainder fb.

A leaf belongs to weight layer j when a key on its path is a module name
``L{j:02d}_*`` (see ``jsemi.models.base``).  The split applies to every
collection alike (``params`` AND ``batch_stats``), so freezing fa freezes its
BatchNorm statistics too.  For a user's own pytree, pass ``index_fn`` (path ->
layer index or None) or use the predicate forms (``split_by``, ``mask_by``).

Trees are nested dicts (Flax ``FrozenDict`` is accepted and plain dicts are
returned).  ``split`` prunes: fa and fb contain only their own leaves, and
``merge(fa, fb)`` restores the original tree.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Callable, Iterable

import jax

from jsemi.models.base import LAYER_NAME_RE

Path = tuple[str, ...]
IndexFn = Callable[[Path], "int | None"]


def _key_str(k) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(k, attr):
            return str(getattr(k, attr))
    return str(k)


def path_of(keypath) -> Path:
    """Converts a jax key path into a tuple of strings."""
    return tuple(_key_str(k) for k in keypath)


def layer_index(path: Path | tuple) -> int | None:
    """Returns the weight-layer index named on ``path`` (deepest ``Lnn_`` key wins), or None."""
    for name in reversed(tuple(_key_str(k) if not isinstance(k, str) else k for k in path)):
        m = LAYER_NAME_RE.match(name)
        if m:
            return int(m.group(1))
    return None


def _as_dict(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {k: _as_dict(v) for k, v in tree.items()}
    return tree


def _leaves_with_paths(tree: Any) -> list[tuple[Path, Any]]:
    flat, _ = jax.tree_util.tree_flatten_with_path(_as_dict(tree))
    return [(path_of(p), leaf) for p, leaf in flat]


def _insert(out: dict, path: Path, leaf: Any) -> None:
    node = out
    for k in path[:-1]:
        node = node.setdefault(k, {})
    node[path[-1]] = leaf


def layer_indices(tree: Any, index_fn: IndexFn = layer_index) -> list[int]:
    """Sorted distinct weight-layer indices found in ``tree``."""
    return sorted({i for p, _ in _leaves_with_paths(tree) if (i := index_fn(p)) is not None})


def split_by(tree: Any, predicate: Callable[[Path, Any], bool]) -> tuple[dict, dict]:
    """Splits ``tree`` into (selected, rest) by ``predicate(path, leaf)``; raises if a side is empty."""
    sel: dict = {}
    rest: dict = {}
    for p, leaf in _leaves_with_paths(tree):
        _insert(sel if predicate(p, leaf) else rest, p, leaf)
    if not sel:
        raise ValueError("the partition selects no variable (empty subnetwork)")
    if not rest:
        raise ValueError("the partition selects every variable (empty remainder)")
    return sel, rest


def _check_all_indexed(tree: Any, index_fn: IndexFn) -> None:
    orphans = ["/".join(p) for p, _ in _leaves_with_paths(tree) if index_fn(p) is None]
    if orphans:
        raise ValueError(
            "variables without a weight-layer index (module names must start with 'Lnn_'): "
            + ", ".join(orphans[:5]) + (" ..." if len(orphans) > 5 else "")
        )


def split(tree: Any, a: int, *, index_fn: IndexFn = layer_index) -> tuple[dict, dict]:
    """Splits variables at split point ``a``: fa = weight layers 1..a, fb = layers a+1..n.

    Applies to every collection in ``tree``.  Raises ValueError when a leaf has no
    layer index or when ``a`` is not in [1, n-1] (either part would be empty).
    """
    _check_all_indexed(tree, index_fn)
    idx = layer_indices(tree, index_fn)
    n = max(idx) if idx else 0
    if isinstance(a, bool) or not isinstance(a, int) or not 1 <= a <= n - 1:
        raise ValueError(f"split point a must be an int in [1, {n - 1}] for a network with {n} weight layers, got {a!r}")
    return split_by(tree, lambda p, _: index_fn(p) <= a)


def split_fb(tree: Any, num_fb: int, *, index_fn: IndexFn = layer_index) -> tuple[dict, dict]:
    """Splits so that fb holds the last ``num_fb`` weight layers (the tables' "# fb")."""
    n = max(layer_indices(tree, index_fn) or [0])
    if isinstance(num_fb, bool) or not isinstance(num_fb, int) or not 1 <= num_fb <= n - 1:
        raise ValueError(f"# fb must be an int in [1, {n - 1}] for a network with {n} weight layers, got {num_fb!r}")
    return split(tree, n - num_fb, index_fn=index_fn)


def merge(*parts: Any) -> dict:
    """Deep-merges disjoint trees (e.g. fa and fb) back into one; overlapping leaves raise."""
    out: dict = {}
    for part in parts:
        for p, leaf in _leaves_with_paths(part):
            node = out
            for k in p[:-1]:
                node = node.setdefault(k, {})
            if p[-1] in node:
                raise ValueError(f"merge: variable {'/'.join(p)} appears in more than one part")
            node[p[-1]] = leaf
    return out


def select(tree: Any, layers: Iterable[int], *, index_fn: IndexFn = layer_index) -> dict:
    """Returns the subtree of the given weight layers (raises on unknown layer indices)."""
    wanted = set(int(j) for j in layers)
    known = set(layer_indices(tree, index_fn))
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown weight layer(s) {sorted(unknown)}; the network has layers {min(known)}..{max(known)}")
    out: dict = {}
    for p, leaf in _leaves_with_paths(tree):
        if index_fn(p) in wanted:
            _insert(out, p, leaf)
    if not out:
        raise ValueError("the selection holds no variable")
    return out


def mask_by(tree: Any, predicate: Callable[[Path, Any], bool]) -> Any:
    """Boolean pytree with the structure of ``tree``: True where ``predicate(path, leaf)``."""
    tree = _as_dict(tree)
    return jax.tree_util.tree_map_with_path(lambda kp, leaf: bool(predicate(path_of(kp), leaf)), tree)


def layer_mask(tree: Any, layers: Iterable[int], *, index_fn: IndexFn = layer_index) -> Any:
    """Boolean pytree: True for leaves of the given weight layers (unknown indices raise)."""
    wanted = set(int(j) for j in layers)
    known = set(layer_indices(tree, index_fn))
    if not wanted:
        raise ValueError("layer_mask: empty set of layers")
    unknown = wanted - known
    if unknown:
        raise ValueError(f"unknown weight layer(s) {sorted(unknown)}; the network has layers {sorted(known)}")
    return mask_by(tree, lambda p, _: index_fn(p) in wanted)


def fb_layers(tree: Any, a: int, *, index_fn: IndexFn = layer_index) -> tuple[int, ...]:
    """Layer indices a+1..n of fb for split point ``a`` (validated like ``split``)."""
    split(tree, a, index_fn=index_fn)
    n = max(layer_indices(tree, index_fn))
    return tuple(range(a + 1, n + 1))


def fa_layers(tree: Any, a: int, *, index_fn: IndexFn = layer_index) -> tuple[int, ...]:
    """Layer indices 1..a of fa for split point ``a`` (validated like ``split``)."""
    split(tree, a, index_fn=index_fn)
    return tuple(range(1, a + 1))
