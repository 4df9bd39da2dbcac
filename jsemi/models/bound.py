"""Model functions whose weights are pytree leaves, so ``jax.jit`` takes them as arguments.

``bind(model, variables)`` returns a :class:`BoundModel`: a callable pytree whose leaves are
the arrays of ``variables`` and whose static part is the (hashable) Flax module.  Passed to
any jsemi attack, evaluator or estimator, or through a user's own ``jax.jit`` as an ordinary
argument, new weights of the same shapes reuse the compiled program: jit's cache keys on
the module and the shapes, never on the weights' values or on a function's identity.

A plain closure ``lambda x: model.apply(variables, x)`` still works everywhere, but it
carries its weights as compile-time constants: jit keys it by identity, so every new closure
(new weights, or the same weights in a new lambda) compiles again.

    f = bind(model, variables)          # x (B, H, W, C) float32 in [0, 1] -> logits (B, K)
                                        # (uint8 / [0, 255] images raise with the fix)
    f_j = bind(model, variables, layer=3)   # x -> output of weight layer 3 (1-based)
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.linen as nn
import jax.numpy as jnp
from flax import struct

__all__ = ["BoundModel", "bind"]


class BoundModel(struct.PyTreeNode):
    """``model.apply(variables, x, train=False)`` as a pytree callable.

    Attributes:
      model: the Flax module (static: part of jit's cache key, hashed by value).
      variables: {'params', 'batch_stats'?} (pytree leaves: jit arguments).
      layer: None for the logits, else the 1-based weight layer whose output is returned.
    """

    model: nn.Module = struct.field(pytree_node=False)
    variables: Any
    layer: int | None = struct.field(pytree_node=False, default=None)

    def __call__(self, x: jnp.ndarray) -> jnp.ndarray:
        """x (B, H, W, C) float in [0, 1] -> logits (B, K) (or weight layer ``layer``'s output).

        uint8 or integer images are refused always (a static check, traceable); with concrete
        arrays (not tracers) values outside [0, 1], e.g. [0, 255] pixels, are refused too."""
        from jsemi.validation import check_model_input

        check_model_input(x, "x")
        if self.layer is None:
            return self.model.apply(self.variables, x, train=False)
        from jsemi.models import layer_outputs

        _, outs = layer_outputs(self.model, self.variables, x)
        if not 1 <= self.layer <= len(outs):
            raise ValueError(f"layer index {self.layer} out of range 1..{len(outs)}")
        return outs[self.layer - 1]

    def with_variables(self, variables: Any) -> "BoundModel":
        """Same model, other weights (same shapes reuse every compiled program)."""
        return self.replace(variables=variables)


def _plain_dicts(tree: Any) -> Any:
    """Nested mappings (FrozenDict or dict) as plain dicts: one tree structure, so one compiled program, whichever
    mapping type the variables arrive in."""
    if isinstance(tree, Mapping):
        return {k: _plain_dicts(v) for k, v in tree.items()}
    return tree


def bind(model: nn.Module, variables: Any, *, layer: int | None = None) -> BoundModel:
    """The inference-mode function of ``model`` with ``variables`` as jit arguments (see module doc)."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"bind expects a flax.linen Module, got {type(model).__name__}")
    if layer is not None and (isinstance(layer, bool) or not isinstance(layer, int) or layer < 1):
        raise ValueError(f"layer must be a positive int (1-based weight layer), got {layer!r}")
    return BoundModel(model=model, variables=_plain_dicts(variables), layer=layer)
