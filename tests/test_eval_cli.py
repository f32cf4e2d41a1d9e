"""``lpt eval`` and the ``lighteval custom`` route: fail fast in one line, flags as arguments, the paper's table.

Offline (tests/conftest.py sets HF_HUB_OFFLINE) with an empty datasets cache, a benchmark without a local copy
must stop before any model is loaded, naming its Hub id and --data-dir; the error text shows it was our check
(not datasets' minute of retries). Runs use a recording stand-in engine (named so) and the real lighteval
Pipeline on stand-in data written by eval_tasks.samples.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lighteval")

from click.testing import CliRunner  # noqa: E402

from builder.engines import Engine, Sample  # noqa: E402
from eval_tasks import model as model_module  # noqa: E402
from eval_tasks import samples  # noqa: E402
from eval_tasks.cli import eval_cmd, run_eval  # noqa: E402
from eval_tasks.model import engine_settings  # noqa: E402
from eval_tasks.tasks import BENCHMARKS, PAPER_QWEN25_VL_7B, DataUnavailable  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AUTHORS_DIR = REPO / "tests" / "data" / "authors_ab1a9a0"  # the authors' files at the pinned commit (MIT)


pytestmark = pytest.mark.usefixtures("own_datasets_cache")  # conftest.py
ENGINE = f"{__name__}:RecordingEngine"


class RecordingEngine(Engine):
    """Stand-in engine (no model): records requests, answers "(A)"; the last one built is ``RecordingEngine.last``."""

    name = "recording"
    last: "RecordingEngine | None" = None

    def __init__(self, model="recording", **options):
        super().__init__(model, **options)
        self.requests = []
        RecordingEngine.last = self

    def generate(self, requests, *, progress=False):
        self.requests.extend(requests)
        return [[Sample(text="<think>ok</think> <answer> (A) </answer>", finish_reason="stop")] for _ in requests]


@pytest.fixture()
def empty_datasets_cache(tmp_path, monkeypatch):
    from datasets import config

    monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
    monkeypatch.delenv("LPT_EVAL_DATA_DIR", raising=False)
    return tmp_path


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return samples.write_sample_data(tmp_path_factory.mktemp("evaldata"), n=3, size=(256, 192))


def test_unreachable_data_fails_before_the_model_in_one_line(empty_datasets_cache):
    engine = RecordingEngine()
    with pytest.raises(DataUnavailable) as err:
        run_eval("some/model", "lpt_mmvp|0,lpt_vstar_direct|0", output_dir=str(empty_datasets_cache / "out"),
                 engine=engine, settings=engine_settings("transformers"))
    msg = str(err.value)
    assert "\n" not in msg and "HF_HUB_OFFLINE is set" in msg  # our check, not datasets' retries
    assert "MMVP/MMVP" in msg and "craigwu/vstar_bench" in msg and "--data-dir" in msg  # authors: their copy
    assert engine.requests == []
    with pytest.raises(DataUnavailable, match="lmms-lab-eval/MMVP"):  # project: the corrected copy
        run_eval("some/model", "lpt_mmvp|0", output_dir=str(empty_datasets_cache / "out"), engine=engine,
                 settings=engine_settings("transformers"), protocol="project")


def test_lpt_eval_unreachable_data_is_one_line(empty_datasets_cache, data_dir):
    result = CliRunner().invoke(eval_cmd, ["some/model", "--tasks", "lpt_mmvp,lpt_mmlu_pro", "--engine", ENGINE,
                                           "--data-dir", str(data_dir / "lpt_mmvp" / "nothing-here"),
                                           "--output-dir", str(empty_datasets_cache / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: cannot load the Hub datasets of lpt_mmvp "), lines
    assert "TIGER-Lab/MMLU-Pro" in lines[0] and "--data-dir" in lines[0] and "Traceback" not in result.output


def test_lighteval_custom_route_fails_fast_in_one_line(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LPT_")}
    env.update({"HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "HF_DATASETS_CACHE": str(tmp_path / "cache"),
                "LPT_ENGINE": "transformers"})
    cmd = [sys.executable, "-m", "lighteval", "custom", "some/model", model_module.__file__, "lpt_mmvp|0",
           "--custom-tasks", "eval_tasks.tasks", "--output-dir", str(tmp_path / "o")]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1, proc.stderr[-3000:]
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("error: lpt_mmvp: cannot load the Hub dataset MMVP/MMVP (HF_HUB_OFFLINE"), last
    assert "--data-dir" in last and "LPT_EVAL_DATA_DIR" in last and "Traceback" not in proc.stderr


def test_missing_authors_files_is_one_line_before_anything_heavy(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LPT_AUTHORS_DIR", str(tmp_path / "no-checkout"))
    result = CliRunner().invoke(eval_cmd, ["some/model", "--tasks", "lpt_mmvp", "--engine", ENGINE, "--data-dir",
                                           str(data_dir), "--output-dir", str(tmp_path / "out")])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "LPT_AUTHORS_DIR" in lines[0] and "prepare.py" in lines[0], result.output
    ok = CliRunner().invoke(eval_cmd, ["some/model", "--tasks", "lpt_mmvp", "--protocol", "project", "--engine",
                                       ENGINE, "--data-dir", str(data_dir), "--output-dir", str(tmp_path / "out")])
    assert ok.exit_code == 0, ok.output  # our protocol needs none of their files
    assert "protocol: project" in ok.output


def test_a_broken_row_with_max_samples_is_skipped_and_counted(tmp_path):
    """The old code raised on an unparsable row and lighteval ended the task, even with --max-samples."""
    samples.write_mmstar(tmp_path / "lpt_mmstar_v", [samples.Spec("Where did the options go?", ["x", "y"], 0,
                                                                  "coarse perception", {"broken": True})])
    engine = RecordingEngine()
    res = run_eval("some/model", "lpt_mmstar_v|0", output_dir=str(tmp_path / "out"), data_dir=str(tmp_path),
                   engine=engine, settings=engine_settings("transformers"), max_samples=1)["results"]
    (got,) = [v for k, v in res.items() if k.startswith("lpt_mmstar_v")]
    assert got["skipped"] == 1.0 and got["skipped_bad_options"] == 1.0 and engine.requests == []


def test_missing_model_is_one_line(data_dir, tmp_path):
    for model, expected in ((str(tmp_path / "no-such-checkpoint"), "model path "),
                            ("no-such-org/no-such-model", "not in the Hugging Face cache")):
        result = CliRunner().invoke(eval_cmd, [model, "--engine", "transformers", "--data-dir", str(data_dir),
                                               "--output-dir", str(tmp_path / "out")])
        assert result.exit_code == 1
        lines = result.output.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("Error: ") and expected in lines[0], result.output


def test_sample_data_writes_stand_ins_and_exits(tmp_path):
    out = tmp_path / "standins"
    result = CliRunner().invoke(eval_cmd, ["--sample-data", str(out), "--tasks", "lpt_mmvp,lpt_mme_rw_v"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in out.iterdir()) == ["lpt_mme_rw_v", "lpt_mmvp"]
    assert list((out / "lpt_mme_rw_v").rglob("*.parquet")) and f"--data-dir {out}" in result.output
    assert CliRunner().invoke(eval_cmd, []).exit_code == 2  # neither MODEL nor --sample-data: a usage error


def test_flags_reach_the_model_as_arguments_not_environment(data_dir, tmp_path, monkeypatch, caplog):
    for var in ("LPT_ENGINE", "LPT_MAX_PIXELS", "LPT_TEMPERATURE", "LPT_MAX_NEW_TOKENS", "LPT_ENGINE_OPTIONS"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LPT_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    before = {k: v for k, v in os.environ.items() if k.startswith("LPT_")}
    result = CliRunner().invoke(eval_cmd, ["some/model", "--tasks", "lpt_cvbench,lpt_mmvp", "--engine", ENGINE,
                                           "--max-pixels", str(40 * 40), "--max-new-tokens", "7", "--temperature",
                                           "0.5", "--max-samples", "1", "--data-dir", str(data_dir),
                                           "--output-dir", str(tmp_path / "out")], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert {k: v for k, v in os.environ.items() if k.startswith("LPT_")} == before
    requests = RecordingEngine.last.requests
    assert requests and all(r.max_pixels == 40 * 40 and r.params.max_new_tokens == 7 and r.params.temperature == 0.5
                            for r in requests)
    for r in requests:
        w, h = r.messages[-1]["content"][0]["image"].size
        assert w * h <= 40 * 40  # the tasks cap with the flag's value too
    # the paper's table: CV-Bench 74.74 and MMVP 73.67 next to this run's macro accuracy, and the results file
    out = result.output
    assert any(line.startswith("CV-Bench") and line.rstrip().endswith("74.74") for line in out.splitlines()), out
    assert any(line.startswith("MMVP") and line.rstrip().endswith("73.67") for line in out.splitlines()), out
    path = Path(out.strip().splitlines()[-1].removeprefix("results: "))
    assert path.is_file() and "lpt_mmvp|0" in json.loads(path.read_text())["results"]
    # one item per task: CV-Bench's formula and MMVP's pairs cannot be computed, and the report says so
    assert "acc_cvbench_official) skipped" in out and "acc_pair) skipped" in out
    assert "protocol: authors" in out  # the default: comparable with the paper
    head = out.splitlines()[0]
    assert "acc_macro %" in head and "acc_macro_authors %" in head and "paper Qwen2.5-VL-7B %" in head
    assert "few shot" not in caplog.text  # lighteval's irrelevant notice is silenced


def test_settings_argument_wins_over_environment(data_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("LPT_MAX_PIXELS", str(500 * 500))
    monkeypatch.setenv("LPT_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    engine = RecordingEngine()
    run_eval("some/model", "lpt_mmvp|0", output_dir=str(tmp_path / "out"), data_dir=str(data_dir), engine=engine,
             settings=engine_settings("transformers", max_pixels=32 * 32))
    assert engine.requests and all(r.max_pixels == 32 * 32 for r in engine.requests)
    assert all(r.messages[-1]["content"][0]["image"].size[0] * r.messages[-1]["content"][0]["image"].size[1]
               <= 32 * 32 for r in engine.requests)


def test_paper_numbers_cover_every_benchmark():
    assert set(PAPER_QWEN25_VL_7B) == set(BENCHMARKS)
    assert PAPER_QWEN25_VL_7B["lpt_cvbench"] == 74.74 and PAPER_QWEN25_VL_7B["lpt_realworldqa"] is None
