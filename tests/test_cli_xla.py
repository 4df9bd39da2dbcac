"""The command line's XLA compile level on CPU-only hosts (``jsemi.cli._xla``)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

from jsemi.cli._xla import LEVEL_FLAG, apply_cpu_compile_level, cpu_only


def test_level_only_on_cpu_only_hosts_and_never_over_the_users_choice():
    env = {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"}
    assert apply_cpu_compile_level(env, ["jax", "jaxlib", "numpy"])
    assert env["XLA_FLAGS"] == f"--xla_force_host_platform_device_count=2 {LEVEL_FLAG}=1"
    assert not apply_cpu_compile_level(env, ["jax"])  # already set: unchanged, not doubled
    assert env["XLA_FLAGS"].count(LEVEL_FLAG) == 1
    user = {"XLA_FLAGS": f"{LEVEL_FLAG}=3"}
    assert not apply_cpu_compile_level(user, ["jax"]) and user["XLA_FLAGS"] == f"{LEVEL_FLAG}=3"
    for plugin in ("jax-cuda12-plugin", "jax-cuda13-pjrt", "jax-rocm60-plugin", "libtpu"):
        gpu = {}
        assert not apply_cpu_compile_level(gpu, ["jax", plugin]) and "XLA_FLAGS" not in gpu
    empty = {}
    assert apply_cpu_compile_level(empty, []) and empty["XLA_FLAGS"] == f"{LEVEL_FLAG}=1"
    # JAX_PLATFORMS decides when set: cpu even with a plugin installed; a GPU platform never
    assert cpu_only({"JAX_PLATFORMS": "cpu"}, ["jax-cuda12-plugin"])
    assert not cpu_only({"JAX_PLATFORMS": "cuda,cpu"}, [])


def test_flags_set_by_the_cli_reach_xla(tmp_path):
    """``jsemi.cli`` imports no jax, so flags set in ``main`` are read when the backend starts
    (shown with a dump directory added at the same point)."""
    code = textwrap.dedent(f"""
        import os, sys
        import jsemi.cli
        from jsemi.cli._xla import apply_cpu_compile_level
        assert "jax" not in sys.modules
        assert apply_cpu_compile_level(dists=["jax", "jaxlib"])
        os.environ["XLA_FLAGS"] += " --xla_dump_to={tmp_path / 'dump'}"
        import jax, jax.numpy as jnp
        jax.jit(lambda v: jnp.sin(v) * 2)(jnp.ones(3)).block_until_ready()
        print(os.environ["XLA_FLAGS"])
    """)
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_PLATFORMS")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert f"{LEVEL_FLAG}=1" in out.stdout
    assert any((tmp_path / "dump").iterdir())
