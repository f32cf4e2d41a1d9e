"""What a newcomer can run into in the first hour fails in one line that says what to do, never a traceback.

Each command runs as a real ``lpt`` process (``python -m builder.cli``) on real inputs. Two stand-ins, named so:
an uninstalled package is played by ``sys.modules[name] = None`` (its import then fails as a missing one does),
and "offline" by a proxy on a closed local port (urllib then fails to connect, as it does without a network).
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "builder" / "data" / "sample"
CLOSED_PORT_PROXY = "http://127.0.0.1:9"  # the discard port: nothing listens, the connection is refused

# runs the lpt CLI with the named packages made unimportable (the stand-in for "not installed")
WITHOUT_PACKAGES = textwrap.dedent("""
    import sys
    for name in sys.argv[1].split(","):
        sys.modules[name] = None
    sys.argv = ["lpt", *sys.argv[2:]]
    from builder.cli import main
    main()
""")


def _env(**extra: str) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
           "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    env.update(extra)
    return env


def lpt(*args: str, cwd: Path, without: str | None = None, **env: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-c", WITHOUT_PACKAGES, without, *args] if without else \
        [sys.executable, "-m", "builder.cli", *args]
    return subprocess.run(cmd, cwd=cwd, env=_env(**env), capture_output=True, text=True, timeout=600)


def one_line(res: subprocess.CompletedProcess) -> str:
    """The failed command's error: exactly one non-empty line on stderr (what it printed before, e.g. which
    stage starts, is on stdout), no traceback anywhere; returns that line."""
    assert res.returncode != 0, res.stdout + res.stderr
    assert "Traceback" not in res.stdout + res.stderr, res.stdout + res.stderr
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, res.stderr
    return lines[0]


def test_download_docci_offline_names_the_url_and_leaves_no_folder(tmp_path):
    dest = tmp_path / "data" / "docci"
    res = lpt("download-docci", str(dest), "--no-images", cwd=tmp_path,
              https_proxy=CLOSED_PORT_PROXY, HTTPS_PROXY=CLOSED_PORT_PROXY)
    line = one_line(res)
    assert "https://storage.googleapis.com/docci/data/docci_descriptions.jsonlines" in line
    assert "download by hand" in line
    assert not (tmp_path / "data").exists()  # no empty folder for the next command to trip over


def test_generate_on_an_empty_folder_says_it_is_not_docci(tmp_path):
    (tmp_path / "data" / "docci").mkdir(parents=True)
    line = one_line(lpt("generate", "runs/paper", "--source", "data/docci", "--split", "train", "--subset", "500",
                        cwd=tmp_path))
    assert "not a DOCCI folder" in line and "download-docci" in line


def test_generate_on_docci_without_images_says_the_download_is_incomplete(tmp_path):
    docci = tmp_path / "docci"
    docci.mkdir()
    row = {"example_id": "train_00000", "split": "train", "image_file": "train_00000.jpg", "description": "A cat."}
    (docci / "docci_descriptions.jsonlines").write_text(json.dumps(row) + "\n")
    line = one_line(lpt("generate", "runs/x", "--source", str(docci), "--subset", "1", cwd=tmp_path))
    assert "no images/ folder" in line and "incomplete" in line


@pytest.mark.parametrize("engine, package", [("vllm", "vllm"), ("openai", "openai")])
def test_an_engine_without_its_package(tmp_path, engine, package):
    line = one_line(lpt("generate", "runs/x", "--source", str(SAMPLE), "--limit", "1", "--engine", engine, "-q",
                        cwd=tmp_path, without=package))
    assert line.startswith("Error: ") and f"needs the {package} package" in line and "pip install" in line


def test_the_ray_runner_without_ray(tmp_path):
    line = one_line(lpt("generate", "runs/x", "--source", str(SAMPLE), "--limit", "1", "--runner", "ray", "-q",
                        cwd=tmp_path, without="ray"))
    assert "Ray" in line and "longperceptualthoughts[ray]" in line


@pytest.mark.skipif(importlib.util.find_spec("lighteval") is None, reason="needs the eval extra (lighteval)")
def test_lpt_eval_with_vllm_missing(tmp_path, tiny_vlm):
    data = tmp_path / "eval_data"
    subprocess.run([sys.executable, "-m", "builder.cli", "eval", "--sample-data", str(data), "--tasks", "lpt_mmvp"],
                   cwd=tmp_path, env=_env(), check=True, capture_output=True, timeout=600)
    line = one_line(lpt("eval", str(tiny_vlm), "--tasks", "lpt_mmvp", "--data-dir", str(data), "--engine", "vllm",
                        "--output-dir", str(tmp_path / "out"), cwd=tmp_path, without="vllm"))
    assert "needs the vllm package" in line


@pytest.mark.skipif(importlib.util.find_spec("lighteval") is None, reason="needs the eval extra (lighteval)")
def test_lpt_lighteval_custom_offline_without_data_is_quiet(tmp_path):
    """``lpt-lighteval`` is lighteval's CLI with the offline fixes applied before its registry loads: no nltk
    download errors, no FutureWarning, no traceback; the one error line names the task (lighteval's own log lines
    about what it starts stay)."""
    res = subprocess.run([sys.executable, "-m", "eval_tasks.lighteval_cli", "custom", "dummy",
                          str(ROOT / "eval_tasks" / "model.py"), "lpt_mmvp|0", "--custom-tasks", "eval_tasks.tasks",
                          "--max-samples", "2"], cwd=tmp_path, env=_env(), capture_output=True, text=True,
                         timeout=600)
    out = res.stdout + res.stderr
    assert res.returncode != 0
    for noise in ("nltk_data", "FutureWarning", "Traceback"):
        assert noise not in out, out
    errors = [line for line in out.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "lpt_mmvp" in errors[0] and "MMVP/MMVP" in errors[0], out


def _exception_of(code: str, cwd: Path) -> dict:
    """Run ``code`` in a fresh interpreter; the exception it raises: type, message, whether it is chained."""
    wrapper = textwrap.dedent("""
        import json, sys
        try:
            exec(sys.argv[1])
        except Exception as e:
            chained = e.__cause__ is not None or (e.__context__ is not None and not e.__suppress_context__)
            print(json.dumps({"type": type(e).__name__, "message": str(e), "chained": chained}))
        else:
            print(json.dumps(None))
    """)
    res = subprocess.run([sys.executable, "-c", wrapper, code], cwd=cwd, env=_env(), capture_output=True, text=True,
                         timeout=600)
    return json.loads(res.stdout.strip().splitlines()[-1])


def _assert_one_line(exc: dict | None) -> str:
    assert exc is not None, "no error was raised"
    assert not exc["chained"], exc  # one exception, not a chain of tracebacks
    assert "\n" not in exc["message"] and exc["message"], exc
    return exc["message"]


def test_lpt30k_without_the_release(tmp_path):
    exc = _exception_of(textwrap.dedent("""
        from longperceptualthoughts import LongPerceptualThoughts
        b = LongPerceptualThoughts(config_name="lpt30k", docci_dir="data/docci", cache_dir="cache")
        b.download_and_prepare()
    """), tmp_path)
    message = _assert_one_line(exc)
    assert exc["type"] == "ValueError" and "andrewliao11/LongPerceptualThoughts-30k" in message
    assert "hf download" in message and "release=" in message


def test_load_and_the_builder_on_a_missing_config_or_folder(tmp_path):
    message = _assert_one_line(_exception_of(
        'import longperceptualthoughts as lpt; lpt.load("sft", "no-such-export")', tmp_path))
    assert "no-such-export" in message and "lpt export" in message
    message = _assert_one_line(_exception_of(
        'import longperceptualthoughts as lpt; lpt.LongPerceptualThoughts(config_name="no_such_config")', tmp_path))
    assert "no_such_config" in message and "sft" in message  # names it and lists the configs there are


def test_the_demo_runs_torch_on_one_thread_on_a_busy_machine(monkeypatch):
    """Not an error, but the first hour's worst moment: on a machine with other work torch's threads
    spin-wait for one another and the demo seemed stuck. A busy machine is played by os.getloadavg (named)."""
    import torch

    from builder.demo import fit_threads_to_load

    before = torch.get_num_threads()
    said = []
    try:
        torch.set_num_threads(2)
        monkeypatch.setattr(os, "getloadavg", lambda: (0.0, 0.0, 0.0))  # quiet: torch's setting stays
        assert fit_threads_to_load(said.append) == 2 and torch.get_num_threads() == 2 and not said
        monkeypatch.setattr(os, "getloadavg", lambda: (4.0 * (os.cpu_count() or 1), 0.0, 0.0))  # busy
        assert fit_threads_to_load(said.append) == 2 and torch.get_num_threads() == 1
        assert said and "1 thread" in said[0]
    finally:
        torch.set_num_threads(before)
