"""Both sides of Theorems 2 and 3 per split point (PAPER_NOTES section 2), as a report.

``bound_report`` is a pure function of the estimates: per split point a (fa = layers 1..a,
fb = a+1..n) it lists

- gamma_a, fa's semirobustness (the attacked margin of layer a's probe: an upper estimate),
- rho_j for every j = a+1..n, with its null (same estimator, one layer permuted within
  each class), the excess over the null and the permutation p-value,
- Theorem 2's value gamma_a + sum_j rho_j next to the measured gamma_b (= gamma_n, the
  network's own attacked logit margin) and whether gamma_b <= the Theorem 2 value,
- the same sum with the excess over the null in place of rho (a diagnostic, not the theorem),
- Theorem 3's value gamma_a (1 + (n-1-a)(n-a)/2) (the linear-fb case).

Units.  Margins (gamma) are in logit units (a probe's margin is in the units of its
one-hot regression targets); mutual information (rho, null, excess) is in bits.
**Theorem 2 adds a margin to a mutual information as the paper states it**; the sum has
mixed units (logit + bits) and is reported as stated, not converted.
"""

from __future__ import annotations

import dataclasses
import json
import math
from typing import Any, Iterable, Mapping, Sequence

UNITS = {
    "gamma": "logit units (K-class margin z_y - max_{k!=y} z_k; probe layers: one-hot target units)",
    "rho": "bits",
    "null": "bits",
    "excess": "bits",
    "p_value": "probability",
    "theorem2": "logit units + bits (gamma_a + sum rho_j, added as Theorem 2 states)",
    "theorem3": "logit units",
    "sensitivity": "dimensionless (mean ||a - a_adv||_1 / ||a||_1; per channel / unit as the authors, or per image)",
    "accuracy": "fraction in [0, 1]",
}

NOTES = (
    "gamma values are attacked margins: UPPER estimates of E[min_delta margin] (an attack finds "
    "some delta; the infimum can only be lower).",
    "Theorem 2 (gamma_b <= gamma_a + sum_{j=a+1..n} rho_j) adds a margin in logit units to mutual "
    "information in bits, as the paper states it; the columns keep their own units.",
    "Theorem 3 (gamma_b = gamma_a (1 + (n-1-a)(n-a)/2)) holds when every layer of fb is a linear "
    "combination of all earlier layers; for a nonlinear fb it is shown for comparison only.",
    "rho_j = sum_y pi(y) I(f(j-1)(X+delta); f(j)(X+delta) | y) on attacked data; 'null' is the same "
    "estimator with one layer permuted within each class, 'excess' = rho - null.",
    "gamma scales with the map G: a probe's margin (layers j < n, one-hot regression scores, about 1 "
    "when clean and confident) and the network's logit margin (layer n) are on different scales. "
    "Fitting a probe on the last layer too (identity_last=False, `--probe-last-layer`) puts every gamma "
    "in the same one-hot target units.",
)


def theorem2_value(gamma_a: float, rhos: Iterable[float]) -> float:
    """gamma_a + sum rho_j (logit units + bits, as Theorem 2 states)."""
    return float(gamma_a) + float(sum(float(r) for r in rhos))


def theorem3_factor(n: int, a: int) -> float:
    """1 + (n-1-a)(n-a)/2, the factor of Theorem 3 for a network of n weight layers split at a."""
    return 1.0 + (n - 1 - a) * (n - a) / 2.0


def theorem3_value(gamma_a: float, n: int, a: int) -> float:
    """gamma_b = gamma_a (1 + (n-1-a)(n-a)/2) (Theorem 3, linear fb)."""
    return float(gamma_a) * theorem3_factor(n, a)


@dataclasses.dataclass(frozen=True)
class RhoEntry:
    """rho_j for the pair (j-1, j) with its null control (bits)."""

    layer: int
    rho: float
    null: float | None = None
    excess: float | None = None
    p_value: float | None = None
    estimator: str | None = None


@dataclasses.dataclass(frozen=True)
class SplitBound:
    """Both sides of Theorems 2 and 3 for one split point a."""

    a: int
    num_fb: int
    gamma_a: float
    rhos: tuple[RhoEntry, ...]
    sum_rho: float
    sum_excess: float | None
    theorem2: float
    theorem2_excess: float | None
    gamma_b: float | None
    theorem2_holds: bool | None
    theorem3_factor: float
    theorem3: float


@dataclasses.dataclass(frozen=True)
class BoundReport:
    """Per-split bounds plus the per-layer estimates they come from; renders as JSON / Markdown."""

    n: int
    splits: tuple[SplitBound, ...]
    gammas: tuple[dict, ...] = ()
    rhos: tuple[RhoEntry, ...] = ()
    sensitivities: tuple[dict, ...] = ()
    settings: dict = dataclasses.field(default_factory=dict)
    units: dict = dataclasses.field(default_factory=lambda: dict(UNITS))
    notes: tuple[str, ...] = NOTES

    def to_dict(self) -> dict:
        return jsonable(dataclasses.asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        """Strict JSON (NaN / inf written as null)."""
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    def to_markdown(self) -> str:
        n = self.n
        lines = [f"# Semirobustness bounds (n = {n} weight layers)", ""]
        lines += ["Units: gamma in logit units (logit*: a probe's score units for layers j < n, see the notes); "
                  "rho, null and excess in bits. "
                  "**Theorem 2 adds gamma_a (logits) and sum rho_j (bits) as the paper states it.** "
                  "gamma values are attacked margins, i.e. upper estimates of the true gamma.", ""]
        lines += ["## Theorems 2 and 3 per split point", ""]
        lines += ["| a | # fb | gamma_a [logit*] | sum rho_j [bits] | Thm 2: gamma_a + sum rho_j [logit* + bits] "
                  "| gamma_b measured [logit*] | gamma_b <= Thm 2 | gamma_a + sum excess [logit* + bits] "
                  "| Thm 3 factor | Thm 3: gamma_a (1 + (n-1-a)(n-a)/2) [logit*] |",
                  "|---:|---:|---:|---:|---:|---:|:---:|---:|---:|---:|"]
        for s in self.splits:
            holds = "-" if s.theorem2_holds is None else ("yes" if s.theorem2_holds else "no")
            lines.append(f"| {s.a} | {s.num_fb} | {_f(s.gamma_a)} | {_f(s.sum_rho)} | {_f(s.theorem2)} | {_f(s.gamma_b)} "
                         f"| {holds} | {_f(s.theorem2_excess)} | {_f(s.theorem3_factor, 2)} | {_f(s.theorem3)} |")
        if self.gammas:
            lines += _section(
                "Semirobustness per layer",
                "| j | probe | clean margin [logit*] | attacked margin = upper est. of gamma_j [logit*] | clean acc "
                "| attacked acc |", "|---:|:---|---:|---:|---:|---:|",
                [f"| {g.get('layer')} | {g.get('probe', '-')} | {_f(g.get('clean_margin'))} | "
                 f"{_f(g.get('attacked_margin'))} | {_f(g.get('clean_acc'))} | {_f(g.get('attacked_acc'))} |"
                 for g in self.gammas])
        if self.rhos:
            lines += _section(
                "Dependency rho_j between consecutive layers (attacked data)",
                "| pair (j-1, j) | rho_j [bits] | null [bits] | excess [bits] | p-value | estimator |",
                "|:---|---:|---:|---:|---:|:---|",
                [f"| ({r.layer - 1}, {r.layer}) | {_f(r.rho)} | {_f(r.null)} | {_f(r.excess)} | {_f(r.p_value, 3)} "
                 f"| {r.estimator or '-'} |" for r in self.rhos])
        if self.sensitivities:
            lines += _section(
                "Layer sensitivity (Zhang et al. 2019)",
                "| j | sensitivity, per channel / unit (authors) [ratio] | sensitivity, per image [ratio] |",
                "|---:|---:|---:|",
                [f"| {s.get('layer')} | {_f(s.get('sensitivity'))} | {_f(s.get('sensitivity_image'))} |"
                 for s in self.sensitivities])
        lines += ["", "## Units", ""] + [f"- {k}: {v}" for k, v in self.units.items()]
        lines += ["", "## Notes", ""] + [f"- {t}" for t in self.notes]
        if self.settings:
            lines += ["", "## Settings", "", "```json", json.dumps(jsonable(self.settings), indent=2, allow_nan=False), "```"]
        return "\n".join(lines) + "\n"


def _section(title: str, header: str, align: str, rows: list[str]) -> list[str]:
    """A Markdown section: blank line, heading, blank line, table header, alignment row, rows."""
    return ["", f"## {title}", "", header, align] + list(rows)


def _f(v: Any, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    return f"{float(v):.{digits}f}"


def jsonable(obj: Any) -> Any:
    """JSON-safe copy: tuples -> lists, numpy scalars -> Python, non-finite floats -> None, arrays dropped to lists."""
    if isinstance(obj, Mapping):
        return {str(k): jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [jsonable(v) for v in obj]
    if hasattr(obj, "tolist") and not isinstance(obj, (str, bytes)):
        return jsonable(obj.tolist())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    return repr(obj)


def _gamma_value(g: Any) -> float:
    if isinstance(g, Mapping):
        if "attacked_margin" not in g:
            raise ValueError(f"gamma entry {g!r} has no 'attacked_margin'")
        return float(g["attacked_margin"])
    return float(g)


def _by_layer(entries: Mapping[int, Any] | Sequence[Any], what: str) -> dict[int, Any]:
    if isinstance(entries, Mapping):
        return {int(k): v for k, v in entries.items()}
    out = {}
    for e in entries:
        if not isinstance(e, Mapping) or "layer" not in e:
            raise ValueError(f"{what} given as a sequence must hold dicts with a 'layer' key, got {e!r}")
        out[int(e["layer"])] = e
    return out


def _rho_entry(j: int, r: Any) -> RhoEntry:
    if isinstance(r, Mapping):
        get = lambda k: None if r.get(k) is None else float(r[k])
        return RhoEntry(layer=j, rho=float(r["rho"]), null=get("null"), excess=get("excess"),
                        p_value=get("p_value"), estimator=r.get("estimator"))
    return RhoEntry(layer=j, rho=float(r))


def _summary(g: Any, j: int) -> dict:
    keep = ("layer", "probe", "clean_margin", "attacked_margin", "attacked_margin_sem", "clean_acc",
            "attacked_acc", "probe_fit_acc", "feature_dim", "attack", "attack_settings", "threat", "targets",
            "num_examples")
    if isinstance(g, Mapping):
        return {"layer": j, **{k: g[k] for k in keep if k in g and k != "layer"}}
    return {"layer": j, "attacked_margin": float(g)}


def bound_report(gammas: Mapping[int, Any] | Sequence[Mapping], rhos: Mapping[int, Any] | Sequence[Mapping], n: int,
                 split_points: Iterable[int], *, gamma_b: float | None = None,
                 sensitivities: Mapping[int, float] | Sequence[Mapping] | None = None,
                 settings: Mapping[str, Any] | None = None) -> BoundReport:
    """Builds the per-split report of Theorems 2 and 3 from the estimates (pure, no computation on data).

    ``gammas``: layer j -> gamma_j (a float, or a ``layer_gamma`` dict whose
    ``attacked_margin`` is used), or the list returned by ``layer_gammas``.
    ``rhos``: layer j -> rho_j for the pair (j-1, j) (a float, or a dict with ``rho`` and
    optionally ``null``, ``excess``, ``p_value``, ``estimator``), or the list from
    ``network_rhos``.  ``n``: number of weight layers.  ``split_points``: a values in 1..n-1.
    ``gamma_b`` (measured) defaults to gammas[n] when present.  Raises ValueError when a
    split point is out of range or a needed gamma_a / rho_j is missing.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 2:
        raise ValueError(f"n must be an int >= 2, got {n!r}")
    g = _by_layer(gammas, "gammas")
    r = {j: _rho_entry(j, v) for j, v in _by_layer(rhos, "rhos").items()}
    splits = sorted(set(int(a) for a in split_points))
    if not splits:
        raise ValueError("split_points is empty")
    bad = [a for a in splits if not 1 <= a <= n - 1]
    if bad:
        raise ValueError(f"split points {bad} out of range 1..{n - 1} for n = {n}")
    if gamma_b is None and n in g:
        gamma_b = _gamma_value(g[n])
    rows = []
    for a in splits:
        if a not in g:
            raise ValueError(f"gamma_{a} (split point a = {a}) is missing; have gammas for layers {sorted(g)}")
        missing = [j for j in range(a + 1, n + 1) if j not in r]
        if missing:
            raise ValueError(f"rho_j missing for j = {missing} (split a = {a} needs j = {a + 1}..{n})")
        ga = _gamma_value(g[a])
        entries = tuple(r[j] for j in range(a + 1, n + 1))
        sum_rho = float(sum(e.rho for e in entries))
        have_excess = all(e.excess is not None for e in entries)
        sum_excess = float(sum(e.excess for e in entries)) if have_excess else None
        t2 = theorem2_value(ga, (e.rho for e in entries))
        rows.append(SplitBound(
            a=a, num_fb=n - a, gamma_a=ga, rhos=entries, sum_rho=sum_rho, sum_excess=sum_excess, theorem2=t2,
            theorem2_excess=(ga + sum_excess) if have_excess else None,
            gamma_b=None if gamma_b is None else float(gamma_b),
            theorem2_holds=None if gamma_b is None else bool(float(gamma_b) <= t2),
            theorem3_factor=theorem3_factor(n, a), theorem3=theorem3_value(ga, n, a),
        ))
    sens = ()
    if sensitivities is not None:
        sens = tuple({"layer": j, **({k: float(x) for k, x in v.items() if k != "layer"} if isinstance(v, Mapping)
                                     else {"sensitivity": float(v)})}
                     for j, v in sorted(_by_layer(sensitivities, "sensitivities").items()))
    return BoundReport(
        n=n, splits=tuple(rows), gammas=tuple(_summary(g[j], j) for j in sorted(g)),
        rhos=tuple(r[j] for j in sorted(r)), sensitivities=sens, settings=dict(settings or {}),
    )
