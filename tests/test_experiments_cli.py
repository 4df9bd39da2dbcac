"""The experiment subcommands (jsemi demo / reproduce / sweep / s1 / table-s5): argument handling, the
configuration list, and clear errors before any work.  The pipelines themselves run in
tests/test_algorithms.py (slow: every subcommand on a tiny experiment) and tests/test_table_s5.py."""

from __future__ import annotations

import json

import pytest

from jsemi.cli import build_parser, main
from jsemi.experiments import configs


def test_reproduce_list_names_every_configuration(capsys):
    assert main(["reproduce", "--list"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [ln.split()[0] for ln in lines] == list(configs.EXPERIMENTS)
    assert len(lines) == 1 + 4 * 3  # cpu + 4 models x 3 datasets of the paper
    vgg = next(ln for ln in lines if ln.startswith("paper-vgg16-cifar10 "))
    assert "# fb [4, 8, 12], 10 trials, pretraining 120/120 epochs" in vgg


def test_reproduce_write_configs_round_trips(tmp_path, capsys):
    assert main(["reproduce", "--write-configs", str(tmp_path)]) == 0
    files = sorted(p.stem for p in tmp_path.glob("*.json"))
    assert files == sorted(configs.EXPERIMENTS)
    for name, exp in configs.EXPERIMENTS.items():
        assert configs.get_experiment(str(tmp_path / f"{name}.json")) == exp
    doc = json.loads((tmp_path / "cpu.json").read_text())
    assert doc["pretrain"]["dataset"] == "fashion_mnist" and doc["fb_values"] == [2, 4]


@pytest.mark.parametrize("argv,message", [
    (["reproduce"], "give CONFIG"),
    (["reproduce", "no-such-experiment"], "unknown experiment 'no-such-experiment'"),
    (["reproduce", "cpu", "--seed", "1"], "--seed applies to --pretrain-only"),
    (["sweep", "layers", "cpu", "--k-values", "1"], "--k-values applies to `jsemi sweep k`"),
    (["sweep", "k", "cpu", "--seeds", "1"], "--seeds applies to `jsemi sweep models`"),
    (["s1", "paper-nope"], "unknown experiment"),
    (["demo", "--experiment", "nope", "--out", "unused"], "unknown experiment"),
])
def test_bad_arguments_fail_fast_with_one_line(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert not any(tmp_path.iterdir())  # nothing was written


def test_defaults_and_help_point_at_package_data_only():
    p = build_parser()
    a = p.parse_args(["demo"])
    assert (a.experiment, a.out) == ("cpu", "runs/demo")
    a = p.parse_args(["sweep", "models"])
    assert (a.sweep, a.experiment, a.out) == ("models", "cpu", None)
    a = p.parse_args(["table-s5", "--tiny"])
    assert a.tiny and a.out == "runs/table_s5" and a.methods is None
    sub = next(x for x in p._actions if x.dest == "cmd")
    for name in ("alg1", "demo", "reproduce", "sweep", "s1", "table-s5"):
        text = sub.choices[name].format_help()
        assert "experiments/" not in text and "configs.py" not in text, name


def test_alg1_config_accepts_an_experiment_name():
    from jsemi.cli.alg1 import _base_config

    assert _base_config("cpu") == configs.CPU.alg1
    assert _base_config("paper-resnet18-cifar10") == configs.PAPER["resnet18-cifar10"].alg1


def test_download_flag_reaches_load_dataset(monkeypatch):
    """--download on every experiment subcommand; load_data passes it to jsemi.data.load_dataset."""
    import jsemi.data
    from jsemi.experiments.pipeline import load_data

    p = build_parser()
    for argv in (["demo"], ["reproduce", "cpu"], ["sweep", "k"], ["s1"], ["table-s5"]):
        assert p.parse_args(argv).download is False and p.parse_args(argv + ["--download"]).download is True
    seen = []
    monkeypatch.setattr(jsemi.data, "load_dataset", lambda name, split, **kw: seen.append((name, split, kw)) or split)
    assert load_data(configs.CPU, "/data", download=True) == ("train", "test")
    assert [(n, s, kw["download"], kw["data_dir"]) for n, s, kw in seen] == [
        ("fashion_mnist", "train", True, "/data"), ("fashion_mnist", "test", True, "/data")]


def test_experiment_json_gives_hashable_model_options(tmp_path):
    """JSON turns the tuple widths=(8, 16) into a list; loading makes it a tuple again (models are static jit args)."""
    import dataclasses

    exp = dataclasses.replace(configs.CPU, pretrain=dataclasses.replace(
        configs.CPU.pretrain, model_kwargs={"widths": (8, 16), "hidden": 32}))
    back = configs.get_experiment(str(configs.save(exp, tmp_path / "e.json")))
    assert back == exp and back.pretrain.model_kwargs["widths"] == (8, 16)
    from jsemi.models import get_model

    hash(get_model(back.pretrain.model, **back.pretrain.model_kwargs))
