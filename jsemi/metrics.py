"""Metric curves of a run as TensorBoard event files and as ``metrics.csv``.

``MetricWriter(log_dir)`` writes every scalar twice, into the same directory:

- a TensorBoard event file (``events.out.tfevents.*``), through tensorboardX (a
  dependency of jsemi: it needs only numpy, packaging and protobuf, no TensorFlow);
  view with ``tensorboard --logdir RUN``;
- ``metrics.csv`` with the columns ``tag,step,value,wall_time`` (one row per scalar,
  wall time in seconds since the epoch), readable without any library.

Every call is on disk (flushed to the operating system) when it returns, so a run
killed at any moment keeps the curves of what it finished.  Events are written
synchronously with tensorboardX's ``EventsWriter`` rather than ``SummaryWriter``,
whose ``flush()`` does not wait for events still queued for its writer thread.

Layout written by jsemi (``METRICS_DIR`` = "metrics"):

- pretraining (``jsemi.pretrain``): ``RUN/metrics/``, step = epoch (1, 2, ...):
  ``train/loss`` (nats), ``train/acc`` (standard training) or ``train/attacked_acc``
  (adversarial modes: accuracy on the attacked training inputs), ``test/acc`` (clean),
  ``test/attacked_acc`` (when the epoch record has ``test_adv_acc``), ``time/epoch_s``;
- Algorithm 1 (``jsemi.algorithms``): ``RUN/metrics/trial_XXX/``, one TensorBoard run
  per trial so trials overlay in one chart: ``alg1/attacked_acc`` (step = fine-tuning
  epoch, 0 = Acc_sr before fine-tuning), ``alg1/threshold`` (Acc* - k) and
  ``alg1/acc_star`` on the same steps, ``alg1/train_loss``,
  ``alg1/train_attacked_acc`` and ``alg1/epoch_s`` (steps 1..epochs), and for every
  rho estimator EST ``rho/EST`` and ``rho_null/EST`` with step = j, the layer pair
  (j-1, j).  Accuracies are fractions in [0, 1], rho in bits.
"""

from __future__ import annotations

import csv
import math
import numbers
import re
import time
import uuid
from pathlib import Path
from typing import Any, Mapping, Sequence

METRICS_DIR = "metrics"
CSV_NAME = "metrics.csv"
CSV_COLUMNS = ("tag", "step", "value", "wall_time")
EVENT_GLOB = "events.out.tfevents.*"
_TAG = re.compile(r"[-\w.][-/\w.]*")  # the tags TensorBoard keeps unchanged


def _tensorboardx():
    try:
        from tensorboardX import summary
        from tensorboardX.event_file_writer import EventsWriter
        from tensorboardX.proto import event_pb2
    except ImportError as e:  # a dependency of jsemi: only a broken install lacks it
        raise ImportError("jsemi.metrics needs tensorboardX (a jsemi dependency): pip install tensorboardX") from e
    return summary, EventsWriter, event_pb2


def _check_value(tag: str, value: Any) -> float:
    if isinstance(value, (bool, str, bytes)) or value is None:
        raise TypeError(f"metric {tag!r}: value must be a real number, got {value!r}")
    try:
        if not isinstance(value, numbers.Real):
            value = value.item()  # 0-d numpy / jax arrays
        return float(value)
    except (AttributeError, TypeError, ValueError) as e:
        raise TypeError(f"metric {tag!r}: value must be a real number (or a 0-d array), got {value!r}") from e


class MetricWriter:
    """Scalars into ``log_dir`` as a TensorBoard event file and ``metrics.csv``.

    ``fresh=True`` first removes the event files and ``metrics.csv`` already in
    ``log_dir`` (nothing else), for writers that replay a whole record; otherwise a
    new event file is added beside the old ones and rows are appended to the CSV.
    Use as a context manager or call ``close()``.
    """

    def __init__(self, log_dir: str | Path, *, fresh: bool = False):
        summary, events_writer, event_pb2 = _tensorboardx()
        self._summary, self._event_pb2 = summary, event_pb2
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.csv_path = self.log_dir / CSV_NAME
        if fresh:
            for p in list(self.log_dir.glob(EVENT_GLOB)) + [self.csv_path]:
                if p.is_file():
                    p.unlink()
        new = not self.csv_path.exists() or self.csv_path.stat().st_size == 0
        if not new:
            with open(self.csv_path, newline="") as f:
                head = next(csv.reader(f), None)
            if tuple(head or ()) != CSV_COLUMNS:
                raise ValueError(f"{self.csv_path} exists with header {head}, not {list(CSV_COLUMNS)}: not a jsemi "
                                 "metrics file; use another directory")
        self._csv_file = open(self.csv_path, "a", newline="")
        self._csv = csv.writer(self._csv_file)
        if new:
            self._csv.writerow(CSV_COLUMNS)
        # a unique suffix: two writers opened in the same second must not share (and truncate) a file
        suffix = f".{uuid.uuid4().hex[:12]}"
        self._events = events_writer(str(self.log_dir / "events"), filename_suffix=suffix)
        self.event_path = next(self.log_dir.glob(f"events.out.tfevents.*{suffix}"))
        self._closed = False

    def scalar(self, tag: str, value: Any, step: int) -> None:
        """Writes one scalar: ``tag`` (letters, digits, ``_-./``), a real ``value`` (NaN kept), ``step`` >= 0."""
        self.scalars({tag: value}, step)

    def scalars(self, values: Mapping[str, Any], step: int) -> None:
        """Writes every (tag, value) of ``values`` at ``step``; None values are left out (not measured)."""
        if self._closed:
            raise ValueError(f"MetricWriter for {self.log_dir} is closed")
        if isinstance(step, bool) or not isinstance(step, numbers.Integral) or step < 0:
            raise ValueError(f"step must be an int >= 0, got {step!r}")
        checked = []
        for tag, value in values.items():
            if not isinstance(tag, str) or not _TAG.fullmatch(tag):
                raise ValueError(f"metric tag {tag!r} must be letters, digits and _-./ (not starting with /)")
            if value is not None:
                checked.append((tag, _check_value(tag, value)))
        now = time.time()
        for tag, v in checked:
            ev = self._event_pb2.Event(wall_time=now, step=int(step), summary=self._summary.scalar(tag, v))
            self._events.write_event(ev)
            self._csv.writerow((tag, int(step), repr(v), repr(now)))
        self.flush()

    def flush(self) -> None:
        """Flushes both files to the operating system."""
        if not self._closed:
            self._events.flush()
            self._csv_file.flush()

    def close(self) -> None:
        """Flushes and closes both files (idempotent)."""
        if not self._closed:
            self.flush()
            self._events.close()
            self._csv_file.close()
            self._closed = True

    def __enter__(self) -> "MetricWriter":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def read_csv(path: str | Path) -> dict[str, list[tuple[int, float]]]:
    """``metrics.csv`` (or a directory holding one) as {tag: [(step, value), ...]} in file order."""
    path = Path(path)
    if path.is_dir():
        path = path / CSV_NAME
    out: dict[str, list[tuple[int, float]]] = {}
    with open(path, newline="") as f:
        for row in csv.DictReader(f):
            out.setdefault(row["tag"], []).append((int(row["step"]), float(row["value"])))
    return out


# ----------------------------------------------------------------------------- jsemi's records


def train_epoch_scalars(rec: Mapping[str, Any], *, adversarial: bool) -> dict[str, Any]:
    """The scalars of one pretraining history record (``jsemi.pretrain``), by tag."""
    return {
        "train/loss": rec.get("train_loss"),
        ("train/attacked_acc" if adversarial else "train/acc"): rec.get("train_acc"),
        "test/acc": rec.get("test_acc"),
        "test/attacked_acc": rec.get("test_adv_acc"),
        "time/epoch_s": rec.get("seconds"),
    }


def log_train_history(writer: MetricWriter | None, history: Sequence[Mapping[str, Any]], *, adversarial: bool) -> None:
    """Writes pretraining history records (step = their ``epoch``); ``writer=None`` writes nothing
    (the processes other than 0 of a multi-process run)."""
    if writer is None:
        return
    for rec in history:
        writer.scalars(train_epoch_scalars(rec, adversarial=adversarial), int(rec["epoch"]))


def log_alg1_trial(metrics_dir: str | Path, rec: Mapping[str, Any]) -> Path:
    """Writes one Algorithm 1 trial record into ``metrics_dir/trial_XXX/`` (replacing what a
    previous write of that trial left there); returns that directory."""
    log_dir = Path(metrics_dir) / f"trial_{int(rec['trial']):03d}"
    history = list(rec.get("history") or ())
    epoch_s = list((rec.get("timing") or {}).get("epoch_s") or ())
    with MetricWriter(log_dir, fresh=True) as w:
        w.scalars({"alg1/attacked_acc": rec["acc_sr"], "alg1/threshold": rec.get("threshold"),
                   "alg1/acc_star": rec.get("acc_star")}, 0)
        for i, h in enumerate(history):
            w.scalars({"alg1/attacked_acc": h["adv_acc"], "alg1/threshold": rec.get("threshold"),
                       "alg1/acc_star": rec.get("acc_star"), "alg1/train_loss": h.get("train_loss"),
                       "alg1/train_attacked_acc": h.get("train_acc"),
                       "alg1/epoch_s": epoch_s[i] if i < len(epoch_s) else None}, int(h["epoch"]))
        for est, entries in (rec.get("rho") or {}).items():
            for e in entries:
                w.scalars({f"rho/{est}": _finite_or_none(e.get("rho")), f"rho_null/{est}": _finite_or_none(e.get("null"))},
                          int(e["layer"]))
    return log_dir


def _finite_or_none(v: Any) -> float | None:
    """Record values as written by ``jsemi.runs`` (non-finite floats are strings there)."""
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None
