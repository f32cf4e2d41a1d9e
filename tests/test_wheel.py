"""Packaging: the wheel (not an editable install) runs the demo and exports with the dataset card.

The wheel is built from a copy of the checkout and installed with ``--no-deps`` into a fresh virtual
environment that borrows this environment's installed dependencies (a ``.pth`` line), so the test needs no
network; what it checks is that the package itself carries everything it needs (templates, sample, card).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd: list[str], **kw) -> subprocess.CompletedProcess:
    res = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert res.returncode == 0, f"{cmd}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
    return res


@pytest.fixture(scope="module")
def wheel_venv(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("wheel")
    src = tmp / "src"
    shutil.copytree(ROOT, src, symlinks=True, ignore=shutil.ignore_patterns(
        ".venv", ".git", "__pycache__", "build", "dist", "*.egg-info", "lpt-demo", "runs", ".pytest_cache"))
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp / "dist"),
          str(src)])
    wheel = next((tmp / "dist").glob("longperceptualthoughts-*.whl"))
    venv = tmp / "venv"
    _run([sys.executable, "-m", "venv", str(venv)])
    py = venv / "bin" / "python"
    site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    (site / "_lpt_test_deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")  # borrow the dependencies
    _run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--no-index", str(wheel)])
    return venv


def test_installed_wheel_runs_the_tiny_demo_and_exports_with_the_card(wheel_venv, tmp_path):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "LPT_CACHE": str(tmp_path / "cache"), "PYTHONPATH": ""}
    lpt = str(wheel_venv / "bin" / "lpt")
    where = _run([str(wheel_venv / "bin" / "python"), "-c", "import builder, longperceptualthoughts as l; "
                  "print(builder.__file__); print(l.__file__)"], cwd=tmp_path, env=env).stdout
    assert str(ROOT) not in where and str(wheel_venv) in where  # the installed copy, not the checkout

    _run([lpt, "demo", "--tiny", "-q", str(tmp_path / "demo")], cwd=tmp_path, env=env)
    assert (tmp_path / "demo" / "summary.json").is_file()
    res = _run([lpt, "export", str(tmp_path / "demo" / "run"), str(tmp_path / "out")], cwd=tmp_path, env=env)
    assert "wrote" in res.stdout
    card = (tmp_path / "out" / "README.md").read_text(encoding="utf-8")
    assert card.startswith("---") and "configs:" in card and "LongPerceptualThoughts" in card
    assert (tmp_path / "out" / "raw_mcq").is_dir()


PLUGIN = {
    "pyproject.toml": """[build-system]
requires = ["setuptools>=69"]
build-backend = "setuptools.build_meta"

[project]
name = "lpt-plugin-xo"
version = "0.0.1"

[project.entry-points."longperceptualthoughts.configs"]
sft_x_o = "lpt_plugin_xo:SPEC"

[tool.setuptools]
py-modules = ["lpt_plugin_xo"]
""",
    "lpt_plugin_xo.py": """from builder import assemble
from builder.dataset_configs import SFT_FEATURES, ConfigSpec

SPEC = ConfigSpec("sft_x_o", SFT_FEATURES,
                  lambda c: [r for r in assemble.build_sft(c.run(), c.options) if r["cot_type"] == "X_O"],
                  "SFT rows that start from a wrong simple thought (a plugin's config)")
""",
}


def test_an_installed_plugin_package_adds_a_config_to_export_and_the_card(wheel_venv, tmp_path):
    """A community config as a package: its entry point is found by `lpt export`, the card and load_dataset."""
    src = tmp_path / "plugin"
    src.mkdir()
    for name, text in PLUGIN.items():
        (src / name).write_text(text)
    py = str(wheel_venv / "bin" / "python")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w", str(tmp_path / "dist"),
          str(src)], cwd=tmp_path)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", "--no-index", *map(str, (tmp_path / "dist").glob("*.whl"))],
         cwd=tmp_path)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "PYTHONPATH": ""}
    lpt = str(wheel_venv / "bin" / "lpt")
    _run([lpt, "import-upstream", "--example", str(tmp_path / "run")], cwd=tmp_path, env=env)  # the packaged copy
    res = _run([lpt, "export", str(tmp_path / "run"), str(tmp_path / "out"), "--only", "sft_x_o"], cwd=tmp_path,
               env=env)
    assert "sft_x_o: 56 rows" in res.stdout
    assert "`sft_x_o` | 56 | SFT rows that start from a wrong simple thought" in (tmp_path / "out" / "README.md").read_text()
    rows = _run([py, "-c", "import datasets; ds = datasets.load_dataset(%r, 'sft_x_o', split='train'); "
                 "print(set(ds['cot_type']))" % str(tmp_path / "out")], cwd=tmp_path, env=env).stdout
    assert "{'X_O'}" in rows
