"""Multi-host data parallelism on localhost: two ``jax.distributed`` processes with 2 CPU
devices each train 3 steps and evaluate; parameters and accuracies must match one process
with 4 devices (to 1e-6).  The worker is ``tests/sharding_checks.py multihost``."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import TEST_XLA_FLAGS

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "tests" / "sharding_checks.py"


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _start(process_id: int, num_processes: int, devices: int, port: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ)
    env.update(JSEMI_TEST_DEVICES=str(devices), JAX_PLATFORMS="cpu",
               PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""))
    env["XLA_FLAGS"] = TEST_XLA_FLAGS  # no outer device count: sharding_checks appends its own
    return subprocess.Popen([sys.executable, str(SCRIPT), "multihost", str(process_id), str(num_processes), str(port),
                             str(out)], env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _finish(procs: list[subprocess.Popen], timeout: float) -> None:
    logs = []
    try:
        for p in procs:
            logs.append(p.communicate(timeout=timeout)[0])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    for p, log in zip(procs, logs):
        assert p.returncode == 0, f"worker failed ({p.returncode}):\n{log[-4000:]}"


# three Python processes that each import JAX and compile (~35 CPU-s): make test-slow, which CI
# runs (.ci/run); the sharded step and evaluation on one host are in test_sharding's
# eight-device check, which make test keeps
@pytest.mark.slow
def test_two_processes_match_one_process_with_four_devices(tmp_path):
    t0 = time.perf_counter()
    port = _free_port()
    procs = [_start(i, 2, 2, port, tmp_path / "multi.npz") for i in range(2)]
    procs.append(_start(0, 1, 4, 0, tmp_path / "single.npz"))  # the reference, alongside
    _finish(procs, timeout=300)
    a, b = np.load(tmp_path / "multi.npz"), np.load(tmp_path / "single.npz")
    assert int(a["processes"]) == 2 and int(b["processes"]) == 1
    assert int(a["devices"]) == int(b["devices"]) == 4
    names = sorted(k for k in a.files if k.startswith("param"))
    assert names and names == sorted(k for k in b.files if k.startswith("param"))
    for k in names:
        np.testing.assert_allclose(a[k], b[k], rtol=0, atol=1e-6, err_msg=k)
    assert abs(float(a["loss"]) - float(b["loss"])) < 1e-6
    for k in ("acc", "adv_acc", "robust_acc"):
        assert abs(float(a[k]) - float(b[k])) < 1e-6, (k, float(a[k]), float(b[k]))
    assert 0.0 < float(a["acc"]) < 1.0  # a non-trivial accuracy: the counts really are summed
    print(f"multi-host: acc {float(a['acc']):.4f} adv {float(a['adv_acc']):.4f}; worker {float(a['seconds']):.1f} s, "
          f"reference {float(b['seconds']):.1f} s, test {time.perf_counter() - t0:.1f} s wall")
