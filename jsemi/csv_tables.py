"""CSV twins of jsemi's JSON tables, readable with ``csv.DictReader``, pandas or a spreadsheet.

A table is a list of records (dicts).  Cells: numbers in full precision (``repr``: a float
read back with ``float`` is the same float), ``True``/``False``, an empty cell for None
(and for the strings "nan"/"inf"/"-inf" that stand for non-finite floats in jsemi's
JSON); a nested dict becomes columns ``key.sub``; a list becomes one cell holding its
JSON text.  Columns: the keys in first-seen order over all records.  Files are written
atomically (``jsemi.runs.write_text_atomic``).
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any, Mapping, Sequence


def flatten(record: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """A nested dict as one level, keys joined with "." ({"a": {"b": 1}} -> {"a.b": 1})."""
    out: dict[str, Any] = {}
    for k, v in record.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def _cell(v: Any) -> str:
    if v is None:
        return ""
    if isinstance(v, bool):
        return str(v)
    if isinstance(v, float):
        return repr(v) if math.isfinite(v) else ""
    if isinstance(v, int):
        return str(v)
    if isinstance(v, str):
        return "" if v in ("nan", "inf", "-inf") else v
    if isinstance(v, (list, tuple)):
        return json.dumps(v, allow_nan=False, default=str)
    if hasattr(v, "item") and getattr(v, "ndim", None) == 0:  # numpy / jax scalars
        return _cell(v.item())
    if hasattr(v, "tolist"):
        return _cell(v.tolist())
    raise TypeError(f"cannot write {type(v).__name__} to a CSV cell: {v!r}")


def to_csv(records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> str:
    """The CSV text of ``records`` (flattened); ``columns`` fixes the columns and their order."""
    if isinstance(records, Mapping) or not all(isinstance(r, Mapping) for r in records):
        raise TypeError("records must be a sequence of dicts")
    flat = [flatten(r) for r in records]
    if columns is None:
        columns = list(dict.fromkeys(k for r in flat for k in r))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(columns)
    for r in flat:
        w.writerow([_cell(r.get(c)) for c in columns])
    return buf.getvalue()


def write_csv(path: str | Path, records: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> Path:
    """Writes ``records`` as CSV to ``path`` atomically; returns the path."""
    from jsemi.runs import write_text_atomic

    return write_text_atomic(path, to_csv(records, columns))


def json_tables(obj: Any) -> dict[str, list[Mapping[str, Any]]]:
    """The tables of a JSON document: every top-level value that is a non-empty list of dicts
    ({"rows": [...], "n": 7} -> {"rows": [...]}); a document that is itself such a list is
    the table named ""."""
    if isinstance(obj, (list, tuple)):
        return {"": list(obj)} if obj and all(isinstance(r, Mapping) for r in obj) else {}
    if not isinstance(obj, Mapping):
        raise TypeError(f"a JSON document must be a dict or a list, got {type(obj).__name__}")
    return {str(k): list(v) for k, v in obj.items()
            if isinstance(v, (list, tuple)) and v and all(isinstance(r, Mapping) for r in v)}


def write_json_tables(out_dir: str | Path, stem: str, obj: Any) -> dict[str, Path]:
    """Writes each table of ``obj`` (``json_tables``) as ``out_dir/<stem>_<name>.csv``
    (``<stem>.csv`` for a document that is one list); returns {name: path}."""
    out_dir = Path(out_dir)
    return {name: write_csv(out_dir / (f"{stem}_{name}.csv" if name else f"{stem}.csv"), rows)
            for name, rows in json_tables(obj).items()}
