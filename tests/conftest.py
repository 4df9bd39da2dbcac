"""Session set-up for the test suite (issue 13, item 2: ``make test`` under 8 CPU minutes).

XLA flags, for the tests only (jsemi itself sets none): on XLA:CPU the backend compile
dominates a small test, and LLVM's -O3 pipeline is most of it.  ``-O1`` keeps XLA's own HLO
optimisations (fusion etc.) and only lowers LLVM's effort.  Measured on the 2-core CPU VM,
2026-11-29, JAX 0.10.2, under load (CPU seconds = user + sys):

- SmallCNN ``init_model`` (one compile): 5.0 -> 1.6 CPU-s; PGD-10 on 64 images, first call
  (compile + run) 4.8 -> 3.9; a PGD-40 call on 256 images, compiled, 11.1 -> 8.7 (run time
  is not worse at -O1);
- tests/test_evaluation.py + tests/test_robust_training.py: 88.4 -> 67.9 CPU-s (-23 %).
  ``-O2`` gave the same (67.4); ``-O0`` compiled faster but ran PGD 4x slower (88.0 in
  total); ``--xla_llvm_disable_expensive_passes`` alone changed nothing (90.6).

``--xla_cpu_use_fusion_emitters=false`` (XLA:CPU's older loop emitters instead of its MLIR
fusion emitters) on top, measured 2026-12-03, same machine, same hour, load ~1: the five
AutoAttack-member programs on a 4-class linear model, first call 9.4 / 8.1 -> 6.6 / 6.9 CPU-s
(two runs each); tests/test_attacks.py + test_robust_training.py + test_models.py 210.0 ->
164.0 CPU-s (-22 %), every test passing with the same tolerances.

``--xla_cpu_parallel_codegen_split_count=1`` (one LLVM module per program instead of splitting
it for parallel code generation, which costs CPU for the split and the duplicated set-up; on
2 cores it bought wall time only), measured 2026-12-03, same machine, same hour, load ~1.1:
the whole default suite 476.3 -> 415.5 CPU-s (-13 %) at about the same wall time (6:11 vs
6:01), and on fresh clones 490.6 -> 398.7 / 404.7 CPU-s (benchmarks/RESULTS.md, session 8);
tests/test_robust_training.py + test_evaluation.py 57.4 / 57.3 -> 49.5 CPU-s;
tests/test_attacks.py 87.6 -> 83.3 CPU-s (wall 64 -> 76 s there).

The flags are appended to any XLA_FLAGS already set, before JAX is imported by any test
module, and subprocesses (the CLI, the sharding and multi-host workers, notebook kernels)
inherit them.  Tolerances are the same as without the flags.
"""

from __future__ import annotations

import os

#: what the suite adds to XLA_FLAGS (also for subprocesses that build their own environment)
TEST_XLA_FLAGS = (
    "--xla_backend_optimization_level=1 --xla_cpu_use_fusion_emitters=false --xla_cpu_parallel_codegen_split_count=1"
)

if TEST_XLA_FLAGS not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " " + TEST_XLA_FLAGS).strip()


# ---------------------------------------------------------------------------- shared fixtures
import pytest  # noqa: E402


@pytest.fixture(scope="session")
def alg1_data():
    """test_algorithms' tiny synthetic (train, test) data, shared with test_epoch_eval."""
    from test_algorithms import tiny_data

    return tiny_data()


@pytest.fixture(scope="session")
def alg1_nets(alg1_data):
    """test_algorithms' (model, normal, robust) tiny nets, trained once for both files."""
    from test_algorithms import make_nets

    return make_nets(alg1_data[0])


@pytest.fixture(scope="session")
def digits_runs(tmp_path_factory):
    """Two finished run directories of test_bad_input's tiny SmallCNN on digits (256 train,
    128 test images): "normal" (standard training, 2 epochs, checkpoints 1 and 2) and "robust"
    (PGD-1, eps 0.1, 1 epoch); shared by the command-line tests of several files (read only)."""
    from test_bad_input import _pretrain

    root = tmp_path_factory.mktemp("digits_runs")
    _pretrain(root / "normal")
    _pretrain(root / "robust", epochs=1, mode="pgd", eps=0.1, attack_steps=1, attack_step_size=0.1)
    return {"normal": root / "normal", "robust": root / "robust"}
