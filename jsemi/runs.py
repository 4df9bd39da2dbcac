"""Run directories for experiments made of independent trials (Algorithm 1 and its sweeps).

Layout::

    RUN/config.json          the settings that define the run, with their hash
    RUN/<name>.json          shared results computed once (e.g. baseline.json: Acc, Acc*)
    RUN/trials/trial_000.json one record per finished trial

Guarantees:

- **Atomic records.**  Every JSON file is written to a temporary file in the same
  directory, flushed, fsync'ed and moved into place with ``os.replace``, so a record
  is either absent or complete: an interruption (Ctrl-C, kill -9, power loss after
  the fsync) never leaves a half-written trial.
- **Resumable.**  A trial whose record exists is finished; re-running the same
  experiment skips it and runs only the missing ones.
- **One writer.**  ``RunDir.open`` (and ``jsemi.pretrain``) hold an exclusive OS lock
  (``lock_run_dir``: ``fcntl.flock`` on ``RUN/.jsemi.lock``) while they write; a second
  process fails at once with ``RunLockedError`` naming the holder's PID.  The OS drops
  the lock when the process ends, also on kill -9, so no stale lock is ever left.
- **Checked before work.**  ``check_output_location`` refuses a path that is a file, is
  not writable or lacks the space for one checkpoint (``OutputLocationError``).
- **No silent mixing.**  ``RunDir.open(path, config)`` hashes the canonical JSON of
  ``config`` (sorted keys) and refuses (``ConfigMismatchError``) to continue a run
  directory created with a different configuration.  Put everything that changes
  the numbers into ``config`` (including fingerprints of the pretrained networks,
  see ``fingerprint``) and nothing that does not (e.g. the number of trials, so a
  run can be extended from 3 to 10 trials).
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import secrets
import shutil
import socket
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import numpy as np

CONFIG_FILE = "config.json"
TRIALS_DIR = "trials"


class ConfigMismatchError(ValueError):
    """The run directory was created with a different configuration."""


def to_jsonable(obj: Any) -> Any:
    """Converts numpy / jax scalars and arrays, tuples and dataclass-like dicts to plain JSON types.

    Non-finite floats become the strings "nan", "inf", "-inf" (strict JSON has no NaN).
    """
    if isinstance(obj, dict):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if hasattr(obj, "to_json") and callable(obj.to_json):
        out = obj.to_json()
        return to_jsonable(json.loads(out) if isinstance(out, str) else out)
    if isinstance(obj, (bool, np.bool_)):
        return bool(obj)
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        if math.isnan(f):
            return "nan"
        if math.isinf(f):
            return "inf" if f > 0 else "-inf"
        return f
    if hasattr(obj, "shape") and hasattr(obj, "dtype"):  # numpy / jax arrays
        arr = np.asarray(obj)
        return to_jsonable(arr.item() if arr.ndim == 0 else arr.tolist())
    if obj is None or isinstance(obj, str):
        return obj
    raise TypeError(f"cannot write {type(obj).__name__} as JSON: {obj!r}")


def canonical_json(obj: Any) -> str:
    """Compact JSON with sorted keys: equal settings give equal strings."""
    return json.dumps(to_jsonable(obj), sort_keys=True, separators=(",", ":"))


def config_hash(config: Any) -> str:
    """SHA-256 (hex, first 16 characters) of the canonical JSON of ``config``."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def fingerprint(tree: Any) -> str:
    """SHA-256 (hex, first 16 characters) of every array leaf of a pytree, with its path, shape and dtype.

    Identifies a set of network variables: two runs built on different pretrained
    weights get different fingerprints even when all their settings agree.
    """
    import jax

    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
        arr = np.ascontiguousarray(np.asarray(leaf))
        h.update(jax.tree_util.keystr(path).encode())
        h.update(str((arr.shape, arr.dtype.str)).encode())
        h.update(arr.tobytes())
    return h.hexdigest()[:16]


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Writes ``text`` to ``path`` atomically: a temporary file in the same directory, flushed,
    fsync'ed and moved into place with ``os.replace``; the temporary file is removed on any
    failure (a full disk, an interruption).  The file gets the usual permissions (0666 less
    the umask, e.g. 0644), not the 0600 of ``tempfile.mkstemp``.  The one writer of jsemi's
    JSON and text outputs."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    try:  # make the rename itself durable
        dfd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError:
        pass
    return path


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as JSON (sorted keys, indented; NaN as "nan") to ``path`` atomically
    (see ``write_text_atomic``)."""
    return write_text_atomic(path, json.dumps(to_jsonable(obj), indent=2, sort_keys=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file (raises FileNotFoundError / ValueError with the path on failure)."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to recompute") from e


# ----------------------------------------------------------------------------- one writer per run directory

LOCK_FILE = ".jsemi.lock"


class RunLockedError(RuntimeError):
    """Another process holds the run directory's lock (it is writing there now)."""


class OutputLocationError(ValueError):
    """An output directory cannot be used: a file is in the way, it is not writable, or the disk is too full."""


class _Held:
    """The open, flock'ed lock file of one run directory in this process."""

    def __init__(self, fd: int, key: str):
        self.fd, self.key, self.count = fd, key, 0


_HELD: dict[str, _Held] = {}  # lock file path -> the lock this process holds there
_HELD_GUARD = threading.Lock()


class RunLock:
    """This process's exclusive lock on a run directory (``fcntl.flock`` on ``RUN/.jsemi.lock``).

    The OS holds the lock for the process, so it is released on exit, on an exception and on
    ``kill -9`` alike; no stale lock is ever left behind.  Re-acquiring in the same process is
    allowed (each ``RunLock`` counts); the file is unlocked when the last one is released.
    Use as a context manager or call ``release``.
    """

    def __init__(self, held: _Held, path: Path):
        self._held, self.path = held, path
        held.count += 1

    def release(self) -> None:
        with _HELD_GUARD:
            held, self._held = self._held, None
            if held is None:
                return
            held.count -= 1
            if held.count == 0:
                _HELD.pop(held.key, None)
                os.close(held.fd)  # closing the only descriptor drops the flock

    def __enter__(self) -> "RunLock":
        return self

    def __exit__(self, *exc) -> None:
        self.release()

    def __del__(self):
        try:
            self.release()
        except Exception:  # interpreter shutdown
            pass


def _holder(fd: int) -> dict:
    for _ in range(20):  # the holder writes its record right after locking
        try:
            rec = json.loads(os.pread(fd, 4096, 0).decode() or "null")
            if isinstance(rec, dict) and "pid" in rec:
                return rec
        except (OSError, ValueError):
            pass
        time.sleep(0.05)
    return {}


def lock_run_dir(path: str | os.PathLike) -> RunLock:
    """Takes the exclusive lock of run directory ``path`` (created if missing) for this process.

    Raises ``RunLockedError`` at once, naming the holder's PID, when another process holds it.
    """
    import fcntl

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    lock_path = path.resolve() / LOCK_FILE
    with _HELD_GUARD:
        held = _HELD.get(str(lock_path))
        if held is None:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                who = _holder(fd)
                os.close(fd)
                pid = who.get("pid", "unknown")
                where = f" on {who['host']}" if who.get("host") and who.get("host") != socket.gethostname() else ""
                since = f", since {who['since']}" if who.get("since") else ""
                raise RunLockedError(
                    f"{path} is in use by another jsemi process (PID {pid}{where}{since}); one process at a time "
                    f"may write a run directory. Wait for it to finish, or stop it (kill {pid}) and rerun to resume."
                ) from None
            except OSError as e:  # a file system without flock: carry on unprotected, say so
                import warnings

                warnings.warn(f"cannot lock {lock_path} ({e.strerror}); nothing stops a second writer", UserWarning)
            rec = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
            os.ftruncate(fd, 0)
            os.pwrite(fd, (json.dumps(rec) + "\n").encode(), 0)
            held = _HELD[str(lock_path)] = _Held(fd, str(lock_path))
        return RunLock(held, path)


def check_output_location(path: str | os.PathLike, need_bytes: int = 0, what: str = "output directory") -> Path:
    """Checks, before any work, that ``path`` can hold a run: not a file, creatable and
    writable, and (with ``need_bytes``) that much free space.  Creates the directory.

    Raises ``OutputLocationError`` with one line naming the problem.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise OutputLocationError(f"{what} {path} exists and is a file, not a directory; give a directory path")
    parent = path
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if parent.exists() and not parent.is_dir():
        raise OutputLocationError(f"cannot create {what} {path}: {parent} is a file, not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / f".jsemi-write-test-{os.getpid()}"
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666))
        os.unlink(probe)
    except OSError as e:
        raise OutputLocationError(f"{what} {path} is not writable ({e.strerror or e}); choose another location") from None
    if need_bytes:
        free = shutil.disk_usage(path).free
        if free < need_bytes:
            raise OutputLocationError(
                f"not enough free space for {what} {path}: {free / 2**20:.1f} MiB free, one checkpoint needs about "
                f"{need_bytes / 2**20:.1f} MiB; free some space or choose another location")
    return path


class RunDir:
    """A run directory bound to one configuration.  Use ``RunDir.open``."""

    def __init__(self, path: Path, config: dict, digest: str, lock: RunLock | None = None):
        self.path = path
        self.config = config
        self.hash = digest
        self.lock = lock  # held while this object lives (``open``); None when read-only (``load``)

    # ------------------------------------------------------------------ creation

    @classmethod
    def open(cls, path: str | os.PathLike, config: Any, *, kind: str = "run") -> "RunDir":
        """Creates ``path`` for ``config`` or reopens it, holding its lock (``lock_run_dir``)
        while the returned object lives.  Raises ``RunLockedError`` when another process
        writes there, ``ConfigMismatchError`` (naming the differing settings) on a config change."""
        path = Path(path)
        cfg = json.loads(canonical_json(config))
        digest = config_hash(cfg)
        check_output_location(path, what="run directory")
        lock = lock_run_dir(path)
        cfile = path / CONFIG_FILE
        if cfile.exists():
            saved = read_json(cfile)
            if saved.get("hash") != digest or saved.get("config") != cfg:
                lock.release()
                diff = diff_settings(saved.get("config", {}), cfg)
                raise ConfigMismatchError(
                    f"{path} holds a {saved.get('kind', 'run')} with another configuration "
                    f"(hash {saved.get('hash')} != {digest}; differing settings: {describe_diff(diff) or '?'}). "
                    "Use another output directory, or delete this one to start over."
                )
        else:
            write_json_atomic(cfile, {"kind": kind, "hash": digest, "config": cfg})
        (path / TRIALS_DIR).mkdir(exist_ok=True)
        return cls(path, cfg, digest, lock)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "RunDir":
        """Opens an existing run directory read-only (its saved configuration is taken as is)."""
        path = Path(path)
        cfile = path / CONFIG_FILE
        if not cfile.exists():
            raise FileNotFoundError(f"{path} is not a run directory (no {CONFIG_FILE})")
        saved = read_json(cfile)
        return cls(path, saved["config"], saved["hash"])

    # ------------------------------------------------------------------ trials

    def trial_path(self, i: int) -> Path:
        return self.path / TRIALS_DIR / f"trial_{int(i):03d}.json"

    def has_trial(self, i: int) -> bool:
        return self.trial_path(i).exists()

    def save_trial(self, i: int, record: dict) -> Path:
        """Writes trial ``i``'s record atomically, stamped with the config hash."""
        record = dict(record)
        record["trial"] = int(i)
        record["config_hash"] = self.hash
        return write_json_atomic(self.trial_path(i), record)

    def load_trial(self, i: int) -> dict:
        rec = read_json(self.trial_path(i))
        if rec.get("config_hash") != self.hash:
            raise ConfigMismatchError(f"{self.trial_path(i)} was written under config {rec.get('config_hash')}, not {self.hash}")
        return rec

    def finished_trials(self) -> list[int]:
        out = []
        for p in sorted((self.path / TRIALS_DIR).glob("trial_*.json")):
            try:
                out.append(int(p.stem.split("_")[1]))
            except (IndexError, ValueError):
                continue
        return out

    def trials(self) -> list[dict]:
        """Every finished trial's record, by trial index."""
        return [self.load_trial(i) for i in self.finished_trials()]

    def pending(self, num_trials: int) -> list[int]:
        done = set(self.finished_trials())
        return [i for i in range(num_trials) if i not in done]

    # ------------------------------------------------------------------ shared results

    def json_path(self, name: str) -> Path:
        return self.path / f"{name}.json"

    def has(self, name: str) -> bool:
        return self.json_path(name).exists()

    def save(self, name: str, obj: Any) -> Path:
        return write_json_atomic(self.json_path(name), obj)

    def read(self, name: str) -> Any:
        return read_json(self.json_path(name))

    def cached(self, name: str, compute) -> Any:
        """Returns ``name``.json if present, else ``compute()`` written atomically first."""
        if self.has(name):
            return self.read(name)
        value = json.loads(canonical_json(compute()))
        self.save(name, value)
        return value

    def __iter__(self) -> Iterator[dict]:
        return iter(self.trials())

    def __repr__(self) -> str:
        return f"RunDir({str(self.path)!r}, hash={self.hash}, finished={len(self.finished_trials())})"


def diff_settings(saved: Any, new: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """The settings that differ between two nested dicts: [(dotted key, saved value, new value)]."""
    if isinstance(saved, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(saved) | set(new)):
            out += diff_settings(saved.get(k), new.get(k), f"{prefix}{k}.")
        return out
    return [(prefix.rstrip("."), saved, new)] if saved != new else []


def describe_diff(diff: list[tuple[str, Any, Any]], limit: int = 3) -> str:
    """"lr: 0.001 in the run, 0.002 now; ..." for the first ``limit`` differences."""
    def short(v):
        t = json.dumps(v)
        return t if len(t) <= 30 else t[:27] + "..."

    parts = [f"{k}: {short(a)} in the run, {short(b)} now" for k, a, b in diff[:limit]]
    if len(diff) > limit:
        parts.append(f"and {len(diff) - limit} more")
    return "; ".join(parts)
