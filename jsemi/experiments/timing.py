"""Progress lines and wall time of named experiment stages (kept across invocations)."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path


def log(msg: str) -> None:
    """Prints a progress line (flushed, so it interleaves correctly with tqdm on stderr)."""
    try:
        from tqdm.auto import tqdm

        tqdm.write(msg)
    except ImportError:  # pragma: no cover
        print(msg, flush=True)
    sys.stdout.flush()


class Stages:
    """Wall and CPU time of named stages, kept in OUT/timings.json across invocations.

    ``with stages("pretrain normal"):`` times a block; ``stages.mark_reused(name)``
    marks a stage whose results were loaded from an earlier invocation.
    """

    def __init__(self, path: Path):
        self.path = Path(path)
        self.current: dict[str, dict] = {}
        self.previous: dict[str, dict] = {}
        if self.path.exists():
            try:
                self.previous = json.loads(self.path.read_text()).get("stages", {})
            except (OSError, ValueError):
                self.previous = {}
        self.t0, self.cpu0 = time.perf_counter(), time.process_time()
        self.load_start = _loadavg()

    def __call__(self, name: str):
        stages = self

        class _Ctx:
            def __enter__(self):
                self.t, self.cpu = time.perf_counter(), time.process_time()
                log(f"== {name}")
                return self

            def __exit__(self, et, ev, tb):
                if et is None:
                    dt = time.perf_counter() - self.t
                    cpu = time.process_time() - self.cpu  # all threads of this process
                    stages.current[name] = {"seconds": dt, "cpu_seconds": cpu}
                    log(f"== {name}: {dt:.1f} s ({cpu:.1f} CPU s)")
                return False

        return _Ctx()

    def mark_reused(self, name: str) -> None:
        if name in self.current:
            self.current[name]["reused"] = True

    def save(self) -> None:
        from jsemi.runs import write_json_atomic

        total = time.perf_counter() - self.t0
        merged = {}
        for name, rec in self.current.items():
            first = self.previous.get(name, {})
            if rec.get("reused") and "first_run_seconds" in first:
                rec = {**rec, "first_run_seconds": first["first_run_seconds"]}
            elif rec.get("reused") and first.get("seconds") is not None and not first.get("reused"):
                rec = {**rec, "first_run_seconds": first["seconds"], "first_run_cpu_seconds": first.get("cpu_seconds")}
            elif not rec.get("reused"):
                rec = {**rec, "first_run_seconds": rec["seconds"], "first_run_cpu_seconds": rec.get("cpu_seconds")}
            if rec.get("reused") and "first_run_cpu_seconds" in first:
                rec["first_run_cpu_seconds"] = first["first_run_cpu_seconds"]
            merged[name] = rec
        self.load_end = _loadavg()
        write_json_atomic(self.path, {"stages": merged, "total_seconds": total,
                                      "total_cpu_seconds": time.process_time() - self.cpu0,
                                      "load_average_start": self.load_start,
                                      "load_average_end": self.load_end})
        self.total = total
        self.merged = merged


def _loadavg() -> list[float] | None:
    """The 1/5/15-minute load averages (other processes competing for the cores), if available."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except (OSError, AttributeError):
        return None
