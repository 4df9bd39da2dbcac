"""Input checks shared by every public entry point (the one validation module: no copies).

Each check raises ``ValueError`` (or ``TypeError`` for dtypes and keys) with a message
that names the argument, the problem and the fix.  Value checks run on concrete (host)
values only; inside ``jit`` they are skipped for tracers, so call them at the API
boundary before compiling.

- images: ``check_images`` (float NHWC in [0, 1]), ``check_model_input`` (the model
  boundary, traceable), ``check_image_dataset`` (uint8 or [0, 1] float plus labels),
  ``check_input_shape`` (run vs dataset), ``check_not_empty``;
- labels: ``check_labels`` (in [0, K)); ``num_classes_of(logits_fn, x)`` finds K;
- budgets and settings: ``check_eps``, ``warn_large_eps`` (L-inf eps > 1), ``check_positive_int``;
- randomness: ``check_key`` (ints refused: pass ``jax.random.key(seed)``).
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


def check_not_empty(x, name: str = "x") -> None:
    """Checks that the batch ``x`` holds at least one example (leading axis > 0)."""
    shape = getattr(x, "shape", None)
    if shape is not None and len(shape) >= 1 and shape[0] == 0:
        raise ValueError(f"{name} is an empty batch (shape {tuple(shape)}); give at least one example")


def check_key(key, name: str = "key") -> None:
    """Checks that ``key`` is a jax PRNG key (typed ``jax.random.key`` or legacy uint32 (2,)).

    Ints are refused with the fix spelled out: jsemi never turns a seed into a key for you.
    """
    if key is None:
        raise TypeError(f"an explicit jax PRNG key is required for {name} (jax.random.key(seed)); "
                        "jsemi never seeds from the clock")
    if isinstance(key, (bool, np.bool_, int, np.integer)):
        raise TypeError(f"{name} must be a jax PRNG key, not the int {key!r}: pass jax.random.key({key!r})")
    if _is_tracer(key):
        return
    dt = getattr(key, "dtype", None)
    if dt is None:
        raise TypeError(f"{name} must be a jax PRNG key (jax.random.key(seed)), got {type(key).__name__}")
    if not jax.dtypes.issubdtype(dt, jax.dtypes.prng_key) and not (dt == np.uint32 and tuple(key.shape[-1:]) == (2,)):
        raise TypeError(f"{name} must be a jax PRNG key (jax.random.key(seed)), got an array of dtype {dt} "
                        f"and shape {tuple(key.shape)}")


def warn_large_eps(eps, norm: str, dim: int | None = None, name: str = "eps") -> bool:
    """Warns (``UserWarning``) when a budget in pixel units of [0, 1] images looks like a mistake.

    L-inf: eps > 1 lets every pixel take any value (the ball holds the whole image cube),
    usually 8 meant as 8/255.  L2: budgets above 1 are normal; only eps > sqrt(dim) (the
    cube's diameter, ``dim`` = pixels x channels) is degenerate.  Returns True if it warned.
    """
    import warnings

    if _is_tracer(eps):
        return False
    try:
        e = float(np.max(np.asarray(eps, dtype=np.float64)))
    except (TypeError, ValueError):
        return False
    if norm == "linf" and e > 1.0:
        warnings.warn(f"{name} = {e:g} (L-inf, pixel units of [0, 1] images) exceeds 1: every image is in the "
                      f"ball. Did you mean {e:g}/255 = {e / 255:.4g}?", UserWarning, stacklevel=3)
        return True
    if norm == "l2" and dim is not None and e > float(np.sqrt(dim)):
        warnings.warn(f"{name} = {e:g} (L2, pixel units) exceeds sqrt({dim}) = {np.sqrt(dim):.4g}, the diameter "
                      "of the image cube: every image is in the ball.", UserWarning, stacklevel=3)
        return True
    return False


def check_input_shape(image_shape, expected, *, what: str = "the model", data: str = "the data") -> None:
    """Checks that images of shape (..., H, W, C) match the (H, W, C) a model was built for.

    The message reads e.g. "the run expects 8x8x1 input, but fashion_mnist images are 28x28x1".
    """
    got = tuple(int(s) for s in tuple(image_shape)[-3:])
    want = tuple(int(s) for s in expected)
    if got != want:
        fmt = lambda s: "x".join(str(v) for v in s)
        raise ValueError(f"{what} expects {fmt(want)} input, but {data} images are {fmt(got)}; "
                         f"use the dataset {what} was trained on")


def check_image_dataset(images, labels, num_classes: int | None = None, name: str = "images",
                        labels_name: str = "labels") -> None:
    """A dataset for training or evaluation: non-empty NHWC ``images`` (uint8, or float in
    [0, 1]) and as many integer ``labels`` in [0, num_classes)."""
    check_not_empty(images, name)
    if getattr(images, "dtype", None) == np.uint8:
        if len(images.shape) != 4:
            raise ValueError(f"{name} must have rank 4 (batch, height, width, channels), got shape {tuple(images.shape)}")
    else:
        check_images(images, name)
    check_labels(labels if _is_tracer(labels) else np.asarray(labels), num_classes, name=labels_name,
                 batch=images.shape[0])


def _apply(f, x):
    return f(x)


_apply_dynamic = jax.jit(_apply)  # f a pytree of arrays (jsemi.models.bind): keyed on the module and shapes
_apply_static = jax.jit(_apply, static_argnums=0)  # f a plain function: keyed on its identity


def output_shape(fn, x) -> tuple:
    """Shape of ``fn(x[:1])`` without running it (traced once per function and input shape).

    Uses jit's own trace cache: a ``jsemi.models.bind`` pytree is an argument (its module and
    shapes are the key), any other callable is static (keyed by identity).
    """
    spec = jax.ShapeDtypeStruct((1, *tuple(x.shape)[1:]), x.dtype)
    leaves = jax.tree_util.tree_leaves(fn)
    if leaves and all(hasattr(v, "shape") and hasattr(v, "dtype") for v in leaves):
        return tuple(_apply_dynamic.eval_shape(fn, spec).shape)
    try:
        hash(fn)
    except TypeError:
        return tuple(jax.eval_shape(fn, spec).shape)
    return tuple(_apply_static.eval_shape(fn, spec).shape)


def num_classes_of(logits_fn, x) -> int | None:
    """K for a function returning logits (B, K) on ``x``; None when its output is not (B, K)."""
    try:
        shape = output_shape(logits_fn, x)
    except Exception as e:  # a model applied to the wrong input: name it before the attack runs
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:300]
        raise ValueError(f"the model cannot be applied to x of shape {tuple(x.shape)} ({type(e).__name__}: {first}); "
                         "is x from the dataset the model was trained on?") from e
    return int(shape[-1]) if len(shape) == 2 else None


def check_model_input(x, name: str = "x") -> None:
    """Model-boundary check of images: a floating dtype always (traceable), values in [0, 1]
    only when ``x`` is concrete.  Refuses uint8 / [0, 255] images with the fix."""
    dt = getattr(x, "dtype", None)
    if dt is not None and not jax.dtypes.issubdtype(dt, np.floating):
        raise TypeError(f"{name} must be float images in [0, 1], got dtype {dt}: divide uint8 images by 255 "
                        "(jsemi.data loaders return [0, 1] floats)")
    if dt is None or _is_tracer(x):
        return
    import jax.numpy as jnp

    if getattr(x, "size", 0):
        lo, hi = (float(v) for v in jax.device_get((jnp.min(x), jnp.max(x))))
        if not (lo >= 0.0 and hi <= 1.0):
            hint = " (these look like [0, 255] pixels: divide by 255)" if hi > 1.0 and hi <= 255.0 and lo >= 0 else ""
            raise ValueError(f"{name} must lie in [0, 1] (pixel space), got values in [{lo:.4g}, {hi:.4g}]{hint}")
