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
import tempfile
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


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Writes ``obj`` as JSON to ``path`` atomically (temporary file + fsync + ``os.replace``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    text = json.dumps(to_jsonable(obj), indent=2, sort_keys=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.write("\n")
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


def read_json(path: str | os.PathLike) -> Any:
    """Reads a JSON file (raises FileNotFoundError / ValueError with the path on failure)."""
    path = Path(path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise ValueError(f"{path} is not valid JSON ({e}); delete it to recompute") from e


class RunDir:
    """A run directory bound to one configuration.  Use ``RunDir.open``."""

    def __init__(self, path: Path, config: dict, digest: str):
        self.path = path
        self.config = config
        self.hash = digest

    # ------------------------------------------------------------------ creation

    @classmethod
    def open(cls, path: str | os.PathLike, config: Any, *, kind: str = "run") -> "RunDir":
        """Creates ``path`` for ``config`` or reopens it; raises ``ConfigMismatchError`` on a config change."""
        path = Path(path)
        cfg = json.loads(canonical_json(config))
        digest = config_hash(cfg)
        cfile = path / CONFIG_FILE
        if cfile.exists():
            saved = read_json(cfile)
            if saved.get("hash") != digest or saved.get("config") != cfg:
                diff = _diff_keys(saved.get("config", {}), cfg)
                raise ConfigMismatchError(
                    f"{path} holds a {saved.get('kind', 'run')} with another configuration "
                    f"(hash {saved.get('hash')} != {digest}; differing settings: {', '.join(diff) or '?'}). "
                    "Use another output directory, or delete this one to start over."
                )
        else:
            path.mkdir(parents=True, exist_ok=True)
            write_json_atomic(cfile, {"kind": kind, "hash": digest, "config": cfg})
        (path / TRIALS_DIR).mkdir(exist_ok=True)
        return cls(path, cfg, digest)

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


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _diff_keys(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [prefix.rstrip(".")] if a != b else []
