"""Bad input ends in a clear error before any work (issue 14): the test matrix.

Each case asserts the exit code (CLI, run in-process through ``jsemi.cli.main``) or the
exception (API) and the words of the message.  Tiny models (small_cnn 4-4-8-8-8, hidden 16)
on the 8x8 digits keep the whole file near 40 CPU-seconds.
"""

import dataclasses
import errno
import os
import shutil
import subprocess
import sys
import time
import types
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jsemi import checkpoint
from jsemi.attacks import ATTACK_NAMES, L2Ball, LinfBall, get_attack, pgd
from jsemi.cli import main
from jsemi.data import load_dataset
from jsemi.models import bind
from jsemi.pretrain import RunMismatchError, load_trained, pretrain
from jsemi.runs import (ConfigMismatchError, RunDir, RunLockedError, check_output_location, lock_run_dir,
                        write_json_atomic)
from jsemi.train import TrainConfig

TINY = dict(widths=(4, 4, 8, 8, 8), hidden=16)
CFG = TrainConfig(optimizer="adam", lr=1e-3, epochs=2, batch_size=64, augment=False, lr_schedule="constant")
CLI_TRAIN = ["train", "--dataset", "digits", "--train-subset", "256", "--test-subset", "128", "--batch-size", "64",
             "--no-progress"]


def _data():
    tr = load_dataset("digits", "train", subset=256)
    te = load_dataset("digits", "test", subset=128)
    return tr, te


def _pretrain(run, epochs=2, **kw):
    tr, te = _data()
    cfg = dataclasses.replace(CFG, epochs=epochs, **kw)
    return pretrain(run, "small_cnn", tr.images, tr.labels, te.images, te.labels, cfg, num_classes=10,
                    dataset="digits", model_kwargs=TINY, progress=False, log=lambda s: None)


@pytest.fixture(scope="module")
def tiny_run(digits_runs):
    """A finished 2-epoch run of the tiny model on digits (checkpoints 1 and 2 kept), made once
    per session (tests/conftest.py); tests that change a run copy it first."""
    return digits_runs["normal"]


@pytest.fixture(scope="module")
def model_and_batch(tiny_run):
    model, variables, _ = load_trained(tiny_run)
    x = load_dataset("digits", "test", subset=16).images[:8].astype(np.float32) / 255.0
    return bind(model, variables), x


def _err(capsys) -> str:
    return capsys.readouterr().err


def _eval(run, *extra):
    return main(["eval", "--run", str(run), "--attack", "none", "--test-subset", "64", "--no-progress", *extra])


# ----------------------------------------------------------------------------- CLI arguments


@pytest.mark.parametrize("bs", ["-5", "0"])
def test_eval_batch_size_must_be_positive(tiny_run, capsys, bs):
    assert _eval(tiny_run, "--batch-size", bs) == 2
    assert f"argument --batch-size: must be a positive integer, got {bs}" in _err(capsys)


def test_version_and_python_m(capsys):
    from jsemi import __version__

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"jsemi {__version__}"
    out = subprocess.run([sys.executable, "-m", "jsemi", "--version"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == f"jsemi {__version__}"


def test_run_and_dataset_shape_mismatch_is_named(tiny_run, capsys):
    assert _eval(tiny_run, "--dataset", "fashion_mnist") == 2
    err = _err(capsys)
    assert "expects 8x8x1 input, but fashion_mnist images are 28x28x1" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_debug_shows_the_traceback_and_unexpected_errors_exit_1(tmp_path, capsys, monkeypatch):
    missing = tmp_path / "nothing"
    assert _eval(missing) == 2
    err = _err(capsys)
    assert "does not exist" in err and "Traceback" not in err
    with pytest.raises(FileNotFoundError):
        main(["--debug", "eval", "--run", str(missing)])
    with pytest.raises(FileNotFoundError):  # after the subcommand too
        main(["eval", "--run", str(missing), "--debug"])

    import jsemi.cli.evaluate as ev

    def boom(args):
        raise RuntimeError("something internal\n" + "spec line\n" * 50)

    monkeypatch.setattr(ev, "run", boom)
    assert _eval(missing) == 1
    err = _err(capsys)
    assert err.strip().splitlines() == ["jsemi eval: error: unexpected RuntimeError: something internal "
                                        "(rerun with --debug for the traceback)"]


# ----------------------------------------------------------------------------- output locations


def _read_only_dir(tmp_path):
    """A directory this process cannot write into (a chmod 555 one; root ignores modes, so /sys
    there), or None where there is none."""
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    for d in (ro, Path("/sys")):
        try:
            (d / "jsemi-probe").mkdir()
        except OSError:
            return d
        (d / "jsemi-probe").rmdir()
    return None


def test_output_location_checked_before_training(tmp_path, capsys, monkeypatch):
    f = tmp_path / "afile"
    f.write_text("x")
    cases = [(f, "exists and is a file"), (f / "sub", "is a file, not a directory")]
    ro = _read_only_dir(tmp_path)
    if ro is not None:
        cases.append((ro / "run", "is not writable"))
    for out, msg in cases:
        t = time.perf_counter()
        assert main([*CLI_TRAIN, "--epochs", "1", "--out", str(out)]) == 2
        err = _err(capsys)
        assert msg in err and len(err.strip().splitlines()) == 1, err
        assert time.perf_counter() - t < 60  # no epoch was trained
    import jsemi.runs

    monkeypatch.setattr(jsemi.runs.shutil, "disk_usage", lambda p: types.SimpleNamespace(total=2**30, used=2**30, free=4096))
    with pytest.raises(jsemi.runs.OutputLocationError, match="not enough free space.*MiB free, one checkpoint needs"):
        _pretrain(tmp_path / "full", epochs=1)
    assert not (tmp_path / "full" / "ckpt").exists()


def test_alg1_out_that_is_a_file(tiny_run, tmp_path, capsys):
    f = tmp_path / "afile"
    f.write_text("x")
    assert main(["alg1", "--normal", str(tiny_run), "--robust", str(tiny_run), "--out", str(f), "--num-fb", "1",
                 "--no-progress"]) == 2
    assert "exists and is a file" in _err(capsys)


def test_json_location_and_no_tmp_left_on_failure(tiny_run, tmp_path, capsys, monkeypatch):
    assert _eval(tiny_run, "--json", str(tmp_path)) == 2
    assert "is a directory" in _err(capsys)
    target = tmp_path / "res" / "eval.json"
    real_replace = os.replace

    def full(src, dst):
        if str(dst).endswith(".json"):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", full)
    assert _eval(tiny_run, "--json", str(target)) == 2
    err = _err(capsys)
    assert "no space left on device" in err and "free some space" in err and "Traceback" not in err
    assert list(target.parent.iterdir()) == []  # neither the file nor a .tmp


def test_files_get_normal_permissions(tmp_path, tiny_run):
    old = os.umask(0o022)
    try:
        p = write_json_atomic(tmp_path / "r.json", {"a": 1})
    finally:
        os.umask(old)
    assert p.stat().st_mode & 0o777 == 0o644
    modes = {f.relative_to(tiny_run).as_posix(): f.stat().st_mode & 0o777 for f in tiny_run.rglob("*") if f.is_file()}
    assert modes and all(m & 0o044 == 0o044 for m in modes.values()), modes  # readable by group and others


# ----------------------------------------------------------------------------- one writer per run directory


def _hold_lock_in_subprocess(path):
    code = ("import sys, time; from jsemi.runs import lock_run_dir; l = lock_run_dir(sys.argv[1]); "
            "print('locked', flush=True); time.sleep(120)")
    proc = subprocess.Popen([sys.executable, "-c", code, str(path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_second_writer_fails_fast_naming_the_pid(tiny_run, tmp_path, capsys):
    """Two processes: the one holding the run directory, and `jsemi train` / `jsemi alg1` /
    RunDir.open in this one, which must refuse at once; kill -9 releases the lock."""
    run = tmp_path / "run"
    proc = _hold_lock_in_subprocess(run)
    try:
        t = time.perf_counter()
        assert main([*CLI_TRAIN, "--epochs", "1", "--out", str(run)]) == 2
        err = _err(capsys)
        assert f"is in use by another jsemi process (PID {proc.pid}" in err and "kill" in err
        assert time.perf_counter() - t < 60 and not (run / "ckpt").exists()
        assert main(["alg1", "--normal", str(tiny_run), "--robust", str(tiny_run), "--out", str(run),
                     "--num-fb", "1", "--no-progress"]) == 2
        assert f"PID {proc.pid}" in _err(capsys)
        with pytest.raises(RunLockedError, match=f"PID {proc.pid}"):
            RunDir.open(run, {"a": 1})
    finally:
        proc.kill()  # SIGKILL: the OS drops the lock with the process
        proc.wait()
    with lock_run_dir(run), lock_run_dir(run):  # free now; re-entrant within one process
        pass
    rd = RunDir.open(run, {"a": 1})
    with pytest.raises(ConfigMismatchError, match="differing settings: a: 1 in the run, 2 now"):
        RunDir.open(run, {"a": 2})
    assert rd.lock is not None


# ----------------------------------------------------------------------------- reruns, checkpoints, full disk


def test_train_rerun_names_the_differing_setting(tiny_run, tmp_path, capsys):
    with pytest.raises(RunMismatchError, match=r"other settings \(config.lr: 0.001 in the run, 0.002 now\)"):
        _pretrain(tiny_run, lr=2e-3)
    with pytest.raises(RunMismatchError, match="epochs may only grow"):
        _pretrain(tiny_run, epochs=1)
    # the CLI: one short message naming the settings, no dump of the signature
    assert main([*CLI_TRAIN, "--epochs", "2", "--out", str(tiny_run)]) == 2
    err = _err(capsys)
    assert "holds a run with other settings (" in err and " in the run, " in err and " now" in err
    assert "signature" not in err and "--debug" not in err and len(err.strip().splitlines()) == 2


def test_corrupt_checkpoint_then_resume_extend_and_full_disk(tiny_run, tmp_path, capsys, monkeypatch):
    """One story on a copy of the 2-epoch run: the corrupt checkpoint 2 is named with the intact
    checkpoint 1 and the fix; following it, a rerun with --epochs 3 (an extension) resumes from
    epoch 1, retrains epoch 2 bit-identically, and then meets a full disk: a short message
    saying checkpoint 2 is intact."""
    import orbax.checkpoint as ocp

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    for p in (run / "ckpt" / "2" / "state").rglob("*"):
        if p.is_file() and "metadata" not in p.name.lower():
            p.write_bytes(b"\0garbage")
    assert _eval(run) == 2
    err = _err(capsys)
    assert f"checkpoint {run / 'ckpt' / '2'} is corrupt" in err
    assert f"The earlier checkpoint {run / 'ckpt' / '1'} is intact: delete {run / 'ckpt' / '2'}" in err
    assert len(err.strip().splitlines()) <= 3 and "tensorstore" not in err.lower()
    shutil.rmtree(run / "ckpt" / "2")  # as the message says

    real_save = ocp.CheckpointManager.save

    def full_at_3(self, step, *a, **k):
        if step == 3:
            raise ValueError("Error writing ocdbt manifest: [OS error: No space left on device] " + "spec " * 200)
        return real_save(self, step, *a, **k)

    monkeypatch.setattr(ocp.CheckpointManager, "save", full_at_3)
    logs = []
    tr, te = _data()
    with pytest.raises(OSError) as e:
        pretrain(run, "small_cnn", tr.images, tr.labels, te.images, te.labels, dataclasses.replace(CFG, epochs=3),
                 num_classes=10, dataset="digits", model_kwargs=TINY, progress=False, log=logs.append)
    assert "extending" in logs[0] and "from 2 to 3 epochs" in logs[0] and "resuming" in logs[1]
    assert e.value.errno == errno.ENOSPC
    msg = str(e.value)
    assert "no space left on device" in msg and "the checkpoint of epoch 2 is intact" in msg
    assert "rerun the same command to resume" in msg and len(msg) < 400
    assert checkpoint.latest_step(run / "ckpt") == 2
    assert not list((run / "ckpt").glob("*tmp*"))
    meta = checkpoint.restore_meta(run / "ckpt")
    assert meta["extensions"] == [{"from_epochs": 2, "to_epochs": 3, "at_epoch": 1}]
    _, v_ref, meta_ref = load_trained(tiny_run)
    _, v_run, _ = load_trained(run)
    assert [r["train_loss"] for r in meta["history"]] == [r["train_loss"] for r in meta_ref["history"]]
    for a, b in zip(jax.tree_util.tree_leaves(v_ref), jax.tree_util.tree_leaves(v_run)):
        assert np.array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------------------------- API: attacks, model boundary, data


@pytest.mark.parametrize("name", [n for n in ATTACK_NAMES if n != "autoattack-custom"])
def test_every_attack_rejects_labels_outside_the_classes(model_and_batch, name):
    f, x = model_and_batch
    attack = get_attack(name, L2Ball(0.5) if name in ("pgd-l2", "cw") else LinfBall(0.1))
    key = jax.random.key(0)
    for bad in (np.full(8, 10), np.full(8, -1)):
        with pytest.raises(ValueError, match=r"y must lie in \[0, 10\)"):
            attack(f, x, bad.astype(np.int32), key)


def test_attack_empty_batch_int_key_and_large_eps(model_and_batch):
    f, x = model_and_batch
    y = np.zeros(8, np.int32)
    with pytest.raises(ValueError, match="empty batch"):
        pgd(f, x[:0], y[:0], jax.random.key(0), LinfBall(0.1))
    with pytest.raises(TypeError, match=r"pass jax.random.key\(0\)"):
        pgd(f, x, y, 0, LinfBall(0.1))
    with pytest.warns(UserWarning, match="Did you mean 8/255"):
        pgd(f, x, y, jax.random.key(0), LinfBall(8.0), steps=1)
    import warnings

    from jsemi.attacks._common import validate  # every attack's entry check

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # L2 budgets above 1 are normal: no warning
        validate(f, x, y, jax.random.key(0), L2Ball(2.0))
    with pytest.warns(UserWarning, match="diameter"):
        validate(f, x, y, jax.random.key(0), L2Ball(9.0))  # sqrt(8 * 8 * 1) = 8


def test_cli_warns_on_linf_eps_above_one(tiny_run, capsys):
    assert main(["eval", "--run", str(tiny_run), "--attack", "fgsm", "--eps", "8", "--test-subset", "16",
                 "--no-progress"]) == 0
    err = _err(capsys)
    assert "jsemi eval: warning: --eps = 8 (L-inf" in err and "8/255 = 0.03137" in err


def test_model_boundary_refuses_uint8_and_255_images(model_and_batch):
    f, x = model_and_batch
    with pytest.raises(TypeError, match="divide uint8 images by 255"):
        f((x * 255).astype(np.uint8))
    with pytest.raises(ValueError, match=r"\[0, 255\] pixels: divide by 255"):
        f(x * 255)
    with pytest.raises(TypeError, match="uint8"):  # the dtype check is static: it holds under jit too
        jax.jit(lambda g, z: g(z))(f, jnp.asarray((x * 255).astype(np.uint8)))
    np.testing.assert_allclose(jax.jit(lambda g, z: g(z))(f, x), f(x), rtol=1e-5, atol=1e-6)


def test_evaluate_int_key_and_batch_size(model_and_batch, tiny_run):
    from jsemi.train import evaluate

    model, variables, _ = load_trained(tiny_run)
    _, x = model_and_batch
    y = np.zeros(8, np.int32)
    with pytest.raises(TypeError, match=r"jax.random.key\(0\)"):
        evaluate(model, variables, x, y, 0, attack=get_attack("fgsm", LinfBall(0.1)))
    for bs in (-5, 0):
        with pytest.raises(ValueError, match="batch_size must be a positive integer"):
            evaluate(model, variables, x, y, jax.random.key(0), batch_size=bs)
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 10\)"):
        evaluate(model, variables, x, np.full(8, 10), jax.random.key(0))


def test_pretrain_validates_its_data_first(tmp_path):
    tr, te = _data()
    cases = [
        (dict(train_labels=np.full(256, 10)), ValueError, r"train_labels must lie in \[0, 10\)"),
        (dict(train_images=tr.images.astype(np.float32)), ValueError, r"train_images must lie in \[0, 1\]"),
        (dict(train_images=tr.images[:0], train_labels=tr.labels[:0]), ValueError, "empty batch"),
        (dict(test_images=np.zeros((8, 28, 28, 1), np.float32), test_labels=np.zeros(8, np.int32)), ValueError,
         "expects 8x8x1 input"),
    ]
    for over, exc, msg in cases:
        kw = {**dict(train_images=tr.images, train_labels=tr.labels, test_images=te.images, test_labels=te.labels),
              **over}
        with pytest.raises(exc, match=msg):
            pretrain(tmp_path / "r", "small_cnn", kw["train_images"], kw["train_labels"], kw["test_images"],
                     kw["test_labels"], CFG, num_classes=10, model_kwargs=TINY, progress=False)
    assert not (tmp_path / "r").exists()  # nothing was created


def test_check_output_location_creates_and_accepts_a_directory(tmp_path):
    assert check_output_location(tmp_path / "a" / "b").is_dir()
    assert check_output_location(tmp_path / "a" / "b", need_bytes=1).is_dir()
