"""README.md is true line by line: its command blocks run as written, in order, in a fresh folder after the set-up.

The set-up line (`bash scripts/setup.sh && .venv/bin/lpt demo`) is played by a `.venv/bin` of shims onto this
interpreter and `lpt demo --tiny` (the same outputs as `lpt demo`, in seconds: tiny random-weight models). Then
every ```bash and ```python block runs, in the order the README gives them, in that folder, offline. A block
marked `<!-- readme-test: skip (why) -->` (DOCCI, a GPU, the Hub) is not run; one marked
`<!-- readme-test: needs the eval extra -->` runs when lighteval is installed. Afterwards: where `lpt stats`
wrote, the exported dataset loads by name, and `.gitignore` covers everything the commands wrote.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BLOCK = re.compile(r"(?:<!--(?P<marker>[^>]*)-->\s*\n)?```(?P<lang>bash|python)\n(?P<body>.*?)```", re.S)


def readme_blocks() -> list[tuple[str, str, str]]:
    """(language, marker, body) of each command block, in README order."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return [(m["lang"], (m["marker"] or "").strip(), m["body"]) for m in BLOCK.finditer(text)]


def test_blocks_are_found_and_marked():
    blocks = readme_blocks()
    assert sum(1 for _, marker, _ in blocks if marker.startswith("readme-test: skip")) >= 5
    run = [body for _, marker, body in blocks if not marker.startswith(("readme-test: skip", "setup-commands"))]
    assert any('load_dataset("longperceptualthoughts", "sft")' in body for body in run)
    assert any("lpt eval --sample-data" in body for body in run)
    bare = [b for lang, m, b in blocks if lang == "bash" and not m.startswith("readme-test: skip")
            and re.search(r"^lpt ", b, re.M) and "source .venv/bin/activate" not in b]
    assert not bare, f"a block runs a bare `lpt` without activating .venv: {bare}"


def _shims(folder: Path) -> dict[str, str]:
    """``folder/.venv/bin`` with lpt, python and activate onto this interpreter and this checkout."""
    bin_dir = folder / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    shims = {"lpt": f'#!/bin/sh\nexec "{sys.executable}" -m builder.cli "$@"\n',
             "python": f'#!/bin/sh\nexec "{sys.executable}" "$@"\n',
             "activate": f'export PATH="{bin_dir}:$PATH"\n'}
    for name, text in shims.items():
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755 | stat.S_IXUSR)
    return {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
            "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "LPT_CACHE": str(folder / ".cache" / "lpt"),
            "HF_HOME": str(folder / ".cache" / "hf"), "MPLBACKEND": "Agg"}


def _run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    res = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=1200)
    assert res.returncode == 0, f"README block failed:\n{what}\n--- stdout\n{res.stdout[-3000:]}\n--- stderr\n" \
                                f"{res.stderr[-3000:]}"


def test_every_offline_block_runs_in_order_after_the_setup(tmp_path):
    env = _shims(tmp_path)
    # the set-up line's `lpt demo`, with tiny models: lpt-demo/ and ./longperceptualthoughts as a newcomer has them
    _run([str(tmp_path / ".venv/bin/lpt"), "demo", "--tiny", "-q"], tmp_path, env, "lpt demo --tiny")
    summary = json.loads((tmp_path / "lpt-demo" / "summary.json").read_text())
    assert "dpo" in summary["export"]["configs"], summary["export"]  # the demo shows the DPO half too
    ran = 0
    for lang, marker, body in readme_blocks():
        if marker.startswith(("readme-test: skip", "setup-commands")):
            continue
        if marker.startswith("readme-test: needs the eval extra") and importlib.util.find_spec("lighteval") is None:
            continue
        cmd = ["bash", "-euo", "pipefail", "-c", body] if lang == "bash" else [sys.executable, "-c", body]
        _run(cmd, tmp_path, env, body)
        ran += 1
    assert ran >= 5
    # `lpt stats RUN` writes beside its input, not into the current folder
    assert (tmp_path / "runs" / "example-stats").is_dir() and not (tmp_path / "example-stats").exists()
    # everything the commands wrote is ignored by git (a clone stays clean)
    written = [p for p in tmp_path.iterdir() if p.name not in (".venv", ".cache")]
    for p in written:
        name = p.name + ("/" if p.is_dir() else "")
        res = subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT)
        assert res.returncode == 0, f"the README's commands write {name}, which .gitignore does not cover"


def test_load_dataset_by_name_from_the_folder_of_an_export(tmp_path, monkeypatch):
    """`lpt export RUN` (no OUT) writes ./longperceptualthoughts, and exactly the README's line loads it."""
    from click.testing import CliRunner

    from builder.cli import main

    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    assert runner.invoke(main, ["import-upstream", "--example", "runs/example"]).exit_code == 0
    res = runner.invoke(main, ["export", "runs/example", "--only", "sft"])
    assert res.exit_code == 0, res.output
    assert 'load_dataset("longperceptualthoughts", "sft")' in res.output
    from datasets import load_dataset

    ds = load_dataset("longperceptualthoughts", "sft")
    assert ds["train"].num_rows == 112 and "messages" in ds["train"].column_names


@pytest.mark.skipif(not (ROOT / ".git").exists(), reason="needs the git checkout")
def test_readme_outputs_are_gitignored_by_name():
    for name in ("out/", "data/", "longperceptualthoughts/", "runs/example-stats/", "example.html", "eval_results/",
                 "lpt-demo/"):
        assert subprocess.run(["git", "check-ignore", "-q", "--no-index", name], cwd=ROOT).returncode == 0, name


def test_the_quick_start_view_and_card_name_every_stage_model(tmp_path):
    """The viewer's header and the card's "How it was made" name the stage-1 model too (GPT-4o wrote the
    example's questions), and a generated run's models reach the header as text; the type chips are not in
    the monospace font in which O reads like 0."""
    from builder.export import RUN_MANIFEST, provenance
    from builder.importer import import_upstream
    from builder.view import collect

    run = import_upstream(ROOT / "builder" / "data" / "upstream_example", tmp_path / "runs" / "example")
    models = collect(run.path, images=False)["meta"]["models"]
    assert all(isinstance(v, str) for v in models.values()), models
    assert any(v.startswith("gpt-4o") for v in models.values()), models
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / RUN_MANIFEST).write_text(json.dumps(run.manifest))
    stage1 = [r for r in provenance(tmp_path / "out") if r["stage"].startswith("stage1")]
    assert stage1 and stage1[0]["model"].startswith("gpt-4o"), stage1
    run.update_manifest(models={"mcq": "org/stage-one-model"})  # what a generated run records
    assert "org/stage-one-model" in collect(run.path, images=False)["meta"]["models"].values()
    css = (ROOT / "builder" / "data" / "viewer" / "viewer.css").read_text()
    for rule in re.findall(r"\.chip\.(?:type|kind) \{[^}]*\}", css):
        assert "var(--mono)" not in rule, rule
