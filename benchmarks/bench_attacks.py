"""Benchmark: jsemi attacks against torchattacks 3.5.1 on PyTorch CPU.

Same SmallCNN architecture in both libraries (jsemi.models.SmallCNN: 5 conv3x3 + BN + ReLU,
2x2 max-pools after conv 2 and 4, dense 128, dense 10), re-implemented in torch with the
Flax weights copied across (HWIO -> OIHW convs; the dense layer after the flatten is
permuted from NHWC (h, w, c) to NCHW (c, h, w) order); the logits of both are checked to
agree to 1e-4 before anything is timed.  The model is trained here for a short while
(standard training, Adam) and cached under benchmarks/_out/.

Data: the Fashion-MNIST test set (IDX files under /usr/share/datasets/fashion-mnist) if
present, else sklearn digits upscaled to 20x20 and padded to 28x28; the first N (1,000)
test images.  Batch 256, L-inf eps 8/255 (the paper's), PGD / BIM step eps / 4.

Reports (a) throughput (images/s, warm: jsemi's compilation is timed separately) of both
libraries for PGD-10 and AutoAttack at equal iterations (APGD / FAB 10 iterations, as
torchattacks 3.5.1's AutoAttack, Square 5,000 queries), and (b) robust accuracy of both on
the same images for FGSM, BIM/I-FGSM-10, PGD-10, C&W-L2 (c=1, kappa=0, 50 steps, lr 0.01,
unbounded), APGD-CE-10, APGD-T-10, FAB-T-10, Square-5000 and AutoAttack-standard-10,
plus jsemi's AutoAttack with the original 100 iterations.

Usage:
  python benchmarks/bench_attacks.py                       # everything, JSON to benchmarks/_out/
  python benchmarks/bench_attacks.py --only pgd,autoattack --n 512
"""

from __future__ import annotations

import argparse
import datetime
import gzip
import json
import os
import platform
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

FMNIST = "/usr/share/datasets/fashion-mnist"
OUT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_out")


# ------------------------------------------------------------------------------ data
def _idx(path):
    with gzip.open(path, "rb") as fh:
        buf = fh.read()
    ndim = buf[3]
    dims = [int.from_bytes(buf[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    return np.frombuffer(buf, np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data():
    if os.path.exists(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz")):
        xtr = _idx(os.path.join(FMNIST, "train-images-idx3-ubyte.gz"))
        ytr = _idx(os.path.join(FMNIST, "train-labels-idx1-ubyte.gz"))
        xte = _idx(os.path.join(FMNIST, "t10k-images-idx3-ubyte.gz"))
        yte = _idx(os.path.join(FMNIST, "t10k-labels-idx1-ubyte.gz"))
        f = lambda a: (a.astype(np.float32) / 255.0)[..., None]
        return "Fashion-MNIST (test set, IDX files from " + FMNIST + ")", f(xtr), ytr.astype(np.int32), f(xte), yte.astype(np.int32)
    import jax
    from sklearn.datasets import load_digits

    d = load_digits()
    x = d.images.astype(np.float32) / 16.0
    x = np.asarray(jax.image.resize(x, (len(x), 20, 20), "linear"))
    x = np.pad(np.clip(x, 0, 1), ((0, 0), (4, 4), (4, 4)))[..., None]
    y = d.target.astype(np.int32)
    return "sklearn digits upscaled to 20x20 and padded to 28x28", x[:1200], y[:1200], x[1200:], y[1200:]


# ------------------------------------------------------------------------------ model
def train_or_load(xtr, ytr, tag, adv_eps: float = 0.0):
    """SmallCNN trained 2 epochs (Adam) on up to 30,000 images, cached as _out/smallcnn_<tag>.npz.

    ``adv_eps`` > 0: adversarial training instead (L-inf PGD-3 at that radius, step
    adv_eps / 2, random start; batch statistics of the batch during the attack), cached as
    _out/smallcnn_<tag>_pgd<eps*255>.npz: a model whose attacked outcome depends on the start.
    """
    import jax
    import jax.numpy as jnp
    import optax

    from jsemi.models import SmallCNN

    model = SmallCNN(num_classes=10)
    suffix = f"_pgd{adv_eps * 255:g}" if adv_eps > 0 else ""
    path = os.path.join(OUT, f"smallcnn_{tag}{suffix}.npz")
    v0 = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)), train=False)
    flat0, treedef = jax.tree_util.tree_flatten({"params": v0["params"], "batch_stats": v0["batch_stats"]})
    if os.path.exists(path):
        z = np.load(path)
        return model, jax.tree_util.tree_unflatten(treedef, [jnp.asarray(z[f"a{i}"]) for i in range(len(flat0))])
    tx = optax.adam(1e-3)
    params, bs = v0["params"], v0["batch_stats"]
    opt = tx.init(params)

    def adversarial(params, bs, xb, yb, key):
        def ce(x):
            logits, _ = model.apply({"params": params, "batch_stats": bs}, x, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).sum()

        x = jnp.clip(xb + jax.random.uniform(key, xb.shape, minval=-adv_eps, maxval=adv_eps), 0.0, 1.0)
        for _ in range(3):
            x = x + (adv_eps / 2) * jnp.sign(jax.grad(ce)(x))
            x = jnp.clip(jnp.clip(x, xb - adv_eps, xb + adv_eps), 0.0, 1.0)
        return jax.lax.stop_gradient(x)

    @jax.jit
    def step(params, bs, opt, xb, yb, key):
        if adv_eps > 0:
            xb = adversarial(params, bs, xb, yb, key)

        def loss(p):
            logits, new = model.apply({"params": p, "batch_stats": bs}, xb, train=True, mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, yb).mean(), new["batch_stats"]

        (_, bs), g = jax.value_and_grad(loss, has_aux=True)(params)
        upd, opt = tx.update(g, opt, params)
        return optax.apply_updates(params, upd), bs, opt

    rng = np.random.default_rng(0)
    n = min(len(ytr), 30000)
    for epoch in range(2):
        order = rng.permutation(len(ytr))[:n]
        for s in range(0, n - 127, 128):
            idx = order[s : s + 128]
            params, bs, opt = step(params, bs, opt, xtr[idx], ytr[idx], jax.random.fold_in(jax.random.key(1), s + epoch * n))
    variables = {"params": params, "batch_stats": bs}
    os.makedirs(OUT, exist_ok=True)
    np.savez(path, **{f"a{i}": np.asarray(a) for i, a in enumerate(jax.tree_util.tree_leaves(variables))})
    return model, variables


def torch_model(variables):
    import torch
    import torch.nn as tnn

    p, s = variables["params"], variables["batch_stats"]

    class TorchSmallCNN(tnn.Module):
        def __init__(self):
            super().__init__()
            widths = [p[f"L{j:02d}_conv"]["kernel"].shape[-1] for j in range(1, 6)]
            cin = [1] + widths[:-1]
            self.convs = tnn.ModuleList([tnn.Conv2d(ci, co, 3, padding=1, bias=False) for ci, co in zip(cin, widths)])
            self.bns = tnn.ModuleList([tnn.BatchNorm2d(co, eps=1e-5) for co in widths])
            self.fc1 = tnn.Linear(p["L06_dense"]["kernel"].shape[0], p["L06_dense"]["kernel"].shape[1])
            self.fc2 = tnn.Linear(p["L07_dense"]["kernel"].shape[0], p["L07_dense"]["kernel"].shape[1])

        def forward(self, x):
            x = (x - 0.5) / 0.5
            for j, (conv, bn) in enumerate(zip(self.convs, self.bns), start=1):
                x = torch.relu(bn(conv(x)))
                if j in (2, 4):
                    x = tnn.functional.max_pool2d(x, 2)
            x = x.flatten(1)  # NCHW order: (c, h, w)
            return self.fc2(torch.relu(self.fc1(x)))

    m = TorchSmallCNN()
    t = lambda a: torch.tensor(np.asarray(a))
    with torch.no_grad():
        for j in range(1, 6):
            m.convs[j - 1].weight.copy_(t(p[f"L{j:02d}_conv"]["kernel"]).permute(3, 2, 0, 1))
            bn = m.bns[j - 1]
            bn.weight.copy_(t(p[f"L{j:02d}_bn"]["scale"]))
            bn.bias.copy_(t(p[f"L{j:02d}_bn"]["bias"]))
            bn.running_mean.copy_(t(s[f"L{j:02d}_bn"]["mean"]))
            bn.running_var.copy_(t(s[f"L{j:02d}_bn"]["var"]))
        k1 = np.asarray(p["L06_dense"]["kernel"])  # rows in NHWC flatten order (h, w, c)
        c = m.convs[-1].weight.shape[0]
        hw = k1.shape[0] // c
        side = int(round(hw ** 0.5))
        k1 = k1.reshape(side, side, c, -1).transpose(2, 0, 1, 3).reshape(c * hw, -1)  # -> (c, h, w)
        m.fc1.weight.copy_(torch.tensor(k1.T.copy()))
        m.fc1.bias.copy_(t(p["L06_dense"]["bias"]))
        m.fc2.weight.copy_(t(p["L07_dense"]["kernel"]).T)
        m.fc2.bias.copy_(t(p["L07_dense"]["bias"]))
    return m.eval()


# ------------------------------------------------------------------------------ runs
def batches(n, bs):
    return [(s, min(s + bs, n)) for s in range(0, n, bs)]


def run_torch(atk, model, x, y, bs):
    import torch

    xt, yt = torch.tensor(x).permute(0, 3, 1, 2).contiguous(), torch.tensor(y).long()
    ok = np.zeros(len(y), bool)
    times = []
    for s, e in batches(len(y), bs):
        t0 = time.perf_counter()
        xa = atk(xt[s:e], yt[s:e])
        times.append(time.perf_counter() - t0)
        with torch.no_grad():
            ok[s:e] = (model(xa).argmax(1) == yt[s:e]).numpy() & (model(xt[s:e]).argmax(1) == yt[s:e]).numpy()
    return ok, times


def run_jsemi(atk, f, x, y, bs, seed=0):
    import jax
    import jax.numpy as jnp

    fwd = jax.jit(lambda a: jnp.argmax(f(a), 1))
    ok = np.zeros(len(y), bool)
    times = []
    key = jax.random.key(seed)
    for i, (s, e) in enumerate(batches(len(y), bs)):
        xb, yb = jnp.asarray(x[s:e]), jnp.asarray(y[s:e])
        t0 = time.perf_counter()
        xa = atk(f, xb, yb, jax.random.fold_in(key, i))
        xa = jax.block_until_ready(xa)
        times.append(time.perf_counter() - t0)
        ok[s:e] = (np.asarray(fwd(xa)) == y[s:e]) & (np.asarray(fwd(xb)) == y[s:e])
    return ok, times


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=1000)
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--eps", type=float, default=8 / 255)
    ap.add_argument("--threads", type=int, default=0, help="CPU threads for both libraries (0: all cores)")
    ap.add_argument("--only", default="", help="comma list of: fgsm,bim,pgd,cw,apgd-ce,apgd-t,fab-t,square,autoattack,autoattack-100")
    ap.add_argument("--lib", default="split", choices=["split", "both", "jsemi", "torch"],
                    help="split (default): each library in its own process (no thread interference), then merged")
    ap.add_argument("--json", default=os.path.join(OUT, "bench_attacks.json"))
    args = ap.parse_args(argv)
    if args.lib == "split":
        return split_run(args, argv if argv is not None else sys.argv[1:])
    if args.threads:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_cpu_multi_thread_eigen="
                                   + ("true" if args.threads > 1 else "false")
                                   + f" intra_op_parallelism_threads={args.threads}").strip()

    import jax
    import jax.numpy as jnp
    import torch

    torch.set_num_threads(args.threads or os.cpu_count() or 1)
    import torchattacks

    from jsemi import attacks as A

    source, xtr, ytr, xte, yte = load_data()
    tag = "fmnist" if source.startswith("Fashion") else "digits"
    model, variables = train_or_load(xtr, ytr, tag)
    f = lambda a: model.apply(variables, a, train=False)
    tm = torch_model(variables)
    x, y = xte[: args.n], yte[: args.n]
    with torch.no_grad():
        lt = tm(torch.tensor(x[:256]).permute(0, 3, 1, 2)).numpy()
    lj = np.asarray(f(jnp.asarray(x[:256])))
    max_diff = float(np.max(np.abs(lt - lj)))
    assert max_diff < 1e-4, f"torch and flax logits differ by {max_diff}"
    eps = args.eps
    alpha = eps / 4
    th = A.LinfBall(eps)
    d = int(np.prod(x.shape[1:]))
    n_cls = 10
    bs = args.batch

    def ta_autoattack():
        return torchattacks.AutoAttack(tm, norm="Linf", eps=eps, version="standard", n_classes=n_cls, seed=0)

    plan = {
        "fgsm": (lambda: torchattacks.FGSM(tm, eps=eps), A.get_attack("fgsm", th)),
        "bim": (lambda: torchattacks.BIM(tm, eps=eps, alpha=alpha, steps=10), A.get_attack("ifgsm", th, steps=10, step_size=alpha)),
        "pgd": (lambda: torchattacks.PGD(tm, eps=eps, alpha=alpha, steps=10, random_start=True),
                A.get_attack("pgd", th, steps=10, step_size=alpha, keep_best=False)),
        "pgd-keepbest": (None, A.get_attack("pgd", th, steps=10, step_size=alpha)),
        "cw": (lambda: torchattacks.CW(tm, c=1, kappa=0, steps=50, lr=0.01),
               A.get_attack("cw", A.L2Ball(d ** 0.5), c=1.0, kappa=0.0, steps=50, lr=0.01)),
        "apgd-ce": (lambda: torchattacks.APGD(tm, norm="Linf", eps=eps, steps=10, n_restarts=1, loss="ce", seed=0),
                    A.get_attack("apgd-ce", th, n_iter=10)),
        "apgd-t": (lambda: torchattacks.APGDT(tm, norm="Linf", eps=eps, steps=10, n_restarts=1, n_classes=n_cls, seed=0),
                   A.get_attack("apgd-t", th, n_iter=10)),
        "fab-t": (lambda: torchattacks.FAB(tm, norm="Linf", eps=eps, steps=10, n_restarts=1, multi_targeted=True, n_classes=n_cls, seed=0),
                  A.get_attack("fab-t", th, n_iter=10)),
        "square": (lambda: torchattacks.Square(tm, norm="Linf", eps=eps, n_queries=5000, n_restarts=1, seed=0),
                   A.get_attack("square", th, n_queries=5000)),
        "autoattack": (ta_autoattack, A.get_attack("autoattack", th, n_iter=10)),
        "autoattack-100": (None, A.get_attack("autoattack", th, n_iter=100)),
    }
    only = [s for s in args.only.split(",") if s] or list(plan)
    results = {
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, {platform.platform()}",
        "load_avg": os.getloadavg(),
        "command": "python benchmarks/bench_attacks.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "versions": {"jax": jax.__version__, "torch": torch.__version__, "torchattacks": torchattacks.__version__},
        "threads": args.threads or os.cpu_count(), "data": source, "n": len(y), "batch": bs, "eps": eps, "alpha": alpha, "logit_max_abs_diff": max_diff,
        "clean_acc": float(np.mean(np.argmax(np.asarray(f(jnp.asarray(x))), 1) == y)), "attacks": {},
    }
    print(json.dumps({k: v for k, v in results.items() if k != "attacks"}, indent=1), flush=True)
    for name in only:
        mk_t, atk_j = plan[name]
        r = {}
        xs, ys = (x[:256], y[:256]) if name == "autoattack-100" else (x, y)  # 100 iterations: one batch
        if args.lib in ("both", "jsemi"):
            # warm-up: the first batch once (compiles what it needs; later batches may still
            # compile other bucket sizes inside the timed region), then every batch timed
            t0 = time.perf_counter()
            run_jsemi(atk_j, f, xs[:bs], ys[:bs], bs, seed=1)
            r["jsemi_warmup_s"] = time.perf_counter() - t0
            ok_j, times_j = run_jsemi(atk_j, f, xs, ys, bs)
            r["jsemi_s"] = sum(times_j)
            r["jsemi_img_per_s"] = len(ys) / sum(times_j)
            r["jsemi_robust_acc"] = float(ok_j.mean())
            r["n"] = len(ys)
        if mk_t is not None and args.lib in ("both", "torch"):
            ok_t, times_t = run_torch(mk_t(), tm, xs, ys, bs)
            r["torch_s"] = sum(times_t)
            r["torch_img_per_s"] = len(ys) / sum(times_t)
            r["torch_robust_acc"] = float(ok_t.mean())
            if "jsemi_img_per_s" in r:
                r["throughput_ratio"] = r["jsemi_img_per_s"] / r["torch_img_per_s"]
        results["attacks"][name] = r
        print(name, json.dumps(r), flush=True)
        os.makedirs(os.path.dirname(args.json) or ".", exist_ok=True)
        with open(args.json, "w") as fh:
            json.dump(results, fh, indent=1)
    return results


def split_run(args, argv):
    """Runs jsemi and torchattacks in two child processes and merges their JSON."""
    import subprocess

    base = [a for a in argv if not a.startswith("--lib")]
    parts = {}
    for lib in ("jsemi", "torch"):
        out = args.json + f".{lib}.json"
        cmd = [sys.executable, os.path.abspath(__file__), *base, "--lib", lib, "--json", out]
        print("running", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
        with open(out) as fh:
            parts[lib] = json.load(fh)
    merged = parts["jsemi"]
    merged["command"] = "python benchmarks/bench_attacks.py " + " ".join(base)
    merged["load_avg_torch_start"] = parts["torch"]["load_avg"]
    for name, r in parts["torch"]["attacks"].items():
        m = merged["attacks"].setdefault(name, {})
        m.update({k: v for k, v in r.items() if k.startswith("torch")})
        if "jsemi_img_per_s" in m and "torch_img_per_s" in m:
            m["throughput_ratio"] = m["jsemi_img_per_s"] / m["torch_img_per_s"]
    with open(args.json, "w") as fh:
        json.dump(merged, fh, indent=1)
    print(markdown(args.json))
    return merged


def markdown(path):
    """Renders a results JSON as the table of benchmarks/RESULTS.md's "Attacks" section."""
    with open(path) as fh:
        r = json.load(fh)
    lines = [
        f"{r['date']}, {r['machine']}, {r['threads']} threads per library, 1-minute load average at start "
        f"{r['load_avg'][0]:.1f} (jsemi) / {r.get('load_avg_torch_start', r['load_avg'])[0]:.1f} (torch); jax {r['versions']['jax']}, torch {r['versions']['torch']}, torchattacks "
        f"{r['versions']['torchattacks']}.  Data: {r['data']}, first {r['n']} images, batch {r['batch']}, "
        f"L-inf eps = {r['eps'] * 255:.0f}/255, PGD/BIM step {r['alpha'] * 255:.0f}/255.  Clean accuracy "
        f"{100 * r['clean_acc']:.1f}%; torch vs Flax logits max |diff| {r['logit_max_abs_diff']:.1e}.  "
        f"Command: `{r['command'].strip()}`.",
        "",
        "| attack | images | jsemi robust acc | torchattacks robust acc | jsemi img/s | torchattacks img/s | ratio jsemi/torchattacks | jsemi warm-up (1st batch, compiles) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, a in r["attacks"].items():
        ta = f"{100 * a['torch_robust_acc']:.1f}%" if "torch_robust_acc" in a else "-"
        ti = f"{a['torch_img_per_s']:.1f}" if "torch_img_per_s" in a else "-"
        ra = f"{a['throughput_ratio']:.2f}" if "throughput_ratio" in a else "-"
        ja = f"{100 * a['jsemi_robust_acc']:.1f}%" if "jsemi_robust_acc" in a else "-"
        ji = f"{a['jsemi_img_per_s']:.1f}" if "jsemi_img_per_s" in a else "-"
        wu = f"{a['jsemi_warmup_s']:.0f} s" if "jsemi_warmup_s" in a else "-"
        lines.append(f"| {name} | {a.get('n', r['n'])} | {ja} | {ta} | {ji} | {ti} | {ra} | {wu} |")
    return "\n".join(lines)


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--markdown":
        print(markdown(sys.argv[2]))
    else:
        main()
