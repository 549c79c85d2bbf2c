"""eval/gpu_bench.py at tiny shapes on the CPU: the same code path the GPU run takes."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch

SCRIPT = Path(__file__).resolve().parents[1] / "eval" / "gpu_bench.py"


@pytest.fixture(scope="module")
def gpu_bench():
    spec = importlib.util.spec_from_file_location("gpu_bench", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tiny_run_writes_json(gpu_bench, tmp_path):
    out = tmp_path / "bench.json"
    threads = torch.get_num_threads()
    try:
        gpu_bench.main(gpu_bench.parse(["--tiny", "--out", str(out), "--threads", "1", "--alphas", "0.5,0.9"]))
    finally:
        torch.set_num_threads(threads)
    results = json.loads(out.read_text())
    assert results["mode"] == "tiny" and results["skipped"] == []
    verify = results["verify_s"]["tiny-verifier"]
    assert set(verify) == {"16", "32"} and set(verify["16"]) == {str(m) for m in range(1, 6)}  # blocks 1..k_max+1
    assert set(results["dlm_draft_s"]["tiny-dlm"]["32"]) == {"2", "4"}
    assert set(results["ar_draft_s"]["tiny-ar"]["16"]) == {"2", "4"} and set(results["cps_s"]) == {"2", "4"}
    rows = results["projections"]
    # 1 verifier x 2 drafters x 2 contexts x 2 ks x 2 profiles
    assert len(rows) == 16 and all(r["speedup"] > 0 for r in rows)
    row = next(r for r in rows if r["drafter"] == "tiny-ar" and r["k"] == 2 and r["profile"].endswith("0.5"))
    assert row["tau"] == pytest.approx(1.75)  # 1 + 0.5 + 0.25
    assert row["speedup"] == pytest.approx(row["tokens_per_s"] / row["ar_tokens_per_s"])


def test_budget_skips_instead_of_overrunning(gpu_bench, tmp_path):
    out = tmp_path / "bench.json"
    results = gpu_bench.main(gpu_bench.parse(["--tiny", "--out", str(out), "--budget-s", "0"]))
    assert results["projections"] == [] and results["skipped"] and json.loads(out.read_text())["skipped"]


def test_meta_device_sizes_real_shapes_without_memory(gpu_bench):
    config = gpu_bench.qwen2_config(gpu_bench.SHAPES["qwen2.5-7b"], causal=True)
    nbytes = gpu_bench.model_bytes(config, torch.bfloat16)
    assert 7.0e9 < nbytes / 2 < 8.0e9  # Qwen2.5-7B has 7.6B parameters
    dream = gpu_bench.qwen2_config(gpu_bench.SHAPES["qwen2.5-7b"], causal=False)
    assert dream.is_causal is False
