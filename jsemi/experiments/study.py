"""The reproduction study: Algorithm 1 over architectures x datasets x pretraining seeds, resumable.

One *unit* is one (architecture, dataset, seed): a normal and a robust network pretrained
from that seed (``jsemi.pretrain.pretrain``), then Algorithm 1 (``jsemi.algorithms``) for
every # fb of the scale, with rho from every estimator of the scale.  The units are
independent replicates; ``jsemi.experiments.study_report`` turns their finished run
directories into per-claim statistics with confidence intervals across seeds, the share of
units where each claim holds, and the reproduction report (``docs/reproduction.md``).

Layout under OUT::

    OUT/study.json                          the scale's settings and their hash (a rerun with
                                            other settings is refused)
    OUT/pretrain/<unit>/{normal,robust}/    jsemi.pretrain runs (resume per epoch)
    OUT/alg1/<unit>/fb<F>/                  jsemi.runs run directories (resume per trial;
                                            initial_<estimator>.json: rho of the glued
                                            network before fine-tuning, per estimator)
    OUT/units/<unit>.json                   written when a unit is complete; a rerun skips it
    OUT/summary.json, OUT/REPORT.md, OUT/figures/   recomputed from the finished units

``<unit>`` is ``<arch>-<dataset>-seed<S>``.  Scales: ``cpu`` (a few hours on 2 cores),
``gpu`` (the same design at larger widths, data and trial counts, for a lent accelerator)
and ``tiny`` (the test suite's end-to-end check).  Usage: ``jsemi study --scale cpu --out
runs/study [--doc docs/reproduction.md]``.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from jsemi.algorithms import Alg1Config
from jsemi.runs import canonical_json, config_hash, read_json, write_json_atomic
from jsemi.train import TrainConfig

STUDY_VERSION = 1
ESTIMATORS = ("edge", "ksg", "gaussian")


# ----------------------------------------------------------------------------- settings


@dataclasses.dataclass(frozen=True)
class ArchSpec:
    """An architecture of the study: a label, a ``jsemi.models`` factory name and its kwargs."""

    label: str
    model: str
    model_kwargs: Mapping[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True)
class DataSpec:
    """A dataset of the study: ``jsemi.data`` name, loader options, subsets, epoch counts.

    ``epochs_normal`` / ``epochs_robust``: pretraining epochs (small data sets need more
    epochs for the same number of steps).  ``train_subset`` / ``test_subset``: stratified
    subsets (None = the whole split); ``finetune_subset``: Algorithm 1's fine-tuning images.
    """

    label: str
    name: str
    options: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    train_subset: int | None = None
    test_subset: int | None = None
    finetune_subset: int | None = None
    epochs_normal: int = 3
    epochs_robust: int = 4


@dataclasses.dataclass(frozen=True)
class StudyConfig:
    """Everything that defines a study's numbers (the hash of its JSON guards OUT)."""

    scale: str
    archs: tuple[ArchSpec, ...]
    datasets: tuple[DataSpec, ...]
    seeds: tuple[int, ...]
    pretrain: TrainConfig  # normal pretraining; the robust one is ``mode="pgd"`` of it
    alg1: Alg1Config  # base Algorithm 1 settings; num_fb, seed, net, dataset set per row
    fb_values: tuple[int, ...]

    def __post_init__(self):
        if not self.archs or not self.datasets or not self.seeds or not self.fb_values:
            raise ValueError("a study needs at least one architecture, dataset, seed and # fb value")
        labels = [a.label for a in self.archs] + [d.label for d in self.datasets]
        if len(set(labels)) != len(labels) or any("-" in s or "/" in s for s in labels):
            raise ValueError(f"architecture and dataset labels must be unique and free of '-' and '/', got {labels}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"seeds must be distinct, got {self.seeds}")
        bad = [e for e in self.alg1.rho_estimators if e not in ESTIMATORS]
        if bad:
            raise ValueError(f"unknown rho estimators {bad}; the study knows {ESTIMATORS}")

    def to_dict(self) -> dict:
        return json.loads(canonical_json({
            "version": STUDY_VERSION, "scale": self.scale,
            "archs": [dataclasses.asdict(a) for a in self.archs],
            "datasets": [dataclasses.asdict(d) for d in self.datasets],
            "seeds": list(self.seeds), "pretrain": self.pretrain.to_dict(), "alg1": self.alg1.to_dict(),
            "fb_values": list(self.fb_values)}))

    def units(self) -> list["Unit"]:
        """Every (arch, dataset, seed), datasets outermost (data loaded once per dataset)."""
        return [Unit(a, d, s) for d in self.datasets for a in self.archs for s in self.seeds]


@dataclasses.dataclass(frozen=True)
class Unit:
    arch: ArchSpec
    data: DataSpec
    seed: int

    @property
    def name(self) -> str:
        return f"{self.arch.label}-{self.data.label}-seed{self.seed}"

    @property
    def setting(self) -> str:
        return f"{self.arch.label}-{self.data.label}"


def hashable_kwargs(kw: Mapping[str, Any]) -> dict:
    """Model kwargs with lists as tuples: Flax modules are jit static values, so they must hash."""
    return {k: tuple(v) if isinstance(v, list) else v for k, v in kw.items()}


def _train(epochs: int, **kw) -> TrainConfig:
    base = dict(mode="standard", optimizer="adam", lr=1e-3, weight_decay=0.0, lr_schedule="constant", epochs=epochs,
                batch_size=128, eps=0.1, attack_steps=3, attack_step_size=0.05, augment=False, flip=False)
    base.update(kw)
    return TrainConfig(**base)


def _alg1(**kw) -> Alg1Config:
    perms = kw.pop("permutations")
    d = dict(num_fb=2, k=0.0, max_epochs=3, trials=2, seed=0, finetune=_train(3, mode="pgd"), norm="linf", eps=0.1,
             eval_attack="pgd", eval_attack_settings={"steps": 10, "step_size": 0.025, "random_start": True},
             eval_batch_size=500, measure=True, measure_examples=500, gamma_examples=200, probe_examples=500,
             rho_estimators=("ksg", "edge", "gaussian"),
             rho_settings={"ksg": {"permutations": perms, "reduce_dim": 4}, "edge": {"permutations": perms},
                           "gaussian": {"permutations": perms, "reduce_dim": 16}},
             gamma_attack="pgd", gamma_attack_settings={"steps": 5, "restarts": 1, "loss": "margin"})
    d.update(kw)
    return Alg1Config(**d)


DIGITS_28 = {"image_size": 28, "pad": 4}  # sklearn digits upscaled to a 20x20 digit on a 28x28 canvas


def _archs(w: int) -> tuple[ArchSpec, ...]:
    """SmallCNN (n = 7), a VGG-style net (n = 7) and a ResNet-style net (n = 10), widths scaled by ``w``."""
    return (
        ArchSpec("smallcnn", "small_cnn", {"widths": (w, w, 2 * w, 2 * w, 4 * w), "hidden": 8 * w}),
        ArchSpec("vgg", "vgg16", {"cfg": (w, "M", 2 * w, "M", 4 * w, 4 * w, "M"), "hidden": 4 * w}),
        ArchSpec("resnet", "resnet18", {"stage_sizes": (1, 1, 1), "width": w}),
    )


SCALES: dict[str, StudyConfig] = {
    # 2 cores: 18 units, # fb 2 and 4, 2 trials each; see docs/reproduction.md for the measured times
    "cpu": StudyConfig(
        scale="cpu", archs=_archs(8),
        datasets=(DataSpec("fmnist", "fashion_mnist", {}, 6000, 1000, 2048, 3, 4),
                  DataSpec("digits", "digits", DIGITS_28, None, None, None, 10, 12)),
        seeds=(0, 1, 2), pretrain=_train(3), alg1=_alg1(permutations=49), fb_values=(2, 4)),
    # a lent accelerator: wider nets, full Fashion-MNIST, 5 trials per row, E = 10, 99 permutations
    "gpu": StudyConfig(
        scale="gpu", archs=_archs(32),
        datasets=(DataSpec("fmnist", "fashion_mnist", {}, None, None, 20000, 10, 15),
                  DataSpec("digits", "digits", DIGITS_28, None, None, None, 40, 60)),
        seeds=(0, 1, 2, 3, 4), pretrain=_train(10),
        alg1=_alg1(permutations=99, max_epochs=10, trials=5, measure_examples=1000, gamma_examples=500,
                   probe_examples=1000, eval_attack_settings={"steps": 20, "step_size": 0.01, "random_start": True},
                   finetune=_train(10, mode="pgd", attack_steps=10, attack_step_size=0.025)),
        fb_values=(2, 4, 6)),
    # the slow test: 2 architectures x digits x 2 seeds, 1 epoch, 1 trial, few permutations
    "tiny": StudyConfig(
        scale="tiny", archs=_archs(4)[::2],
        datasets=(DataSpec("digits", "digits", {"image_size": 12, "pad": 2}, 600, 200, 256, 1, 1),),
        seeds=(0, 1), pretrain=_train(1),
        alg1=_alg1(permutations=4, max_epochs=1, trials=1, measure_examples=100, gamma_examples=50,
                   rho_settings={"ksg": {"permutations": 4, "reduce_dim": 4}, "edge": {"permutations": 4},
                                 "gaussian": {"permutations": 4, "reduce_dim": 4}},  # 10 points per class
                   probe_examples=100, eval_attack_settings={"steps": 2, "step_size": 0.05, "random_start": True},
                   gamma_attack_settings={"steps": 2, "restarts": 1, "loss": "margin"},
                   finetune=_train(1, mode="pgd", attack_steps=1, attack_step_size=0.1)),
        fb_values=(2, 3)),
}


def get_scale(name: str) -> StudyConfig:
    if name not in SCALES:
        raise ValueError(f"unknown study scale {name!r}; available: {', '.join(SCALES)}")
    return SCALES[name]


# ----------------------------------------------------------------------------- helpers


def _log(msg: str) -> None:
    print(msg, flush=True)
    sys.stdout.flush()


def open_study(out: str | Path, config: StudyConfig) -> Path:
    """Creates OUT/study.json for ``config`` or checks that OUT holds the same study."""
    out = Path(out)
    cfg = config.to_dict()
    digest = config_hash(cfg)
    path = out / "study.json"
    if path.exists():
        saved = read_json(path)
        if saved.get("hash") != digest:
            raise ValueError(f"{out} holds a study with other settings (hash {saved.get('hash')} != {digest}, scale "
                             f"{saved.get('config', {}).get('scale')!r}); use another --out or delete it")
    else:
        write_json_atomic(path, {"kind": "study", "hash": digest, "config": cfg})
    return out


def unit_paths(out: Path, unit: Unit, fb_values: Sequence[int]) -> dict:
    return {"normal": out / "pretrain" / unit.name / "normal", "robust": out / "pretrain" / unit.name / "robust",
            "rows": [out / "alg1" / unit.name / f"fb{f}" for f in fb_values],
            "marker": out / "units" / f"{unit.name}.json"}


def unit_identity(config: StudyConfig, unit: Unit) -> str:
    """Hash of what defines a unit's numbers (its marker must carry it to count as finished)."""
    return config_hash({"study": config.to_dict(), "unit": unit.name})


def load_data(spec: DataSpec, data_dir: str | None = None) -> tuple[Any, Any]:
    """(train, test) ``jsemi.data.Dataset`` of a study dataset (stratified subsets, seed 0)."""
    from jsemi.data import load_dataset

    opts = dict(spec.options)
    train = load_dataset(spec.name, "train", data_dir=data_dir, subset=spec.train_subset, seed=0, **opts)
    test = load_dataset(spec.name, "test", data_dir=data_dir, subset=spec.test_subset, seed=0, **opts)
    return train, test


def _finetune_data(spec: DataSpec, train):
    from jsemi.data import stratified_indices
    import numpy as np

    if spec.finetune_subset is None or spec.finetune_subset >= len(train):
        return train.images, train.labels
    idx = np.sort(stratified_indices(train.labels, spec.finetune_subset, seed=21))
    return train.images[idx], train.labels[idx]


def initial_rhos(model, normal, robust, ft_data, eval_data, cfg: Alg1Config, run_dir: Path) -> dict:
    """{estimator: [rho entries]} of the glued (fa*, fb) network before fine-tuning, every estimator.

    The primary estimator's comes from the run's ``initial.json`` (``jsemi.algorithms``);
    the others are computed once with the same inputs and keys (``initial_measure`` with that
    estimator first) and cached as ``initial_<estimator>.json`` in the run directory.
    """
    from jsemi import algorithms
    from jsemi.runs import RunDir

    rd = RunDir.load(run_dir)
    out = {}
    base = rd.read("initial") if rd.has("initial") else {"rho": {}}
    ctx = None
    for est in cfg.rho_estimators:
        if est in base["rho"]:
            out[est] = base["rho"][est]
            continue

        def compute(est=est):
            nonlocal ctx
            order = (est,) + tuple(e for e in cfg.rho_estimators if e != est)
            ctx = algorithms._Context(model, normal, robust, ft_data, eval_data,
                                      dataclasses.replace(cfg, rho_estimators=order))
            return algorithms.initial_measure(ctx)

        out[est] = rd.cached(f"initial_{est}", compute)["rho"][est]
    return out


# ----------------------------------------------------------------------------- running


def run_unit(config: StudyConfig, unit: Unit, out: Path, train, test, *, progress: bool = False,
             log: Callable[[str], None] = _log) -> dict:
    """Pretrains both networks of ``unit`` and runs Algorithm 1 for every # fb (each step resumes).

    Returns the unit's marker record (also written to OUT/units/<unit>.json), with the wall
    and CPU seconds of each stage of this call (stages resumed from disk take little).
    """
    from jsemi.algorithms import algorithm1
    from jsemi.pretrain import pretrain

    paths = unit_paths(out, unit, config.fb_values)
    times: dict[str, float] = {}  # wall seconds per stage of this call
    cpu: dict[str, float] = {}  # CPU seconds (all threads of this process) per stage
    variables, epochs_run = {}, {}
    model = None
    for kind, epochs in (("normal", unit.data.epochs_normal), ("robust", unit.data.epochs_robust)):
        tcfg = dataclasses.replace(config.pretrain, epochs=epochs, mode="standard" if kind == "normal" else "pgd")
        t0, c0 = time.perf_counter(), time.process_time()
        res = pretrain(paths[kind], unit.arch.model, train.images, train.labels, test.images, test.labels, tcfg,
                       num_classes=train.num_classes, dataset=unit.data.label, seed=unit.seed,
                       model_kwargs=hashable_kwargs(unit.arch.model_kwargs), train_subset=unit.data.train_subset,
                       progress=progress, log=log)
        times[f"pretrain_{kind}_s"] = time.perf_counter() - t0
        cpu[f"pretrain_{kind}_cpu_s"] = time.process_time() - c0
        model, variables[kind] = res.model, res.variables
        epochs_run[kind] = res.history
    ft = _finetune_data(unit.data, train)
    ev = (test.images, test.labels)
    rows = []
    for fb, d in zip(config.fb_values, paths["rows"]):
        cfg = dataclasses.replace(config.alg1, num_fb=fb, a=None, seed=unit.seed, net=unit.arch.label,
                                  dataset=unit.data.label,
                                  measure_examples=min(config.alg1.measure_examples, len(test)))
        t0, c0 = time.perf_counter(), time.process_time()
        res = algorithm1(model, variables["normal"], variables["robust"], ft, ev, cfg, d, progress=progress, log=log)
        initial_rhos(model, variables["normal"], variables["robust"], ft, ev, cfg, d)
        times[f"alg1_fb{fb}_s"] = time.perf_counter() - t0
        cpu[f"alg1_fb{fb}_cpu_s"] = time.process_time() - c0
        rows.append({"num_fb": fb, "run_dir": str(d), "trials_ran": list(res.ran)})
    rec = {"unit": unit.name, "identity": unit_identity(config, unit), "arch": unit.arch.label,
           "dataset": unit.data.label, "seed": unit.seed, "normal_dir": str(paths["normal"]),
           "robust_dir": str(paths["robust"]), "rows": rows,
           "pretrain_test_acc": {k: (h[-1]["test_acc"] if h else None) for k, h in epochs_run.items()},
           "seconds": times, "cpu_seconds": cpu, "load_avg_end": list(os.getloadavg())}
    write_json_atomic(paths["marker"], rec)
    return rec


def unit_done(config: StudyConfig, unit: Unit, out: Path) -> bool:
    """The unit's marker exists and was written for these settings."""
    p = unit_paths(out, unit, config.fb_values)["marker"]
    if not p.exists():
        return False
    try:
        return read_json(p).get("identity") == unit_identity(config, unit)
    except ValueError:
        return False


def run_study(config: StudyConfig, out: str | Path, *, only: Sequence[str] = (), data_dir: str | None = None,
              max_units: int | None = None, progress: bool = False, doc: str | Path | None = None,
              report: bool = True, command: str | None = None, log: Callable[[str], None] = _log) -> dict:
    """Runs every unfinished unit of ``config`` (matching the ``only`` globs), then the report.

    ``max_units`` stops after that many newly finished units (a later call resumes).
    Returns {"ran": [unit names computed now], "skipped": [...finished earlier], "report": path}.
    """
    out = open_study(out, config)
    units = [u for u in config.units() if not only or any(fnmatch.fnmatch(u.name, g) for g in only)]
    if not units:
        raise ValueError(f"no unit matches {list(only)}; units are named like {config.units()[0].name}")
    ran, skipped = [], []
    data_cache: dict[str, tuple] = {}
    t_study = time.perf_counter()
    for i, unit in enumerate(units):
        if unit_done(config, unit, out):
            skipped.append(unit.name)
            continue
        if max_units is not None and len(ran) >= max_units:
            break
        if unit.data.label not in data_cache:
            data_cache.clear()
            data_cache[unit.data.label] = load_data(unit.data, data_dir)
        train, test = data_cache[unit.data.label]
        t0 = time.perf_counter()
        log(f"[study] unit {i + 1}/{len(units)}: {unit.name}")
        rec = run_unit(config, unit, out, train, test, progress=progress, log=log)
        ran.append(unit.name)
        log(f"[study] {unit.name} finished in {time.perf_counter() - t0:.0f} s: "
            + ", ".join(f"{k} {v:.0f}" for k, v in rec["seconds"].items())
            + f"; CPU {sum(rec['cpu_seconds'].values()):.0f} s, load {rec['load_avg_end'][0]:.1f}")
        if report:  # the report always reflects every finished unit, even if the study stops here
            from jsemi.experiments.study_report import write_study_report

            write_study_report(out, doc=doc, command=command)
    result = {"ran": ran, "skipped": skipped, "seconds": time.perf_counter() - t_study}
    if report:
        from jsemi.experiments.study_report import write_study_report

        result["report"] = str(write_study_report(out, doc=doc, command=command))
    return result
