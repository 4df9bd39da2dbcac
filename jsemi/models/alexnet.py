"""AlexNet, CIFAR variant (5 convs + 1 dense = 6 weight layers)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize, sow_layer
from jsemi.models.layers import conv, dense, maybe_pool


class AlexNet(nn.Module):
    """The CIFAR AlexNet used by the paper's reference code (bearpaw/pytorch-classification).

    Layers (j: kind, then what belongs to it; the sown output is the last step):

    1. conv 11x11/4, pad 5, 64   -> [BN] -> relu -> max-pool 2x2
    2. conv 5x5, 192             -> [BN] -> relu -> max-pool 2x2
    3. conv 3x3, 384             -> [BN] -> relu
    4. conv 3x3, 256             -> [BN] -> relu
    5. conv 3x3, 256             -> [BN] -> relu -> max-pool 2x2
    6. dense(num_classes) on the flattened map (256 features for 32x32 inputs)  -> logits

    ``n_weight_layers`` = 6.  ``use_bn=True`` (default) adds a BatchNorm after
    every conv (``L0j_bn``), which the reference lacks; ``use_bn=False`` gives
    the reference network exactly (conv biases, no BatchNorm).  Pools are
    skipped once the map is smaller than 2x2, so 28x28 inputs work
    (28 -> 7 -> 3 -> 1 -> 1).  64x64 inputs give a 2x2x256 map (1,024 features).
    """

    num_classes: int = 10
    widths: Sequence[int] = (64, 192, 384, 256, 256)
    use_bn: bool = True
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        return len(self.widths) + 1

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        if len(self.widths) != 5:
            raise ValueError(f"AlexNet needs 5 conv widths, got {self.widths}")
        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        # (kernel, stride, padding, pool after)
        spec = [(11, 4, 5, True), (5, 1, 2, True), (3, 1, 1, False), (3, 1, 1, False), (3, 1, 1, True)]
        for i, (width, (k, s, p, pool)) in enumerate(zip(self.widths, spec)):
            j = i + 1
            x = conv(j, width, k, s, p, dtype=self.dtype, use_bias=not self.use_bn)(x)
            if self.use_bn:
                x = batch_norm(j, train, frozen, self.dtype)(x)
            x = nn.relu(x)
            if pool:
                x = maybe_pool(x)
            sow_layer(self, j, x)
        j = len(self.widths) + 1
        x = x.reshape((x.shape[0], -1))
        x = dense(j, self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
        sow_layer(self, j, x)
        return x
