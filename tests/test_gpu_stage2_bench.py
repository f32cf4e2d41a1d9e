"""benchmarks/gpu_stage2.py: the 7B architecture it builds, and its --tiny run end to end on the CPU."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_stage2.py"


def _bench():
    spec = importlib.util.spec_from_file_location("gpu_stage2", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_7b_architecture_on_the_meta_device():
    import torch

    bench = _bench()
    processor = bench.build_processor()
    config = bench.build_config(processor.tokenizer, False, None, None)
    model = bench.build_model(config, torch.device("meta"), torch.bfloat16, 0)
    counts = bench.param_counts(model)
    assert counts["total"] == 8_292_166_656  # Qwen2.5-VL-7B-Instruct
    assert counts["vision"] == 676_550_144 and counts["embedding"] == 152064 * 3584
    assert config.image_token_id == processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert bench.default_bandwidth("NVIDIA H100 80GB HBM3") == 3350
    assert bench.default_bandwidth("NVIDIA H200") == 4800
    assert bench.default_bandwidth("cpu") is None


def test_tiny_run_end_to_end_on_cpu(tmp_path, monkeypatch):
    """Both parts, both samplers: stage 2 with the sampler of before and today's, eval-shaped greedy requests
    before (1 row a call) and after (3 rows a call)."""
    out = tmp_path / "bench.json"
    monkeypatch.setattr("sys.argv", ["gpu_stage2.py", "--tiny", "--device", "cpu", "--prompts", "2", "--n", "2",
                                     "--max-new-tokens", "3", "--batch-size", "3", "--bandwidth-gbs", "10",
                                     "--eval-items", "3", "--eval-max-new-tokens", "2", "--eval-batches", "1,3",
                                     "--eval-image-size", "64", "48", "--no-warmup", "--json", str(out)])
    _bench().main()
    report = json.loads(out.read_text())
    assert list(report["stage2"]) == ["stage 2, old sampler", "stage 2, new sampler"]
    for result in report["stage2"].values():
        assert result["samples"] == 4 and result["new_tokens"] == 4 * 3 and result["early_stopped_samples"] == 0
        assert result["generate_calls"] == 2 and result["decode_steps"] == 2 * 2
        assert result["prefill_s"] > 0 and result["decode_s"] > 0 and result["vision_s"] > 0
        assert result["decode_fraction_of_bound"] > 0
    assert report["bound"]["tokens_per_s_decode_read"] > 0 and report["bound"]["rows_per_step"] == 3
    before, after = report["eval"].values()
    assert (before["generate_calls"], after["generate_calls"]) == (3, 1)
    assert before["items_per_s"] > 0 and after["samples"] == 3 and report["eval_bounds"]["after"]["rows_per_step"] == 3
