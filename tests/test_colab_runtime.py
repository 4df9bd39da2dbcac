"""The installed product on a fake Colab runtime: the wheel, a fresh venv, the three notebooks outside the checkout.

How, offline and without re-downloading jax:

- the wheel: ``pip wheel --no-deps --no-build-isolation`` of a copy of the checkout's
  pyproject.toml, README.md and jsemi/ (the copy keeps build/ and *.egg-info out of the checkout);
- a fresh venv (``python -m venv --without-pip``) whose only link to the project venv is one
  .pth file naming a directory of symlinks to the project venv's site-packages *minus jsemi*
  (its dist-info and editable finder): jax, flax, ipykernel, pip and setuptools import, jsemi
  does not until a notebook installs it.  (Installing the dependencies from wheels with
  ``--no-index --find-links`` would need a wheel of each, jaxlib and tensorflow-datasets
  included, which this machine does not keep; the symlinks cost nothing);
- pip runs with PIP_NO_INDEX=1 (nothing is downloaded) and PIP_NO_BUILD_ISOLATION=0 (so a
  checkout builds with the linked setuptools; Colab has an index and needs neither);
- google.colab: a stub package that a .pth line imports when the interpreter starts, as
  Colab's kernel has it imported;
- /content: a temporary directory (the install cell reads it from JSEMI_COLAB_CONTENT) with a
  checkout copy at content/jsemi, the kernels' working directory.

One venv goes through the install cell's cases in order: notebook 02 with nothing installed
(the cell pip-installs the checkout at content/jsemi), then 01 after ``pip uninstall jsemi``
with JSEMI_PIP = the wheel, then 03 with jsemi installed and the checkout root beside the
working directory (it must import the installed package, never the checkout as a namespace).
Data: tfds.testing.mock_data (01, 03) and synthetic data (02), nothing downloaded.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import nbformat
import pytest

import test_notebooks as N

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # 9.3 min measured on the 2-core machine under load ~20 (wheel, venv, three kernels)

_NOT_DEPS = ("jsemi", "__editable__", "_jsemi")


def _copy_checkout(dest: Path) -> Path:
    """pyproject.toml, README.md and jsemi/ (no caches), as a clone would have them."""
    import shutil

    dest.mkdir(parents=True)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, dest / name)
    shutil.copytree(ROOT / "jsemi", dest / "jsemi", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    (dest / "colab").mkdir()
    return dest


def _run(argv, **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(argv, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{argv} failed ({res.returncode}):\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    """(wheel, venv python, content dir, env) of a fresh venv without jsemi, on a fake Colab."""
    base = tmp_path_factory.mktemp("colab")
    src = _copy_checkout(base / "src")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(base / "dist"),
          str(src)], cwd=base)
    (wheel,) = (base / "dist").glob("jsemi-*.whl")
    venv = base / "venv"
    _run([sys.executable, "-m", "venv", "--without-pip", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    deps = base / "deps"
    deps.mkdir()
    project_site = Path(sysconfig.get_paths()["purelib"])
    for entry in project_site.iterdir():
        if not entry.name.startswith(_NOT_DEPS) and entry.suffix != ".pth":
            (deps / entry.name).symlink_to(entry)
    stub = base / "colab_stub"
    (stub / "google" / "colab").mkdir(parents=True)
    (stub / "google" / "colab" / "__init__.py").write_text(
        '"""Stand-in for Colab\'s google.colab (tests)."""\nfrom google.colab import _reprs, output  # noqa: F401\n')
    # what jax / etils / treescope import from it when they see Colab; used only interactively
    (stub / "google" / "colab" / "output.py").write_text(
        "def eval_js(*args, **kwargs):\n    raise NotImplementedError('no browser in the tests')\n\n"
        "def register_callback(*args, **kwargs):\n    pass\n")
    (stub / "google" / "colab" / "_reprs.py").write_text("")
    (site / "_jsemi_test_deps.pth").write_text(f"{deps}\n{stub}\n")
    (site / "zz_fake_colab.pth").write_text("import google.colab\n")
    content = base / "content"
    _copy_checkout(content / "jsemi")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV", "JUPYTER"))}
    env.update(JSEMI_COLAB_CONTENT=str(content), PIP_NO_INDEX="1", PIP_NO_BUILD_ISOLATION="0",
               PIP_DISABLE_PIP_VERSION_CHECK="1", PYTHONNOUSERSITE="1", JAX_PLATFORMS="cpu", MPLBACKEND="Agg",
               TF_CPP_MIN_LOG_LEVEL="2", PATH=f"{venv / 'bin'}:{env.get('PATH', '')}")
    env.pop("XLA_FLAGS", None)
    probe = _run([str(py), "-c", "import importlib.util as u, sys; print(u.find_spec('jsemi'), 'google.colab' in sys.modules)"],
                 env=env, cwd=base)
    assert probe.stdout.split() == ["None", "True"], probe.stdout  # no jsemi yet; Colab "imported"
    return wheel, py, content, env


def test_wheel_ships_the_experiments_and_no_checkout_files(runtime):
    wheel = runtime[0]
    names = set(zipfile.ZipFile(wheel).namelist())
    for need in ("jsemi/experiments/configs.py", "jsemi/experiments/demo.py", "jsemi/experiments/sweeps.py",
                 "jsemi/experiments/table_s5.py", "jsemi/cli/demo.py", "jsemi/cli/reproduce.py", "jsemi/cli/sweep.py"):
        assert need in names, need
    assert not [n for n in names if n.startswith(("experiments/", "tests/", "colab/", "benchmarks/"))]


def _execute(nb_name: str, params: str, runtime, work: Path, monkeypatch, cwd: Path):
    from nbclient import NotebookClient

    _, py, _, env = runtime
    nb = N._inject(nbformat.read(N.COLAB / nb_name, as_version=4), params)
    nb.cells.append(nbformat.v4.new_code_cell(
        'import sys, jsemi\nprint("JSEMI_FILE", jsemi.__file__)\nprint("ON_COLAB", "google.colab" in sys.modules)'))
    kdir = work / "jupyter" / "kernels" / "fresh-venv"
    kdir.mkdir(parents=True, exist_ok=True)
    (kdir / "kernel.json").write_text(json.dumps({
        "argv": [str(py), "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "fresh venv (tests)", "language": "python"}))
    for k in [k for k in os.environ if k.startswith(("PYTHON", "VIRTUAL_ENV"))]:
        monkeypatch.delenv(k)
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.setenv("JUPYTER_PATH", str(work / "jupyter"))
    client = NotebookClient(nb, timeout=900, kernel_name="fresh-venv", allow_errors=False,
                            resources={"metadata": {"path": str(cwd)}})
    client.execute()
    out = N._outputs(nb)
    return out, next(line.split(" ", 1)[1] for line in out.splitlines() if line.startswith("JSEMI_FILE "))


def test_three_notebooks_on_a_fake_colab(runtime, tmp_path, monkeypatch):
    wheel, py, content, env = runtime
    site = _run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], env=env,
                cwd=tmp_path).stdout.strip()

    # 1. nothing installed, a checkout at /content/jsemi, cwd /content: the cell installs the checkout
    out, where = _execute("02_functional_api.ipynb", N._params("02", tmp_path / "nb02"), runtime, tmp_path,
                          monkeypatch, content)
    assert where.startswith(site) and "ON_COLAB True" in out and "fa* bit-identical after fine-tuning: True" in out
    _run([str(py), "-m", "pip", "uninstall", "-q", "-y", "jsemi"], env=env, cwd=tmp_path)

    # 2. JSEMI_PIP = the wheel (as a git URL would be): the cell pip-installs it
    params = N._params("01", tmp_path / "nb01") + f"\nJSEMI_PIP = {str(wheel)!r}"
    out, where = _execute("01_quickstart.ipynb", params, runtime, tmp_path, monkeypatch, content)
    assert where.startswith(site) and "| Net | Dataset | # fb |" in out
    assert (tmp_path / "nb01" / "out" / "accuracy_per_epoch.png").exists()
    record = _run([str(py), "-c", "import importlib.metadata as m; print(m.distribution('jsemi').read_text('RECORD'))"],
                  env=env, cwd=tmp_path).stdout  # (not from the checkout: its jsemi.egg-info would answer)
    assert "jsemi/experiments/pipeline.py" in record

    # 3. installed, the checkout root beside the cwd: the installed package, never the namespace
    out, where = _execute("03_paper_reproduction.ipynb", N._params("03", tmp_path / "nb03"), runtime, tmp_path,
                          monkeypatch, content)
    assert where.startswith(site) and "| Net | Dataset | # fb |" in out
    assert (tmp_path / "nb03" / "out" / "report-pgd" / "REPORT.md").exists()


def test_installed_cli_outside_the_checkout(runtime, tmp_path):
    wheel, py, _, env = runtime
    jsemi = Path(py).parent / "jsemi"
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], env=env, cwd=tmp_path)  # already there after 01
    listing = _run([str(jsemi), "reproduce", "--list"], env=env, cwd=tmp_path).stdout
    from jsemi.experiments.configs import EXPERIMENTS

    assert [line.split()[0] for line in listing.strip().splitlines()] == list(EXPERIMENTS)
    for cmd in ("alg1", "demo", "reproduce", "sweep", "s1", "table-s5"):
        text = _run([str(jsemi), cmd, "--help"], env=env, cwd=tmp_path).stdout
        assert "experiments/" not in text and "configs.py" not in text, cmd
    _run([str(jsemi), "reproduce", "--write-configs", str(tmp_path / "cfg")], env=env, cwd=tmp_path)
    assert len(list((tmp_path / "cfg").glob("*.json"))) == len(EXPERIMENTS)
