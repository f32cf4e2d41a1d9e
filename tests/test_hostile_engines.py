"""Hostile round, engines: an engine is taken by its registered name; a ``module:Class`` runs nothing unless the
user allowed it, and even then its source must define the class on an engine base before the module is imported."""

from __future__ import annotations

import sys

import pytest
from click.testing import CliRunner

from builder.cli import main
from builder.engines import ALLOW_MODULES_ENV, engine_class, registered_engines
from helpers import make_source
from builder.store import RunDir


@pytest.fixture
def not_allowed(monkeypatch):
    monkeypatch.delenv(ALLOW_MODULES_ENV, raising=False)


@pytest.mark.parametrize("kind", ["this:X", "venv.__main__:X", "os:system", "helpers:ReplayEngine"])
def test_a_module_class_is_not_imported_without_the_allow_flag(kind, not_allowed, capfd):
    module = kind.split(":")[0]
    before = module in sys.modules
    with pytest.raises(ValueError, match="imported only with --allow-engine-module"):
        engine_class(kind)
    assert (module in sys.modules) == before  # not imported, so nothing of it ran
    assert capfd.readouterr().out == ""


@pytest.mark.parametrize("kind, why", [("this:X", "defines no class 'X'"), ("venv.__main__:X", "defines no class 'X'"),
                                       ("builder.engines.base:Engine", "does not derive from an Engine class")])
def test_with_the_flag_the_class_is_checked_before_its_module_runs(kind, why, capfd):
    module = kind.split(":")[0]
    before = module in sys.modules
    with pytest.raises(ValueError, match=why):
        engine_class(kind)
    assert (module in sys.modules) == before
    out = capfd.readouterr()
    assert "Beautiful is better than ugly" not in out.out and "usage:" not in out.out + out.err


def test_the_cli_refuses_in_one_line_and_allows_with_the_flag(tmp_path, not_allowed):
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    res = CliRunner().invoke(main, ["stage1", str(run.path), "--set", "stage1.engine=this:X"])
    assert res.exit_code == 1 and "--allow-engine-module" in res.output
    assert "Traceback" not in res.output and "Beautiful" not in res.output
    assert res.output.strip().splitlines()[-1].count("--allow-engine-module") == 1  # one line says it all
    res = CliRunner().invoke(main, ["--allow-engine-module", "stage1", str(run.path), "--set", "stage1.engine=this:X"])
    assert res.exit_code == 1 and "defines no class 'X'" in res.output and "Beautiful" not in res.output


def test_an_installed_package_adds_an_engine_by_name(tmp_path, monkeypatch, not_allowed):
    (tmp_path / "lpt_echo_engine.py").write_text(
        "from helpers import ReplayEngine\n\nclass EchoEngine(ReplayEngine):\n    pass\n")
    info = tmp_path / "lpt_echo_engine-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: lpt-echo-engine\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[longperceptualthoughts.engines]\necho = lpt_echo_engine:EchoEngine\n"
                                          "transformers = lpt_echo_engine:EchoEngine\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert registered_engines()["echo"] == "lpt_echo_engine:EchoEngine"
    assert engine_class("echo").__name__ == "EchoEngine"  # no allow flag needed: the user installed it
    assert engine_class("transformers").__name__ == "TransformersEngine"  # a package cannot take a built-in name
