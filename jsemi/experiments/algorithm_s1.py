"""Algorithm S1 (supplement): linear dependency of a robust network's logits on fa*, per split point and attack.

Uses the robust network of OUT/pretrain (trained first if missing) and
``jsemi.estimators.linear.algorithm_s1_sweep``; writes OUT/s1/S1.md and OUT/s1/s1.json.
Command line: ``jsemi s1 CONFIG [--attacks none fgsm pgd] [--split-points A ...]``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

from jsemi.experiments.configs import Experiment
from jsemi.experiments.pipeline import load_data, pretrain_pair, subset


def run_algorithm_s1(exp: Experiment, out: str | Path, *, attacks: Sequence[str] | None = None,
                     split_points: Sequence[int] | None = None, examples: int | None = None, holdout: float = 0.2,
                     data_dir: str | None = None, download: bool = False, progress: bool = True) -> tuple[Path, str]:
    """Runs Algorithm S1 (default: every attack and split point of the experiment); returns (S1.md path, markdown)."""
    import jax

    from jsemi.data import unit_float
    from jsemi.attacks import make_threat
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.csv_tables import write_json_tables
    from jsemi.runs import write_json_atomic

    out = Path(out)
    train, test = load_data(exp, data_dir, download=download)
    model, _, robust, _ = pretrain_pair(exp, out, train, test, progress=progress)
    attacks = list(attacks or exp.attacks)
    x, y = subset(test, examples or exp.s1_examples, exp.pretrain.seed, tag=41)
    rows = algorithm_s1_sweep(
        model, robust, unit_float(x), y, jax.random.PRNGKey(exp.pretrain.seed + 5),
        split_points=split_points or exp.s1_split_points,
        attacks=[None if a == "none" else a for a in attacks], threat=make_threat(exp.alg1.norm, exp.alg1.eps),
        attack_settings={a: dict(exp.attacks.get(a, {})) for a in attacks}, holdout=holdout)
    (out / "s1").mkdir(parents=True, exist_ok=True)
    md = s1_markdown(rows, title=f"Algorithm S1: {exp.name}")
    path = out / "s1" / "S1.md"
    path.write_text(md)
    write_json_atomic(out / "s1" / "s1.json", {"rows": rows, "experiment": exp.name})
    write_json_tables(out / "s1", "s1", {"rows": rows})
    return path, md
