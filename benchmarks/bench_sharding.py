"""Training-step throughput of the data-parallel path: 8 forced CPU devices against 1 device.

Each configuration runs in its own subprocess with
``XLA_FLAGS=--xla_force_host_platform_device_count=D`` set before JAX is imported:

- D = 1, ``plain``: ``jsemi.training_modes.make_train_step`` called directly;
- D = 1, ``sharded``: the same step through ``jsemi.sharding.shard_train_step`` on a
  one-device mesh (the cost of the wrapper itself);
- D = 8, ``sharded``: the batch split over 8 host devices.

Forced host devices share the machine's cores (2 here), so on a CPU this measures the
*overhead* of the sharded program (partitioning, all-reduces of gradients and BatchNorm
statistics, per-device dispatch), not a speed-up; on a TPU or multi-GPU host the same
code splits the work across real devices.  Model: SmallCNN (7 weight layers) on
28x28x1 inputs, batch 128, Adam; modes "standard" and "pgd" (PGD-3 inside the step).

Usage: ``python benchmarks/bench_sharding.py [--steps 30] [--batch 128] [--write]``;
``--write`` replaces the "Sharding" section of benchmarks/RESULTS.md.  Prints ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def worker(mode: str, path: str, batch: int, steps: int, warmup: int) -> dict:
    import jax
    import numpy as np

    from jsemi import sharding, train, training_modes
    from jsemi.models import get_model, init_model

    model = get_model("small_cnn")
    variables = init_model(model, jax.random.key(0), (28, 28, 1))
    cfg = train.TrainConfig(mode=mode, optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant",
                            epochs=1, batch_size=batch, eps=0.1, attack_steps=3, attack_step_size=0.05,
                            augment=False, flip=False)
    state = train.create_train_state(variables, cfg, 100)
    step = training_modes.make_train_step(model, cfg)
    if path == "sharded":
        mesh = sharding.make_mesh()
        step = sharding.shard_train_step(step, mesh)
        state = sharding.replicate(state, mesh)
    rng = np.random.default_rng(0)
    xs = [rng.integers(0, 256, (batch, 28, 28, 1), dtype=np.uint8) for _ in range(4)]
    ys = [rng.integers(0, 10, (batch,)).astype(np.int32) for _ in range(4)]
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, xs[0], ys[0], key)
    jax.block_until_ready(m["loss"])
    first = time.perf_counter() - t0
    for i in range(warmup):
        state, m = step(state, xs[i % 4], ys[i % 4], jax.random.fold_in(key, i))
    jax.block_until_ready(m["loss"])
    t0 = time.perf_counter()
    for i in range(steps):  # host batches each step, as in an epoch loop
        state, m = step(state, xs[i % 4], ys[i % 4], jax.random.fold_in(key, 100 + i))
    jax.block_until_ready((state.params, m["loss"]))
    dt = time.perf_counter() - t0
    return {"devices": jax.device_count(), "path": path, "mode": mode, "batch": batch, "steps": steps,
            "img_per_s": batch * steps / dt, "step_ms": 1000 * dt / steps, "first_call_s": first}


def run_config(devices: int, mode: str, path: str, batch: int, steps: int, warmup: int) -> dict:
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={devices}").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, __file__, "--worker", mode, path, str(batch), str(steps), str(warmup)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=1200)
    lines = [l for l in proc.stdout.splitlines() if l.startswith("WORKER ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"worker {devices} {mode} {path} failed:\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1][len("WORKER "):])


def markdown(res: dict) -> str:
    rows = res["runs"]
    base = {r["mode"]: r["img_per_s"] for r in rows if r["devices"] == 1 and r["path"] == "plain"}
    lines = [
        "## Sharding",
        "",
        f"Training-step throughput of `jsemi.sharding.shard_train_step` (SmallCNN, 28x28x1, batch {res['batch']}, "
        f"Adam; `pgd` = PGD-3 inside the step), {res['steps']} timed steps after {res['warmup']} warm-up steps, "
        f"on {res['machine']} ({res['cpus']} CPUs), JAX {res['jax']}; median of {res['repeats']} interleaved "
        f"runs (1-minute load average during the runs: {min(res['load_avg_1min'] or [0]):.1f} to "
        f"{max(res['load_avg_1min'] or [0]):.1f}). "
        "8 devices are forced host devices sharing the same cores: the ratio is the overhead of the sharded "
        "program on one CPU, not a multi-device speed-up. The 'runs' column shows the run-to-run spread on this "
        "shared machine; read differences smaller than that spread as no difference. "
        "Command: `python benchmarks/bench_sharding.py --write`.",
        "",
        "| mode | devices | path | img/s (median) | runs [img/s] | ms/step | relative to 1 device, plain "
        "| first call (compile) [s] |",
        "|:---|---:|:---|---:|:---|---:|---:|---:|",
    ]
    for r in rows:
        rel = r["img_per_s"] / base[r["mode"]] if r["mode"] in base else float("nan")
        runs = ", ".join(f"{v:.0f}" for v in r.get("img_per_s_samples", [r["img_per_s"]]))
        lines.append(f"| {r['mode']} | {r['devices']} | {r['path']} | {r['img_per_s']:.0f} | {runs} | {r['step_ms']:.1f} "
                     f"| {rel:.2f}x | {r['first_call_s']:.1f} |")
    return "\n".join(lines) + "\n"


def write_section(md: str, path: Path) -> None:
    """Replaces (or appends) the '## Sharding' section of RESULTS.md."""
    text = path.read_text() if path.exists() else "# Benchmark results\n"
    start = text.find("## Sharding")
    if start >= 0:
        nxt = text.find("\n## ", start + 1)
        text = text[:start] + md + ("" if nxt < 0 else text[nxt + 1:])
    else:
        text = text.rstrip("\n") + "\n\n" + md
    path.write_text(text)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv and argv[0] == "--worker":
        mode, path, batch, steps, warmup = argv[1], argv[2], int(argv[3]), int(argv[4]), int(argv[5])
        print("WORKER " + json.dumps(worker(mode, path, batch, steps, warmup)), flush=True)
        return 0
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--modes", default="standard,pgd")
    ap.add_argument("--repeats", type=int, default=3, help="interleaved repetitions; the median is reported")
    ap.add_argument("--write", action="store_true", help="update the Sharding section of benchmarks/RESULTS.md")
    args = ap.parse_args(argv)
    import jax

    configs = [(mode, devices, path) for mode in args.modes.split(",")
               for devices, path in ((1, "plain"), (1, "sharded"), (8, "sharded"))]
    samples: dict = {c: [] for c in configs}
    load = []
    for rep in range(args.repeats):  # configurations interleaved, so a load change hits all of them
        for mode, devices, path in configs:
            print(f"[{rep + 1}/{args.repeats}] {mode}: {devices} device(s), {path} ...", file=sys.stderr, flush=True)
            r = run_config(devices, mode, path, args.batch, args.steps, args.warmup)
            print(f"  {r['img_per_s']:.0f} img/s ({r['step_ms']:.1f} ms/step)", file=sys.stderr, flush=True)
            samples[(mode, devices, path)].append(r)
            if hasattr(os, "getloadavg"):
                load.append(os.getloadavg()[0])
    runs = []
    for c, rs in samples.items():
        ips = sorted(r["img_per_s"] for r in rs)
        med = ips[len(ips) // 2]
        best = min(rs, key=lambda r: abs(r["img_per_s"] - med))
        runs.append(dict(best, img_per_s=med, step_ms=1000 * args.batch / med, img_per_s_samples=ips,
                         first_call_s=min(r["first_call_s"] for r in rs)))
    res = {"bench": "sharding", "batch": args.batch, "steps": args.steps, "warmup": args.warmup, "runs": runs,
           "repeats": args.repeats, "load_avg_1min": [round(v, 2) for v in load],
           "machine": platform.machine(), "cpus": os.cpu_count(), "jax": jax.__version__}
    md = markdown(res)
    print(md)
    if args.write:
        write_section(md, ROOT / "benchmarks" / "RESULTS.md")
    print("RESULT " + json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
