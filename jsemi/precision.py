"""Mixed precision: bfloat16 compute with float32 parameters, loss and attack perturbations.

Every jsemi model takes ``dtype`` (the compute dtype of convs, dense layers, BatchNorm
and attention) and keeps ``param_dtype=float32``; inputs are cast to float32 for the
normalisation and to ``dtype`` after it, and the logits are returned in float32.  So with
``dtype=jnp.bfloat16``:

- parameters, gradients, optimizer state and BatchNorm running statistics are float32
  (the gradient of a bf16 matmul w.r.t. a float32 parameter is cast back to float32);
- the training loss (``jsemi.train.cross_entropy``, the TRADES KL) is computed on float32
  logits;
- attacks get float32 images and differentiate through the cast, so the input gradient
  and the perturbation they keep are float32 (``x_adv.dtype == float32``, projection in
  float32): bf16 only rounds the activations, never the perturbation budget.

On CPU bf16 is emulated and slower; use it on TPU (native) and on GPUs with bf16 tensor
cores (A100, H100).  ``compute_dtype("auto")`` picks bf16 there and float32 on CPU.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

__all__ = ["compute_dtype", "with_dtype", "is_low_precision"]

_NAMES = {
    "float32": jnp.float32, "fp32": jnp.float32, "f32": jnp.float32,
    "bfloat16": jnp.bfloat16, "bf16": jnp.bfloat16,
}


def compute_dtype(name: str | Any = "float32") -> Any:
    """Maps "float32" / "bfloat16" (or "fp32", "bf16", a dtype) to a jnp dtype.

    "auto": bfloat16 on TPU and GPU, float32 on CPU.  float16 is refused (it needs loss
    scaling, which jsemi does not do).
    """
    if isinstance(name, str):
        key = name.lower()
        if key == "auto":
            return jnp.bfloat16 if jax.default_backend() in ("tpu", "gpu", "cuda", "rocm") else jnp.float32
        if key not in _NAMES:
            raise ValueError(f"unknown compute dtype {name!r}; choose float32, bfloat16 or auto")
        return _NAMES[key]
    dt = jnp.dtype(name)
    if dt == jnp.float16:
        raise ValueError("float16 compute needs loss scaling; use bfloat16")
    if dt not in (jnp.dtype(jnp.float32), jnp.dtype(jnp.bfloat16)):
        raise ValueError(f"compute dtype must be float32 or bfloat16, got {dt}")
    return dt.type


def with_dtype(model, dtype: str | Any):
    """Returns a copy of a Flax model computing in ``dtype`` (parameters stay float32)."""
    if not hasattr(model, "dtype"):
        raise TypeError(f"{type(model).__name__} has no 'dtype' attribute; jsemi models take dtype=")
    return model.clone(dtype=compute_dtype(dtype))


def is_low_precision(model) -> bool:
    """True when the model computes in bfloat16."""
    return jnp.dtype(getattr(model, "dtype", jnp.float32)) == jnp.dtype(jnp.bfloat16)
