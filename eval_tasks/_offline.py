"""Friction of lighteval 0.13.0 (offline, and the order in which it loads), handled here so that users never meet it.

1. Loading lighteval's task registry imports ``lighteval/tasks/tasks/tiny_benchmarks.py``, whose metric objects
   ``requests.get`` ``tinyBenchmarks.pkl`` from GitHub when the file is missing next to the module, and crash
   without a network. lighteval 0.13.0 never reads that downloaded file (its scorer opens a different, relative
   path), so an empty stub is enough: :func:`prepare_lighteval` creates one when it is missing.
2. Some built-in task modules call ``nltk.download("punkt")`` on import; offline this prints long errors.
   With ``HF_HUB_OFFLINE`` set, :func:`prepare_lighteval` makes ``nltk.download`` a quiet no-op returning False.
3. A benchmark whose Hub dataset cannot be loaded (offline and not cached, or the Hub unreachable) would cost a
   minute of ``huggingface_hub`` retries and end in a traceback. :func:`hub_dataset_problem` says why in a few
   seconds; :func:`prepare_lighteval` wraps lighteval's dataset loader so that ``lighteval custom …
   --custom-tasks eval_tasks.tasks`` stops with that one line (``lpt eval`` checks before building anything).
   The same wrapper lets a task file load its own data (``load(task, setup)``) and prepares local copies afresh
   (``datasets`` would serve another folder of the same name and layout from its cache).
4. lighteval loads every task's whole dataset before it applies ``--max-samples`` (``get_docs``). A task file that
   can stream (MME-RW-V: ~70 shards of ~200 MB) learns the limit from :func:`lighteval_max_samples`: the
   ``max_samples`` of the lighteval ``Pipeline`` that is loading the datasets (``lighteval custom …
   --max-samples N`` and the Python API alike), else ``LPT_MAX_SAMPLES=N`` (datasets loaded in worker
   processes, or any other caller).

The version pins (``huggingface_hub<2``, ``xxhash<4``) live in pyproject's ``eval`` extra.
"""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import logging
import os
import sys
from pathlib import Path
from typing import Callable

logger = logging.getLogger(__name__)
MAX_SAMPLES_ENV = "LPT_MAX_SAMPLES"

_done = False


def tiny_benchmarks_path() -> Path | None:
    """Where lighteval looks for ``tinyBenchmarks.pkl`` (None when lighteval is not installed)."""
    spec = importlib.util.find_spec("lighteval")
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0]) / "tasks" / "tasks" / "tinyBenchmarks.pkl"


_TRUE = {"1", "true", "yes", "on"}
HUB_PROBE_TIMEOUT_S = 5.0


def offline() -> bool:
    """Whether the Hugging Face offline switches are on (``HF_HUB_OFFLINE`` or ``HF_DATASETS_OFFLINE``)."""
    return any(os.environ.get(v, "").strip().lower() in _TRUE for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


def in_datasets_cache(repo: str) -> bool:
    """Whether ``datasets`` has a prepared copy of the Hub dataset ``repo`` (what it falls back to offline)."""
    from datasets import config
    from datasets.naming import camelcase_to_snakecase

    parts = repo.split("/")
    parts[-1] = camelcase_to_snakecase(parts[-1])
    root = Path(os.path.expanduser(str(config.HF_DATASETS_CACHE))) / "___".join(parts)
    return any(p.is_dir() for p in root.glob("*/*/*"))


@functools.lru_cache(maxsize=4)
def _hub_unreachable(endpoint: str) -> str | None:
    """None when ``endpoint`` answers an HTTP request within a few seconds, else why not (one request, no retry)."""
    import httpx

    try:
        httpx.head(f"{endpoint}/api/datasets", timeout=HUB_PROBE_TIMEOUT_S)
    except httpx.HTTPError as e:
        return f"the Hugging Face Hub ({endpoint}) cannot be reached: {type(e).__name__}"
    return None


def hub_dataset_problem(repo: str) -> str | None:
    """Why the Hub dataset ``repo`` cannot be loaded now (offline and not cached, or the Hub unreachable), or
    None when it may load. Takes a few seconds at most, where ``datasets`` would retry for a minute."""
    if in_datasets_cache(repo):
        return None
    if offline():
        return "HF_HUB_OFFLINE is set and it is not in the local datasets cache"
    from huggingface_hub import constants

    return _hub_unreachable(constants.ENDPOINT.rstrip("/"))


def data_dir_hint(bench: str = "<task>") -> str:
    """How to give a local copy instead (the same words in every message)."""
    return (f"put a local copy in DIR/{bench} and pass --data-dir DIR (lighteval custom: LPT_EVAL_DATA_DIR=DIR); "
            "`lpt eval --sample-data DIR` writes offline stand-ins")


def check_data(benches: list[str], data_dir: str | os.PathLike | None = None, protocol: str = "authors") -> None:
    """Raise :class:`DataUnavailable` when a benchmark has no local copy in ``data_dir`` and its Hub dataset
    cannot be loaded now (offline and not cached, or the Hub unreachable); seconds, not a minute of retries."""
    from eval_tasks.catalog import DataUnavailable, _catalog, base_name, hub_repo

    problems = []
    for bench in dict.fromkeys(base_name(b) for b in benches):
        if bench in _catalog() and not (data_dir and (Path(data_dir) / bench).is_dir()):
            why = hub_dataset_problem(hub_repo(bench, protocol))
            if why:
                problems.append((bench, why))
    if problems:
        listed = ", ".join(f"{b} ({hub_repo(b, protocol)})" for b, _ in problems)
        where = f" ({data_dir} has no folder {' or '.join(b for b, _ in problems)})" if data_dir else ""
        raise DataUnavailable(f"cannot load the Hub dataset{'s' if len(problems) > 1 else ''} of {listed}: "
                              f"{problems[0][1]}{where}; {data_dir_hint()}")


def lighteval_max_samples() -> int | None:
    """The row limit of the lighteval run that is loading its datasets now: the ``max_samples`` of the
    ``lighteval.pipeline.Pipeline`` on the call stack (lighteval 0.13 loads the datasets inside ``Pipeline``'s
    ``__init__`` and hands the limit to ``get_docs`` only, afterwards), else ``LPT_MAX_SAMPLES``; None: no limit."""
    pipeline = sys.modules.get("lighteval.pipeline")
    frame = sys._getframe(1)
    while pipeline is not None and frame is not None:
        owner = frame.f_locals.get("self")
        if isinstance(owner, pipeline.Pipeline):
            if owner.pipeline_parameters.max_samples:
                return int(owner.pipeline_parameters.max_samples)
            break
        frame = frame.f_back
    raw = os.environ.get(MAX_SAMPLES_ENV, "").strip()
    if not raw:
        return None
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{MAX_SAMPLES_ENV} must be a positive whole number of rows, got {raw!r}")
    return int(raw)


def _task_file_loader(task) -> Callable | None:
    """The ``load(task, setup)`` of the task's own file (:mod:`eval_tasks.benchmarks`), when it has one; its row
    limit (``setup.max_rows``, from ``lpt eval --max-samples``) else lighteval's (:func:`lighteval_max_samples`)."""
    from eval_tasks import catalog
    from eval_tasks.common import setup_of

    setup = setup_of(task)
    if setup is None or setup.bench not in catalog.names():
        return None
    bench = setup.bench
    import importlib

    own = getattr(importlib.import_module(catalog.info(bench)["module"]), "load", None)
    if own is None:
        return None
    if setup.max_rows is None:
        setup = dataclasses.replace(setup, max_rows=lighteval_max_samples())
    return functools.partial(own, setup=setup)


def _load_local_folder(task):
    """A local copy, prepared afresh: ``datasets`` keys a local folder's prepared copy by its name and layout,
    not its contents, so another folder of the same name (last run's stand-ins, an edited copy) would be served
    from the cache."""
    from datasets import load_dataset

    data = load_dataset(path=str(task.dataset_path), name=task.dataset_config_name, download_mode="force_redownload",
                        verification_mode="no_checks")
    return data.filter(task.dataset_filter) if task.dataset_filter is not None else data


def _fail_fast(load: Callable) -> Callable:
    """Wrap ``LightevalTask.download_dataset_worker``: an LPT task whose Hub dataset cannot load stops the process
    with one line (lighteval's CLI would print a minute of retries and a traceback); a task file's own ``load``
    (a CSV beside an image folder, a streamed subset) goes before lighteval's."""

    @functools.wraps(load)
    def download_dataset_worker(task):
        path = str(task.dataset_path)
        if str(task.name).startswith("lpt_") and not Path(path).is_dir():
            why = hub_dataset_problem(path)
            if why:
                raise SystemExit(f"error: {task.name}: cannot load the Hub dataset {path} ({why}); "
                                 f"{data_dir_hint(task.name.removesuffix('_direct'))}")
        own = _task_file_loader(task)
        data = own(task) if own is not None else None
        if data is None and str(task.name).startswith("lpt_") and Path(path).is_dir():
            data = _load_local_folder(task)
        return data if data is not None else load(task)

    download_dataset_worker.lpt_fail_fast = True
    return download_dataset_worker


def _install_fail_fast_loader() -> None:
    from lighteval.tasks.lighteval_task import LightevalTask

    load = LightevalTask.download_dataset_worker
    if not getattr(load, "lpt_fail_fast", False):
        LightevalTask.download_dataset_worker = staticmethod(_fail_fast(load))


def quiet_lighteval() -> None:
    """For ``lpt eval``: no nltk downloads (punkt serves lighteval's built-in ifeval tasks, not ours), no notice
    that our zero-shot tasks have no few-shot split, no FutureWarning about lighteval's use of huggingface_hub."""
    _no_nltk_downloads()
    logging.getLogger("lighteval.tasks.lighteval_task").setLevel(logging.ERROR)
    no_hub_future_warnings()


def no_hub_future_warnings() -> None:
    """No FutureWarning from ``huggingface_hub`` about the arguments lighteval passes it (lighteval's, not ours)."""
    import warnings

    warnings.filterwarnings("ignore", category=FutureWarning, module=r"huggingface_hub\..*")


def _no_nltk_downloads() -> None:
    try:
        import nltk
    except ImportError:  # pragma: no cover - lighteval depends on nltk
        return

    def _no_download(*args, **kwargs) -> bool:
        return False

    nltk.download = _no_download


def prepare_lighteval() -> None:
    """Idempotent: stub ``tinyBenchmarks.pkl`` if missing; silence nltk downloads when offline; make LPT tasks
    whose Hub dataset cannot load fail fast."""
    global _done
    if _done:
        return
    path = tiny_benchmarks_path()
    if path is not None and not path.exists():
        try:
            path.touch()
            logger.info("created an empty %s (lighteval 0.13 fetches it at registry load, never reads it)", path)
        except OSError as e:  # read-only site-packages: say what to do
            logger.warning("cannot create %s (%s); lighteval will try to download it. Create it by hand: "
                           "touch %s", path, e, path)
    if offline():
        _no_nltk_downloads()
    if path is not None:
        _install_fail_fast_loader()
    _done = True
