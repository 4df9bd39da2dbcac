"""Executes every notebook in colab/ headless on CPU, with tiny parameters and mocked data.

How: the cell tagged "parameters" is followed by an injected cell that overrides its values
(as papermill does), and the notebook runs under nbclient in a kernel of *this* interpreter:
a kernelspec pointing at ``sys.executable`` is written to a temporary JUPYTER_PATH, so no
kernel has to be installed on the machine.  If no kernel can be started at all (no zmq,
a sandbox without sockets), the cells are executed in-process instead, in a fresh
namespace, and the test says so in its output.

Data: notebook 1 and 3 load CIFAR-10 through tensorflow-datasets under
``tfds.testing.mock_data`` (random images in CIFAR-10's format, nothing downloaded);
notebook 2 uses jsemi's synthetic data.  Notebook 3 runs the paper pipeline (pretraining,
Algorithm 1, the report) on a tiny experiment JSON written by the test.
"""

from __future__ import annotations

import dataclasses
import json
import os
import sys
from pathlib import Path

import nbformat
import pytest

from conftest import TEST_XLA_FLAGS

ROOT = Path(__file__).resolve().parents[1]
COLAB = ROOT / "colab"


def _tiny_experiment_json(path: Path) -> Path:
    from jsemi.experiments import table_s5 as s5
    from jsemi.experiments.configs import get_experiment, save

    exp = s5.tiny_experiment(get_experiment("cpu"))
    pre = dataclasses.replace(exp.pretrain, dataset="cifar10", normal=dataclasses.replace(exp.pretrain.normal, epochs=1),
                              robust=dataclasses.replace(exp.pretrain.robust, epochs=1, batch_size=32))
    pre = dataclasses.replace(pre, normal=dataclasses.replace(pre.normal, batch_size=32))
    a1 = dataclasses.replace(exp.alg1, measure=False, max_epochs=1, eval_batch_size=64, trials=1,
                             finetune=dataclasses.replace(exp.alg1.finetune, batch_size=32), dataset="cifar10 (mocked)")
    exp = dataclasses.replace(exp, name="tiny-cifar10-mock", pretrain=pre, alg1=a1)
    return save(exp, path)


def _params(name: str, tmp: Path) -> str:
    out = json.dumps(str(tmp / "out"))
    if name.startswith("01"):
        return (f'DATASET = "cifar10"; MODEL = "small_cnn"; MODEL_KWARGS = {{"widths": (8, 16), "hidden": 16}}\n'
                f"TRAIN_SUBSET = 64; TEST_SUBSET = 64; EPOCHS_NORMAL = 1; EPOCHS_ROBUST = 1; BATCH_SIZE = 32\n"
                f"NUM_FB = (2,); TRIALS = 1; MAX_EPOCHS = 1; MEASURE = False; MEASURE_EXAMPLES = 64\n"
                f'COMPUTE_DTYPE = "float32"; OUT = {out}; MOCK_DATA = True')
    if name.startswith("02"):
        return "N_TRAIN = 256; N_TEST = 128; STEPS = 15; BATCH = 32; PERMUTATIONS = 3"
    if name.startswith("03"):
        exp = json.dumps(str(_tiny_experiment_json(tmp / "tiny.json")))
        return f'EXPERIMENT = {exp}; ATTACKS = ("pgd",); FB_VALUES = (2,); TRIALS = 1; OUT = {out}; MOCK_DATA = True'
    raise AssertionError(name)


def _inject(nb, source: str):
    idx = [i for i, c in enumerate(nb.cells) if "parameters" in c.get("metadata", {}).get("tags", [])]
    assert len(idx) == 1, "every notebook needs exactly one cell tagged 'parameters'"
    cell = nbformat.v4.new_code_cell("# injected by tests/test_notebooks.py\n" + source)
    cell.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(idx[0] + 1, cell)
    return nb


def _kernel_env(tmp: Path, monkeypatch) -> str:
    kdir = tmp / "jupyter" / "kernels" / "jsemi-test"
    kdir.mkdir(parents=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "jsemi (tests)", "language": "python",
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp / "jupyter"))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "2")
    monkeypatch.setenv("XLA_FLAGS", TEST_XLA_FLAGS)  # the suite's compile-time flags only (tests/conftest.py)
    return "jsemi-test"


def _run_in_process(nb, cwd: Path) -> None:
    """Fallback without a kernel: exec every code cell in one fresh namespace."""
    ns: dict = {"__name__": "__main__"}
    old = Path.cwd()
    os.chdir(cwd)
    try:
        for i, c in enumerate(nb.cells):
            if c.cell_type == "code":
                exec(compile(c.source, f"<cell {i}>", "exec"), ns)
    finally:
        os.chdir(old)


def _execute(path: Path, tmp: Path, monkeypatch):
    from nbclient import NotebookClient

    nb = _inject(nbformat.read(path, as_version=4), _params(path.name, tmp))
    kernel = _kernel_env(tmp, monkeypatch)
    client = NotebookClient(nb, timeout=900, kernel_name=kernel, allow_errors=False,
                            resources={"metadata": {"path": str(COLAB)}})
    try:
        client.execute()
    except (RuntimeError, OSError, ImportError) as e:
        if "kernel" not in str(e).lower() and not isinstance(e, (OSError, ImportError)):
            raise
        print(f"nbclient could not start a kernel ({e}); executing {path.name} in-process")
        _run_in_process(nb, COLAB)
        return nb
    return nb


def _outputs(nb) -> str:
    text = []
    for c in nb.cells:
        for o in c.get("outputs", []):
            if o.get("output_type") == "stream":
                text.append(o.get("text", ""))
            for v in (o.get("data") or {}).values():
                if isinstance(v, str):
                    text.append(v)
    return "\n".join(text)


def test_every_notebook_has_a_parameters_cell_and_is_small():
    names = sorted(p.name for p in COLAB.glob("*.ipynb"))
    assert names == ["01_quickstart.ipynb", "02_functional_api.ipynb", "03_paper_reproduction.ipynb"]
    for name in names:
        nb = nbformat.read(COLAB / name, as_version=4)
        nbformat.validate(nb)
        assert sum("parameters" in c.metadata.get("tags", []) for c in nb.cells) == 1
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), f"{name}: clear the outputs"
        assert len(nb.cells) <= 14


# slow (~15 CPU-s: a kernel that imports jax and compiles): CI runs the same notebook with the same
# parameters from the installed wheel in test_colab_runtime (`make test-colab`, .ci/run)
@pytest.mark.slow
def test_quickstart_notebook(tmp_path, monkeypatch):
    nb = _execute(COLAB / "01_quickstart.ipynb", tmp_path, monkeypatch)
    out = _outputs(nb)
    assert "backend: cpu" in out and "| Net | Dataset | # fb |" in out
    assert (tmp_path / "out" / "accuracy_per_epoch.png").exists()
    assert list((tmp_path / "out" / "alg1" / "fb2" / "trials").glob("*.json"))


# ----------------------------------------------------------------------------- the install cell


def _install_cell(name: str = "01_quickstart.ipynb") -> str:
    nb = nbformat.read(COLAB / name, as_version=4)
    i = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    assert "JSEMI_PIP = None" in nb.cells[i].source
    return nb.cells[i + 1].source  # right after the parameters cell


def test_install_cell_is_identical_in_every_notebook():
    cells = {p.name: _install_cell(p.name) for p in sorted(COLAB.glob("*.ipynb"))}
    assert len(set(cells.values())) == 1, "the install cell differs between notebooks"
    src = next(iter(cells.values()))
    assert "def ensure_jsemi" in src and src.rstrip().endswith("ensure_jsemi(JSEMI_PIP).__version__)")
    assert len(src.splitlines()) <= 40 and '"-e"' not in src  # never an editable install of a checkout


def _ensure_jsemi(monkeypatch, calls: list):
    """ensure_jsemi as the cell defines it (its last line, the call, left out), with pip recorded, never run."""
    import subprocess

    monkeypatch.setattr(subprocess, "run", lambda argv, check: calls.append(argv[3:]))
    definition, call = _install_cell().rstrip().rsplit("\n", 1)
    assert call.startswith("print(") and "ensure_jsemi(JSEMI_PIP)" in call
    ns: dict = {}
    exec(compile(definition, "<install cell>", "exec"), ns)
    return ns["ensure_jsemi"]


def _checkout(root: Path) -> Path:
    (root / "jsemi").mkdir(parents=True)
    (root / "jsemi" / "__init__.py").write_text("")
    (root / "pyproject.toml").write_text("[project]\nname = 'jsemi'\n")
    (root / "colab").mkdir()
    return root


def _not_installed(monkeypatch):
    import importlib.metadata as md

    real = md.distribution

    def distribution(name):
        if name == "jsemi":
            raise md.PackageNotFoundError(name)
        return real(name)

    monkeypatch.setattr(md, "distribution", distribution)


def test_install_cell_keeps_an_installed_jsemi_and_installs_a_given_requirement(monkeypatch):
    import jsemi

    calls: list = []
    ensure = _ensure_jsemi(monkeypatch, calls)
    assert ensure() is jsemi and calls == []
    assert ensure("git+https://example.org/jsemi.git") is jsemi
    assert calls == [["install", "-q", "git+https://example.org/jsemi.git"]]


@pytest.mark.parametrize("where", ["content", "checkout", "checkout/colab"])
def test_install_cell_on_colab_installs_the_checkout_never_a_namespace(where, tmp_path, monkeypatch):
    import types

    import jsemi

    content = tmp_path / "content"
    root = _checkout(content / "jsemi")
    monkeypatch.setenv("JSEMI_COLAB_CONTENT", str(content))
    monkeypatch.setitem(sys.modules, "google.colab", types.ModuleType("google.colab"))
    monkeypatch.chdir({"content": content, "checkout": root, "checkout/colab": root / "colab"}[where])
    _not_installed(monkeypatch)
    namespace = types.ModuleType("jsemi")
    namespace.__file__, namespace.__path__ = None, [str(root)]  # what `import jsemi` gives in /content
    monkeypatch.setitem(sys.modules, "jsemi", namespace)
    calls: list = []
    got = _ensure_jsemi(monkeypatch, calls)()
    assert calls == [["install", "-q", f"{root.resolve()}[plots]"]]
    assert got.__file__ is not None and got.__version__ == jsemi.__version__


def test_install_cell_without_jsemi_says_what_to_do(tmp_path, monkeypatch):
    monkeypatch.setenv("JSEMI_COLAB_CONTENT", str(tmp_path / "content"))
    monkeypatch.chdir(tmp_path)
    _not_installed(monkeypatch)
    calls: list = []
    ensure = _ensure_jsemi(monkeypatch, calls)
    with pytest.raises(ModuleNotFoundError, match="set JSEMI_PIP .* or clone the repository to .*content/jsemi"):
        ensure()
    _checkout(tmp_path / "content" / "jsemi")  # a checkout, but not on Colab: nothing is pip-installed unasked
    with pytest.raises(ModuleNotFoundError, match="pip install -e CHECKOUT"):
        ensure()
    assert calls == []


@pytest.mark.slow
def test_functional_api_notebook(tmp_path, monkeypatch):
    nb = _execute(COLAB / "02_functional_api.ipynb", tmp_path, monkeypatch)
    out = _outputs(nb)
    assert "fa* bit-identical after fine-tuning: True" in out
    assert "rho(body, neck) =" in out and "probe margin" in out


@pytest.mark.slow
def test_paper_reproduction_notebook(tmp_path, monkeypatch):
    nb = _execute(COLAB / "03_paper_reproduction.ipynb", tmp_path, monkeypatch)
    out = _outputs(nb)
    assert "| Net | Dataset | # fb |" in out
    assert (tmp_path / "out" / "report-pgd" / "REPORT.md").exists()
