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
    assert set(results["conditioned_draft_s"]["tiny-conditioned"]["32"]) == {"2", "4"}  # k <= its block of 4
    trees = results["tree_verify_s"]["tiny-verifier"]
    assert set(trees) == {"16", "32"} and set(trees["32"]) == {"4", "8"} and all(s > 0 for s in trees["16"].values())
    steps = results["tree_verify_steps"]["tiny-verifier"]["16"]
    assert steps["8"] == pytest.approx(trees["16"]["8"] / verify["16"]["1"])
    rows = results["projections"]
    # 1 verifier x 3 drafters (diffusion, AR, conditioned) x 2 contexts x 2 ks x 2 profiles
    assert len(rows) == 24 and all(r["speedup"] > 0 for r in rows)
    assert {r["drafter_kind"] for r in rows} == {"dlm", "ar", "conditioned"}
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


def test_conditioned_drafter_at_qwen3_8b_width_is_sized_on_meta(gpu_bench):
    verifier = gpu_bench.qwen2_config(gpu_bench.SHAPES["qwen3-8b"], causal=True)
    name, (verifier_name, layers, block) = next(iter(gpu_bench.REAL["conditioned"].items()))
    assert gpu_bench.REAL["verifiers"][verifier_name] == "qwen3-8b" and (layers, block) == (5, 16)
    config = gpu_bench.ConditionedDrafterConfig.for_verifier(verifier, mask_token_id=1, num_hidden_layers=layers)
    with torch.device("meta"):
        params = sum(p.numel() for p in gpu_bench.ConditionedDrafterModel(config).parameters())
    assert 0.95e9 < params < 1.1e9  # 5 layers of 193M plus the 3 x 4096 -> 4096 fusion: about 1.0B
