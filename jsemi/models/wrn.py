"""WideResNet (pre-activation, as in TRADES and the paper's reference code): WRN-34-10.

How WRN-34-10 has 35 weight layers.  depth = 6 * N + 4 gives N = 5 blocks per
group, 3 groups, 2 convs per block:

    1 stem conv + 3 * 5 * 2 = 30 block convs + 1 dense                  = 32
    + 3 shortcut 1x1 convs (first block of each group: 16 -> 160 channels,
      160 -> 320 with stride 2, 320 -> 640 with stride 2)                 = 35

(The "34" of the name counts the stem, the 30 block convs, the dense layer
and two of the shortcuts, the original paper's convention; the paper we
reproduce counts every conv and dense, so 35.)  With ``widen_factor=1`` the
first group keeps 16 channels and has no shortcut conv: WRN-34-1 has 34.

Weight-layer numbering: 1 = stem conv; per block conv1, [shortcut], conv2
(the shortcut is numbered just before the conv whose output it is added to,
so F(j) depends on layers 1..j only; see ``jsemi.models.resnet``); last = dense.

Pre-activation blocks: BN -> relu come *before* each conv.  Following the
paper's rule that BatchNorm and activations belong to the weight layer before
them, the BN applied to a tensor is named after the weight layer that produced
it: ``L01_bn`` is the first block's bn1 (acting on the stem's output), a
block's bn2 is ``L{conv1}_bn``, and the next block's bn1 (or the final BN
before pooling) is ``L{conv2}_bn``.  Shortcut convs have no BN.

Sown outputs: stem and conv1 after their BN and relu; a shortcut conv raw; a
block's conv2 after the residual addition and the following BN and relu (the
tensor the next block's convs read; the identity path carries the raw sum);
the dense layer's logits.
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize, sow_layer
from jsemi.models.layers import conv, dense, global_avg_pool


def wrn_plan(depth: int, widen_factor: int) -> list[tuple[int, int, bool]]:
    """Per block: (out_channels, stride, has_shortcut_conv), in forward order."""
    if (depth - 4) % 6 != 0 or depth < 10:
        raise ValueError(f"WideResNet depth must be 6N + 4 with N >= 1, got {depth}")
    n = (depth - 4) // 6
    in_ch = 16
    plan = []
    for g, base in enumerate((16, 32, 64)):
        out_ch = base * widen_factor
        for b in range(n):
            stride = 2 if (g > 0 and b == 0) else 1
            plan.append((out_ch, stride, stride != 1 or in_ch != out_ch))
            in_ch = out_ch
    return plan


class WideResNet(nn.Module):
    """WRN-depth-widen_factor; see the module docstring for the layer numbering and BN naming."""

    num_classes: int = 10
    depth: int = 34
    widen_factor: int = 10
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        plan = wrn_plan(self.depth, self.widen_factor)
        return 1 + sum(2 + int(sc) for _, _, sc in plan) + 1

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        dt = self.dtype

        def bn_relu(j, h):
            return nn.relu(batch_norm(j, train, frozen, dt)(h))

        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(dt)
        s = conv(1, 16, 3, dtype=dt)(x)  # raw stream (identity path)
        a = sow_layer(self, 1, bn_relu(1, s))  # pre-activated stream (conv inputs)
        j = 1
        for out_ch, stride, has_sc in wrn_plan(self.depth, self.widen_factor):
            j += 1
            h = sow_layer(self, j, bn_relu(j, conv(j, out_ch, 3, stride, dtype=dt)(a)))
            if has_sc:
                j += 1
                skip = sow_layer(self, j, conv(j, out_ch, 1, stride, dtype=dt)(a))
            else:
                skip = s
            j += 1
            s = skip + conv(j, out_ch, 3, dtype=dt)(h)
            a = sow_layer(self, j, bn_relu(j, s))
        j += 1
        x = dense(j, self.num_classes, dtype=dt)(global_avg_pool(a)).astype(jnp.float32)
        sow_layer(self, j, x)
        return x


def wrn34_10(num_classes: int = 10, **kw) -> WideResNet:
    """WideResNet-34-10: 35 weight layers (1 + 30 + 3 shortcuts + 1)."""
    kw.setdefault("depth", 34)
    kw.setdefault("widen_factor", 10)
    return WideResNet(num_classes=num_classes, **kw)
