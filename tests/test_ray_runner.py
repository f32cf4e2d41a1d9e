"""The Ray runner (``lpt generate --runner ray``): the same files as the local runner, and nothing lost or doubled
when a worker or the driver is killed.

* the ray-vllm conversion (one processor row per sample, its own seed) is pure and tested without Ray or a GPU;
* on a small local Ray cluster (2 CPUs): every stage's chunk files (names and bytes) and tables equal the local
  runner's, with the REPLAY engine and with the real transformers engine on the tiny random models;
* ``lpt generate --runner ray --address``: an actor SIGKILLed mid-stage (by the pid its engine wrote) is restarted by
  Ray, the driver SIGKILLed mid-stage and rerun: the rows of a clean run, each once;
* a ray-vllm stage runs in rounds through a stand-in for ``ray.data.llm``'s processor (no vLLM here) and gives the
  rows of an engine that draws each sample as that processor would.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.compute as pc
import pytest
from PIL import Image

from builder.settings import ModelConfig, load_config
from builder.engines.base import Request, SamplingParams
from builder.engines.transformers_engine import _row_seed
from builder.pipeline import PipelineError, generate
from builder.ray_runner import actor_count, actor_resources, fan_in, fan_out, processor_kwargs
from builder.stages import STAGES, get_stage
from builder.store import RunDir
from helpers import ReplayEngine, make_source, small_config

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
SAMPLE = ROOT / "builder" / "data" / "sample"
TABLES = ("mcq", "simple_cot", "expansion")
KEYS = {"mcq": "mcq_id", "simple_cot": "sample_id", "expansion": "expansion_id"}
HAVE_RAY = importlib.util.find_spec("ray") is not None
needs_ray = pytest.mark.skipif(not HAVE_RAY, reason="ray is not installed (pip install "
                                                    "'longperceptualthoughts[ray]'): the Ray runner is not tested")


# ---------------------------------------------------------------------------------------- test engines


class PidReplayEngine(ReplayEngine):
    """The REPLAY engine that writes its process id into ``pid_dir`` (so a test can SIGKILL the Ray worker)."""

    def __init__(self, model: str = "replay", *, pid_dir: str, **kw) -> None:
        super().__init__(model, **kw)
        tmp = Path(pid_dir, f".{os.getpid()}")
        tmp.write_text(f"{time.time()} {model}")
        tmp.rename(Path(pid_dir, str(os.getpid())))  # whole, for a reader polling the folder


class FanOutReplay(ReplayEngine):
    """The REPLAY engine drawing each sample as ray.data.llm's vLLM processor is given it by fan_out: sample ``k``
    of a sampled request as a one-sample request seeded ``_row_seed(seed, k)``; a greedy request's one sample."""

    def _reply(self, req: Request, k: int) -> str:
        p = req.params
        seed = _row_seed(p.seed, k) if p.temperature > 0 else p.seed
        return super()._reply(Request(req.messages, p.replace(n=1, seed=seed), req.continue_final_message), 0)


def fake_processor(model_cfg: ModelConfig, *, has_images: bool):
    """A stand-in for ray.data.llm's vLLM processor: the REPLAY engine on each row (first output only)."""
    return lambda ds: ds.map(_fake_generate)


def _plain(x):
    """A value back from a Ray dataset row as plain Python (Arrow lists may come back as numpy arrays)."""
    if hasattr(x, "tolist") and not isinstance(x, (str, bytes)):
        x = x.tolist()
    if isinstance(x, dict):
        return {k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    return x


def _fake_generate(row: dict) -> dict:
    messages = [m if not isinstance(m.get("content"), list) else
                {**m, "content": [p if p.get("type") == "image_pil" else _plain(p) for p in m["content"]]}
                for m in (_plain(m) if not _has_pil(m) else m for m in row["messages"])]
    sp = _plain(row["sampling_params"])
    assert sp["n"] == 1
    req = Request(messages, SamplingParams(seed=sp["seed"], temperature=sp["temperature"]),
                  continue_final_message=messages[-1]["role"] != "user")
    return {"key": row["key"], "request": row["request"], "sample": row["sample"],
            "generated_text": ReplayEngine()._reply(req, 0), "num_generated_tokens": 1}


def _has_pil(message) -> bool:
    content = message.get("content") if isinstance(message, dict) else None
    return isinstance(content, list) and any(isinstance(p, dict) and p.get("type") == "image_pil" for p in content)


# ------------------------------------------------------------------------------ pure: fan out, fan in, sizing


def _req(n: int, temperature: float, seed: int | None = 7, **kw) -> Request:
    return Request([{"role": "user", "content": "q"}], SamplingParams(n=n, temperature=temperature, seed=seed,
                                                                       max_new_tokens=9, **kw))


def test_fan_out_gives_one_row_per_sample_with_the_transformers_row_seed():
    reqs = [_req(3, 0.7, seed=11, top_k=5, bad_words=("text",)), _req(4, 0.0, seed=12),
            Request([{"role": "user", "content": [{"type": "image", "image": Image.new("RGB", (400, 300))},
                                                  {"type": "text", "text": "what?"}]},
                     {"role": "assistant", "content": "<think>"}], SamplingParams(n=2, temperature=1.0, seed=5),
                    continue_final_message=True, max_pixels=100 * 100)]
    rows = fan_out(reqs)
    assert [(r["request"], r["sample"]) for r in rows] == [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)]
    assert [r["sampling_params"]["seed"] for r in rows] == [_row_seed(11, 0), _row_seed(11, 1), _row_seed(11, 2), 12,
                                                            _row_seed(5, 0), _row_seed(5, 1)]
    assert all(r["sampling_params"]["n"] == 1 for r in rows)
    assert rows[0]["sampling_params"] | {"seed": 0} == {"n": 1, "temperature": 0.7, "top_p": 1.0, "top_k": 5,
                                                         "repetition_penalty": 1.0, "max_tokens": 9, "seed": 0,
                                                         "bad_words": ["text"]}
    image = rows[4]["messages"][0]["content"][0]
    assert image["type"] == "image_pil" and image["image_pil"].size[0] * image["image_pil"].size[1] <= 100 * 100
    assert rows[4]["messages"][-1] == {"role": "assistant", "content": "<think>"}


def test_fan_in_restores_order_and_repeats_a_greedy_sample():
    reqs = [_req(3, 0.7), _req(2, 0.0)]
    outs = [{"request": 0, "sample": 2, "generated_text": "c"}, {"request": 1, "sample": 0, "generated_text": "g",
                                                                "num_generated_tokens": 4},
            {"request": 0, "sample": 0, "generated_text": "a"}, {"request": 0, "sample": 1, "generated_text": "b"}]
    got = fan_in(reqs, outs)
    assert [[s.text for s in ss] for ss in got] == [["a", "b", "c"], ["g", "g"]]
    assert got[1][0].num_tokens == 4
    with pytest.raises(ValueError, match="lacks sample"):
        fan_in(reqs, outs[1:])
    with pytest.raises(ValueError, match="came twice"):
        fan_in(reqs, outs + outs[:1])
    with pytest.raises(ValueError, match="unknown request"):
        fan_in(reqs, outs + [{"request": 5, "sample": 0, "generated_text": "x"}])


def test_fan_out_refuses_a_continuation_the_processor_would_not_make():
    bad = Request([{"role": "user", "content": "q"}], SamplingParams(), continue_final_message=True)
    with pytest.raises(ValueError, match="continue_final_message"):
        fan_out([bad])


def test_processor_options_and_actor_sizing():
    cfg = ModelConfig(model="m", engine="ray-vllm", engine_options={"concurrency": 4, "batch_size": 16,
                                                                    "tensor_parallel_size": 2, "max_model_len": 4096})
    assert processor_kwargs(cfg, has_images=True) == {
        "model_source": "m", "engine_kwargs": {"tensor_parallel_size": 2, "max_model_len": 4096}, "concurrency": 4,
        "batch_size": 16, "prepare_multimodal_stage": True}
    gpus = {"CPU": 32.0, "GPU": 8.0}
    vllm = ModelConfig(model="m", engine="vllm", engine_options={"tensor_parallel_size": 2})
    assert actor_resources(vllm, gpus) == {"num_cpus": 1.0, "num_gpus": 2.0}
    assert actor_count(actor_resources(vllm, gpus), gpus, chunks=100) == 4
    cpu_tf = ModelConfig(model="m", engine="transformers", engine_options={"device": "cpu"})
    assert actor_resources(cpu_tf, gpus)["num_gpus"] == 0
    assert actor_resources(ModelConfig(model="m", engine="transformers"), {"CPU": 2.0})["num_gpus"] == 0
    assert actor_count({"num_cpus": 1.0, "num_gpus": 0.0}, {"CPU": 2.0}, chunks=1) == 1


def test_ray_vllm_needs_the_ray_runner(tmp_path):
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    cfg = small_config().apply_overrides(["stage2.engine=ray-vllm"])
    with pytest.raises(PipelineError, match="runs only on the Ray runner"):
        generate(run, cfg, progress=False)
    with pytest.raises(PipelineError, match="Ray runner only"):
        generate(run, cfg, progress=False, address="auto")


def test_cli_runner_options(tmp_path):
    from click.testing import CliRunner

    from builder.cli import main

    res = CliRunner().invoke(main, ["generate", "--help"])
    assert "--runner [local|ray]" in res.output and "--address ADDR" in res.output
    res = CliRunner().invoke(main, ["stage2", str(tmp_path / "run"), "--address", "auto"])
    assert res.exit_code == 2 and "--address is for --runner ray" in res.output


# ------------------------------------------------------------------------------------ on a local Ray cluster


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster (2 CPUs, 500 MB object store) whose workers import the project and these tests."""
    if not HAVE_RAY:
        pytest.skip("ray is not installed (pip install 'longperceptualthoughts[ray]')")
    import ray

    old = os.environ.get("PYTHONPATH")

    def restore() -> None:
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old

    os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(TESTS), *([old] if old else [])])
    try:
        ray.init(num_cpus=2, object_store_memory=500 * 1024 * 1024, include_dashboard=False,
                 logging_level="warning", log_to_driver=False)
    except Exception as e:
        ray.shutdown()
        restore()
        pytest.fail(f"a local Ray cluster did not start: {type(e).__name__}: {e}")
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()
    restore()


def _runner(**kw):
    from builder.ray_runner import RayRunner

    return RayRunner(**kw)


def _same_files(a: RunDir, b: RunDir, stages=TABLES) -> None:
    for stage in stages:
        fa, fb = a.files(stage), b.files(stage)
        assert [p.name for p in fa] == [p.name for p in fb], stage
        assert [p.read_bytes() for p in fa] == [p.read_bytes() for p in fb], stage
        assert a.read(stage).equals(b.read(stage)), stage


REPLAY = [f"stage{k}.engine=helpers:ReplayEngine" for k in (1, 2, 3)]


@needs_ray
def test_replay_rows_and_files_equal_the_local_runner(tmp_path, ray_address):
    cfg = small_config().apply_overrides(REPLAY)
    local, remote = RunDir(tmp_path / "local"), RunDir(tmp_path / "ray")
    make_source(local, tmp_path, n=8)
    make_source(remote, tmp_path, n=8)
    generate(local, cfg, progress=False, echo=lambda s: None)
    with _runner() as runner:
        summaries = generate(remote, cfg, progress=False, echo=lambda s: None, runner=runner)
    _same_files(local, remote)
    assert [s.as_dict() for s in summaries] == [local.manifest["summaries"][k] for k in
                                                ("mcq/0-of-1", "simple_cot/0-of-1", "expansion/0-of-1")]
    assert remote.manifest["models"] == local.manifest["models"]
    assert all(len(local.files(s)) >= 2 for s in TABLES)  # several chunks, spread over the actors


@pytest.fixture
def tiny_models(request):
    return request.getfixturevalue("tiny_vlm"), request.getfixturevalue("tiny_lm")


@needs_ray
def test_transformers_rows_and_files_equal_the_local_runner(tmp_path, ray_address, tiny_models):
    """The real transformers engine on the tiny random models: stage 1 from the sample's descriptions, stage 2 on
    the sample's hand-written MCQs, stage 3 on its hand-written thoughts (random weights write nothing parseable)."""
    from builder.demo import add_fallback_mcqs, add_fallback_thoughts
    from builder.pipeline import prepare_source

    vlm, lm = tiny_models
    cfg = small_config().apply_overrides([
        "stage1.engine=transformers", "stage2.engine=transformers", "stage3.engine=transformers",
        f"stage1.model={lm}", f"stage2.model={vlm}", f"stage3.model={lm}", "stage1.max_new_tokens=12",
        "stage1.reformat_max_new_tokens=12", "stage2.max_new_tokens=8", "stage2.n=2", "stage3.max_new_tokens=8",
        "stage3.n=2", "chunk_size=1"])
    runs = {name: RunDir(tmp_path / name) for name in ("local", "ray")}
    for run in runs.values():
        prepare_source(run, str(SAMPLE), limit=2, echo=lambda s: None)
    with _runner(actors=1) as runner:  # one tiny model per stage on this 2-CPU cluster
        for k in (1, 2, 3):
            for name, run in runs.items():
                if k == 2:
                    add_fallback_mcqs(run)
                if k == 3:
                    add_fallback_thoughts(run, cfg)
                generate(run, cfg, [get_stage(k)], progress=False, echo=lambda s: None,
                         runner=runner if name == "ray" else "local")
    _same_files(runs["local"], runs["ray"])
    assert all(runs["local"].has(s) for s in TABLES)


@needs_ray
def test_an_error_on_a_worker_is_the_stage_s_own(tmp_path, ray_address):
    """A stage's error on a worker (here: an image file gone) reaches the caller as the local runner raises it."""
    cfg = small_config().apply_overrides(REPLAY + ["chunk_size=64"])  # one chunk: the same first error
    run = RunDir(tmp_path / "run")
    make_source(run, tmp_path, n=2)
    generate(run, cfg, [get_stage(1)], progress=False, echo=lambda s: None)
    for image in tmp_path.glob("img_*.png"):
        image.unlink()
    with pytest.raises(FileNotFoundError) as local:
        generate(run, cfg, [get_stage(2)], progress=False, echo=lambda s: None)
    with _runner() as runner, pytest.raises(FileNotFoundError) as remote:
        generate(run, cfg, [get_stage(2)], progress=False, echo=lambda s: None, runner=runner)
    assert str(remote.value) == str(local.value) and "does not exist" in str(remote.value)
    assert "raised on a Ray worker" in remote.value.__notes__[0]
    assert not run.has("simple_cot")


def _cli(run: Path, address: str, settings: list[str]) -> list[str]:
    args = [sys.executable, "-m", "builder.cli", "generate", str(run), "-q", "--runner", "ray", "--address", address]
    for s in settings:
        args += ["--set", s]
    return args


def _wait_for(what, proc: subprocess.Popen, log: Path, seconds: float = 150):
    deadline = time.monotonic() + seconds
    while not (got := what()) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert got and proc.poll() is None, log.read_text()[-3000:] if proc.poll() is not None else "timed out"
    return got


@needs_ray
def test_killed_actor_and_killed_driver_lose_and_duplicate_nothing(tmp_path, ray_address):
    """`lpt generate --runner ray --address ADDR`: one actor SIGKILLed mid-stage 2 (by the pid its engine wrote;
    Ray restarts it and redoes its chunk), then the driver SIGKILLed once stage 3 has written a chunk, then the
    command rerun: the files of a clean local run, each row once; a further rerun redoes nothing."""
    pid_dir = tmp_path / "pids"
    pid_dir.mkdir()
    common = ["chunk_size=2", "stage3.n=2"]
    settings = [f"stage{k}.engine=test_ray_runner:PidReplayEngine" for k in (1, 2, 3)] + [
        f"stage{k}.engine_options={{pid_dir: '{pid_dir}', delay: {d}}}" for k, d in ((1, 0), (2, 0.3), (3, 0.1))
    ] + common
    cfg = load_config("paper", overrides=settings)  # what the command makes of them
    clean, chaos = RunDir(tmp_path / "clean"), RunDir(tmp_path / "chaos")
    make_source(clean, tmp_path, n=8)
    make_source(chaos, tmp_path, n=8)
    generate(clean, load_config("paper", overrides=REPLAY + common), progress=False, echo=lambda s: None)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}

    log = tmp_path / "driver.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(_cli(chaos.path, ray_address, settings), env=env, stdout=out,
                                stderr=subprocess.STDOUT)
    try:
        _wait_for(lambda: chaos.files("simple_cot"), proc, log)
        newest = max(pid_dir.glob("[0-9]*"), key=lambda p: float(p.read_text().split()[0]))  # a stage-2 actor, at work
        assert newest.read_text().split()[1] == cfg.stage2.model
        os.kill(int(newest.name), signal.SIGKILL)
        _wait_for(lambda: chaos.files("expansion"), proc, log)
        assert len(chaos.done_inputs("simple_cot")) == len(clean.done_inputs("simple_cot"))  # stage 2 finished
        proc.send_signal(signal.SIGKILL)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
    assert 0 < len(chaos.done_inputs("expansion")) < len(clean.done_inputs("expansion"))
    stage2_actors = [p for p in pid_dir.glob("[0-9]*") if p.read_text().split()[1] == cfg.stage2.model]
    assert len(stage2_actors) == 3  # two in the pool, and the one Ray started in place of the killed one

    res = subprocess.run(_cli(chaos.path, ray_address, settings), env=env, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 0, (res.stdout + res.stderr)[-3000:]
    _same_files(clean, chaos)
    for stage in TABLES:
        t = chaos.read(stage)
        assert pc.count_distinct(t.column(KEYS[stage])).as_py() == t.num_rows
    assert not list(chaos.path.rglob(".tmp-*"))

    before = {p: p.read_bytes() for s in TABLES for p in chaos.files(s)}
    with _runner() as runner:
        summaries = generate(chaos, cfg, progress=False, echo=lambda s: None, runner=runner)
    assert {p: p.read_bytes() for s in TABLES for p in chaos.files(s)} == before
    assert all(s.counts["items_already_done"] == s.counts["items_in"] > 0 for s in summaries)


@needs_ray
def test_ray_vllm_stages_run_in_rounds_through_the_processor(tmp_path, ray_address):
    """Every stage with engine ray-vllm (stage 1 asks twice: generation, then re-formatting) through a stand-in
    processor: the files of a local run whose engine draws each sample as the processor is given it."""
    local = RunDir(tmp_path / "local")
    remote = RunDir(tmp_path / "ray")
    make_source(local, tmp_path, n=6)
    make_source(remote, tmp_path, n=6)
    base = small_config()
    generate(local, base.apply_overrides([f"stage{k}.engine=test_ray_runner:FanOutReplay" for k in (1, 2, 3)]),
             progress=False, echo=lambda s: None)
    with _runner(processor=fake_processor) as runner:
        generate(remote, base.apply_overrides([f"stage{k}.engine=ray-vllm" for k in (1, 2, 3)]), progress=False,
                 echo=lambda s: None, runner=runner)
    _same_files(local, remote)
    assert local.read("expansion").num_rows > 0
    assert remote.manifest["models"] == local.manifest["models"]


def test_every_stage_declares_what_the_ray_runner_needs():
    for spec in STAGES:
        assert spec.requests and spec.rows and spec.summary, spec.name
