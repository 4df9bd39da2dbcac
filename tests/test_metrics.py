"""Metric curves (jsemi.metrics): TensorBoard event files and metrics.csv, read back and compared.

Event files are read back record by record (length, masked CRC-32C of length and data, as
TFRecord frames them) and parsed with tensorboardX's Event protobuf; TensorBoard's own
reader checks them too when tensorboard is installed.  Pretraining and Algorithm 1 are
run on tiny synthetic data and their curves compared with their JSON records.
"""

from __future__ import annotations

import csv
import struct
from pathlib import Path

import jax
import numpy as np
import pytest

from jsemi import metrics

EPS = 0.02


def read_events(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} of every event file in ``log_dir`` (file order), CRCs checked."""
    from tensorboardX.proto import event_pb2
    from tensorboardX.record_writer import masked_crc32c

    out: dict[str, list[tuple[int, float]]] = {}
    files = sorted(log_dir.glob(metrics.EVENT_GLOB))
    assert files, f"no event file in {log_dir}"
    for path in files:
        data, pos, first = path.read_bytes(), 0, True
        while pos < len(data):
            header = data[pos:pos + 8]
            (n,) = struct.unpack("<Q", header)
            assert struct.unpack("<I", data[pos + 8:pos + 12])[0] == masked_crc32c(header)
            body = data[pos + 12:pos + 12 + n]
            assert struct.unpack("<I", data[pos + 12 + n:pos + 16 + n])[0] == masked_crc32c(body)
            pos += 16 + n
            ev = event_pb2.Event.FromString(body)
            if first:
                assert ev.file_version == "brain.Event:2"
                first = False
            for v in ev.summary.value:
                out.setdefault(v.tag, []).append((int(ev.step), float(v.simple_value)))
    return out


def f32(pairs):
    """Event files store float32 (simple_value); the CSV keeps the float64."""
    return [(s, float(np.float32(v))) for s, v in pairs]


def test_writer_round_trip_events_and_csv(tmp_path):
    with metrics.MetricWriter(tmp_path) as w:
        w.scalar("train/loss", 2.3025850929940455, 1)
        w.scalars({"train/loss": np.float32(1.25), "test/acc": jax.numpy.asarray(0.625), "skipped": None}, 2)
        w.scalar("x", float("nan"), 3)
        # on disk when the call returns, before close
        assert metrics.read_csv(tmp_path)["x"][0][0] == 3
    want = {"train/loss": [(1, 2.3025850929940455), (2, 1.25)], "test/acc": [(2, 0.625)]}
    got = metrics.read_csv(tmp_path)
    assert np.isnan(got.pop("x")[0][1])
    assert got == want  # the CSV keeps the exact float64
    ev = read_events(tmp_path)
    assert np.isnan(ev.pop("x")[0][1])
    assert ev == {k: f32(v) for k, v in want.items()}
    with open(tmp_path / metrics.CSV_NAME, newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == metrics.CSV_COLUMNS and len(rows) == 5
    assert all(float(r[3]) > 1.7e9 for r in rows[1:])  # wall time in seconds since the epoch

    if _has_tensorboard():  # TensorBoard's own reader agrees
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        acc = EventAccumulator(str(tmp_path))
        acc.Reload()
        assert [(e.step, e.value) for e in acc.Scalars("train/loss")] == f32(want["train/loss"])


def _has_tensorboard() -> bool:
    import importlib.util

    return importlib.util.find_spec("tensorboard") is not None


def test_append_fresh_and_same_second_writers(tmp_path):
    with metrics.MetricWriter(tmp_path) as w:
        w.scalar("a", 1.0, 1)
    with metrics.MetricWriter(tmp_path) as w1, metrics.MetricWriter(tmp_path) as w2:  # same second: two files
        w1.scalar("a", 2.0, 2)
        w2.scalar("b", 3.0, 1)
        assert w1.event_path != w2.event_path
    assert len(list(tmp_path.glob(metrics.EVENT_GLOB))) == 3
    # files of the same second are ordered by their random suffix: compare the points, not their order
    assert {k: sorted(v) for k, v in read_events(tmp_path).items()} == {"a": [(1, 1.0), (2, 2.0)], "b": [(1, 3.0)]}
    assert metrics.read_csv(tmp_path) == {"a": [(1, 1.0), (2, 2.0)], "b": [(1, 3.0)]}
    (tmp_path / "keep.txt").write_text("not ours")
    with metrics.MetricWriter(tmp_path, fresh=True) as w:
        w.scalar("c", 4.0, 0)
    assert len(list(tmp_path.glob(metrics.EVENT_GLOB))) == 1 and (tmp_path / "keep.txt").exists()
    assert read_events(tmp_path) == metrics.read_csv(tmp_path) == {"c": [(0, 4.0)]}


@pytest.mark.parametrize("tag, value, step, err, msg", [
    ("a b", 1.0, 0, ValueError, "letters, digits"),
    ("/lead", 1.0, 0, ValueError, "letters, digits"),
    ("", 1.0, 0, ValueError, "letters, digits"),
    ("a", 1.0, -1, ValueError, "step must be an int >= 0"),
    ("a", 1.0, 1.5, ValueError, "step must be an int >= 0"),
    ("a", 1.0, True, ValueError, "step must be an int >= 0"),
    ("a", "0.5", 0, TypeError, "real number"),
    ("a", True, 0, TypeError, "real number"),
    ("a", np.zeros(2), 0, TypeError, "real number"),
])
def test_bad_input_is_refused_before_anything_is_written(tmp_path, tag, value, step, err, msg):
    with metrics.MetricWriter(tmp_path) as w:
        with pytest.raises(err, match=msg):
            w.scalars({"ok": 1.0, tag: value}, step)
    assert metrics.read_csv(tmp_path) == {}
    with pytest.raises(ValueError, match="closed"):
        w.scalar("a", 1.0, 0)


def test_foreign_csv_is_not_appended_to(tmp_path):
    (tmp_path / metrics.CSV_NAME).write_text("epoch,loss\n1,0.5\n")
    with pytest.raises(ValueError, match="not a jsemi metrics file"):
        metrics.MetricWriter(tmp_path)


def test_alg1_trial_record_to_curves(tmp_path):
    rec = {"trial": 3, "acc_sr": 0.25, "acc_star": 0.5, "threshold": 0.48,
           "history": [{"epoch": 1, "adv_acc": 0.375, "train_loss": 1.5, "train_acc": 0.25},
                       {"epoch": 2, "adv_acc": 0.5, "train_loss": 1.25, "train_acc": 0.375}],
           "timing": {"epoch_s": [2.0, 3.0]},
           "rho": {"ksg": [{"layer": 6, "rho": 0.75, "null": 0.125}, {"layer": 7, "rho": "nan", "null": None}],
                   "edge": [{"layer": 6, "rho": 1.5, "null": 0.25}]}}
    d = metrics.log_alg1_trial(tmp_path, rec)
    assert d == tmp_path / "trial_003"
    want = {"alg1/attacked_acc": [(0, 0.25), (1, 0.375), (2, 0.5)],
            "alg1/threshold": [(0, 0.48), (1, 0.48), (2, 0.48)],
            "alg1/acc_star": [(0, 0.5), (1, 0.5), (2, 0.5)],
            "alg1/train_loss": [(1, 1.5), (2, 1.25)], "alg1/train_attacked_acc": [(1, 0.25), (2, 0.375)],
            "alg1/epoch_s": [(1, 2.0), (2, 3.0)],
            "rho/ksg": [(6, 0.75)], "rho_null/ksg": [(6, 0.125)], "rho/edge": [(6, 1.5)], "rho_null/edge": [(6, 0.25)]}
    assert metrics.read_csv(d) == want
    assert read_events(d) == {k: f32(v) for k, v in want.items()}
    metrics.log_alg1_trial(tmp_path, dict(rec, history=[], acc_sr=0.5))  # rewritten, not appended
    assert metrics.read_csv(d)["alg1/attacked_acc"] == [(0, 0.5)] and len(list(d.glob(metrics.EVENT_GLOB))) == 1


def _train_config(mode):
    from jsemi.train import TrainConfig

    return TrainConfig(mode=mode, optimizer="adam", lr=3e-3, weight_decay=0.0, lr_schedule="constant", epochs=2,
                       batch_size=32, eps=EPS, attack_steps=1, attack_step_size=EPS, augment=False, flip=False)


def test_pretrain_and_algorithm1_write_their_curves(tmp_path, monkeypatch):
    """The hooks: curves equal the JSON records (also when a finished run is rerun), with training,
    evaluation and the trials replaced by canned numbers (their own tests cover them)."""
    from jsemi import algorithms as A
    from jsemi import pretrain as PT
    from jsemi.data import load_dataset
    from jsemi.runs import read_json

    tr = load_dataset("synthetic", "train", num_examples=64, seed=3)
    te = load_dataset("synthetic", "test", num_examples=32, seed=3)
    monkeypatch.setattr(PT, "train_epoch", lambda state, *a, epoch, **k: (state, {"loss": 2.0 - epoch / 4,
                                                                                   "acc": 0.125 * (epoch + 1)}))
    monkeypatch.setattr(PT, "evaluate", lambda *a, **k: {"acc": 0.375, "adv_acc": None, "n": 32})
    kw = dict(num_classes=10, dataset="synthetic", model_kwargs={"widths": (4, 4, 8, 8, 8), "hidden": 16},
              progress=False, log=lambda s: None)
    run = tmp_path / "robust"
    res = PT.pretrain(run, "small_cnn", tr.images, tr.labels, te.images, te.labels, _train_config("pgd"), **kw)
    hist = read_json(run / "history.json")
    assert [(h["epoch"], h["train_loss"], h["train_acc"]) for h in hist] == [(1, 2.0, 0.125), (2, 1.75, 0.25)]
    want = {"train/loss": [(h["epoch"], h["train_loss"]) for h in hist],
            "train/attacked_acc": [(h["epoch"], h["train_acc"]) for h in hist],
            "test/acc": [(h["epoch"], h["test_acc"]) for h in hist],
            "time/epoch_s": [(h["epoch"], h["seconds"]) for h in hist]}
    mdir = run / metrics.METRICS_DIR
    assert metrics.read_csv(mdir) == want
    assert read_events(mdir) == {k: f32(v) for k, v in want.items()}
    trained = jax.tree_util.tree_map(np.asarray, res.variables)
    monkeypatch.setattr(PT, "init_model", lambda *a, **k: trained)  # the checkpoint overwrites it; saves a compile
    PT.pretrain(run, "small_cnn", tr.images, tr.labels, te.images, te.labels, _train_config("pgd"), **kw)
    assert metrics.read_csv(mdir) == want  # the rerun replays the history into a fresh file, no duplicates
    assert len(list(mdir.glob(metrics.EVENT_GLOB))) == 1

    def fake_trial(ctx, t, baseline, acc_sr, progress=False):
        hist = [{"epoch": 1, "adv_acc": 0.25, "train_loss": 1.5, "train_acc": 0.125}]
        return {"trial": t, "acc_sr": 0.0625, "acc_star": baseline["acc_star"], "threshold": baseline["threshold"],
                "acc_tilde": 0.25, "epochs": 1, "converged": False, "history": hist,
                "timing": {"wall_s": 1.0, "epoch_s": [0.5]}}

    monkeypatch.setattr(A, "run_trial", fake_trial)
    normal = jax.tree_util.tree_map(lambda v: -v, trained)
    cfg = A.Alg1Config(num_fb=2, k=0.0, max_epochs=1, trials=2, seed=5, finetune=_train_config("pgd"), eps=EPS,
                       eval_attack="none", eval_batch_size=32, measure=False)
    out = A.algorithm1(res.model, normal, res.variables, tr, te, cfg, tmp_path / "alg1", progress=False)
    thr = out.baseline["threshold"]
    for t in (0, 1):
        d = tmp_path / "alg1" / metrics.METRICS_DIR / f"trial_{t:03d}"
        got = metrics.read_csv(d)
        assert got["alg1/attacked_acc"] == [(0, 0.0625), (1, 0.25)] and got["alg1/threshold"] == [(0, thr), (1, thr)]
        assert got["alg1/epoch_s"] == [(1, 0.5)]
        assert read_events(d)["alg1/attacked_acc"] == f32(got["alg1/attacked_acc"])
def test_train_accuracy_is_named_by_what_it_measured():
    """Attacked training inputs in adversarial modes, clean ones in standard training."""
    rec = {"epoch": 1, "train_loss": 1.0, "train_acc": 0.5, "test_acc": 0.25, "seconds": 2.0}
    assert metrics.train_epoch_scalars(rec, adversarial=True)["train/attacked_acc"] == 0.5
    assert "train/attacked_acc" not in metrics.train_epoch_scalars(rec, adversarial=False)
    assert metrics.train_epoch_scalars(dict(rec, test_adv_acc=0.125), adversarial=True)["test/attacked_acc"] == 0.125
