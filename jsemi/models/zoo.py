"""Registers the larger architectures in ``jsemi.models.MODELS``.

| name       | architecture                                   | weight layers n |
|------------|------------------------------------------------|-----------------|
| alexnet    | CIFAR AlexNet, 5 convs + 1 dense (+ BN)        | 6               |
| vgg16      | VGG16-BN, 13 convs + 3 dense                   | 16              |
| resnet18   | CIFAR ResNet-18, 17 convs + 3 shortcuts + fc   | 21              |
| resnet50   | CIFAR ResNet-50, 49 convs + 4 shortcuts + fc   | 54              |
| wrn34_10   | WideResNet-34-10, 31 convs + 3 shortcuts + fc  | 35              |
| vit_b      | ViT-B, patch embed + 12 x (qkv, out, mlp1, mlp2) + head | 50     |
| vit_tiny   | ViT-Ti (D 192, 3 heads), same layout as ViT-B  | 50              |

Each factory is ``(num_classes=..., **kw) -> nn.Module``; keyword arguments go
to the module (e.g. ``width=`` for ResNets, ``widen_factor=``/``depth=`` for
WRN, ``cfg=``/``hidden=`` for VGG, ``dim=``/``depth=``/``heads=``/
``patch_size=`` for ViT, ``dtype=jnp.bfloat16`` for all).  Numbering rules per
architecture are in the module docstrings (``jsemi.models.resnet`` for the
position of shortcut convs).
"""

from __future__ import annotations

from typing import Callable

import flax.linen as nn

from jsemi.models.alexnet import AlexNet
from jsemi.models.resnet import ResNet, resnet18, resnet50
from jsemi.models.vgg import VGG
from jsemi.models.vit import ViT, vit_b, vit_tiny
from jsemi.models.wrn import WideResNet, wrn34_10

ZOO: dict[str, Callable[..., nn.Module]] = {
    "alexnet": lambda num_classes=10, **kw: AlexNet(num_classes=num_classes, **kw),
    "vgg16": lambda num_classes=10, **kw: VGG(num_classes=num_classes, **kw),
    "resnet18": resnet18,
    "resnet50": resnet50,
    "wrn34_10": wrn34_10,
    "vit_b": vit_b,
    "vit_tiny": vit_tiny,
}

# The paper's weight-layer counts of the real configurations (checked by the tests).
EXPECTED_WEIGHT_LAYERS: dict[str, int] = {
    "alexnet": 6,
    "vgg16": 16,
    "resnet18": 21,
    "resnet50": 54,
    "wrn34_10": 35,
    "vit_b": 50,
    "vit_tiny": 50,
}


def register_zoo(models: dict) -> None:
    """Adds the zoo's factories to ``models`` (name -> factory(num_classes, **kw))."""
    models.update(ZOO)


__all__ = ["AlexNet", "VGG", "ResNet", "WideResNet", "ViT", "ZOO", "EXPECTED_WEIGHT_LAYERS", "register_zoo"]
