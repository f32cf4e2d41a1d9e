"""The repository keeps its promises: CI runs exactly README's test command; the package data ships."""

import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_commands() -> list[str]:
    text = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- setup-commands -->\s*```(?:bash|sh)?\n(.*?)```", text, re.S)
    assert block, "README.md must keep its two set-up commands in the setup-commands block"
    return [line.strip() for line in block.group(1).splitlines() if line.strip() and not line.startswith("#")]


def test_ci_runs_exactly_the_readme_test_command():
    demo, tests = _readme_commands()
    assert demo.startswith("bash scripts/setup.sh") and demo.endswith("lpt demo")
    ci_lines = [l.strip() for l in (ROOT / ".ci/run").read_text().splitlines()]
    assert tests in ci_lines, f"{tests!r} must appear verbatim in .ci/run"


def test_console_script_and_extras():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert meta["scripts"]["lpt"] == "builder.cli:main"
    assert {"vllm", "eval", "dev"} <= set(meta["optional-dependencies"])


def test_no_machine_paths_and_no_outside_files_named():
    """The code explains itself: no absolute path of a machine, no file outside the repository named."""
    bad = re.compile("|".join(["/wo" + "rk/", "/ro" + "ot/", r"\.\./sha" + "red", r"SPEC\.m" + "d", r"resea" + r"rch/\w"]))
    import subprocess

    listed = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True)
    paths = [ROOT / f for f in listed.stdout.splitlines()] if listed.returncode == 0 else list(ROOT.rglob("*"))
    files = [p for p in paths if p.suffix in (".py", ".md", ".j2", ".toml", ".sh")  # the project's own files,
             and not any(part in (".venv", ".git", "upstream_example", "build", "lpt-demo") for part in p.parts)
             and p.is_file() and not p.is_symlink()]  # not what its commands wrote (lpt-demo/, runs/)
    hits = [f"{p.relative_to(ROOT)}:{n}" for p in files
            for n, line in enumerate(p.read_text(encoding="utf-8").splitlines(), 1) if bad.search(line)]
    assert not hits, hits
