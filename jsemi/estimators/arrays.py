"""Array helpers shared by the estimators: (N, d) coercion, the float dtype, host -> device
transfer streamed in row chunks (bounded memory) and the row-count buckets that let samples of
similar sizes share one compiled program."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
    "HIGHEST",
    "ROW_CHUNK_BYTES",
    "as_2d",
    "check_pair",
    "float_dtype",
    "is_host",
    "matmul",
    "pad_rows",
    "project_rows",
    "row_chunks",
    "size_bucket",
    "to_device",
]

HIGHEST = jax.lax.Precision.HIGHEST
#: bytes per row chunk when a host (NumPy) array is streamed to the device.
ROW_CHUNK_BYTES = 256 * 2**20


def float_dtype(x):
    """Float dtype used for ``x``: its own float dtype, float32 for ints (float64 needs x64)."""
    dt = np.dtype(getattr(x, "dtype", np.float32))
    if not np.issubdtype(dt, np.floating):
        dt = np.dtype(np.float32)
    if dt == np.float64 and not jax.config.jax_enable_x64:
        dt = np.dtype(np.float32)
    if dt in (np.dtype(np.float16),) or str(dt) == "bfloat16":
        dt = np.dtype(np.float32)
    return dt


def as_2d(x, name: str):
    """Returns ``x`` as an (N, d) array (rank 1 -> one column, rank > 2 -> flattened)."""
    shape = getattr(x, "shape", None)
    if shape is None:
        x = np.asarray(x)
        shape = x.shape
    if len(shape) == 0:
        raise ValueError(f"{name} must have a leading sample axis, got a scalar")
    if len(shape) == 1:
        return x.reshape(-1, 1)
    if len(shape) > 2:
        return x.reshape(shape[0], -1)
    return x


def check_pair(x, y):
    """(x, y) as (N, dx), (N, dy) arrays; clear errors for mismatched N, N < 2 or no features."""
    x = as_2d(x, "x")
    y = as_2d(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must have the same number of samples, got {x.shape[0]} and {y.shape[0]}")
    if x.shape[0] < 2:
        raise ValueError(f"need at least 2 samples, got {x.shape[0]}")
    if x.shape[1] < 1 or y.shape[1] < 1:
        raise ValueError(f"x and y need at least one feature, got shapes {x.shape} and {y.shape}")
    return x, y


def is_host(x) -> bool:
    """True for a host (NumPy) array, which is streamed to the device in row chunks."""
    return isinstance(x, np.ndarray)


def row_chunks(x):
    """Row slices covering a host array in pieces of about ``ROW_CHUNK_BYTES``."""
    n = x.shape[0]
    row_bytes = max(1, int(np.prod(x.shape[1:])) * 4)
    step = max(1, ROW_CHUNK_BYTES // row_bytes)
    return [slice(i, min(n, i + step)) for i in range(0, n, step)]


def to_device(x, dtype):
    """x as a device array of ``dtype``.

    Host arrays go through ``jax.device_put`` (on the CPU backend it aliases a contiguous
    NumPy buffer instead of copying; ``jnp.asarray`` took ~20x longer for a 16 MB block).
    """
    if isinstance(x, np.ndarray):
        dt = np.dtype(dtype)
        if x.dtype != dt:
            x = x.astype(dt)
        return jax.device_put(np.ascontiguousarray(x))
    return jnp.asarray(x, dtype=dtype)


@jax.jit
def matmul(x, w):
    """x @ w at ``Precision.HIGHEST``."""
    return jnp.dot(x, w, precision=HIGHEST)


def project_rows(x, w, dtype):
    """x @ w, streaming host arrays in row chunks."""
    if not is_host(x):
        return matmul(to_device(x, dtype), w)
    chunks = row_chunks(x)
    if len(chunks) == 1:
        return matmul(to_device(x, dtype), w)
    return jnp.concatenate([matmul(to_device(x[sl], dtype), w) for sl in chunks], axis=0)


def size_bucket(n: int) -> int:
    """Padded row count for n rows: n rounded up to a multiple of max(16, 2^(floor(log2 n) - 2))
    (<= 25% padding above 64 rows). Compiled EDGE/KSG code depends on the padded size only,
    so classes of different sizes share one compilation."""
    q = max(16, 1 << max(0, n.bit_length() - 3))
    return -(-n // q) * q


def pad_rows(z, n_pad):
    """z (n, d) padded with zero rows to (n_pad, d); host arrays are padded in NumPy (no
    per-shape compilation), device arrays with ``jnp.pad``."""
    n = z.shape[0]
    if n == n_pad:
        return z
    if isinstance(z, np.ndarray):
        out = np.zeros((n_pad,) + z.shape[1:], z.dtype)
        out[:n] = z
        return out
    return jnp.pad(z, ((0, n_pad - n),) + ((0, 0),) * (z.ndim - 1))

