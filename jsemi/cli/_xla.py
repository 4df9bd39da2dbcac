"""XLA settings of a ``jsemi`` command-line process on a CPU-only host.

On XLA:CPU most of a compilation is LLVM's -O3 pipeline over the fused elementwise
kernels; convolutions and matrix products run in library calls that the level does not
touch.  LLVM -O1 (``--xla_backend_optimization_level=1``) halves the compile time and runs
the jsemi networks as fast (SmallCNN, 2-core CPU VM, JAX 0.10.2: a PGD-3 training step's
compile 8.3 -> 4.4 CPU-s, a 32-step epoch 8.3 vs 8.1 CPU-s, PGD-10 on 500 images 3.2 vs
3.0 CPU-s; benchmarks/RESULTS.md), and a ``jsemi demo`` compiles about 250 programs.

``apply_cpu_compile_level`` sets it for the process when nothing else decides: only when
no accelerator backend is installed (no CUDA/ROCm plugin, no libtpu, or
``JAX_PLATFORMS=cpu``), only when ``XLA_FLAGS`` does not already set a level (the user's
choice wins; ``XLA_FLAGS=--xla_backend_optimization_level=3`` restores XLA's default), and
before the process creates its backend (``jsemi.cli`` imports no jax).  The library
itself never changes XLA flags.
"""

from __future__ import annotations

import os
from typing import Iterable, MutableMapping

LEVEL_FLAG = "--xla_backend_optimization_level"
CPU_LEVEL = 1
_ACCELERATOR_DISTS = ("jax-cuda", "jax_cuda", "jax-rocm", "jax_rocm", "libtpu", "jax-tpu", "jax_tpu")


def installed_distributions() -> list[str]:
    """Names of the installed Python distributions (lower case)."""
    from importlib.metadata import distributions

    return [(d.metadata["Name"] or "").lower() for d in distributions()]


def cpu_only(environ: MutableMapping[str, str], dists: Iterable[str]) -> bool:
    """True when JAX can only use the CPU: ``JAX_PLATFORMS`` is "cpu", or no accelerator plugin
    (``jax-cuda*``, ``jax-rocm*``, ``libtpu``) is installed."""
    platforms = environ.get("JAX_PLATFORMS", "").strip().lower()
    if platforms:
        return platforms == "cpu"
    return not any(d.startswith(_ACCELERATOR_DISTS) for d in dists)


def apply_cpu_compile_level(environ: MutableMapping[str, str] | None = None,
                            dists: Iterable[str] | None = None) -> bool:
    """Appends ``--xla_backend_optimization_level=1`` to ``XLA_FLAGS`` on a CPU-only host unless a
    level is already set; returns whether it did.  Call before JAX creates its backend."""
    environ = os.environ if environ is None else environ
    flags = environ.get("XLA_FLAGS", "")
    if LEVEL_FLAG in flags:
        return False
    if not cpu_only(environ, installed_distributions() if dists is None else dists):
        return False
    environ["XLA_FLAGS"] = f"{flags} {LEVEL_FLAG}={CPU_LEVEL}".strip()
    return True
