"""Shared fixtures: tiny random-weight models with the real architectures, built offline once per session.

Nothing here reaches a hub: the whole suite runs with the Hugging Face offline switches on.
"""

from __future__ import annotations

import os

import pytest

for _var in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "HF_HUB_DISABLE_TELEMETRY"):
    os.environ.setdefault(_var, "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# The suite's replay engines are named by module:Class (tests/helpers.py), which only an explicit allow lets in;
# tests/hostile/test_engines.py takes it away again to check the refusal.
os.environ["LPT_ALLOW_ENGINE_MODULES"] = "1"
# The `authors` protocol reads the authors' files at a pinned commit; the suite reads the copies kept as test data
# (tests/data/authors_ab1a9a0, MIT) instead of their repository. Tests of the missing case take it away again.
os.environ.setdefault("LPT_AUTHORS_DIR", os.path.join(os.path.dirname(__file__), "data", "authors_ab1a9a0"))


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except ImportError:  # pragma: no cover
        return False


def pytest_collection_modifyitems(config, items):
    if _has_cuda():
        return
    skip = pytest.mark.skip(reason="needs a CUDA GPU (none here; run on a GPU machine with `pytest -m gpu`)")
    for item in items:
        if "gpu" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_vlm(tmp_path_factory):
    """Folder of a random-weight Qwen2.5-VL (image-only processor, trained BPE, ChatML template)."""
    from builder.tiny_models import build_tiny_vlm

    return build_tiny_vlm(tmp_path_factory.mktemp("models") / "tiny-qwen2.5-vl")


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory):
    """Folder of a random-weight Qwen2 causal LM (trained BPE, ChatML template)."""
    from builder.tiny_models import build_tiny_lm

    return build_tiny_lm(tmp_path_factory.mktemp("models") / "tiny-qwen2")


@pytest.fixture
def own_datasets_cache(monkeypatch, tmp_path):
    """The authors' files from the test data (as a user's checkout would give), and a datasets cache of the
    test's own (a shared cache can hand back another run's stand-ins for a local folder)."""
    from datasets import config

    monkeypatch.setenv("LPT_AUTHORS_DIR", os.path.join(os.path.dirname(__file__), "data", "authors_ab1a9a0"))
    monkeypatch.setattr(config, "HF_DATASETS_CACHE", tmp_path / "datasets-cache")
