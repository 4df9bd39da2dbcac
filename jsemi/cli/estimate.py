"""``jsemi estimate``: gamma, rho and the bounds of Theorems 2-3 for a trained run.

    jsemi estimate --run runs/robust --split 4 --out runs/robust/estimate

Reads a run directory written by ``jsemi train`` (model, weights and dataset from its
checkpoint), evaluates on a deterministic stratified subset of the test split, and writes
JSON and Markdown into ``--out``.  Units: margins in logit units, mutual information in
bits, accuracies as fractions; every attacked margin is an upper estimate of gamma.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


from jsemi.cli._common import add_run_args, load_images, load_run, nonneg_float, nonneg_int, positive_int, write_outputs


def add_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``jsemi estimate``: gamma_j, rho_j (with null controls), sensitivities and bounds."""
    p = subparsers.add_parser("estimate", help="semirobustness gamma, dependency rho and the Theorem 2/3 bounds of a run")
    add_run_args(p)
    p.add_argument("--split", type=positive_int, action="append", required=True,
                   help="split point a (fa = weight layers 1..a); repeat for several")
    p.add_argument("--probe-subset", type=nonneg_int, default=1000,
                   help="training images for fitting the gamma probes (0 = fit on the evaluation images)")
    p.add_argument("--ridge", type=nonneg_float, default=1e-3, help="relative ridge of the closed-form probes")
    p.add_argument("--probe-last-layer", action="store_true",
                   help="fit a ridge probe on the logits too (every gamma in one-hot target units) instead of the identity")
    p.add_argument("--gamma-layers", default="all", help="'all' or 'needed' (the split points and n)")
    p.add_argument("--gamma-attack", default="pgd", help="attack against G_j o F(j) (registry name)")
    p.add_argument("--gamma-steps", type=positive_int, default=20)
    p.add_argument("--gamma-restarts", type=positive_int, default=5)
    p.add_argument("--targets", type=nonneg_int, default=0, help="also run targeted margin attacks on this many runner-up classes")
    p.add_argument("--rho-layers", default="all", help="'all' (every pair j-1, j) or 'needed' (j > the smallest split)")
    p.add_argument("--rho-attack", default="pgd", help="attack on the full network producing the data for rho")
    p.add_argument("--rho-steps", type=positive_int, default=10)
    p.add_argument("--estimator", default="edge", help="edge, ksg or gaussian (ksg / gaussian on a shared reduction)")
    p.add_argument("--permutations", type=positive_int, default=None, help="permutations for the null control and p-value")
    p.add_argument("--reduce-dim", type=positive_int, default=None, help="reduction dimension for ksg / gaussian")
    p.set_defaults(func=run_estimate)
    return p


def run_estimate(args: argparse.Namespace) -> int:
    """gamma_j (probes + attack), x_adv on the full network, rho_j with nulls, sensitivities, bounds."""
    from jsemi.estimators.measure import measure_network
    from jsemi.estimators.semirobust import network_info
    from jsemi.evaluation import evaluate
    from jsemi.models import bind

    model, variables, meta, x, y, threat, info, key = load_run(args)
    n, _ = network_info(model, variables, x)
    splits = sorted(set(args.split))
    bad = [a for a in splits if not 1 <= a <= n - 1]
    if bad:
        raise ValueError(f"split points {bad} out of range 1..{n - 1} for {n} weight layers")
    for opt in ("gamma_layers", "rho_layers"):
        if getattr(args, opt) not in ("all", "needed"):
            raise ValueError(f"--{opt.replace('_', '-')} must be 'all' or 'needed', got {getattr(args, opt)!r}")
    probe_x = probe_y = None
    if args.probe_subset:
        probe_x, probe_y = load_images(info["dataset"], "train", args.data_dir, args.probe_subset, args.seed,
                                       args.download)
    rho_attack_settings = {"steps": args.rho_steps}
    est_kwargs = {k: v for k, v in (("permutations", args.permutations), ("reduce_dim", args.reduce_dim)) if v is not None}
    settings = {**info, "probe_examples": None if probe_x is None else int(len(probe_x)),
                "gamma_steps": args.gamma_steps, "gamma_restarts": args.gamma_restarts, "targets": args.targets,
                "ridge": args.ridge, "probe_last_layer": bool(args.probe_last_layer), "rho_attack": args.rho_attack,
                "rho_attack_settings": rho_attack_settings, "estimator": args.estimator}
    m = measure_network(
        model, variables, x, y, key, threat=threat, splits=splits, attack=args.rho_attack,
        attack_settings=rho_attack_settings, rho_layers=range(2, n + 1) if args.rho_layers == "all" else None,
        rho_estimators=(args.estimator,), rho_settings={args.estimator: est_kwargs},
        gamma_layers=range(1, n + 1) if args.gamma_layers == "all" else None, gamma_attack=args.gamma_attack,
        gamma_attack_settings={"steps": args.gamma_steps, "restarts": args.gamma_restarts}, targets=args.targets,
        probe_x=probe_x, probe_y=probe_y, ridge=args.ridge, identity_last=not args.probe_last_layer,
        batch_size=args.batch_size, settings=settings)
    gammas, rhos, report = m.gammas, m.rhos[args.estimator], m.report
    report.settings.update(
        estimator_settings=rhos[0].get("settings") if rhos else None, timings=m.timings,
        network_adv_acc=evaluate(bind(model, variables), m.x_adv, y, key, batch_size=args.batch_size)["acc"])
    obj = {**report.to_dict(), "gamma_details": gammas, "rho_details": rhos}
    paths = write_outputs(Path(args.out), "estimate", obj, report.to_markdown())
    print(json.dumps({"out": paths, "splits": [{"a": s.a, "gamma_a": s.gamma_a, "theorem2": s.theorem2,
                                                 "gamma_b": s.gamma_b, "theorem3": s.theorem3} for s in report.splits]}))
    return 0
