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
