"""ResNet-18, CIFAR-shaped PGD-10 adversarial training throughput: jsemi (JAX) vs PyTorch.

One training step = PGD-10 (L-inf eps 8/255, step 2/255, random start) against the model in
inference mode, then an SGD step (momentum 0.9, weight decay 5e-4) on the adversarial batch
in training mode (BatchNorm batch statistics), with CIFAR-style random crop + flip done on
the device: the paper's adversarial training (PAPER_NOTES section 6).  Both frameworks run
the same CIFAR ResNet-18 (3x3 stem, no max-pool, torchvision BasicBlocks, 11.2 M parameters)
on a fixed device-resident batch of random 32x32x3 images, so the numbers are compute
throughput in images per second (11 forward and 11 backward passes per image).

Precision: "float32" (JAX: default matmul precision, i.e. TF32 on Ampere/Hopper for convs;
PyTorch: ``torch.backends.cudnn.allow_tf32`` left at its default True, matmul TF32 enabled to
match) and "bfloat16" (JAX: ``dtype=jnp.bfloat16`` models, float32 parameters, loss and
perturbations; PyTorch: ``torch.autocast(bfloat16)`` around the forward passes, float32
parameters and perturbations).  PyTorch uses channels_last and cudnn.benchmark, its usual
fast path.

Run on a GPU machine with jax, flax, optax, chex and torch installed, from the repository
root, without installing anything::

    PYTHONPATH=. python benchmarks/bench_gpu_train.py [--batch 512] [--steps 20]

``--tiny`` (a width-8 ResNet-18, batch 8, 2 timed steps) checks the script on a CPU.
The last line printed is ``RESULT {json}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

EPS, STEP, PGD_STEPS = 8 / 255, 2 / 255, 10
LR, MOMENTUM, WD = 0.01, 0.9, 5e-4
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------------------- JAX / jsemi


def bench_jax(dtype_name: str, batch: int, steps: int, warmup: int, width: int, attack_steps: int) -> dict:
    import jax
    import jax.numpy as jnp
    import numpy as np

    from jsemi import precision, train, training_modes
    from jsemi.models import get_model, init_model

    dtype = precision.compute_dtype(dtype_name)
    model = get_model("resnet18", num_classes=10, width=width, dtype=dtype)
    variables = init_model(model, jax.random.key(0), (32, 32, 3))
    cfg = train.TrainConfig(mode="pgd", optimizer="sgd", lr=LR, momentum=MOMENTUM, weight_decay=WD,
                            lr_schedule="constant", epochs=1, batch_size=batch, eps=EPS,
                            attack_steps=attack_steps, attack_step_size=STEP, augment=True, flip=True)
    state = train.create_train_state(variables, cfg, steps_per_epoch=1000)
    step = training_modes.make_train_step(model, cfg)
    rng = np.random.default_rng(0)
    x = jax.device_put(rng.integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8))
    y = jax.device_put(rng.integers(0, 10, (batch,)).astype(np.int32))
    key = jax.random.key(1)
    t0 = time.perf_counter()
    state, m = step(state, x, y, key)
    jax.block_until_ready(m["loss"])
    compile_s = time.perf_counter() - t0
    for i in range(warmup):
        state, m = step(state, x, y, jax.random.fold_in(key, i))
    jax.block_until_ready((state.params, m["loss"]))
    t0 = time.perf_counter()
    for i in range(steps):
        state, m = step(state, x, y, jax.random.fold_in(key, 100 + i))
    jax.block_until_ready((state.params, m["loss"]))
    dt = time.perf_counter() - t0
    loss = float(m["loss"])
    return {"img_per_s": batch * steps / dt, "step_ms": 1000 * dt / steps, "first_call_s": compile_s,
            "final_loss": loss, "finite": bool(np.isfinite(loss))}


# ----------------------------------------------------------------------------- PyTorch


def _torch_resnet18(width: int):
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class BasicBlock(nn.Module):
        def __init__(self, cin, planes, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, planes, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(planes)
            self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(planes)
            self.shortcut = nn.Sequential()
            if stride != 1 or cin != planes:
                self.shortcut = nn.Sequential(nn.Conv2d(cin, planes, 1, stride, bias=False), nn.BatchNorm2d(planes))

        def forward(self, x):
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return F.relu(out + self.shortcut(x))

    class ResNet18(nn.Module):
        """torchvision-style CIFAR ResNet-18 (3x3 stem, no max-pool); input in [0, 1], normalised inside."""

        def __init__(self, num_classes=10, width=64):
            super().__init__()
            self.register_buffer("mean", torch.tensor(CIFAR_MEAN).view(1, 3, 1, 1))
            self.register_buffer("std", torch.tensor(CIFAR_STD).view(1, 3, 1, 1))
            self.conv1 = nn.Conv2d(3, width, 3, 1, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            layers, cin = [], width
            for s in range(4):
                planes = width * 2**s
                for b in range(2):
                    stride = 2 if (s > 0 and b == 0) else 1
                    layers.append(BasicBlock(cin, planes, stride))
                    cin = planes
            self.layers = nn.Sequential(*layers)
            self.linear = nn.Linear(cin, num_classes)
            for mod in self.modules():
                if isinstance(mod, nn.Conv2d):
                    nn.init.kaiming_normal_(mod.weight, mode="fan_out", nonlinearity="relu")

        def forward(self, x):
            x = (x - self.mean) / self.std
            out = F.relu(self.bn1(self.conv1(x)))
            out = self.layers(out)
            out = F.adaptive_avg_pool2d(out, 1).flatten(1)
            return self.linear(out)

    return ResNet18(width=width)


def bench_torch(dtype_name: str, batch: int, steps: int, warmup: int, width: int, attack_steps: int) -> dict:
    import contextlib

    import numpy as np
    import torch
    import torch.nn.functional as F

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.manual_seed(0)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    model = _torch_resnet18(width).to(dev).to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD)
    bf16 = dtype_name in ("bfloat16", "bf16")

    def autocast():
        if not bf16:
            return contextlib.nullcontext()
        return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)

    g = torch.Generator(device="cpu").manual_seed(0)
    x_u8 = torch.randint(0, 256, (batch, 3, 32, 32), dtype=torch.uint8, generator=g).to(dev)
    y = torch.randint(0, 10, (batch,), generator=g).to(dev)
    rows = torch.arange(32, device=dev)

    def augment(x):  # random crop (4-pixel zero padding) + horizontal flip, on the device
        b = x.shape[0]
        xp = F.pad(x, (4, 4, 4, 4))
        iy = torch.randint(0, 9, (b, 1), device=dev) + rows[None, :]  # (b, 32) rows of the crop
        ix = torch.randint(0, 9, (b, 1), device=dev) + rows[None, :]
        bi = torch.arange(b, device=dev)[:, None, None, None]
        ci = torch.arange(x.shape[1], device=dev)[None, :, None, None]
        out = xp[bi, ci, iy[:, None, :, None], ix[:, None, None, :]]
        flip = torch.rand(b, device=dev) < 0.5
        return torch.where(flip[:, None, None, None], out.flip(3), out)

    def pgd(x, y):
        model.eval()
        xa = (x + torch.empty_like(x).uniform_(-EPS, EPS)).clamp(0, 1)
        for _ in range(attack_steps):
            xa.requires_grad_(True)
            with autocast():
                loss = F.cross_entropy(model(xa).float(), y)
            (grad,) = torch.autograd.grad(loss, xa)
            xa = xa.detach() + STEP * grad.sign()
            xa = torch.min(torch.max(xa, x - EPS), x + EPS).clamp(0, 1)
        model.train()
        return xa.detach()

    def step():
        x = augment(x_u8.float() / 255.0).contiguous(memory_format=torch.channels_last)
        xa = pgd(x, y)
        with autocast():
            loss = F.cross_entropy(model(xa).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    t0 = time.perf_counter()
    loss = step()
    sync()
    first = time.perf_counter() - t0
    for _ in range(warmup):
        loss = step()
    sync()
    t0 = time.perf_counter()
    for _ in range(steps):
        loss = step()
    sync()
    dt = time.perf_counter() - t0
    lv = float(loss.detach().cpu())
    return {"img_per_s": batch * steps / dt, "step_ms": 1000 * dt / steps, "first_call_s": first,
            "final_loss": lv, "finite": bool(np.isfinite(lv)), "device": str(dev),
            "channels_last": True, "cudnn_benchmark": dev.type == "cuda"}


# ----------------------------------------------------------------------------- main


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--steps", type=int, default=20, help="timed steps per configuration")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps after the first (compiling) one")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--frameworks", default="jax,torch")
    ap.add_argument("--width", type=int, default=64, help="ResNet-18 base width (64 = the real network)")
    ap.add_argument("--attack-steps", type=int, default=PGD_STEPS)
    ap.add_argument("--tiny", action="store_true", help="CPU check: width 8, batch 8, 2 timed steps, 1 warm-up")
    ap.add_argument("--out", default=None, help="also write the JSON result to this file")
    args = ap.parse_args(argv)
    if args.tiny:
        args.batch, args.steps, args.warmup, args.width = 8, 2, 1, 8
    frameworks = [f.strip() for f in args.frameworks.split(",") if f.strip()]
    # Both frameworks share the GPU in one process: JAX must not grab 75% of its memory up front.
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    dtypes = [d.strip() for d in args.dtypes.split(",") if d.strip()]
    result = {"bench": "gpu_train_resnet18_pgd10", "batch": args.batch, "steps": args.steps, "warmup": args.warmup,
              "width": args.width, "attack_steps": args.attack_steps, "eps": EPS, "step_size": STEP,
              "image_shape": [32, 32, 3], "tiny": args.tiny, "python": platform.python_version(), "results": {}}
    if "jax" in frameworks:
        import jax

        result["jax_version"] = jax.__version__
        result["jax_devices"] = [str(d) for d in jax.devices()]
        result["jax_backend"] = jax.default_backend()
    if "torch" in frameworks:
        import torch

        result["torch_version"] = torch.__version__
        result["torch_device"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    for fw in frameworks:
        for dt in dtypes:
            fn = bench_jax if fw == "jax" else bench_torch
            print(f"{fw} {dt}: batch {args.batch}, {args.steps} timed steps ...", file=sys.stderr, flush=True)
            try:
                r = fn(dt, args.batch, args.steps, args.warmup, args.width, args.attack_steps)
            except Exception as e:  # report and go on with the other configurations
                r = {"error": f"{type(e).__name__}: {e}"}
            result["results"][f"{fw}_{dt}"] = r
            print(f"  {json.dumps(r)}", file=sys.stderr, flush=True)
    res = result["results"]
    for dt in dtypes:
        a, b = res.get(f"jax_{dt}", {}), res.get(f"torch_{dt}", {})
        if "img_per_s" in a and "img_per_s" in b:
            result[f"jax_over_torch_{dt}"] = a["img_per_s"] / b["img_per_s"]
    line = json.dumps(result)
    if args.out:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        with open(args.out, "w") as f:
            f.write(line + "\n")
    print("RESULT " + line, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
