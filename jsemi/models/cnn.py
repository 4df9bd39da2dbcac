"""The CPU-scale CNN (7 weight layers) used by the default experiments and the demo."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import batch_norm, layer_name, max_pool_2x2, normalize, sow_layer


class SmallCNN(nn.Module):
    """conv-conv-pool-conv-conv-pool-conv-dense-dense with BatchNorm after every conv.

    Weight layers: 5 convs (3x3, widths ``widths``) + dense(``hidden``) + dense(classes) = 7.
    Works on 28x28x1 and 32x32x3 (any HxW >= 4).  Returns logits.
    """

    num_classes: int = 10
    widths: Sequence[int] = (16, 16, 32, 32, 64)
    hidden: int = 128
    mean: Sequence[float] | None = (0.5,)
    std: Sequence[float] | None = (0.5,)
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        return len(self.widths) + 2

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(self.dtype)
        pool_after = {2, 4}
        for i, width in enumerate(self.widths):
            j = i + 1
            x = nn.Conv(width, (3, 3), padding="SAME", use_bias=False, dtype=self.dtype, name=layer_name(j, "conv"))(x)
            x = batch_norm(j, train, frozen, self.dtype)(x)
            x = nn.relu(x)
            if j in pool_after:
                x = max_pool_2x2(x)
            sow_layer(self, j, x)
        j = len(self.widths) + 1
        x = x.reshape((x.shape[0], -1))
        x = nn.relu(nn.Dense(self.hidden, dtype=self.dtype, name=layer_name(j, "dense"))(x))
        sow_layer(self, j, x)
        x = nn.Dense(self.num_classes, dtype=self.dtype, name=layer_name(j + 1, "dense"))(x)
        x = x.astype(jnp.float32)
        sow_layer(self, j + 1, x)
        return x
