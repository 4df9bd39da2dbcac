"""GPU benchmark for a lent device: attacks (jsemi vs torchattacks vs the original AutoAttack),
Algorithm 1 trial throughput and EDGE, in one command.

Weights: a CIFAR-shaped ResNet-18 (jsemi ``resnet18``, 3x3 stem, 11.2 M parameters at width 64)
adversarially trained here for a short while (``jsemi.pretrain``, PGD-3, on ``jsemi.data``'s
synthetic 32x32x3 classes, so nothing is downloaded) and cached under ``--out``'s folder;
the same weights are copied into the PyTorch twin of ``bench_gpu_train.py`` (logits checked
to agree) for torchattacks and the original AutoAttack (github:fra31/auto-attack, a checkout
given by ``--autoattack-path``, never committed; default /work/ext/auto-attack).

Rows (L-inf eps 8/255, batch ``--batch`` = 512, float32 and bfloat16):

- PGD-10 (step 2/255, random start): jsemi, torchattacks.
- APGD-T (100 iterations, 9 target classes, 1 restart): jsemi, torchattacks, original.
- AutoAttack standard (APGD-CE, APGD-T, FAB-T at 100 iterations, Square 5,000 queries):
  jsemi, torchattacks (its four attacks with 100 iterations, composed with MultiAttack: its
  own AutoAttack class fixes 10), original ``run_standard_evaluation``.
  bfloat16: jsemi ``dtype=jnp.bfloat16`` models (float32 parameters and perturbations);
  PyTorch under ``torch.autocast(bfloat16)``.
  Per row: robust accuracy, images/s over the warm batches, first batch (compiles) in s.
- Algorithm 1: seconds per trial (fine-tuning epochs, attacked evaluation, rho with three
  estimators, gamma) and fine-tuning images/s, sequential and vmapped trials.
- EDGE: rho of two layers of ``--edge-n`` points (``bench_edge.make_layers``), first call
  and warm median.

Usage::

    python benchmarks/bench_gpu.py --out benchmarks/_out/gpu.json         # on the lent GPU
    python benchmarks/bench_gpu.py --smoke --out benchmarks/_out/gpu_smoke.json   # CPU check, minutes

It prints a markdown table for benchmarks/RESULTS.md; the JSON has every number.
"""

from __future__ import annotations

import argparse
import contextlib
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

EPS, ALPHA = 8 / 255, 2 / 255
AUTOATTACK_PATH = "/work/ext/auto-attack"


# ----------------------------------------------------------------------------- weights


def trained_weights(out_dir: str, width: int, n_train: int, epochs: int, seed: int = 0):
    """(model, variables, test images float32 NHWC, labels) of a PGD-trained ResNet-18 (cached, resumable)."""
    from jsemi.data import load_dataset
    from jsemi.pretrain import pretrain
    from jsemi.train import TrainConfig

    opts = {"image_shape": (32, 32, 3), "noise": 0.35}
    train = load_dataset("synthetic", "train", num_examples=n_train, **opts)
    test = load_dataset("synthetic", "test", num_examples=max(512, n_train // 4), **opts)
    cfg = TrainConfig(mode="pgd", optimizer="sgd", lr=0.05, momentum=0.9, weight_decay=5e-4, lr_schedule="cosine",
                      epochs=epochs, batch_size=min(256, n_train), eps=EPS, attack_steps=3, attack_step_size=EPS / 2,
                      augment=False, flip=False)
    res = pretrain(os.path.join(out_dir, f"weights_resnet18_w{width}_n{n_train}_e{epochs}"), "resnet18", train.images,
                   train.labels, test.images, test.labels, cfg, num_classes=10, dataset="synthetic32", seed=seed,
                   model_kwargs={"width": width}, progress=False, log=lambda s: print(s, file=sys.stderr, flush=True))
    x = test.images.astype(np.float32) / 255.0
    return res.variables, x, test.labels.astype(np.int64), train, test


def torch_twin(variables, width: int, device):
    """The PyTorch ResNet-18 of bench_gpu_train.py with jsemi's weights (eval mode)."""
    import torch
    from bench_gpu_train import _torch_resnet18
    from jsemi.models.resnet import resnet_plan

    m = _torch_resnet18(width)
    p, bs = variables["params"], variables["batch_stats"]

    def conv(mod, j):
        mod.weight.data = torch.tensor(np.asarray(p[f"L{j:02d}_conv"]["kernel"]).transpose(3, 2, 0, 1).copy())

    def bn(mod, j):
        name = f"L{j:02d}_bn"
        mod.weight.data = torch.tensor(np.asarray(p[name]["scale"]))
        mod.bias.data = torch.tensor(np.asarray(p[name]["bias"]))
        mod.running_mean.data = torch.tensor(np.asarray(bs[name]["mean"]))
        mod.running_var.data = torch.tensor(np.asarray(bs[name]["var"]))

    conv(m.conv1, 1)
    bn(m.bn1, 1)
    j = 1
    for block, (_, _, has_sc) in zip(m.layers, resnet_plan((2, 2, 2, 2), width, False)):
        conv(block.conv1, j + 1)
        bn(block.bn1, j + 1)
        j += 1
        if has_sc:
            j += 1
            conv(block.shortcut[0], j)
            bn(block.shortcut[1], j)
        j += 1
        conv(block.conv2, j)
        bn(block.bn2, j)
    j += 1
    m.linear.weight.data = torch.tensor(np.asarray(p[f"L{j:02d}_dense"]["kernel"]).T.copy())
    m.linear.bias.data = torch.tensor(np.asarray(p[f"L{j:02d}_dense"]["bias"]))
    return m.to(device).eval()


class _Autocast:
    """Wraps a torch model so its forward runs under bfloat16 autocast, returning float32 logits."""

    def __new__(cls, model, device):
        import torch

        class M(torch.nn.Module):
            def __init__(self):
                super().__init__()
                self.m = model

            def forward(self, x):
                with torch.autocast(device_type=device.type, dtype=torch.bfloat16):
                    return self.m(x).float()

        return M().eval()


# ----------------------------------------------------------------------------- timing helpers


def _summary(ok, times, n, bs):
    warm = times[1:]
    ips = (n - min(bs, n)) / sum(warm) if warm and sum(warm) > 0 else None
    return {"robust_acc": float(np.mean(ok)), "img_per_s": ips, "first_batch_s": times[0], "batches": len(times),
            "total_s": float(sum(times))}


def run_jsemi(attack, f, x, y, bs, seed=0):
    from bench_attacks import run_jsemi as _run

    ok, times = _run(attack, f, x, y.astype(np.int32), bs, seed)
    return _summary(ok, times, len(y), bs)


def run_torch(fn, model, x, y, bs, device):
    """``fn(x_batch, y_batch) -> x_adv`` per batch on ``device``; robust = correct on clean and attacked."""
    import torch

    xt = torch.tensor(x).permute(0, 3, 1, 2).contiguous()
    yt = torch.tensor(y).long()
    ok, times = np.zeros(len(y), bool), []
    for s in range(0, len(y), bs):
        xb, yb = xt[s:s + bs].to(device), yt[s:s + bs].to(device)
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        xa = fn(xb, yb)
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            ok[s:s + bs] = ((model(xa).argmax(1) == yb) & (model(xb).argmax(1) == yb)).cpu().numpy()
    return _summary(ok, times, len(y), bs)


# ----------------------------------------------------------------------------- sections


def bench_attacks(variables, x, y, args, dtypes, device, log, out: dict, flush=lambda: None):
    import jax.numpy as jnp
    import torch

    import jsemi.attacks as A
    from jsemi.models import get_model, logits_fn

    th = A.LinfBall(EPS)
    it = args.iters
    aa_mod = None
    if args.autoattack_path and os.path.isdir(os.path.join(args.autoattack_path, "autoattack")):
        sys.path.insert(0, args.autoattack_path)
        import autoattack as aa_mod  # noqa: F811
    base = torch_twin(variables, args.width, device)
    out.update({"original_autoattack": aa_mod is not None, "iterations": it, "square_queries": args.square_queries})
    for dt in dtypes:
        model = get_model("resnet18", num_classes=10, width=args.width,
                          dtype=jnp.bfloat16 if dt == "bfloat16" else jnp.float32)
        f = logits_fn(model, variables)
        tm = base if dt == "float32" else _Autocast(base, device)
        if dt == "float32":
            with torch.no_grad():
                tl = tm(torch.tensor(x[:64]).permute(0, 3, 1, 2).to(device)).cpu().numpy()
            out["logit_max_abs_diff"] = float(np.max(np.abs(np.asarray(f(jnp.asarray(x[:64]))) - tl)))
            out["clean_acc"] = float(np.mean(np.argmax(tl, 1) == y[:64]))
        import torchattacks as ta

        def ta_aa():
            return ta.MultiAttack([
                ta.APGD(tm, norm="Linf", eps=EPS, steps=it, n_restarts=1, loss="ce", seed=0),
                ta.APGDT(tm, norm="Linf", eps=EPS, steps=it, n_restarts=1, n_classes=10, seed=0),
                ta.FAB(tm, norm="Linf", eps=EPS, steps=it, n_restarts=1, multi_targeted=True, n_classes=10, seed=0),
                ta.Square(tm, norm="Linf", eps=EPS, n_queries=args.square_queries, n_restarts=1, seed=0)])

        def orig(kind):
            if aa_mod is None:
                return None
            if kind == "apgd-t":
                from autoattack.autopgd_base import APGDAttack_targeted

                atk = APGDAttack_targeted(tm, n_restarts=1, n_iter=it, eps=EPS, norm="Linf", seed=0, device=device)
                atk.n_target_classes = 9
                return lambda xb, yb: atk.perturb(xb, yb)
            adv = aa_mod.AutoAttack(tm, norm="Linf", eps=EPS, version="standard", seed=0, device=device, verbose=False)
            for atk in (adv.apgd, adv.apgd_targeted):  # as their __init__ derives the checkpoints from n_iter
                atk.n_iter = atk.n_iter_orig = it
                atk.n_iter_2, atk.n_iter_min, atk.size_decr = (max(int(c * it), 1) for c in (0.22, 0.06, 0.03))
            adv.fab.n_iter = it
            adv.square.n_queries = args.square_queries
            return lambda xb, yb: adv.run_standard_evaluation(xb, yb, bs=args.batch)

        plan = {
            "PGD-10": (A.get_attack("pgd", th, steps=10, step_size=ALPHA, keep_best=False),
                       lambda: ta.PGD(tm, eps=EPS, alpha=ALPHA, steps=10, random_start=True), None),
            f"APGD-T ({it} it.)": (A.get_attack("apgd-t", th, n_iter=it),
                                   lambda: ta.APGDT(tm, norm="Linf", eps=EPS, steps=it, n_restarts=1, n_classes=10, seed=0),
                                   "apgd-t"),
            f"AutoAttack standard ({it} it.)": (A.get_attack("autoattack", th, n_iter=it, n_queries=args.square_queries),
                                                ta_aa, "standard"),
        }
        for name, (jatk, ta_make, okind) in plan.items():
            row = {}
            log(f"{dt} {name}: jsemi")
            row["jsemi"] = run_jsemi(jatk, f, x, y, args.batch)
            log(f"{dt} {name}: torchattacks")
            atk = ta_make()
            row["torchattacks"] = run_torch(lambda xb, yb: atk(xb, yb), tm, x, y, args.batch, device)
            fn = orig(okind) if okind else None
            if fn is not None:
                log(f"{dt} {name}: original AutoAttack")
                row["original"] = run_torch(fn, tm, x, y, args.batch, device)
            out[f"{dt} | {name}"] = row
            flush()  # every finished row is on disk, even if a time limit stops the run later
    return out


def bench_alg1(variables, train, test, args, log):
    import dataclasses

    import jax

    from jsemi.algorithms import Alg1Config, algorithm1
    from jsemi.models import get_model, init_model
    from jsemi.train import TrainConfig

    model = get_model("resnet18", num_classes=10, width=args.width)
    normal = init_model(model, jax.random.PRNGKey(7), (32, 32, 3))  # an untrained fb: every trial fine-tunes
    ft = TrainConfig(mode="pgd", optimizer="sgd", lr=0.01, momentum=0.9, weight_decay=5e-4, lr_schedule="constant",
                     epochs=args.alg1_epochs, batch_size=min(args.batch, len(train)), eps=EPS, attack_steps=10,
                     attack_step_size=ALPHA, augment=True, flip=True)
    per_class = min(args.alg1_measure, len(test)) // 10
    g_dim, k_dim = max(1, min(32, (per_class - 1) // 2)), max(1, min(8, (per_class - 1) // 2))  # estimators' minimum
    base = Alg1Config(num_fb=4, k=0.0, max_epochs=args.alg1_epochs, trials=args.alg1_trials, finetune=ft, eps=EPS,
                      eval_attack="pgd", eval_attack_settings={"steps": 10, "step_size": ALPHA / 2, "random_start": True},
                      measure_examples=min(args.alg1_measure, len(test)), gamma_examples=min(200, len(test)),
                      probe_examples=min(args.alg1_measure, len(train)), rho_estimators=("edge", "ksg", "gaussian"),
                      rho_settings={"edge": {"permutations": 19}, "ksg": {"permutations": 19, "reduce_dim": k_dim},
                                    "gaussian": {"permutations": 19, "reduce_dim": g_dim}},
                      gamma_attack_settings={"steps": 10, "restarts": 1, "loss": "margin"})
    tr = (train.images, train.labels)
    te = (test.images, test.labels)
    out = {"n_train": len(train), "n_test": len(test), "epochs": args.alg1_epochs, "trials": args.alg1_trials}
    for vm in sorted({1, args.alg1_trials}):
        cfg = dataclasses.replace(base, vmap=vm)
        log(f"Algorithm 1, vmap {vm}")
        t0 = time.perf_counter()
        res = algorithm1(model, normal, variables, tr, te, cfg, None, progress=False)
        wall = time.perf_counter() - t0
        recs = res.trials
        # epoch_s: per trial (sequential) or the group's epochs repeated in every record (vmap)
        ep = [s for r in recs for s in r["timing"]["epoch_s"]] if vm == 1 else list(recs[0]["timing"]["epoch_s"])
        warm = ep[1:]  # the first epoch compiles
        out[f"vmap{vm}"] = {
            "wall_s_incl_baseline_and_compiles": wall,
            "trial_wall_s": [r["timing"]["wall_s"] for r in recs],
            "train_eval_s": [r["timing"]["train_eval_s"] for r in recs],
            "measure_s": [r["timing"]["measure_s"] for r in recs],
            "epochs": [r["epochs"] for r in recs],
            "finetune_img_per_s_warm": (len(train) * vm * len(warm) / sum(warm)) if warm and sum(warm) > 0 else None,
            "trials_per_hour": 3600 * len(recs) / wall}
    return out


def bench_edge(args, log):
    import jax
    from bench_edge import _time_jsemi, make_layers

    out = {}
    for n, d in ((args.edge_n, args.edge_d),):
        log(f"EDGE n={n} d={d}")
        a, b, labels = make_layers(n, d, 10, 0)
        rho, first, med, best, cpu = _time_jsemi(a, b, labels, jax.random.key(0), 10, 500, args.edge_reps)
        out[f"n{n}_d{d}"] = {"rho_bits": rho, "first_call_s": first, "warm_median_s": med, "warm_min_s": best}
    return out


# ----------------------------------------------------------------------------- report


def markdown(res: dict) -> str:
    def f(v, d=1):
        return "-" if v is None else f"{v:.{d}f}"

    lines = [f"GPU benchmark ({res['date']}, {res['device']}; jax {res['versions'].get('jax')}, torch "
             f"{res['versions'].get('torch')}, torchattacks {res['versions'].get('torchattacks')}; "
             f"ResNet-18 width {res['width']}, batch {res['batch']}, {res['n']} images, L-inf eps 8/255"
             + ("; SMOKE sizes, not a measurement" if res["smoke"] else "") + f"). Command: `{res['command']}`"]
    if any(" | " in k for k in res.get("attacks", {})):
        lines += ["", "| dtype | attack | jsemi robust acc / img/s / 1st batch s | torchattacks | original AutoAttack "
                  "| jsemi / torchattacks | jsemi / original |", "|:---|:---|---:|---:|---:|---:|---:|"]
    for key, row in res.get("attacks", {}).items():
        if " | " not in key:
            continue
        dt, name = key.split(" | ")
        cell = lambda r: "-" if r is None else f"{100 * r['robust_acc']:.1f} % / {f(r['img_per_s'])} / {f(r['first_batch_s'])}"  # noqa: E731
        j, t, o = row.get("jsemi"), row.get("torchattacks"), row.get("original")
        ratio = lambda a, b: "-" if not a or not b or not a["img_per_s"] or not b["img_per_s"] else f"{a['img_per_s'] / b['img_per_s']:.2f}x"  # noqa: E731
        lines.append(f"| {dt} | {name} | {cell(j)} | {cell(t)} | {cell(o)} | {ratio(j, t)} | {ratio(j, o)} |")
    a1 = res.get("alg1")
    if a1:
        lines += ["", "| Algorithm 1 (# fb 4, PGD-10 fine-tuning, rho edge/ksg/gaussian, gamma) | trial wall s | "
                  "fine-tuning+eval s | measure s | fine-tuning img/s (warm) | trials/hour incl. compiles |",
                  "|:---|---:|---:|---:|---:|---:|"]
        for k, v in a1.items():
            if isinstance(v, dict):
                lines.append(f"| {k} ({a1['n_train']} train, {a1['n_test']} test images, {a1['epochs']} epoch(s)) "
                             f"| {f(np.mean(v['trial_wall_s']))} | {f(np.mean(v['train_eval_s']))} | {f(np.mean(v['measure_s']))} "
                             f"| {f(v['finetune_img_per_s_warm'])} | {f(v['trials_per_hour'])} |")
    for k, v in (res.get("edge") or {}).items():
        lines += ["", f"EDGE {k}: rho {v['rho_bits']:.3f} bits, first call {v['first_call_s']:.2f} s, warm median "
                      f"{v['warm_median_s']:.3f} s."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", default=os.path.join(HERE, "_out", "gpu.json"))
    ap.add_argument("--smoke", action="store_true", help="tiny sizes: checks the script end to end on a CPU")
    ap.add_argument("--autoattack-path", default=AUTOATTACK_PATH, help="checkout of github:fra31/auto-attack")
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--n", type=int, default=1024, help="attacked images (2 batches of 512: the 2nd is the warm one)")
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--iters", type=int, default=100, help="APGD / FAB iterations")
    ap.add_argument("--square-queries", type=int, default=5000)
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--sections", default="attacks,alg1,edge")
    ap.add_argument("--train-n", type=int, default=8192, help="training images of the weights")
    ap.add_argument("--train-epochs", type=int, default=4)
    ap.add_argument("--alg1-trials", type=int, default=4)
    ap.add_argument("--alg1-epochs", type=int, default=2)
    ap.add_argument("--alg1-measure", type=int, default=1000)
    ap.add_argument("--edge-n", type=int, default=10000)
    ap.add_argument("--edge-d", type=int, default=4096)
    ap.add_argument("--edge-reps", type=int, default=5)
    args = ap.parse_args(argv)
    if args.smoke:
        args.batch, args.n, args.width, args.iters, args.square_queries = 16, 32, 4, 3, 20
        args.train_n, args.train_epochs, args.alg1_trials, args.alg1_epochs, args.alg1_measure = 256, 1, 2, 1, 100
        args.edge_n, args.edge_d, args.edge_reps = 1000, 64, 2
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")  # JAX and torch share the GPU
    import jax
    import torch

    log = lambda s: print(f"[bench_gpu {time.strftime('%H:%M:%S')}] {s}", file=sys.stderr, flush=True)  # noqa: E731
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    versions = {"jax": jax.__version__, "torch": torch.__version__}
    try:
        import torchattacks

        versions["torchattacks"] = torchattacks.__version__
    except ImportError:
        pass
    res = {"date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
           "device": f"jax {jax.default_backend()} {jax.devices()[0].device_kind}; torch "
                     + (torch.cuda.get_device_name(0) if device.type == "cuda" else "cpu")
                     + f"; {os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}",
           "machine": platform.platform(), "versions": versions, "smoke": args.smoke, "batch": args.batch,
           "width": args.width, "n": args.n,
           "command": "python benchmarks/bench_gpu.py " + " ".join(argv if argv is not None else sys.argv[1:])}
    sections = [s.strip() for s in args.sections.split(",") if s.strip()]
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    wdir = os.path.dirname(os.path.abspath(args.out))
    if {"attacks", "alg1"} & set(sections):
        log(f"weights: ResNet-18 width {args.width}, PGD-3 training on {args.train_n} synthetic images")
        variables, x, y, train, test = trained_weights(wdir, args.width, args.train_n, args.train_epochs)
        reps = int(np.ceil(args.n / len(y)))
        x, y = np.concatenate([x] * reps)[:args.n], np.concatenate([y] * reps)[:args.n]
    def flush():
        os.makedirs(wdir, exist_ok=True)
        with open(args.out + ".tmp", "w") as fh:
            json.dump(res, fh, indent=1, default=float)
        os.replace(args.out + ".tmp", args.out)

    if "attacks" in sections:
        bench_attacks(variables, x, y, args, dtypes, device, log, res.setdefault("attacks", {}), flush)
    if "alg1" in sections:
        res["alg1"] = bench_alg1(variables, train, test, args, log)
        flush()
    if "edge" in sections:
        res["edge"] = bench_edge(args, log)
    flush()
    print(markdown(res))
    return 0


if __name__ == "__main__":
    sys.exit(main())
