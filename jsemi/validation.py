"""Input checks shared by every public entry point.

Each check raises ``ValueError`` (or ``TypeError`` for dtypes) with a message
that names the argument and the problem.  They run on concrete (host) values
only; inside ``jit`` they are skipped for tracers, so call them at the API
boundary before compiling.
"""

from __future__ import annotations

import jax
import numpy as np


def _is_tracer(x) -> bool:
    return isinstance(x, jax.core.Tracer)


def check_images(x, name: str = "x", *, ndim: int | None = 4, check_range: bool = True) -> None:
    """Checks that ``x`` is a floating NHWC batch of pixels in [0, 1].

    Raises ``TypeError`` for a non-floating dtype and ``ValueError`` for a
    wrong rank or values outside [0, 1] (NaN counts as outside).
    """
    shape = getattr(x, "shape", None)
    if shape is None:
        raise TypeError(f"{name} must be an array, got {type(x).__name__}")
    if ndim is not None and len(shape) != ndim:
        raise ValueError(
            f"{name} must have rank {ndim} (batch, height, width, channels), got shape {tuple(shape)}"
        )
    if not np.issubdtype(np.dtype(x.dtype), np.floating):
        raise TypeError(
            f"{name} must be a floating array of pixels in [0, 1], got dtype {x.dtype}"
            " (divide uint8 images by 255 first)"
        )
    if check_range and not _is_tracer(x):
        arr = np.asarray(x)
        if arr.size:
            lo, hi = float(np.min(arr)), float(np.max(arr))
            if not (lo >= 0.0 and hi <= 1.0):
                raise ValueError(f"{name} must lie in [0, 1] (pixel space), got values in [{lo:.4g}, {hi:.4g}]")


def check_labels(y, num_classes: int | None = None, name: str = "y", batch: int | None = None) -> None:
    """Checks that ``y`` is a rank-1 integer array of class indices in [0, num_classes)."""
    shape = getattr(y, "shape", None)
    if shape is None or len(shape) != 1:
        raise ValueError(f"{name} must be a rank-1 array of integer labels, got shape {shape}")
    if not np.issubdtype(np.dtype(y.dtype), np.integer):
        raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
    if batch is not None and shape[0] != batch:
        raise ValueError(f"{name} has {shape[0]} labels but the inputs have batch size {batch}")
    if num_classes is not None and not _is_tracer(y):
        arr = np.asarray(y)
        if arr.size and (arr.min() < 0 or arr.max() >= num_classes):
            raise ValueError(
                f"{name} must lie in [0, {num_classes}), got labels in [{arr.min()}, {arr.max()}]"
            )


def check_eps(eps, name: str = "eps") -> None:
    """Checks that a perturbation budget is a finite number >= 0 (scalar or array)."""
    if _is_tracer(eps):
        return
    arr = np.asarray(eps, dtype=np.float64)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} must be finite, got {eps}")
    if np.any(arr < 0):
        raise ValueError(f"{name} must be >= 0, got {eps}")


def check_positive_int(value, name: str) -> None:
    """Checks that ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")
