"""Partition of variable trees into fa / fb: paths, splits, masks, errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import partition as P
from jsemi.models import get_model, init_model


@pytest.fixture(scope="module")
def cnn_vars():
    model = get_model("small_cnn")
    return init_model(model, jax.random.PRNGKey(0), (28, 28, 1))


def _paths(tree):
    return {"/".join(P.path_of(p)) for p, _ in jax.tree_util.tree_flatten_with_path(tree)[0]}


def test_layer_index_from_paths():
    assert P.layer_index(("params", "L03_conv", "kernel")) == 3
    assert P.layer_index(("params", "stage2", "L11_bn", "scale")) == 11
    assert P.layer_index(("params", "head", "kernel")) is None


@pytest.mark.parametrize("a", [1, 3, 6])
def test_split_covers_both_collections_and_merges_back(cnn_vars, a):
    fa, fb = P.split(cnn_vars, a)
    for part, lo, hi in ((fa, 1, a), (fb, a + 1, 7)):
        idx = P.layer_indices(part)
        assert idx == list(range(lo, hi + 1))
    # BatchNorm statistics follow their layer: L01..L05 have batch_stats
    assert set(fa["batch_stats"]) == {f"L{j:02d}_bn" for j in range(1, min(a, 5) + 1)}
    if a < 5:
        assert set(fb["batch_stats"]) == {f"L{j:02d}_bn" for j in range(a + 1, 6)}
    merged = P.merge(fa, fb)
    assert _paths(merged) == _paths(cnn_vars)
    for (p1, x1), (p2, x2) in zip(jax.tree_util.tree_flatten_with_path(merged)[0],
                                  jax.tree_util.tree_flatten_with_path(P._as_dict(cnn_vars))[0]):
        assert P.path_of(p1) == P.path_of(p2) and np.array_equal(x1, x2)
    # disjoint
    assert not (_paths(fa) & _paths(fb))


def test_split_fb_counts_from_the_end(cnn_vars):
    fa, fb = P.split_fb(cnn_vars, 2)
    assert P.layer_indices(fb) == [6, 7]
    assert P.layer_indices(fa) == [1, 2, 3, 4, 5]


@pytest.mark.parametrize("a", [0, 7, -1, 2.5, True])
def test_bad_split_points_raise(cnn_vars, a):
    with pytest.raises(ValueError, match="split point"):
        P.split(cnn_vars, a)


def test_unknown_layers_and_empty_selection_raise(cnn_vars):
    with pytest.raises(ValueError, match="unknown weight layer"):
        P.layer_mask(cnn_vars, [8])
    with pytest.raises(ValueError, match="empty"):
        P.layer_mask(cnn_vars, [])
    with pytest.raises(ValueError, match="no variable"):
        P.split_by(cnn_vars, lambda p, x: False)
    with pytest.raises(ValueError, match="unknown weight layer"):
        P.select(cnn_vars, [0])


def test_merge_rejects_overlap(cnn_vars):
    fa, _ = P.split(cnn_vars, 2)
    with pytest.raises(ValueError, match="more than one part"):
        P.merge(fa, fa)


def test_layer_mask_marks_exactly_the_layers(cnn_vars):
    mask = P.layer_mask(cnn_vars, [2, 6])
    for path, flag in jax.tree_util.tree_flatten_with_path(mask)[0]:
        assert flag == (P.layer_index(P.path_of(path)) in (2, 6))


def test_user_pytree_with_custom_index_fn():
    """Functional API on a tree that does not follow jsemi's naming."""
    tree = {"encoder": {"w": jnp.ones(3), "b": jnp.zeros(3)}, "decoder": {"w": jnp.ones(2)}, "head": {"w": jnp.ones(1)}}
    order = {"encoder": 1, "decoder": 2, "head": 3}
    index_fn = lambda path: order.get(path[0])
    fa, fb = P.split(tree, 1, index_fn=index_fn)
    assert set(fa) == {"encoder"} and set(fb) == {"decoder", "head"}
    sel, rest = P.split_by(tree, lambda p, x: p[-1] == "w")
    assert _paths(sel) == {"encoder/w", "decoder/w", "head/w"} and _paths(rest) == {"encoder/b"}
    with pytest.raises(ValueError, match="without a weight-layer index"):
        P.split({"x": {"w": jnp.ones(1)}, "L01_conv": {"w": jnp.ones(1)}}, 1)
