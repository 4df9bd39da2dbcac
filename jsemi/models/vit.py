"""Vision Transformer (pre-LayerNorm, class token, learned position embedding) for small images.

Weight layers (every conv/dense counts):

- 1: patch embedding (a p x p / p conv, ``L01_conv``); the class token and the
  position embedding belong to it (``L01_embed``).  Sown: the token sequence
  after adding the position embedding (the residual stream).
- per encoder block b (4 weight layers, qkv fused into one dense layer):
  qkv   dense(3D) on LN(x); sown: the attention output softmax(QK^T / sqrt(d))V,
        heads concatenated (B, T, D), i.e. the input of the next weight layer;
  out   dense(D); sown: the residual stream x + out(attn);
  mlp1  dense(mlp_dim) -> GELU; sown after the GELU;
  mlp2  dense(D); sown: the residual stream x + mlp2(h).
- n: dense(num_classes) on the final LayerNorm of the class token -> logits.

n = 1 + 4 * depth + 1: ViT-B (depth 12) has 50.  (The paper's reference code
collects conv/linear modules by forward hooks; torch's MultiheadAttention keeps
its qkv projection as a bare parameter, so hooks would see 38 layers there.
We count the qkv projection as the weight layer it is.)

LayerNorms belong to the weight layer whose output they normalise (the paper's
rule that normalisation belongs to the layer before it): the LN before the
block's qkv is named after the previous residual-stream layer (``L01_ln`` for
the first block), the LN before mlp1 after ``out``, and the final LN after the
last ``mlp2``.  So F(j) depends on the parameters of layers 1..j only.

Patch size: ``patch_size`` or, when None, chosen from the input side:
4 up to 32 pixels (8x8 tokens on CIFAR, 7x7 on 28x28), 8 up to 64 (Tiny
ImageNet: 8x8 tokens), 16 beyond.  Trailing pixels that do not fill a patch are
dropped.  The position embedding is sized at initialisation, so a model is
initialised for one input size.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from jsemi.models.base import CIFAR10_MEAN, CIFAR10_STD, layer_name, normalize, sow_layer
from jsemi.models.layers import dense

_xavier = nn.initializers.xavier_uniform()
_small_bias = nn.initializers.normal(1e-6)


def default_patch_size(height: int, width: int) -> int:
    side = max(height, width)
    return 4 if side <= 32 else 8 if side <= 64 else 16


class _Tokens(nn.Module):
    """Class token and learned position embedding (parameters of weight layer 1)."""

    dtype: Any = jnp.float32

    @nn.compact
    def __call__(self, x):
        b, t, d = x.shape
        cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
        pos = self.param("pos", nn.initializers.normal(0.02), (1, t + 1, d), jnp.float32)
        x = jnp.concatenate([jnp.broadcast_to(cls.astype(self.dtype), (b, 1, d)), x], axis=1)
        return x + pos.astype(self.dtype)


class ViT(nn.Module):
    """ViT; defaults are ViT-B (D 768, 12 blocks, 12 heads, MLP 3072). See the module docstring."""

    num_classes: int = 10
    dim: int = 768
    depth: int = 12
    heads: int = 12
    mlp_dim: int = 3072
    patch_size: int | None = None
    mean: Sequence[float] | None = CIFAR10_MEAN
    std: Sequence[float] | None = CIFAR10_STD
    dtype: Any = jnp.float32

    @property
    def n_weight_layers(self) -> int:
        return 1 + 4 * self.depth + 1

    def _ln(self, j: int) -> nn.LayerNorm:
        return nn.LayerNorm(epsilon=1e-6, dtype=self.dtype, param_dtype=jnp.float32, name=layer_name(j, "ln"))

    def _dense(self, j: int, features: int) -> nn.Dense:
        return dense(j, features, dtype=self.dtype, kernel_init=_xavier, bias_init=_small_bias)

    @nn.compact
    def __call__(self, x, train: bool = False, frozen: Sequence[int] = ()):
        # ``train`` and ``frozen`` are accepted for the common model signature; this
        # ViT has neither BatchNorm nor dropout, so they change nothing.
        del train, frozen
        if self.dim % self.heads != 0:
            raise ValueError(f"dim {self.dim} is not divisible by heads {self.heads}")
        dt = self.dtype
        n, hgt, wid, _ = x.shape
        p = self.patch_size or default_patch_size(hgt, wid)
        if hgt < p or wid < p:
            raise ValueError(f"input {hgt}x{wid} is smaller than the patch size {p}")
        x = normalize(x.astype(jnp.float32), self.mean, self.std).astype(dt)
        x = nn.Conv(
            self.dim,
            (p, p),
            strides=(p, p),
            padding="VALID",
            dtype=dt,
            param_dtype=jnp.float32,
            kernel_init=nn.initializers.variance_scaling(1.0, "fan_in", "truncated_normal"),
            name=layer_name(1, "conv"),
        )(x)
        x = x.reshape((n, -1, self.dim))
        x = sow_layer(self, 1, _Tokens(dtype=dt, name=layer_name(1, "embed"))(x))

        dh = self.dim // self.heads
        j = 1
        for _ in range(self.depth):
            # attention: qkv (j + 1) and out (j + 2)
            h = self._ln(j)(x)
            qkv = self._dense(j + 1, 3 * self.dim)(h)
            q, k, v = jnp.split(qkv.reshape((n, -1, 3, self.heads, dh)), 3, axis=2)
            q, k, v = q[:, :, 0], k[:, :, 0], v[:, :, 0]  # (B, T, H, dh)
            logits = jnp.einsum("bqhd,bkhd->bhqk", q, k, preferred_element_type=jnp.float32) / math.sqrt(dh)
            w = jax.nn.softmax(logits, axis=-1).astype(dt)
            att = jnp.einsum("bhqk,bkhd->bqhd", w, v).reshape((n, -1, self.dim))
            sow_layer(self, j + 1, att)
            x = sow_layer(self, j + 2, x + self._dense(j + 2, self.dim)(att))
            # MLP: mlp1 (j + 3) and mlp2 (j + 4)
            h = self._ln(j + 2)(x)
            h = sow_layer(self, j + 3, nn.gelu(self._dense(j + 3, self.mlp_dim)(h), approximate=False))
            x = sow_layer(self, j + 4, x + self._dense(j + 4, self.dim)(h))
            j += 4
        cls = self._ln(j)(x)[:, 0]
        j += 1
        x = dense(j, self.num_classes, dtype=dt)(cls).astype(jnp.float32)
        sow_layer(self, j, x)
        return x


def vit_b(num_classes: int = 10, **kw) -> ViT:
    """ViT-B (D 768, 12 blocks, 12 heads, MLP 3072): 50 weight layers; patch 4 (32x32) / 8 (64x64)."""
    return ViT(num_classes=num_classes, **kw)


def vit_tiny(num_classes: int = 10, **kw) -> ViT:
    """ViT-Ti (D 192, 12 blocks, 3 heads, MLP 768): 50 weight layers; same patch rule as ViT-B."""
    for k, v in dict(dim=192, depth=12, heads=3, mlp_dim=768).items():
        kw.setdefault(k, v)
    return ViT(num_classes=num_classes, **kw)
