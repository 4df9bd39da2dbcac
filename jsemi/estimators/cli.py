"""``jsemi estimate`` (gamma, rho and the bounds of Theorems 2-3) and ``jsemi linear`` (Algorithm S1).

    jsemi estimate --run runs/robust --split 4 --out runs/robust/estimate
    jsemi linear   --run runs/robust --out runs/robust/linear --attacks none,fgsm,pgd,autoattack

Both read a run directory written by ``jsemi train`` (model, weights and dataset from its
checkpoint), evaluate on a deterministic stratified subset of the test split, and write
JSON and Markdown into ``--out``.  Units: margins in logit units, mutual information in
bits, accuracies as fractions; every attacked margin is an upper estimate of gamma.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np


def _add_common(p: argparse.ArgumentParser) -> None:
    p.add_argument("--run", required=True, help="run directory written by `jsemi train` (its latest checkpoint is used)")
    p.add_argument("--out", required=True, help="output directory for the JSON and Markdown results")
    p.add_argument("--dataset", default=None, help="defaults to the run's dataset")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--test-subset", type=int, default=1000, help="test images used (stratified, deterministic; 0 or more than the split = all)")
    p.add_argument("--norm", default="linf", choices=("linf", "l2"))
    p.add_argument("--eps", type=float, default=None, help="attack budget in pixel units (default: the run's training eps)")
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)


def add_estimate_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``jsemi estimate``: gamma_j, rho_j (with null controls), sensitivities and bounds."""
    p = subparsers.add_parser("estimate", help="semirobustness gamma, dependency rho and the Theorem 2/3 bounds of a run")
    _add_common(p)
    p.add_argument("--split", type=int, action="append", required=True,
                   help="split point a (fa = weight layers 1..a); repeat for several")
    p.add_argument("--probe-subset", type=int, default=1000,
                   help="training images for fitting the gamma probes (0 = fit on the evaluation images)")
    p.add_argument("--ridge", type=float, default=1e-3, help="relative ridge of the closed-form probes")
    p.add_argument("--probe-last-layer", action="store_true",
                   help="fit a ridge probe on the logits too (every gamma in one-hot target units) instead of the identity")
    p.add_argument("--gamma-layers", default="all", help="'all' or 'needed' (the split points and n)")
    p.add_argument("--gamma-attack", default="pgd", help="attack against G_j o F(j) (registry name)")
    p.add_argument("--gamma-steps", type=int, default=20)
    p.add_argument("--gamma-restarts", type=int, default=5)
    p.add_argument("--targets", type=int, default=0, help="also run targeted margin attacks on this many runner-up classes")
    p.add_argument("--rho-layers", default="all", help="'all' (every pair j-1, j) or 'needed' (j > the smallest split)")
    p.add_argument("--rho-attack", default="pgd", help="attack on the full network producing the data for rho")
    p.add_argument("--rho-steps", type=int, default=10)
    p.add_argument("--estimator", default="edge", help="edge, ksg or gaussian (ksg / gaussian on a shared reduction)")
    p.add_argument("--permutations", type=int, default=None, help="permutations for the null control and p-value")
    p.add_argument("--reduce-dim", type=int, default=None, help="reduction dimension for ksg / gaussian")
    p.set_defaults(func=run_estimate)
    return p


def add_linear_parser(subparsers) -> argparse.ArgumentParser:
    """Registers ``jsemi linear``: Algorithm S1 for several fa* sizes and attacks."""
    p = subparsers.add_parser("linear", help="Algorithm S1: linear dependency of a frozen network's logits on fa*")
    _add_common(p)
    p.add_argument("--split", type=int, action="append", default=None,
                   help="fa* size a (repeat); default: n-2 and the paper's n-4, n-8, n-12 that exist")
    p.add_argument("--attacks", default="none,fgsm,pgd,autoattack", help="comma-separated: none and registry names")
    p.add_argument("--steps", type=int, default=10, help="PGD steps")
    p.add_argument("--lambda-batch-size", type=int, default=256, help="batch size of the per-batch pinv (paper's protocol)")
    p.add_argument("--ridge", type=float, default=1e-6, help="relative ridge of the exact global solution")
    p.add_argument("--random-trials", type=int, default=10)
    p.add_argument("--holdout", type=float, default=0.2, help="fraction of examples kept out of the fit (also reported)")
    p.set_defaults(func=run_linear)
    return p


# ----------------------------------------------------------------------------- shared


def _images(dataset: str, split: str, data_dir, subset: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(float32 images in [0, 1], int32 labels) of a split; a stratified subset of ``subset``
    examples (``jsemi.data.stratified_indices``) when it is smaller than the split, else all."""
    from jsemi.cli import load_split
    from jsemi.data import stratified_indices

    ds = load_split(dataset, split, data_dir, None, seed)
    images, labels = ds.images, np.asarray(ds.labels, np.int32)
    if subset and subset < len(labels):
        keep = np.sort(stratified_indices(labels, subset, seed=seed))
        images, labels = images[keep], labels[keep]
    x = images.astype(np.float32) / 255.0 if images.dtype == np.uint8 else images.astype(np.float32)
    return x, labels


def _load(args):
    import jax

    from jsemi.cli import make_threat
    from jsemi.pretrain import load_trained

    model, variables, meta = load_trained(args.run)
    sig = meta.get("signature", {})
    dataset = args.dataset or sig.get("dataset")
    if not dataset:
        raise ValueError(f"{args.run}: the run records no dataset; pass --dataset")
    x, y = _images(dataset, "test", args.data_dir, args.test_subset, args.seed)
    eps = args.eps if args.eps is not None else float(sig.get("config", {}).get("eps", 8 / 255))
    threat = make_threat(args.norm, eps)
    info = {"run": str(args.run), "model": sig.get("model"), "dataset": dataset, "num_test": int(len(x)),
            "threat": {"norm": args.norm, "eps": eps}, "seed": args.seed}
    return model, variables, meta, x, y, threat, info, jax.random.PRNGKey(args.seed)


def _write(out: Path, stem: str, obj: dict, markdown: str) -> dict:
    from jsemi.estimators.bounds import jsonable

    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / f"{stem}.json", "markdown": out / f"{stem}.md"}
    for kind, text in (("json", json.dumps(jsonable(obj), indent=2, allow_nan=False)), ("markdown", markdown)):
        tmp = paths[kind].with_name(paths[kind].name + ".tmp")
        tmp.write_text(text)
        tmp.replace(paths[kind])
    return {k: str(v) for k, v in paths.items()}


# ----------------------------------------------------------------------------- estimate


def run_estimate(args: argparse.Namespace) -> int:
    """gamma_j (probes + attack), x_adv on the full network, rho_j with nulls, sensitivities, bounds."""
    import jax

    from jsemi.estimators.bounds import bound_report
    from jsemi.estimators.network import adversarial_examples, layer_sensitivities, network_rhos
    from jsemi.estimators.semirobust import layer_gammas, network_info

    model, variables, meta, x, y, threat, info, key = _load(args)
    n, _ = network_info(model, variables, x)
    splits = sorted(set(args.split))
    bad = [a for a in splits if not 1 <= a <= n - 1]
    if bad:
        raise ValueError(f"split points {bad} out of range 1..{n - 1} for {n} weight layers")
    for opt in ("gamma_layers", "rho_layers"):
        if getattr(args, opt) not in ("all", "needed"):
            raise ValueError(f"--{opt.replace('_', '-')} must be 'all' or 'needed', got {getattr(args, opt)!r}")
    timings = {}
    probe_x = probe_y = None
    if args.probe_subset:
        probe_x, probe_y = _images(info["dataset"], "train", args.data_dir, args.probe_subset, args.seed)

    t = time.perf_counter()
    gamma_layers = None if args.gamma_layers == "all" else sorted(set(splits) | {n})
    gammas = layer_gammas(model, variables, x, y, jax.random.fold_in(key, 1), threat=threat, layers=gamma_layers,
                          attack=args.gamma_attack,
                          attack_settings={"steps": args.gamma_steps, "restarts": args.gamma_restarts},
                          targets=args.targets, probe_x=probe_x, probe_y=probe_y, ridge=args.ridge,
                          identity_last=not args.probe_last_layer, batch_size=args.batch_size)
    timings["gammas_s"] = time.perf_counter() - t

    t = time.perf_counter()
    rho_settings = {"steps": args.rho_steps}
    x_adv = adversarial_examples(model, variables, x, y, jax.random.fold_in(key, 2), threat=threat,
                                 attack=args.rho_attack, attack_settings=rho_settings, batch_size=args.batch_size)
    timings["attack_s"] = time.perf_counter() - t
    t = time.perf_counter()
    est_kwargs = {k: v for k, v in (("permutations", args.permutations), ("reduce_dim", args.reduce_dim)) if v is not None}
    rho_layers = None if args.rho_layers == "all" else range(splits[0] + 1, n + 1)
    rhos = network_rhos(model, variables, x_adv, y, jax.random.fold_in(key, 3), layers=rho_layers, estimator=args.estimator,
                        batch_size=args.batch_size, **est_kwargs)
    timings["rhos_s"] = time.perf_counter() - t
    sens = layer_sensitivities(model, variables, x, x_adv, batch_size=args.batch_size)

    settings = {**info, "probe_examples": None if probe_x is None else int(len(probe_x)),
                "gamma_attack": args.gamma_attack, "gamma_steps": args.gamma_steps,
                "gamma_restarts": args.gamma_restarts, "targets": args.targets, "ridge": args.ridge,
                "probe_last_layer": bool(args.probe_last_layer),
                "rho_attack": args.rho_attack, "rho_attack_settings": rho_settings, "estimator": args.estimator,
                "estimator_settings": rhos[0].get("settings") if rhos else None, "timings": timings,
                "network_adv_acc": float(np.mean(np.argmax(np.asarray(_logits(model, variables, x_adv, args.batch_size)), -1) == y))}
    report = bound_report(gammas, rhos, n, splits, sensitivities=sens, settings=settings)
    obj = {**report.to_dict(), "gamma_details": gammas, "rho_details": rhos}
    paths = _write(Path(args.out), "estimate", obj, report.to_markdown())
    print(json.dumps({"out": paths, "splits": [{"a": s.a, "gamma_a": s.gamma_a, "theorem2": s.theorem2,
                                                 "gamma_b": s.gamma_b, "theorem3": s.theorem3} for s in report.splits]}))
    return 0


def _logits(model, variables, x, batch_size):
    import jax

    from jsemi.estimators.semirobust import map_batches
    from jsemi.models import logits_fn

    f = jax.jit(logits_fn(model, variables))
    return map_batches(f, [x], batch_size)[0]


# ----------------------------------------------------------------------------- linear


def default_s1_splits(n: int) -> list[int]:
    """The paper's fa* sizes n-4, n-8, n-12 (ResNet-18: 17, 13, 9) plus n-2, those in 1..n-1."""
    return sorted(a for a in {n - 2, n - 4, n - 8, n - 12} if 1 <= a <= n - 1)


def run_linear(args: argparse.Namespace) -> int:
    """Algorithm S1 for the requested fa* sizes and attacks; writes linear.json and linear.md."""
    from jsemi.estimators.linear import algorithm_s1_sweep, s1_markdown
    from jsemi.estimators.semirobust import network_info

    model, variables, meta, x, y, threat, info, key = _load(args)
    n, _ = network_info(model, variables, x)
    splits = sorted(set(args.split)) if args.split else default_s1_splits(n)
    attacks = [a.strip() for a in args.attacks.split(",") if a.strip()]
    if not attacks:
        raise ValueError("--attacks is empty")
    settings = {"pgd": {"steps": args.steps}}
    t = time.perf_counter()
    rows = algorithm_s1_sweep(model, variables, x, y, key, split_points=splits, attacks=[None if a == "none" else a for a in attacks],
                              threat=threat, attack_settings=settings, lambda_batch_size=args.lambda_batch_size,
                              ridge=args.ridge, random_trials=args.random_trials, holdout=args.holdout,
                              batch_size=args.batch_size)
    obj = {"n": n, "rows": rows, "settings": {**info, "splits": splits, "attacks": attacks, "seconds": time.perf_counter() - t}}
    md = s1_markdown(rows) + f"\nRun `{info['run']}` ({info['model']}, {info['dataset']}, n = {n} weight layers), " \
                             f"{info['num_test']} test images, threat {info['threat']['norm']} eps = {info['threat']['eps']:.4g}.\n"
    paths = _write(Path(args.out), "linear", obj, md)
    print(json.dumps({"out": paths, "rows": len(rows)}))
    return 0
