"""VGG16 with BatchNorm, CIFAR style (13 convs + 3 dense = 16 weight layers)."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize, sow_layer
from jsemi.models.layers import conv, dense, global_avg_pool, maybe_pool

# Configuration "D": conv widths, "M" = 2x2 max-pool (belongs to the conv before it).
VGG16_CFG: tuple = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M")


class VGG(nn.Module):
    """VGG-BN for small images, as in the paper's reference code (huyvnphan/PyTorch_CIFAR10).

    Weight layers: one per conv of ``cfg`` (3x3, pad 1, no bias, then BN and relu,
    then the max-pool when an "M" follows it), then a classifier on the globally
    average-pooled features: dense(hidden) -> relu [-> dropout], dense(hidden) ->
    relu [-> dropout], dense(num_classes).  VGG16: 13 + 3 = 16 weight layers.

    ``hidden`` defaults to 4096 like the reference.  ``dropout`` defaults to 0
    (the reference uses 0.5): a positive rate needs ``rngs={'dropout': key}`` in
    ``apply`` whenever ``train=True``.  Pools are skipped once the map is below
    2x2, so 28x28 inputs work; 64x64 inputs end at 2x2, which the global pool
    averages (the reference's AdaptiveAvgPool2d((1, 1))).
    """

    num_classes: int = 10
    cfg: Sequence[Any] = VGG16_CFG
    hidden: int = 4096
    dropout: float = 0.0
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        return sum(1 for v in self.cfg if v != "M") + 3

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        if not self.cfg or self.cfg[0] == "M":
            raise ValueError(f"VGG cfg must start with a conv width, got {self.cfg}")
        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        j = 0
        cfg = list(self.cfg)
        for i, v in enumerate(cfg):
            if v == "M":
                continue
            j += 1
            x = conv(j, int(v), 3, dtype=self.dtype)(x)
            x = batch_norm(j, train, frozen, self.dtype)(x)
            x = nn.relu(x)
            if i + 1 < len(cfg) and cfg[i + 1] == "M":
                x = maybe_pool(x)
            sow_layer(self, j, x)
        x = global_avg_pool(x)
        for _ in range(2):
            j += 1
            x = nn.relu(dense(j, self.hidden, dtype=self.dtype)(x))
            if self.dropout > 0:
                x = nn.Dropout(self.dropout, deterministic=not train)(x)
            sow_layer(self, j, x)
        j += 1
        x = dense(j, self.num_classes, dtype=self.dtype)(x).astype(jnp.float32)
        sow_layer(self, j, x)
        return x
