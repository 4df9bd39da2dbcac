"""`jsemi train` / `jsemi eval`: resumable runs, checkpoints, and clear errors."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import numpy as np
import pytest

from jsemi import checkpoint
from jsemi.cli import main
from jsemi.models import get_model, init_model
from jsemi.pretrain import load_trained

# digits (8x8): the same programs as 28x28 images at a tenth of the run time
COMMON = ["--model", "small_cnn", "--dataset", "digits", "--train-subset", "256", "--test-subset", "128",
          "--batch-size", "64", "--no-progress"]
# 28x28 for the killed process: epochs must take long enough to be killed between them
SLOW_COMMON = ["--model", "small_cnn", "--dataset", "synthetic", "--train-subset", "256", "--test-subset", "128",
               "--batch-size", "64", "--no-progress"]


def _history(run):
    return json.loads((Path(run) / "history.json").read_text())


def test_train_resume_matches_uninterrupted(tmp_path, capsys):
    full, part = tmp_path / "full", tmp_path / "part"
    assert main(["train", *COMMON, "--epochs", "2", "--out", str(full)]) == 0
    assert main(["train", *COMMON, "--epochs", "2", "--out", str(part), "--stop-after-epochs", "1"]) == 0
    assert [r["epoch"] for r in _history(part)] == [1]
    assert main(["train", *COMMON, "--epochs", "2", "--out", str(part)]) == 0
    assert "resuming" in capsys.readouterr().out
    h_full, h_part = _history(full), _history(part)
    assert [r["epoch"] for r in h_part] == [1, 2]
    for a, b in zip(h_full, h_part):
        assert a["train_loss"] == b["train_loss"] and a["test_acc"] == b["test_acc"]
    _, v_full, _ = load_trained(full)
    _, v_part, _ = load_trained(part)
    for u, v in zip(jax.tree_util.tree_leaves(v_full), jax.tree_util.tree_leaves(v_part)):
        assert np.array_equal(u, v)


@pytest.mark.slow
def test_killed_train_process_resumes_from_last_checkpoint(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jsemi", "train", *SLOW_COMMON, "--train-subset", "1024", "--epochs", "6", "--out", str(run)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while time.time() < deadline and not (run / "history.json").exists():
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = [r["epoch"] for r in _history(run)]
    assert 1 <= len(done) < 6
    first = _history(run)[0]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr
    assert f"resuming {run} from epoch {len(done)}" in out.stdout
    hist = _history(run)
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4, 5, 6]
    assert hist[0]["train_loss"] == first["train_loss"]


@pytest.mark.parametrize("argv, msg", [
    (["train", "--model", "resnet7", "--dataset", "synthetic", "--out", "X"], "unknown model"),
    (["train", "--dataset", "imagenet22k", "--out", "X"], "imagenet22k"),
    (["train", "--dataset", "synthetic", "--eps", "-1", "--out", "X"], "argument --eps: must be a finite number >= 0"),
])
def test_cli_errors_name_the_problem(tmp_path, capsys, argv, msg):
    argv = [a if a != "X" else str(tmp_path / "x") for a in argv]
    assert main(argv) == 2
    assert msg in capsys.readouterr().err


def test_eval_on_corrupt_checkpoint_is_a_clear_error(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *COMMON, "--epochs", "1", "--out", str(run)]) == 0
    assert main(["eval", "--run", str(run), "--attack", "none", "--test-subset", "64", "--no-progress"]) == 0
    res = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert 0 <= res["clean_acc"] <= 1 and res["adv_acc"] is None
    # corrupt every array file of the checkpoint
    for p in (run / "ckpt" / "1" / "state").rglob("*"):
        if p.is_file() and "metadata" not in p.name.lower():
            p.write_bytes(b"\0garbage")
    assert main(["eval", "--run", str(run), "--attack", "none", "--no-progress"]) == 2
    assert "corrupt" in capsys.readouterr().err


def test_restore_into_mismatched_model_is_a_clear_error(tmp_path):
    m1 = get_model("small_cnn")
    v1 = init_model(m1, jax.random.PRNGKey(0), (28, 28, 1))
    checkpoint.save(tmp_path, 1, {"v": v1}, {"model": "small_cnn"})
    m2 = get_model("small_cnn", hidden=64)
    v2 = init_model(m2, jax.random.PRNGKey(0), (28, 28, 1))
    with pytest.raises(checkpoint.CheckpointError, match="does not match the model"):
        checkpoint.restore(tmp_path, {"v": v2})
    with pytest.raises(checkpoint.CheckpointError, match="no checkpoint"):
        checkpoint.restore(tmp_path / "nothing", {"v": v2})


@pytest.mark.slow  # two full `jsemi train` processes (~10 s of imports and compilation each)
def test_two_train_processes_started_together_cannot_both_write(tmp_path):
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "jsemi", "train", *SLOW_COMMON, "--epochs", "2", "--out", str(run)]
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    codes = sorted(p.returncode for p in procs)
    assert codes == [0, 2], outs
    winner = next(p for p in procs if p.returncode == 0)
    loser_err = next(o[1] for p, o in zip(procs, outs) if p.returncode == 2)
    assert f"is in use by another jsemi process (PID {winner.pid}" in loser_err
    assert "Traceback" not in loser_err
    assert [r["epoch"] for r in _history(run)] == [1, 2]
