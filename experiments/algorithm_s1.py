"""Algorithm S1 (supplement): linear dependency of a robust network's logits on fa*, per split point and attack.

    python experiments/algorithm_s1.py --experiment cpu --out runs/cpu
    python experiments/algorithm_s1.py --experiment paper-resnet18-cifar10 --out runs/r18 --attacks none fgsm pgd autoattack

Uses the robust network of OUT/pretrain (trained first if missing) and
``jsemi.estimators.linear.algorithm_s1_sweep``; writes OUT/s1/S1.md and OUT/s1/s1.json.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import experiment_parser, load_data, log, pretrain_pair, subset  # noqa: E402
from configs import get_experiment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--attacks", nargs="+", default=None, help="default: every attack of the experiment")
    ap.add_argument("--split-points", type=int, nargs="+", default=None)
    ap.add_argument("--examples", type=int, default=None)
    ap.add_argument("--holdout", type=float, default=0.2)
    args = ap.parse_args(argv)
    import jax

    from jsemi.algorithms import _float_images
    from jsemi.attacks import make_threat
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.runs import write_json_atomic

    exp = get_experiment(args.experiment)
    out = Path(args.out)
    train, test = load_data(exp, args.data_dir)
    model, _, robust, _ = pretrain_pair(exp, out, train, test, progress=not args.no_progress)
    attacks = args.attacks or list(exp.attacks)
    x, y = subset(test, args.examples or exp.s1_examples, exp.pretrain.seed, tag=41)
    rows = algorithm_s1_sweep(
        model, robust, _float_images(x), y, jax.random.PRNGKey(exp.pretrain.seed + 5),
        split_points=args.split_points or exp.s1_split_points,
        attacks=[None if a == "none" else a for a in attacks], threat=make_threat(exp.alg1.norm, exp.alg1.eps),
        attack_settings={a: dict(exp.attacks.get(a, {})) for a in attacks}, holdout=args.holdout)
    (out / "s1").mkdir(parents=True, exist_ok=True)
    md = s1_markdown(rows, title=f"Algorithm S1: {exp.name}")
    (out / "s1" / "S1.md").write_text(md)
    write_json_atomic(out / "s1" / "s1.json", {"rows": rows, "experiment": exp.name})
    print(md)
    log(f"wrote {out / 's1' / 'S1.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
