"""benchmarks/gpu_train.py: its FLOP count on the 7B architecture (meta device) and a clean skip without a GPU."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_train.py"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_train", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_flops_per_token_of_the_7b_language_model():
    bench = _bench()
    stage2 = bench.stage2()
    config = stage2.build_config(stage2.build_processor().tokenizer, False, None, None)
    sft, dpo = bench.flops_per_token(config, 2048, "sft"), bench.flops_per_token(config, 2048, "dpo")
    # Qwen2.5-VL-7B's language model without the input embedding: ~7.07e9 parameters -> 6 N ~ 4.2e10
    assert 4.2e10 < sft < 4.6e10 and dpo == pytest.approx(sft * 4 / 3)
    assert bench.peak_tflops("NVIDIA H100 80GB HBM3") == 989.0 and bench.peak_tflops("NVIDIA H100 PCIe") == 756.0


def test_skips_cleanly_without_a_gpu(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the script would run")
    assert _bench().main([]) is None
    assert "no CUDA GPU: skipped" in capsys.readouterr().out
