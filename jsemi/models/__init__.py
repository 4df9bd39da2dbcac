"""Model zoo with an ordered weight-layer registry (see ``jsemi.models.base`` for the contract).

``get_model(name, num_classes)`` builds a Flax module; ``init_model`` initialises
its variables; ``layer_outputs`` returns the logits and every weight layer's
output from one forward pass; ``weight_layer_indices`` lists the indices found
in a variables tree.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jsemi.models.base import INTERMEDIATE_RE, LAYER_NAME_RE, CIFAR10_MEAN, CIFAR10_STD
from jsemi.models.bound import BoundModel, bind
from jsemi.models.cnn import SmallCNN

# name -> factory(num_classes, **kwargs) -> nn.Module.  Extended by the zoo modules below.
MODELS: dict[str, Callable[..., nn.Module]] = {
    "small_cnn": lambda num_classes=10, **kw: SmallCNN(num_classes=num_classes, **kw),
}

try:  # the larger architectures live in their own modules
    from jsemi.models.zoo import register_zoo as _register_zoo

    _register_zoo(MODELS)
except ImportError:  # pragma: no cover - zoo not present in a minimal install
    pass


def get_model(name: str, num_classes: int = 10, **kwargs) -> nn.Module:
    """Returns the Flax module registered under ``name``; unknown names raise ValueError."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(sorted(MODELS))}")
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an int >= 2, got {num_classes!r}")
    # lists (e.g. widths read back from JSON) become tuples: a module is a hashable static jit value
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in kwargs.items()}
    return MODELS[name](num_classes=num_classes, **kwargs)


@functools.partial(jax.jit, static_argnames=("model", "input_shape"))
def _init(key: jax.Array, *, model: nn.Module, input_shape: tuple[int, int, int]):
    # jit: un-jitted init compiles every random initialiser separately (seconds on CPU); the
    # module and shape are static, so each architecture compiles its initialiser once.
    return model.init(key, jnp.zeros((1, *input_shape), jnp.float32), train=False)


def init_model(model: nn.Module, key: jax.Array, input_shape: tuple[int, int, int]) -> dict:
    """Initialises ``model`` for inputs of shape (H, W, C); returns {'params', 'batch_stats'?}."""
    if len(input_shape) != 3:
        raise ValueError(f"input_shape must be (height, width, channels), got {input_shape}")
    variables = dict(_init(key, model=model, input_shape=tuple(int(d) for d in input_shape)))
    variables.pop("intermediates", None)
    return variables


def _collect_intermediates(tree: Any, out: dict[int, jnp.ndarray]) -> None:
    for k, v in tree.items():
        m = INTERMEDIATE_RE.match(str(k))
        if m and not isinstance(v, dict):
            out[int(m.group(1))] = v
        elif isinstance(v, dict):
            _collect_intermediates(v, out)


def layer_outputs(model: nn.Module, variables: dict, x: jnp.ndarray) -> tuple[jnp.ndarray, list[jnp.ndarray]]:
    """Returns (logits, [output of weight layer 1, ..., output of weight layer n]) in eval mode.

    Differentiable in ``x`` and jit-friendly.
    """
    logits, state = model.apply(variables, x, train=False, mutable=["intermediates"])
    found: dict[int, jnp.ndarray] = {}
    _collect_intermediates(jax.tree_util.tree_map(lambda a: a, dict(state["intermediates"])), found)
    return logits, [found[j] for j in sorted(found)]


def layer_fn(model: nn.Module, variables: dict, j: int) -> BoundModel:
    """x -> F(j)(x), weight layer j's output (1-based), in eval mode, as a pytree callable
    (weights are jit arguments; see ``jsemi.models.bound``)."""
    return bind(model, variables, layer=j)


def logits_fn(model: nn.Module, variables: dict) -> BoundModel:
    """x -> logits in eval mode (BatchNorm uses running statistics): ``bind(model, variables)``."""
    return bind(model, variables)


def weight_layer_indices(variables: dict) -> list[int]:
    """Sorted weight-layer indices appearing in the paths of ``variables``."""
    found: set[int] = set()
    for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]:
        for k in path:
            name = getattr(k, "key", getattr(k, "name", None))
            m = LAYER_NAME_RE.match(str(name)) if name is not None else None
            if m:
                found.add(int(m.group(1)))
    return sorted(found)


def count_weight_layers(variables: dict) -> int:
    """Number n of weight layers (conv + dense, shortcuts included) in ``variables``."""
    return len(weight_layer_indices(variables))


__all__ = [
    "MODELS",
    "SmallCNN",
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "get_model",
    "init_model",
    "layer_outputs",
    "layer_fn",
    "logits_fn",
    "bind",
    "BoundModel",
    "weight_layer_indices",
    "count_weight_layers",
]
