"""Small helpers shared by the zoo architectures (AlexNet, VGG, ResNet, WRN, ViT).

Everything here creates modules in the *caller's* scope, so every weight layer
stays a direct child of the model and its path is ``params/Lnn_<kind>/...``
(``jsemi.partition`` needs an ``Lnn_`` key on every variable path).
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import layer_name, max_pool_2x2

# torchvision / TRADES initialisation of conv kernels: kaiming normal, fan_out, gain sqrt(2).
kaiming_fan_out = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# PyTorch's default nn.Linear weight init, U(-1/sqrt(fan_in), 1/sqrt(fan_in)) (variance 1 / (3 fan_in)),
# so the CNN classifiers start at the logit scale of the reference models.
torch_linear = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def conv(
    j: int,
    features: int,
    kernel: int,
    stride: int = 1,
    padding: int | None = None,
    *,
    dtype: Any = jnp.float32,
    use_bias: bool = False,
) -> nn.Conv:
    """k x k conv of weight layer ``j`` with PyTorch-style symmetric padding (default k // 2).

    Explicit symmetric padding keeps strided convs aligned as in the PyTorch
    reference models (Flax's "SAME" pads asymmetrically when stride > 1).
    """
    p = kernel // 2 if padding is None else padding
    return nn.Conv(
        features,
        (kernel, kernel),
        strides=(stride, stride),
        padding=((p, p), (p, p)),
        use_bias=use_bias,
        dtype=dtype,
        param_dtype=jnp.float32,
        kernel_init=kaiming_fan_out,
        name=layer_name(j, "conv"),
    )


def dense(j: int, features: int, *, dtype: Any = jnp.float32, **kw) -> nn.Dense:
    """Dense layer of weight layer ``j`` (float32 parameters, ``dtype`` compute).

    Kernel initialised like PyTorch's nn.Linear, bias zero, unless ``kernel_init`` /
    ``bias_init`` are given.
    """
    kw.setdefault("kernel_init", torch_linear)
    return nn.Dense(features, dtype=dtype, param_dtype=jnp.float32, name=layer_name(j, "dense"), **kw)


def maybe_pool(x: jnp.ndarray) -> jnp.ndarray:
    """2x2/2 max-pool (fast reshape form), skipped once a spatial side is below 2.

    Lets the VGG/AlexNet pooling schedules designed for 32x32 run on 28x28 inputs
    too (28 -> 14 -> 7 -> 3 -> 1 -> 1) instead of collapsing to an empty map.
    """
    if x.shape[1] < 2 or x.shape[2] < 2:
        return x
    return max_pool_2x2(x)


def global_avg_pool(x: jnp.ndarray) -> jnp.ndarray:
    """(N, H, W, C) -> (N, C) spatial mean (accumulated in float32 for low-precision inputs)."""
    return jnp.mean(x.astype(jnp.float32), axis=(1, 2)).astype(x.dtype)
