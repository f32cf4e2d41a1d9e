"""The Ray runner: each stage as a Ray Data pipeline, on one machine or a cluster (``lpt generate --runner ray``).

A stage runs as its local run does, with the work spread over Ray actors:

* the driver takes the stage's pending inputs (this shard's, not done yet) and forms the same chunks as the local
  runner (:func:`builder.stages.common.open_chunks`, under the shard's lock, after the same checks);
* the chunks become a Ray dataset, one row per chunk, and ``map_batches`` (one chunk a batch) sends them to a pool
  of actors; each actor holds the stage's engines, built from the stage's settings
  (:meth:`builder.settings.ModelConfig.load_engine`: vLLM on GPU workers, transformers, openai, ``module:Class``), and
  turns a chunk into rows with the stage's own ``make_rows``, the function the local runner calls;
* the driver writes each finished chunk into the run directory (:meth:`builder.store.RunDir.write_chunk`): the same
  file names, input ids and settings metadata, so the files are byte for byte those of the local runner.

Only the driver writes, and only finished chunks: a killed actor is restarted by Ray and its chunk done again, and
a killed driver leaves finished chunks, which a rerun skips (the run directory's done-set). A stage starts only
when its input is complete across all shards, as with the local runner. The workers need the project, its
engines and, for stage 2, the source images at the same paths (a shared file system).

``stageN.engine=ray-vllm`` runs that stage's model through ``ray.data.llm``'s vLLM processor instead (GPU
clusters; tensor and pipeline parallel vLLM engines placed by Ray). That processor keeps only the *first* output of a
request, so a request for ``n`` samples is fanned out into one row per sample with its own seed: sample ``k`` gets
the seed the transformers engine gives its row ``k`` (:func:`fan_out`, :func:`fan_in`, pure and tested without a
GPU). Since the processor is a dataset-wide step, the stage's ``make_rows`` runs in rounds on the driver: each round
gathers the requests the chunks ask for (stage 1 asks twice: generation, then re-formatting), runs them through
the processor, and writes the chunks that are then complete.
"""

from __future__ import annotations

import json
import os
import pickle
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from builder.settings import ModelConfig, PipelineConfig
from builder.engines.base import Engine, MissingPackage, Request, Sample
from builder.engines.transformers_engine import _row_seed
from builder.engines.vllm_engine import sampling_kwargs, vllm_messages
from builder.engines import RAY_VLLM
from builder.engines.pool import EngineCache
from builder.prompts import Prompts
from builder.stages import StageSpec, StageSummary, get_stage
from builder.stages.common import _progress, in_shard, open_chunks, require_input, shard_rows, stage_settings
from builder.store import RunDir

INSTALL = "pip install 'longperceptualthoughts[ray]'"

# engine_options of a ray-vllm stage that configure the processor (the rest go to vLLM as engine_kwargs)
PROCESSOR_OPTIONS = ("concurrency", "batch_size", "accelerator_type", "max_concurrent_batches", "max_pending_requests",
                     "placement_group_config", "runtime_env", "chat_template_stage", "tokenize_stage",
                     "detokenize_stage", "prepare_multimodal_stage")
MAX_ROUNDS = 8  # generate() calls one make_rows may make on a ray-vllm engine (stage 1 makes two)


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


class NeedOutputs(Exception):
    """Raised inside ``make_rows`` by a ray-vllm stand-in engine: these requests need the processor first."""

    def __init__(self, key: str, role: str, requests: list[Request]) -> None:
        super().__init__(key)
        self.key, self.role, self.requests = key, role, requests


class _Answers(Engine):
    """A ray-vllm engine inside ``make_rows`` on the driver: answers each ``generate`` call from the processor's
    outputs gathered in earlier rounds, or raises :class:`NeedOutputs` for the call it has none for yet.
    ``make_rows`` is pure given its engines' answers, so rerunning it in the next round makes the same calls."""

    name = RAY_VLLM

    def __init__(self, model: str, role: str, chunk: int, outputs: dict[str, list[list[Sample]]]) -> None:
        super().__init__(model)
        self.role, self.chunk, self.outputs, self.calls = role, chunk, outputs, 0

    def generate(self, requests: list[Request], *, progress: bool = False) -> list[list[Sample]]:
        key = f"{self.chunk}/{self.role}/{self.calls}"
        self.calls += 1
        if key not in self.outputs:
            raise NeedOutputs(key, self.role, list(requests))
        return self.outputs[key]


# --------------------------------------------------------------------------------------------- the actors


def stage_models(spec: StageSpec, config: PipelineConfig) -> dict[str, ModelConfig]:
    """A stage's engines by ``make_rows`` keyword: ``engine`` (its section) and its extra engines."""
    return {"engine": getattr(config, spec.section), **spec.extra_engines(config)}


class ChunkWorker:
    """A Ray Data actor: holds one stage's engines and turns chunks into rows with the stage's ``make_rows``.

    A batch is one dataset row per chunk (``index``, ``chunk``: the pickled ``(input_id, item)`` pairs); the
    result has ``index``, ``rows`` (the pickled rows), ``error`` (the pickled exception that building the engines
    or the rows raised, else empty: the driver raises it as the local runner would) and ``model_ids`` (JSON:
    keyword -> engine model id)."""

    def __init__(self, stage: str, config: PipelineConfig, context: Any) -> None:
        self.spec = get_stage(stage)
        self.config, self.context = config, context
        self.cache = EngineCache()  # one engine for equal settings (a re-formatter on the same model)
        self.error = b""
        self.model_ids = "{}"
        try:
            self.prompts = Prompts(config.template_dir)
            models = stage_models(self.spec, config)
            loaded = dict(zip(models, self.cache.get_all(list(models.values()))))
        except Exception as e:  # a bad engine option, a missing model: the driver says so, once
            self.error = _pickled_error(e)
            return
        self.engine = loaded.pop("engine")
        self.extra = loaded
        self.model_ids = json.dumps({"engine": self.engine.model_id,
                                     **{k: e.model_id for k, e in self.extra.items()}}, sort_keys=True)

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
                out = self.spec.make_rows(pickle.loads(payload), self.engine, self.config, self.prompts,
                                          self.context, **self.extra)
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
    here and shut down by :meth:`close`). Called like :func:`builder.pipeline.run_stage`.

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

    def __call__(self, spec: StageSpec, run: RunDir, config: PipelineConfig, *, shard: tuple[int, int] = (0, 1),
                 progress: bool = True, chunk_size: int | None = None) -> StageSummary:
        """Run one stage (this shard's pending inputs) on the cluster; returns its summary, as the local run does."""
        if spec.prepare is None or spec.make_rows is None or spec.finish is None:
            raise ValueError(f"{spec.section} ({spec.name}) does not declare prepare/make_rows/finish in its "
                             f"StageSpec, so only the local runner can run it (--runner local)")
        Prompts(config.template_dir)  # a bad template folder fails here, before any work, as locally
        inputs, context = spec.prepare(run, config)
        require_input(run, spec)
        models = stage_models(spec, config)
        model_ids = {k: m.model for k, m in models.items()}  # what load_engine names them; actors report theirs
        with open_chunks(run, spec.name, inputs, shard=shard, chunk_size=chunk_size or config.chunk_size,
                         settings=stage_settings(config, spec.section)) as plan:
            bar = _progress(total=len(plan.mine), initial=len(plan.mine) - len(plan.pending), desc=spec.name,
                            enabled=progress)
            try:
                if plan.chunks and any(m.engine == RAY_VLLM for m in models.values()):
                    self._rounds(spec, plan, config, context, models, bar)
                elif plan.chunks:
                    model_ids = self._actors(spec, plan, config, context, models, bar) or model_ids
            finally:
                bar.close()
        rows = shard_rows(run, spec.name, in_shard([k for k, _ in inputs], shard), spec.summary_columns)
        return spec.finish(run, config, rows, shard=shard, progress=progress, items_in=len(plan.mine),
                           skipped=len(plan.mine) - len(plan.pending), model_ids=model_ids)

    def _actors(self, spec: StageSpec, plan: Any, config: PipelineConfig, context: Any,
                models: dict[str, ModelConfig], bar: Any) -> dict[str, str]:
        """The chunks through a pool of :class:`ChunkWorker` actors; each finished chunk is written at once."""
        ray = _ray()
        chunks = plan.chunks
        resources = actor_resources(models["engine"], ray.cluster_resources())
        actors = self.actors or actor_count(resources, ray.cluster_resources(), len(chunks))
        ds = ray.data.from_items([{"index": i, "chunk": pickle.dumps(c, protocol=pickle.HIGHEST_PROTOCOL)}
                                  for i, c in enumerate(chunks)], override_num_blocks=len(chunks))
        # Ray Data restarts a lost actor and retries its chunk (its defaults: max_restarts=-1, max_task_retries=-1)
        ds = ds.map_batches(ChunkWorker, batch_size=1, batch_format="numpy",
                            compute=ray.data.ActorPoolStrategy(size=actors),
                            fn_constructor_kwargs={"stage": spec.name, "config": config, "context": context},
                            **resources)
        model_ids: dict[str, str] = {}
        written = set()
        for row in ds.iter_rows():
            if row["error"]:
                raise pickle.loads(row["error"])
            i = int(row["index"])
            if i in written:  # never twice, whatever a retry gives back
                continue
            plan.write(chunks[i], pickle.loads(row["rows"]))
            written.add(i)
            model_ids = json.loads(row["model_ids"])
            bar.update(len(chunks[i]))
        if len(written) != len(chunks):
            raise RuntimeError(f"{spec.name}: Ray returned {len(written)} of {len(chunks)} chunks; rerun to finish")
        return model_ids

    def _rounds(self, spec: StageSpec, plan: Any, config: PipelineConfig, context: Any,
                models: dict[str, ModelConfig], bar: Any) -> None:
        """The chunks of a stage with ray-vllm engines: ``make_rows`` on the driver in rounds, each round's model
        calls through the processor; engines of other kinds are loaded here and called directly."""
        prompts = Prompts(config.template_dir)
        local = EngineCache()
        direct = {k: m for k, m in models.items() if m.engine != RAY_VLLM}
        engines = dict(zip(direct, local.get_all(list(direct.values()))))
        outputs: dict[str, list[list[Sample]]] = {}
        todo = list(enumerate(plan.chunks))
        try:
            for _ in range(MAX_ROUNDS):
                asks: dict[str, list[NeedOutputs]] = defaultdict(list)
                left = []
                for i, chunk in todo:
                    given = {k: engines.get(k) or _Answers(m.model, k, i, outputs) for k, m in models.items()}
                    main = given.pop("engine")
                    try:
                        rows = spec.make_rows(chunk, main, config, prompts, context, **given)
                    except NeedOutputs as need:
                        asks[need.role].append(need)
                        left.append((i, chunk))
                        continue
                    plan.write(chunk, rows)
                    bar.update(len(chunk))
                    for key in [k for k in outputs if k.startswith(f"{i}/")]:
                        del outputs[key]
                if not left:
                    return
                for role, needs in asks.items():
                    outputs.update(self._process(models[role], needs))
                todo = left
            raise RuntimeError(f"{spec.name}: make_rows still asks for model outputs after {MAX_ROUNDS} rounds")
        finally:
            local.close()

    def _process(self, model_cfg: ModelConfig, needs: list[NeedOutputs]) -> dict[str, list[list[Sample]]]:
        """One round's requests for one model through the processor; outputs by call key."""
        ray = _ray()
        rows = [{"key": n.key, **row} for n in needs for row in fan_out(n.requests)]
        has_images = any(part.get("type") == "image_pil" for row in rows for m in row["messages"]
                         if isinstance(m.get("content"), list) for part in m["content"])
        processor = self.processor(model_cfg, has_images=has_images)
        by_key: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for out in processor(ray.data.from_items(rows)).iter_rows():
            by_key[out["key"]].append(dict(out))
        return {n.key: fan_in(n.requests, by_key.get(n.key, [])) for n in needs}


__all__ = ["INSTALL", "MAX_ROUNDS", "PROCESSOR_OPTIONS", "RAY_VLLM", "ChunkWorker", "NeedOutputs", "RayRunner",
           "actor_count", "actor_resources", "fan_in", "fan_out", "processor_kwargs", "stage_models",
           "vllm_processor"]
