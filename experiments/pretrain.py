"""Pretrain the normal and the robust network of an experiment (resumable; reused by the other scripts).

    python experiments/pretrain.py --experiment cpu --out runs/cpu
    python experiments/pretrain.py --experiment paper-resnet18-cifar10 --out runs/r18c10 --data-dir ~/tensorflow_datasets
    python experiments/pretrain.py --experiment cpu --out runs/cpu --seed 1     # an independent pair (Fig. S1)

Writes OUT/pretrain/{normal,robust}[-seedS]/ (orbax checkpoints after every epoch and
history.json); rerunning continues an interrupted run and does nothing for a finished one.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import experiment_parser, Stages, load_data, log, pretrain_pair  # noqa: E402
from configs import get_experiment  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    ap = experiment_parser(__doc__)
    ap.add_argument("--seed", type=int, default=None, help="pretraining seed (default: the experiment's)")
    args = ap.parse_args(argv)
    exp = get_experiment(args.experiment)
    out = Path(args.out)
    stages = Stages(out / "timings-pretrain.json")
    with stages("load data"):
        train, test = load_data(exp, args.data_dir)
    _, _, _, info = pretrain_pair(exp, out, train, test, seed=args.seed, progress=not args.no_progress, stages=stages)
    stages.save()
    log(json.dumps({k: {"run_dir": v["run_dir"], "epochs": len(v["history"]),
                        "test_acc": v["history"][-1]["test_acc"] if v["history"] else None} for k, v in info.items()}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
