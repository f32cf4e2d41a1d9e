"""eval_tasks.model (the lighteval custom model on builder.engines), eval_tasks.cli and the offline fixes.

- A recording engine (a stand-in Engine, named so) checks what the model sends: image first, system turn,
  pixel cap, greedy, new tokens from the task (1024, 2048 for MMLU-Pro), text-only items as plain strings.
- The tiny random Qwen2.5-VL (fixture ``tiny_vlm``) runs all seven tasks through the real transformers
  engine, via ``lpt eval``'s Python entry point and via the documented ``lighteval custom`` command.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("lighteval")

from builder.engines import Engine, Sample  # noqa: E402
from eval_tasks import _offline, samples  # noqa: E402
from eval_tasks import model as model_module  # noqa: E402
from eval_tasks.cli import run_eval  # noqa: E402
from eval_tasks.tasks import BENCHMARKS, task_string  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
AUTHORS_DIR = REPO / "tests" / "data" / "authors_ab1a9a0"  # the authors' files at the pinned commit (MIT)


pytestmark = pytest.mark.usefixtures("own_datasets_cache")  # conftest.py


def _base(result_key: str) -> str:
    """``"lpt_vstar:0"`` / ``"lpt_vstar|0"`` -> ``"lpt_vstar"``."""
    return result_key.split("|")[0].split(":")[0]


class RecordingEngine(Engine):
    """Stand-in engine (no model): records requests and answers "(A)"."""

    name = "recording"

    def __init__(self, model="recording", **options):
        super().__init__(model, **options)
        self.requests = []

    def generate(self, requests, *, progress=False):
        self.requests.extend(requests)
        return [[Sample(text="<think>ok</think> <answer> (A) </answer>", finish_reason="stop")] for _ in requests]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    return samples.write_sample_data(tmp_path_factory.mktemp("evaldata"), n=3, size=(1024, 768))


@pytest.fixture()
def lpt_env(monkeypatch, tmp_path):
    for var in ("LPT_ENGINE", "LPT_DTYPE", "LPT_BATCH_SIZE", "LPT_ENGINE_OPTIONS", "LPT_TEMPERATURE"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("LPT_MAX_PIXELS", str(128 * 128))
    monkeypatch.setenv("LPT_EVAL_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path


@pytest.mark.parametrize("protocol", ["authors", "project"])
def test_model_sends_image_first_capped_greedy_requests(data_dir, lpt_env, protocol):
    engine = RecordingEngine()
    res = run_eval("recording-model", task_string(), output_dir=str(lpt_env / "out"), data_dir=str(data_dir),
                   engine=engine, protocol=protocol)["results"]
    assert {_base(k) for k in res} >= set(BENCHMARKS)
    assert all(0.0 <= v["acc_macro"] <= 1.0 for k, v in res.items() if k != "all")
    by_kind = {"text": [], "image": []}
    for r in engine.requests:
        system, user = r.messages
        assert system["role"] == "system" and "<answer>" in system["content"]
        assert r.params.temperature == 0.0 and r.params.n == 1 and r.max_pixels == 128 * 128
        if isinstance(user["content"], str):
            by_kind["text"].append(r)
        else:
            types_ = [p["type"] for p in user["content"]]
            assert types_ == ["image", "text"]  # Qwen2.5-VL order: image before text
            w, h = user["content"][0]["image"].size
            assert w * h <= 128 * 128  # capped by the task (LPT_MAX_PIXELS) before the engine sees it
            by_kind["image"].append(r)
    assert {r.params.max_new_tokens for r in by_kind["text"]} == {2048}  # MMLU-Pro
    # the authors' vllm_eval.py: 2048 for every benchmark; ours: 1024 but for MMLU-Pro
    assert {r.params.max_new_tokens for r in by_kind["image"]} == {2048 if protocol == "authors" else 1024}
    assert len(by_kind["text"]) == 3


def test_lpt_eval_command(data_dir, lpt_env):
    from click.testing import CliRunner

    from eval_tasks.cli import eval_cmd

    out = lpt_env / "cli-out"
    result = CliRunner().invoke(eval_cmd, ["some/model", "--tasks", "lpt_mmvp,lpt_mmlu_pro", "--direct", "--engine",
                                           f"{__name__}:RecordingEngine", "--data-dir", str(data_dir),
                                           "--output-dir", str(out)], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    (saved,) = list(out.rglob("results_*.json"))
    res = json.loads(saved.read_text())["results"]
    assert {_base(k) for k in res} == {"lpt_mmvp_direct", "lpt_mmlu_pro_direct", "all"}
    bogus = CliRunner().invoke(eval_cmd, ["m", "--tasks", "bogus_direct"])
    assert bogus.exit_code == 2 and "unknown task 'bogus_direct'" in bogus.output and "Traceback" not in bogus.output
    bad = CliRunner().invoke(eval_cmd, ["m", "--tasks", "nope"])
    assert bad.exit_code != 0 and "unknown task 'nope'" in bad.output


def test_cache_key_follows_options_and_stays_out_of_checkpoints(tmp_path, monkeypatch):
    ckpt = tmp_path / "ckpt"
    ckpt.mkdir()
    (ckpt / "config.json").write_text("{}")
    monkeypatch.delenv("LPT_EVAL_CACHE_DIR", raising=False)
    a = model_module.cache_config(str(ckpt), model_module.engine_options_from_env({"LPT_ENGINE": "transformers"}))
    b = model_module.cache_config(str(ckpt), model_module.engine_options_from_env(
        {"LPT_ENGINE": "transformers", "LPT_MAX_PIXELS": "1000"}), cache_dir=str(tmp_path / "c"))
    assert not a.model_name.startswith("/") and a.model_name.startswith("local/ckpt-")
    assert a.engine_settings != b.engine_settings and b.cache_dir == str(tmp_path / "c")
    (ckpt / "model.safetensors").write_text("new weights")
    c = model_module.cache_config(str(ckpt), model_module.engine_options_from_env({"LPT_ENGINE": "transformers"}))
    assert c.engine_settings["files"] != a.engine_settings["files"]


def test_env_options():
    got = model_module.engine_options_from_env({"LPT_ENGINE": "transformers", "LPT_DTYPE": "bfloat16",
                                                "LPT_BATCH_SIZE": "4", "LPT_ENGINE_OPTIONS": '{"device": "cpu"}'})
    assert got == {"engine": "transformers", "engine_options": {"device": "cpu", "dtype": "bfloat16", "batch_size": 4},
                   "max_pixels": 512 * 512, "temperature": 0.0, "max_new_tokens": None}
    with pytest.raises(ValueError, match="JSON object"):
        model_module.engine_options_from_env({"LPT_ENGINE_OPTIONS": "[1]"})


def test_only_one_lighteval_model_class_in_module():
    from lighteval.models.abstract_model import LightevalModel

    found = [n for n in dir(model_module) if isinstance(getattr(model_module, n), type)
             and issubclass(getattr(model_module, n), LightevalModel) and getattr(model_module, n) is not LightevalModel]
    assert found == ["LPTEngineModel"]


def test_offline_stub_is_created(tmp_path, monkeypatch):
    stub = tmp_path / "tasks" / "tasks" / "tinyBenchmarks.pkl"
    stub.parent.mkdir(parents=True)
    monkeypatch.setattr(_offline, "tiny_benchmarks_path", lambda: stub)
    monkeypatch.setattr(_offline, "_done", False)
    _offline.prepare_lighteval()
    assert stub.is_file()
    assert _offline.tiny_benchmarks_path is not None


# ------------------------------------------------------------------------------- tiny random VLM


@pytest.fixture()
def tiny_vlm_path(request):
    """The engines helper's ``tiny_vlm`` (tests/conftest.py); skip while it or the transformers engine is absent."""
    pytest.importorskip("builder.engines.transformers_engine")
    try:
        return request.getfixturevalue("tiny_vlm")
    except pytest.FixtureLookupError:
        pytest.skip("fixture tiny_vlm (tests/conftest.py) not available yet")


@pytest.fixture()
def tiny_env(lpt_env, monkeypatch):
    monkeypatch.setenv("LPT_ENGINE", "transformers")
    monkeypatch.setenv("LPT_MAX_PIXELS", str(64 * 64))
    return lpt_env


def test_tiny_vlm_runs_all_seven_tasks(tiny_vlm_path, data_dir, tiny_env, monkeypatch):
    monkeypatch.setenv("LPT_MAX_NEW_TOKENS", "8")  # random weights rarely stop by themselves
    res = run_eval(str(tiny_vlm_path), task_string(), output_dir=str(tiny_env / "out"), data_dir=str(data_dir),
                   max_samples=2)["results"]
    res = {_base(k): v for k, v in res.items()}
    for bench in BENCHMARKS:
        assert 0.0 <= res[bench]["acc_macro"] <= 1.0 and 0.0 <= res[bench]["acc_micro"] <= 1.0


def test_lighteval_custom_command(tiny_vlm_path, data_dir, tmp_path):
    env = {**os.environ, "LPT_ENGINE": "transformers", "LPT_EVAL_DATA_DIR": str(data_dir),
           "LPT_MAX_PIXELS": str(64 * 64), "LPT_MAX_NEW_TOKENS": "8", "LPT_EVAL_CACHE_DIR": str(tmp_path / "c"),
           "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1"}
    cmd = [sys.executable, "-m", "lighteval", "custom", str(tiny_vlm_path), model_module.__file__,
           "lpt_vstar|0,lpt_mmlu_pro|0", "--custom-tasks", "eval_tasks.tasks", "--output-dir", str(tmp_path / "o"),
           "--max-samples", "2"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    (result,) = list((tmp_path / "o" / "results").rglob("results_*.json"))
    res = {_base(k): v for k, v in json.loads(result.read_text())["results"].items()}
    assert 0.0 <= res["lpt_vstar"]["acc_macro"] <= 1.0 and 0.0 <= res["lpt_mmlu_pro"]["acc_macro"] <= 1.0
