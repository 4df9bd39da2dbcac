"""Fidelity benchmark: jsemi's attacks beside the original AutoAttack, same weights, same points.

The original (github.com/fra31/auto-attack) is never part of jsemi: pass a checkout with
``--autoattack-path PATH`` (the folder that contains the ``autoattack`` package), e.g.
``git clone https://github.com/fra31/auto-attack /tmp/auto-attack``.

Model and data as in benchmarks/bench_attacks.py (SmallCNN trained there and cached under
benchmarks/_out/, its PyTorch twin with the same weights, logits checked to agree to 1e-4;
Fashion-MNIST test images, the first ``--n``).  Both libraries attack the clean-correct
points; a point is robust when it is classified correctly after the attack.

Attacks (``--only``), each configured as inside AutoAttack "standard" (L-inf):
- ``apgd-ce``, ``apgd-t``, ``fab-t``, ``square``: one attack of the composition alone (the
  original: ``AutoAttack(version="standard")`` with ``attacks_to_run`` set to that attack, so
  APGD-CE has 1 restart, 9 targets for APGD-T / FAB-T, Square 5,000 queries with
  ``resc_schedule=False``; jsemi: ``autoattack(version="custom", attacks=[name])``);
- ``standard``: the whole composition in both;
- ``apgd-ce-custom``: jsemi's APGD-CE (1 restart, as in "standard") against the original
  called the way its README shows for a single attack, ``AutoAttack(version="custom",
  attacks_to_run=["apgd-ce"])``: that keeps the constructor's ``n_restarts=5``, so this pair
  measures what a 1-vs-5-restart configuration difference looks like;
- ``apgd-ce-same-init``: APGD-CE from the same random start in both (jsemi's start, fed to
  the original's ``attack_single_run(x, y, x_init)``), so every per-point difference comes from
  the iteration, not from the random draws (float rounding of near-zero gradient entries
  remains: sign(g) of an entry within ~1e-7 of 0 can differ between the two frameworks).

Per attack and seed: robust accuracy of both over the ``--n`` points and the per-point
agreement over the clean-correct ones: both robust / only jsemi fooled / only the original
fooled / both fooled.  Results accumulate in the JSON (keyed by attack and seed; rerunning a
pair overwrites it), so the seeds of a slow attack can be spread over several runs.

Usage:
  python benchmarks/bench_fidelity.py --autoattack-path /tmp/auto-attack --only apgd-ce --seeds 0,1,2,3,4
  python benchmarks/bench_fidelity.py --markdown benchmarks/_out/bench_fidelity.json
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, ".."))
sys.path.insert(0, HERE)

ATTACKS = ("apgd-ce", "apgd-ce-same-init", "apgd-ce-custom", "apgd-t", "fab-t", "square", "standard")


def import_original(path):
    """The ``autoattack`` package from the checkout at ``path`` (never from site-packages)."""
    pkg = os.path.join(path, "autoattack", "autoattack.py")
    if not os.path.isfile(pkg):
        raise SystemExit(f"--autoattack-path {path!r}: no autoattack/autoattack.py there "
                         "(give the folder of a checkout of github.com/fra31/auto-attack)")
    sys.path.insert(0, os.path.abspath(path))
    import autoattack

    if not os.path.abspath(autoattack.__file__).startswith(os.path.abspath(path)):
        raise SystemExit(f"imported autoattack from {autoattack.__file__}, not from {path}")
    from autoattack import AutoAttack
    from autoattack.autopgd_base import APGDAttack

    return AutoAttack, APGDAttack


def original_robust(AutoAttack, tm, x_t, y_t, eps, seed, name):
    """Robust flags (B,) of the original: the composition "standard", or one of its attacks."""
    import torch

    if name == "apgd-ce-custom":  # a user's single-attack call: the constructor's defaults (APGD 5 restarts)
        aa = AutoAttack(tm, norm="Linf", eps=eps, seed=seed, version="custom", attacks_to_run=["apgd-ce"],
                        device="cpu", verbose=False)
    else:
        aa = AutoAttack(tm, norm="Linf", eps=eps, seed=seed, version="standard", device="cpu", verbose=False)
        if name != "standard":
            aa.attacks_to_run = [name]
    xa = aa.run_standard_evaluation(x_t, y_t, bs=len(y_t))
    with torch.no_grad():
        return (tm(xa).argmax(1) == y_t).numpy()


def same_init_apgd(APGDAttack, tm, f, x, y, eps, seed, clean):
    """APGD-CE (100 iterations, 1 restart) from jsemi's random start in both: robust flags (jsemi, original)."""
    import importlib

    import jax
    import jax.numpy as jnp
    import torch

    from jsemi import attacks as A

    apgd_mod = importlib.import_module("jsemi.attacks.apgd")
    th = A.LinfBall(eps)
    idx = np.nonzero(clean)[0]
    xs, ys = jnp.asarray(x[idx]), jnp.asarray(y[idx])
    key = jax.random.key(seed)
    x0 = np.asarray(apgd_mod._apgd_init_point(th, key, xs))
    xa = A.apgd(f, xs, ys, key, th, n_iter=100, loss="ce")
    rob_j = np.zeros(len(y), bool)
    rob_j[idx] = np.asarray(jnp.argmax(f(xa), 1)) == y[idx]
    atk = APGDAttack(tm, n_iter=100, norm="Linf", eps=eps, seed=seed, loss="ce", n_restarts=1, device="cpu")
    xt = torch.tensor(x[idx]).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y[idx]).long()
    atk.init_hyperparam(xt)
    _, _, _, x_adv = atk.attack_single_run(xt, yt, x_init=torch.tensor(x0).permute(0, 3, 1, 2).contiguous())
    rob_t = np.zeros(len(y), bool)
    with torch.no_grad():
        rob_t[idx] = (tm(x_adv.detach()).argmax(1) == yt).numpy()
    return rob_j, rob_t


def agreement(rob_j, rob_t, clean):
    c = clean
    return {"both_robust": int(np.sum(c & rob_j & rob_t)), "only_jsemi_fooled": int(np.sum(c & ~rob_j & rob_t)),
            "only_original_fooled": int(np.sum(c & rob_j & ~rob_t)), "both_fooled": int(np.sum(c & ~rob_j & ~rob_t))}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--autoattack-path", help="folder of a checkout of github.com/fra31/auto-attack")
    ap.add_argument("--n", type=int, default=256, help="first N Fashion-MNIST test images")
    ap.add_argument("--eps", type=float, default=6.0, help="L-inf radius in 1/255 units")
    ap.add_argument("--seeds", default="0,1,2,3,4")
    ap.add_argument("--only", default="apgd-ce", help="comma list of: " + ",".join(ATTACKS))
    ap.add_argument("--adv-eps", type=float, default=0.0,
                    help="attack an adversarially trained SmallCNN (PGD-3 at this L-inf radius, 1/255 units) "
                         "instead of the standard one; default JSON _out/bench_fidelity_pgd<eps>.json")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (jsemi: XLA's default)")
    ap.add_argument("--json", default=None, help="results JSON (default _out/bench_fidelity[_pgd<eps>].json)")
    ap.add_argument("--markdown", metavar="JSON", help="only print the RESULTS.md table of a results JSON")
    args = ap.parse_args(argv)
    if args.markdown:
        print(markdown(args.markdown))
        return None
    if not args.autoattack_path:
        ap.error("--autoattack-path PATH is required (a checkout of github.com/fra31/auto-attack)")
    only = [s for s in args.only.split(",") if s]
    bad = [s for s in only if s not in ATTACKS]
    if bad:
        ap.error(f"unknown attack(s) {bad}; known: {ATTACKS}")
    seeds = [int(s) for s in args.seeds.split(",") if s]
    if args.adv_eps < 0:
        ap.error(f"--adv-eps must be >= 0, got {args.adv_eps}")
    if args.json is None:
        args.json = os.path.join(HERE, "_out", "bench_fidelity" + (f"_pgd{args.adv_eps:g}" if args.adv_eps else "")
                                 + ".json")
    AutoAttack, APGDAttack = import_original(args.autoattack_path)

    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(args.threads)
    import bench_attacks as BA

    from jsemi import attacks as A
    from jsemi.models import bind

    source, xtr, ytr, xte, yte = BA.load_data()
    tag = "fmnist" if source.startswith("Fashion") else "digits"
    model, variables = BA.train_or_load(xtr, ytr, tag, adv_eps=args.adv_eps / 255)
    model_label = f"SmallCNN, PGD-3 adversarial training at {args.adv_eps:g}/255" if args.adv_eps else "SmallCNN, standard training"
    f = bind(model, variables)
    tm = BA.torch_model(variables)
    x, y = xte[: args.n], yte[: args.n]
    x_t = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    y_t = torch.tensor(y).long()
    with torch.no_grad():
        lt = tm(x_t).numpy()
    lj = np.asarray(f(jnp.asarray(x)))
    max_diff = float(np.max(np.abs(lt - lj)))
    assert max_diff < 1e-4, f"torch and flax logits differ by {max_diff}"
    clean = np.argmax(lj, 1) == y
    assert np.array_equal(clean, np.argmax(lt, 1) == y), "the twins disagree on a clean prediction"
    eps = args.eps / 255
    th = A.LinfBall(eps)

    results = {}
    if os.path.exists(args.json):
        with open(args.json) as fh:
            results = json.load(fh)
        if (results.get("n"), results.get("eps_255"), results.get("data"), results.get("model", model_label)) != (
                len(y), args.eps, source, model_label):
            raise SystemExit(f"{args.json} holds another setting (n, eps, data, model); pass another --json")
    results.update({
        "n": len(y), "eps_255": args.eps, "data": source, "model": model_label, "clean_acc": float(clean.mean()), "logit_max_abs_diff": max_diff,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}", "torch_threads": args.threads,
        "versions": {"jax": jax.__version__, "torch": torch.__version__},
        "original": original_version(args.autoattack_path),
    })
    results.setdefault("runs", [])
    results.setdefault("attacks", {})
    results["runs"].append({
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "load_avg": os.getloadavg(),
        "command": "python benchmarks/bench_fidelity.py " + " ".join(argv if argv is not None else sys.argv[1:]),
    })
    print(json.dumps({k: v for k, v in results.items() if k != "attacks"}, indent=1), flush=True)
    for name in only:
        for seed in seeds:
            t0 = time.perf_counter()
            if name == "apgd-ce-same-init":
                rob_j, rob_t = same_init_apgd(APGDAttack, tm, f, x, y, eps, seed, clean)
                tj = tt = None
            else:
                jname = "apgd-ce" if name == "apgd-ce-custom" else name
                _, info = A.autoattack(f, jnp.asarray(x), jnp.asarray(y), jax.random.key(seed), th,
                                       version="standard" if name == "standard" else "custom",
                                       attacks=None if name == "standard" else [jname], return_info=True)
                rob_j = np.asarray(info["robust"])
                tj = time.perf_counter() - t0
                t1 = time.perf_counter()
                rob_t = original_robust(AutoAttack, tm, x_t, y_t, eps, seed, name) & clean
                tt = time.perf_counter() - t1
            r = {"jsemi_robust_acc": float(rob_j.mean()), "original_robust_acc": float(rob_t.mean()),
                 "jsemi_s": tj, "original_s": tt, **agreement(rob_j, rob_t, clean)}
            results["attacks"].setdefault(name, {})[str(seed)] = r
            print(name, seed, json.dumps(r), flush=True)
            os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
            with open(args.json, "w") as fh:
                json.dump(results, fh, indent=1)
    print(markdown(args.json))
    return results


def original_version(path):
    head = os.path.join(path, ".git")
    try:
        import subprocess

        return subprocess.run(["git", "-C", path, "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip() if os.path.exists(head) else "checkout without .git"
    except Exception as e:  # noqa: BLE001 - only a label in the report
        return f"unknown ({type(e).__name__})"


def markdown(path):
    """The RESULTS.md table: per attack, robust accuracy mean +- sd over seeds, the paired
    difference, and the per-point agreement summed over seeds."""
    with open(path) as fh:
        r = json.load(fh)
    lines = [
        f"Model: {r.get('model', 'SmallCNN, standard training')}. Data: {r['data']}, first {r['n']} images (clean accuracy {100 * r['clean_acc']:.1f}%), L-inf eps = "
        f"{r['eps_255']:g}/255; torch vs Flax logits max |diff| {r['logit_max_abs_diff']:.1e}; {r['machine']}; "
        f"jax {r['versions']['jax']}, torch {r['versions']['torch']}; original AutoAttack {r['original']}.",
        "",
        "| attack | seeds | jsemi robust acc (mean ± sd) | original robust acc (mean ± sd) | jsemi - original (mean ± se) "
        "| per seed jsemi / original [%] | both robust | only jsemi fooled | only original fooled | both fooled |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name in ATTACKS:
        runs = r["attacks"].get(name)
        if not runs:
            continue
        seeds = sorted(runs, key=int)
        j = np.array([runs[s]["jsemi_robust_acc"] for s in seeds]) * 100
        o = np.array([runs[s]["original_robust_acc"] for s in seeds]) * 100
        d = j - o
        sd = lambda a: float(np.std(a, ddof=1)) if len(a) > 1 else float("nan")
        per = ", ".join(f"{a:.1f}/{b:.1f}" for a, b in zip(j, o))
        tot = {k: sum(runs[s][k] for s in seeds) for k in ("both_robust", "only_jsemi_fooled", "only_original_fooled", "both_fooled")}
        lines.append(
            f"| {name} | {len(seeds)} | {j.mean():.2f} ± {sd(j):.2f}% | {o.mean():.2f} ± {sd(o):.2f}% | "
            f"{d.mean():+.2f} ± {sd(d) / np.sqrt(len(d)):.2f} | {per} | {tot['both_robust']} | {tot['only_jsemi_fooled']} | "
            f"{tot['only_original_fooled']} | {tot['both_fooled']} |")
    lines.append("")
    lines.append("Runs: " + "; ".join(f"{u['date']} (load average {u['load_avg'][0]:.1f}): `{u['command'].strip()}`"
                                      for u in r["runs"]))
    return "\n".join(lines)


if __name__ == "__main__":
    main()
