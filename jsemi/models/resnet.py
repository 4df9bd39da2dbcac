"""CIFAR ResNets (post-activation, torchvision blocks, 3x3 stem): ResNet-18 and ResNet-50.

Weight-layer numbering (the paper counts every conv and dense, 1x1 shortcut
convs included):

- 1: stem conv 3x3/1 -> BN -> relu [-> 3x3/2 max-pool when ``stem_pool``].
- per residual block, in this order:
  basic block       conv1 3x3 (-> BN -> relu), [shortcut 1x1 (-> BN)], conv2 3x3 (-> BN, + skip, relu)
  bottleneck block  conv1 1x1, conv2 3x3, [shortcut 1x1], conv3 1x1 (-> BN, + skip, relu)
  i.e. a block's shortcut conv is numbered just *before* the conv whose output it
  is added to, so the block output (after the addition and the relu) carries the
  block's highest index.
- n: dense(num_classes) on the global average pool -> logits.

Why the shortcut goes before the last conv: then the output of weight layer j
depends on the parameters of layers 1..j only, for every j, so fa = layers 1..a
is a self-contained subnetwork and freezing it fixes F(a) exactly.  The
authors' PyTorch code lists modules as conv1, conv2, shortcut (registration
order); a split between conv2 and its shortcut there would leave the "frozen"
block output depending on a trainable shortcut.  Both orders give the same fb
for the split points the paper uses (ResNet-18 fa* of 17, 13, 9 layers:
17 ends after layer4's first shortcut / before its last conv, 13 at the end of
layer3's first block, 9 after conv1 of layer2's second block).

Counts: ResNet-18 = 1 + 8*2 + 3 shortcuts + 1 = 21; ResNet-50 = 1 + 16*3 +
4 shortcuts (the first bottleneck of every stage, layer1 included since
64 -> 256 channels) + 1 = 54.

Sown outputs: conv1/conv2 of a bottleneck and conv1 of a basic block after BN
and relu; a shortcut after its BN (no relu); a block's last conv after BN, the
residual addition and the relu; the dense layer's logits (float32).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from jsemi.models.base import CIFAR10_MEAN, CIFAR10_STD, batch_norm, normalize, sow_layer
from jsemi.models.layers import conv, dense, global_avg_pool


def resnet_plan(stage_sizes: Sequence[int], width: int, bottleneck: bool) -> list[tuple[int, int, bool]]:
    """Per residual block: (planes, stride, has_shortcut_conv), in forward order."""
    expansion = 4 if bottleneck else 1
    in_ch = width
    plan = []
    for s, blocks in enumerate(stage_sizes):
        planes = width * 2**s
        for b in range(blocks):
            stride = 2 if (s > 0 and b == 0) else 1
            out_ch = planes * expansion
            plan.append((planes, stride, stride != 1 or in_ch != out_ch))
            in_ch = out_ch
    return plan


class ResNet(nn.Module):
    """CIFAR ResNet; see the module docstring for the weight-layer numbering.

    ``width`` is the stem / first-stage width (64 for the real networks; small
    values make cheap test models with the same layer structure).  ``stem_pool``
    adds torchvision's 3x3/2 max-pool after the stem (the paper's reference code
    keeps it; the usual CIFAR ResNet, our default, does not).
    """

    num_classes: int = 10
    stage_sizes: Sequence[int] = (2, 2, 2, 2)
    bottleneck: bool = False
    width: int = 64
    stem_pool: bool = False
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        per_block = 3 if self.bottleneck else 2
        plan = resnet_plan(self.stage_sizes, self.width, self.bottleneck)
        return 1 + sum(per_block + int(sc) for _, _, sc in plan) + 1

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        dt = self.dtype

        def conv_bn(j, h, features, k, stride=1, relu=True):
            h = conv(j, features, k, stride, dtype=dt)(h)
            h = batch_norm(j, train, frozen, dt)(h)
            return nn.relu(h) if relu else h

        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(dt)
        x = conv_bn(1, x, self.width, 3)
        if self.stem_pool:
            x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
        sow_layer(self, 1, x)
        j = 1
        expansion = 4 if self.bottleneck else 1
        for planes, stride, has_sc in resnet_plan(self.stage_sizes, self.width, self.bottleneck):
            inp = x
            if self.bottleneck:
                h = sow_layer(self, j + 1, conv_bn(j + 1, inp, planes, 1))
                h = sow_layer(self, j + 2, conv_bn(j + 2, h, planes, 3, stride))
                j += 2
            else:
                h = sow_layer(self, j + 1, conv_bn(j + 1, inp, planes, 3, stride))
                j += 1
            if has_sc:
                j += 1
                skip = sow_layer(self, j, conv_bn(j, inp, planes * expansion, 1, stride, relu=False))
            else:
                skip = inp
            j += 1
            k = 1 if self.bottleneck else 3
            h = conv_bn(j, h, planes * expansion, k, relu=False)
            x = sow_layer(self, j, nn.relu(h + skip))
        j += 1
        x = dense(j, self.num_classes, dtype=dt)(global_avg_pool(x)).astype(jnp.float32)
        sow_layer(self, j, x)
        return x


def resnet18(num_classes: int = 10, **kw) -> ResNet:
    """CIFAR ResNet-18: 21 weight layers (17 convs + 3 shortcut convs + 1 dense)."""
    kw.setdefault("stage_sizes", (2, 2, 2, 2))
    return ResNet(num_classes=num_classes, bottleneck=False, **kw)


def resnet50(num_classes: int = 10, **kw) -> ResNet:
    """CIFAR ResNet-50 (bottleneck): 54 weight layers (49 convs + 4 shortcut convs + 1 dense)."""
    kw.setdefault("stage_sizes", (3, 4, 6, 3))
    return ResNet(num_classes=num_classes, bottleneck=True, **kw)
