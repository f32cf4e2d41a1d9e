"""The Ray runner: each stage as a Ray Data pipeline, on one machine or a cluster (``lpt generate --runner ray``).

A stage runs as its local run does, with the work spread over Ray actors:

* the driver takes the stage's planned inputs (:func:`builder.runtime.plan_stage`), keeps this shard's pending ones
  and forms the same chunks as the local runner (:func:`builder.runtime.chunk_loop`, under the shard's lock, after
  the same checks);
* the chunks become a Ray dataset, one row per chunk, and ``map_batches`` (one chunk a batch) sends them to a pool
  of actors; each actor holds the stage's engines, built from the stage's settings
  (:meth:`builder.stages.contract.ModelConfig.load_engine`: vLLM on GPU workers, transformers, openai, ``module:Class``), and
  turns a chunk into rows as the local runner does (:func:`builder.runtime.chunk_rows`: the stage's ``requests``,
  the engines, the stage's ``rows``);
* the driver writes each finished chunk into the run directory (:meth:`builder.store.RunDir.write_chunk`): the same
  file names, input ids and settings metadata, so the files are byte for byte those of the local runner.

Only the driver writes, and only finished chunks: a killed actor is restarted by Ray and its chunk done again, and
a killed driver leaves finished chunks, which a rerun skips (the run directory's done-set). A stage starts only
when its input is complete across all shards, as with the local runner. The workers need the project, its
engines, a plugin stage's module and the files the stages read (the source images) at the same paths (a shared
file system).

``stageN.engine=ray-vllm`` runs that stage's model through ``ray.data.llm``'s vLLM processor instead (GPU
clusters; tensor and pipeline parallel vLLM engines placed by Ray). That processor keeps only the *first* output of a
request, so a request for ``n`` samples is fanned out into one row per sample with its own seed: sample ``k`` gets
the seed the transformers engine gives its row ``k`` (:func:`fan_out`, :func:`fan_in`, pure and tested without a
GPU). The processor is a dataset-wide step, so the driver makes the requests of every pending chunk (the stage's
``requests``), sends them through the processor in one pass per round (a stage may declare further rounds, e.g.
stage 1's re-format, made from the answers of the rounds before) and writes each chunk's ``rows`` of the answers:
requests -> processor -> rows, with no replay.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from builder.engines import RAY_VLLM
from builder.engines.base import MissingPackage, Request, Sample
from builder.engines.pool import EngineCache
from builder.engines.transformers_engine import _row_seed
from builder.engines.vllm_engine import sampling_kwargs, vllm_messages
from builder.runtime import ChunkPlan, StagePlan, chunk_loop, chunk_rows, finish
from builder.stages import Answers, ModelConfig, StageSpec, StageSummary

INSTALL = "pip install 'longperceptualthoughts[ray]'"

# engine_options of a ray-vllm stage that configure the processor (the rest go to vLLM as engine_kwargs)
PROCESSOR_OPTIONS = ("concurrency", "batch_size", "accelerator_type", "max_concurrent_batches", "max_pending_requests",
                     "placement_group_config", "runtime_env", "chat_template_stage", "tokenize_stage",
                     "detokenize_stage", "prepare_multimodal_stage")


def _ray():
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as e:
        raise MissingPackage(f"the Ray runner needs Ray Data, which is not installed here ({e}): {INSTALL}") from e
    return ray


# ----------------------------------------------------------------------------------- ray-vllm: fan out, fan in


def fan_out(requests: Sequence[Request]) -> list[dict[str, Any]]:
    """The rows to give ``ray.data.llm``'s vLLM processor for ``requests``: one per sample to draw.

    The processor keeps only the first output of a request, so a sampled request with ``n`` samples becomes ``n``
    rows with ``n=1`` each, sample ``k`` seeded with the transformers engine's seed for its row ``k``
    (``seed * 1_000_003 + k``); a greedy request is one row (its sample is repeated ``n`` times by
    :func:`fan_in`, as vLLM and the transformers engine do). Each row: ``request`` and ``sample`` (where the
    output goes), ``messages`` (vLLM's chat form, images capped) and ``sampling_params`` (vLLM keyword arguments).
    The processor continues the last message when it is not a user turn, which is what ``continue_final_message``
    means in our requests; a request that says otherwise is refused.
    """
    rows = []
    for i, r in enumerate(requests):
        last_is_user = bool(r.messages) and r.messages[-1].get("role") == "user"
        if r.continue_final_message == last_is_user:
            raise ValueError(f"request {i}: continue_final_message={r.continue_final_message} but the last message "
                             f"is {'a user turn' if last_is_user else 'not a user turn'}; the vLLM processor "
                             f"continues the last message exactly when it is not a user turn")
        p = r.params
        draws = [(k, _row_seed(p.seed, k)) for k in range(p.n)] if p.temperature > 0 else [(0, p.seed)]
        messages = vllm_messages(r)
        for k, seed in draws:
            rows.append({"request": i, "sample": k, "messages": messages,
                         "sampling_params": sampling_kwargs(p.replace(n=1, seed=seed))})
    return rows


def fan_in(requests: Sequence[Request], outputs: Iterable[dict[str, Any]]) -> list[list[Sample]]:
    """The samples of each request from the processor's rows (``request``, ``sample``, ``generated_text`` and
    optionally ``num_generated_tokens``), in sample order; a greedy request's one sample repeated ``n`` times.
    A missing or repeated sample is an error (a row lost or doubled on the way)."""
    got: dict[tuple[int, int], Sample] = {}
    for row in outputs:
        key = (int(row["request"]), int(row["sample"]))
        if key in got:
            raise ValueError(f"processor output for request {key[0]} sample {key[1]} came twice")
        tokens = row.get("num_generated_tokens")
        got[key] = Sample(text=row["generated_text"], num_tokens=None if tokens is None else int(tokens))
    out = []
    for i, r in enumerate(requests):
        draws = r.params.n if r.params.temperature > 0 else 1
        missing = [k for k in range(draws) if (i, k) not in got]
        if missing:
            raise ValueError(f"processor output for request {i} lacks sample(s) {missing}")
        samples = [got.pop((i, k)) for k in range(draws)]
        out.append(samples if r.params.temperature > 0 else samples * r.params.n)
    if got:
        raise ValueError(f"processor output for unknown request/sample {sorted(got)[:3]}")
    return out


def processor_kwargs(model_cfg: ModelConfig, *, has_images: bool) -> dict[str, Any]:
    """``vLLMEngineProcessorConfig`` keyword arguments for a ray-vllm stage: the model, the processor's own options
    from ``engine_options`` (:data:`PROCESSOR_OPTIONS`), the rest as vLLM ``engine_kwargs``; the multimodal stage
    is on when the requests carry images (unless set)."""
    opts = dict(model_cfg.engine_options)
    kw = {k: opts.pop(k) for k in PROCESSOR_OPTIONS if k in opts}
    kw.setdefault("prepare_multimodal_stage", has_images)
    return {"model_source": model_cfg.model, "engine_kwargs": opts, **kw}


def vllm_processor(model_cfg: ModelConfig, *, has_images: bool) -> Callable[[Any], Any]:
    """``ray.data.llm``'s vLLM processor for a stage's model: dataset of :func:`fan_out` rows (plus ``key``) ->
    dataset of ``key``, ``request``, ``sample``, ``generated_text``, ``num_generated_tokens``. Needs GPUs and
    ``pip install 'ray[llm]'`` (which brings vLLM) where the driver and the workers run."""
    from ray.data.llm import build_processor, vLLMEngineProcessorConfig

    def keep(row: dict[str, Any]) -> dict[str, Any]:
        return {"key": row["key"], "request": row["request"], "sample": row["sample"],
                "generated_text": row["generated_text"], "num_generated_tokens": row.get("num_generated_tokens")}

    return build_processor(vLLMEngineProcessorConfig(**processor_kwargs(model_cfg, has_images=has_images)),
                           postprocess=keep)


# --------------------------------------------------------------------------------------------- the actors


def stage_models(spec: StageSpec, settings: Any) -> dict[str, ModelConfig]:
    """A stage's models by round name (its own round, then the follow-ups its settings make)."""
    return {r.name: r.model(settings) for r in spec.rounds(settings)}


class ChunkWorker:
    """A Ray Data actor: holds one stage's engines and turns chunks into rows (:func:`builder.runtime.chunk_rows`).

    A batch is one dataset row per chunk (``index``, ``chunk``: the pickled ``(input_id, item)`` pairs); the
    result has ``index``, ``rows`` (the pickled rows), ``error`` (the pickled exception that building the engines
    or the rows raised, else empty: the driver raises it as the local runner would) and ``model_ids`` (JSON:
    round name -> engine model id). The stage travels pickled (a stage from a plugin module is imported there)."""

    def __init__(self, spec: StageSpec, settings: Any) -> None:
        self.spec, self.settings = spec, settings
        self.cache = EngineCache()  # one engine for equal settings (a re-formatter on the same model)
        self.error = b""
        self.model_ids = "{}"
        try:
            self.prompts = settings.make_prompts()
            models = stage_models(spec, settings)
            self.engines = dict(zip(models, self.cache.get_all(list(models.values()))))
        except Exception as e:  # a bad engine option, a missing model: the driver says so, once
            self.error = _pickled_error(e)
            return
        self.model_ids = json.dumps({k: e.model_id for k, e in self.engines.items()}, sort_keys=True)

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        index, rows, errors = [], [], []
        for i, payload in zip(batch["index"], batch["chunk"]):
            index.append(int(i))
            if self.error:
                rows.append(b"")
                errors.append(self.error)
                continue
            try:
                out = chunk_rows(self.spec, pickle.loads(payload), self.settings, self.prompts, self.engines)
            except Exception as e:  # the stage's own error (a missing image ...): not retried, as locally
                rows.append(b"")
                errors.append(_pickled_error(e))
            else:
                rows.append(pickle.dumps(out, protocol=pickle.HIGHEST_PROTOCOL))
                errors.append(b"")
        return {"index": np.array(index, dtype=np.int64), "rows": np.array(rows, dtype=object),
                "error": np.array(errors, dtype=object),
                "model_ids": np.array([self.model_ids] * len(index), dtype=object)}

    def __del__(self) -> None:
        cache = getattr(self, "cache", None)
        if cache is not None:
            cache.close()


def _pickled_error(e: Exception) -> bytes:
    """An exception raised on a worker, pickled for the driver to raise (its type and message kept; one that does
    not pickle becomes a RuntimeError naming it), with the worker's traceback as a note."""
    import traceback

    where = f"raised on a Ray worker (pid {os.getpid()}):\n{''.join(traceback.format_exception(e))}"
    try:
        e.add_note(where)
        out = pickle.dumps(e)
        pickle.loads(out)
        return out
    except Exception:
        return pickle.dumps(RuntimeError(f"{type(e).__name__}: {e} ({where})"))


def actor_resources(model_cfg: ModelConfig, cluster: dict[str, float]) -> dict[str, float]:
    """Ray resources of one actor for a stage's engine: the GPUs its engine takes on a cluster that has GPUs
    (vLLM: ``tensor_parallel_size * pipeline_parallel_size``; transformers: one unless ``device="cpu"``), one CPU."""
    opts = model_cfg.engine_options
    gpus = 0.0
    if cluster.get("GPU", 0) > 0:
        if model_cfg.engine == "vllm":
            gpus = float(int(opts.get("tensor_parallel_size", 1)) * int(opts.get("pipeline_parallel_size", 1)))
        elif model_cfg.engine == "transformers" and str(opts.get("device", "auto")) != "cpu":
            gpus = 1.0
    return {"num_cpus": 1.0, "num_gpus": gpus}


def actor_count(resources: dict[str, float], cluster: dict[str, float], chunks: int) -> int:
    """How many actors: as many as the cluster's GPUs (CPUs for a CPU engine) hold, no more than chunks."""
    if resources["num_gpus"] > 0:
        fit = int(cluster.get("GPU", 0) // resources["num_gpus"])
    else:
        fit = int(cluster.get("CPU", 1) // max(resources["num_cpus"], 1))
    return max(1, min(fit, chunks))


# --------------------------------------------------------------------------------------------- the runner


class RayRunner:
    """Runs stages on a Ray cluster (``address``; none: the one ``RAY_ADDRESS`` names, else a local one started
    here and shut down by :meth:`close`). Called like :func:`builder.runtime.run_locally` (a planned stage), without
    engines.

    ``actors``: the actor pool size (default: what the cluster's GPUs or CPUs hold, see :func:`actor_count`);
    ``processor``: ``(model_cfg, has_images=...) -> (dataset -> dataset)`` for ray-vllm stages (default:
    :func:`vllm_processor`; tests give a stand-in); ``init``: more ``ray.init`` keyword arguments."""

    on_ray = True  # builder.pipeline.generate lets ray-vllm engines through

    def __init__(self, address: str | None = None, *, actors: int | None = None,
                 processor: Callable[..., Callable[[Any], Any]] | None = None, **init: Any) -> None:
        ray = _ray()
        self.started = False
        if not ray.is_initialized():
            ray.init(address=address, include_dashboard=False, **init)
            self.started = True
        self.actors = actors
        self.processor = processor or vllm_processor
        from ray.data import DataContext

        ctx = DataContext.get_current()
        ctx.enable_progress_bars = False  # the runner's own bar counts inputs, as the local runner's does
        ctx.print_on_execution_start = False

    def close(self) -> None:
        if self.started:
            _ray().shutdown()
            self.started = False

    def __enter__(self) -> "RayRunner":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __call__(self, plan: StagePlan, *, shard: tuple[int, int] | str = (0, 1), progress: bool = True,
                 chunk_size: int | None = None) -> StageSummary:
        """Run one planned stage (this shard's pending inputs) on the cluster; returns its summary, as the local
        runner does."""
        spec, settings = plan.spec, plan.settings
        settings.make_prompts()  # a bad template folder fails here, before any work, as locally
        models = stage_models(spec, settings)
        model_ids = {k: m.model for k, m in models.items()}  # what load_engine names them; actors report theirs
        with chunk_loop(plan, shard=shard, chunk_size=chunk_size, progress=progress) as (chunks, bar):
            if chunks.chunks and any(m.engine == RAY_VLLM for m in models.values()):
                self._through_processor(plan, chunks, models, bar)
            elif chunks.chunks:
                model_ids = self._actors(plan, chunks, bar) or model_ids
        return finish(plan, chunks, model_ids, shard=shard, progress=progress)

    def _actors(self, plan: StagePlan, chunks: ChunkPlan, bar: Any) -> dict[str, str]:
        """The chunks through a pool of :class:`ChunkWorker` actors; each finished chunk is written at once."""
        ray = _ray()
        todo = chunks.chunks
        resources = actor_resources(plan.spec.settings_of(plan.settings), ray.cluster_resources())
        actors = self.actors or actor_count(resources, ray.cluster_resources(), len(todo))
        ds = ray.data.from_items([{"index": i, "chunk": pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)}
                                  for i, c in enumerate(todo)], override_num_blocks=len(todo))
        # Ray Data restarts a lost actor and retries its chunk (its defaults: max_restarts=-1, max_task_retries=-1)
        ds = ds.map_batches(ChunkWorker, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"spec": plan.spec, "settings": plan.settings}, **resources)
        model_ids: dict[str, str] = {}
        written = set()
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])
            i = int(row["index"])
            if i in written:  # never twice, whatever a retry gives back
                continue
            chunks.write(todo[i], pickle.loads(row["rows"]))
            written.add(i)
            model_ids = json.loads(row["model_ids"])
            bar.update(len(todo[i]))
        if len(written) != len(todo):
            raise RuntimeError(f"{plan.spec.name}: Ray returned {len(written)} of {len(todo)} chunks; rerun to "
                               f"finish")
        return model_ids

    def _through_processor(self, plan: StagePlan, chunks: ChunkPlan, models: dict[str, ModelConfig],
                           bar: Any) -> None:
        """A stage with ray-vllm engines: round by round, the requests of every pending chunk in one pass through
        the processor (engines of other kinds are loaded here and called directly), then each chunk's rows."""
        spec, settings = plan.spec, plan.settings
        prompts = settings.make_prompts()
        local = EngineCache()
        direct = {k: m for k, m in models.items() if m.engine != RAY_VLLM}
        engines = dict(zip(direct, local.get_all(list(direct.values()))))
        todo = chunks.chunks
        answers: list[dict[str, Answers]] = [{} for _ in todo]
        try:
            for r in spec.rounds(settings):
                asked = [r.requests(chunk, answers[i], settings, prompts) for i, chunk in enumerate(todo)]
                if r.name in engines:
                    engine = engines[r.name]
                    got, model = [engine.generate(reqs) for reqs in asked], engine.model_id
                else:
                    got, model = self._process(models[r.name], asked), models[r.name].model
                for i, (reqs, samples) in enumerate(zip(asked, got)):
                    answers[i][r.name] = Answers(reqs, samples, model)
        finally:
            local.close()
        for chunk, answered in zip(todo, answers):
            chunks.write(chunk, spec.rows(chunk, answered, settings))
            bar.update(len(chunk))

    def _process(self, model_cfg: ModelConfig, asked: list[list[Request]]) -> list[list[list[Sample]]]:
        """Each chunk's requests for one model through the processor, in one pass; the samples, chunk by chunk."""
        ray = _ray()
        rows = [{"key": str(i), **row} for i, reqs in enumerate(asked) for row in fan_out(reqs)]
        has_images = any(part.get("type") == "image_pil" for row in rows for m in row["messages"]
                         if isinstance(m.get("content"), list) for part in m["content"])
        processor = self.processor(model_cfg, has_images=has_images)
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for out in processor(ray.data.from_items(rows)).iter_rows():
            by_key[out["key"]].append(dict(out))
        return [fan_in(reqs, by_key.get(str(i), [])) for i, reqs in enumerate(asked)]


__all__ = ["INSTALL", "PROCESSOR_OPTIONS", "RAY_VLLM", "ChunkWorker", "RayRunner", "actor_count", "actor_resources",
           "fan_in", "fan_out", "processor_kwargs", "stage_models", "vllm_processor"]
