"""oneDNN-prepacked linear layers: the same logits as torch's default kernels, and evaluations stay lossless."""

import json

import pytest
import torch
from test_eval_harness import all_methods, folders, tiny_config  # noqa: F401 - folders is a fixture

from diffuspec.evaluation import EvalConfig, evaluate
from diffuspec.kernels import prepack_linear_layers
from diffuspec.models.tiny import tiny_qwen2


def test_packed_layers_give_the_same_logits_and_keep_their_weights():
    model = tiny_qwen2(seed=1, vocab_size=96, hidden_size=32, num_layers=2, init_std=0.3)
    ids = torch.randint(0, 96, (1, 9), generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        expected = model(input_ids=ids).logits
    linears = sum(type(m) is torch.nn.Linear for m in model.modules())
    assert prepack_linear_layers(model) == linears > 0
    with torch.inference_mode():
        torch.testing.assert_close(model(input_ids=ids).logits, expected, atol=1e-5, rtol=1e-5)
    assert model.lm_head.weight.layout == torch.strided  # the dense weight stays for code that reads it
    other = tiny_qwen2(seed=1, vocab_size=96, hidden_size=32, num_layers=1, dtype=torch.float64)
    assert prepack_linear_layers(other) == 0  # only float32 layers are packed


def test_an_evaluation_with_packed_models_is_lossless(folders, tmp_path):  # noqa: F811 - the fixture
    methods = [m for m in all_methods(folders) if m["kind"] in ("ar", "hf_generate", "pld", "hf_assisted", "diffusion",
                                                                 "conditioned")]  # fmt: skip
    config = tiny_config(folders, tmp_path, dtype="float32", onednn=True, methods=methods)
    assert evaluate(config) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lossless"] is True and results["config"]["onednn"] is True


def test_onednn_is_refused_off_cpu_float32():
    with pytest.raises(ValueError, match="onednn needs device 'cpu' and dtype 'float32', got 'cpu' and 'bfloat16'"):
        EvalConfig(verifier="v", benchmark="jsonl", benchmark_path="p.jsonl", dtype="bfloat16", onednn=True)
