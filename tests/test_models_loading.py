"""Dream/LLaDA/native loading against an independent plain-torch reference, plus the Dream-format round trip.

The checkpoints are tiny random ones written here in each published on-disk format (real config field names,
real tensor names, sharded with an index); the reference below shares no code with diffuspec or transformers.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file
from transformers import LlamaForCausalLM, Qwen2ForCausalLM

from diffuspec.loading import bitsandbytes_config, load_diffusion_model
from diffuspec.models.dream import qwen2_config_from_dream, save_dream_format
from diffuspec.models.llada import LLADA_KEY_MAPPING, llama_config_from_llada, llama_key_from_llada
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.models.weights import load_with_from_pretrained, set_bidirectional

VOCAB = 256
HIDDEN, HEADS, KV_HEADS, FFN, LAYERS = 32, 4, 2, 48, 2
IDS = torch.tensor([[3, 17, 250, 99, 4, 4, 201, 63, 7]])


# ---------------------------------------------------------------- independent reference


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    return weight * x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)


def rotate(x: torch.Tensor, theta: float) -> torch.Tensor:
    """RoPE on [heads, T, d], rotating the pairs (i, i + d/2) by angle t * theta^(-2i/d)."""
    d, t = x.shape[-1], x.shape[-2]
    inv_freq = theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    angle = torch.arange(t, dtype=torch.float64)[:, None] * inv_freq[None, :]
    cos, sin = angle.cos().to(x.dtype), angle.sin().to(x.dtype)
    x1, x2 = x[..., : d // 2], x[..., d // 2 :]
    return torch.cat([x1 * cos - x2 * sin, x1 * sin + x2 * cos], dim=-1)


def reference_logits(
    w: dict, ids: torch.Tensor, *, heads: int, kv_heads: int, eps: float, theta: float
) -> torch.Tensor:
    """Pre-norm decoder, full (bidirectional) attention, GQA, SwiGLU. ``w`` uses the reference's own names."""
    x = w["embed"][ids[0]]
    t, head_dim = x.shape[0], x.shape[1] // heads
    for layer in w["layers"]:
        h = rms_norm(x, layer["norm1"], eps)
        q = h @ layer["wq"].T + layer.get("bq", 0)
        k = h @ layer["wk"].T + layer.get("bk", 0)
        v = h @ layer["wv"].T + layer.get("bv", 0)
        q = rotate(q.view(t, heads, head_dim).transpose(0, 1), theta)
        k = rotate(k.view(t, kv_heads, head_dim).transpose(0, 1), theta)
        v = v.view(t, kv_heads, head_dim).transpose(0, 1)
        k = k.repeat_interleave(heads // kv_heads, dim=0)  # query head j reads kv head j // group
        v = v.repeat_interleave(heads // kv_heads, dim=0)
        attn = torch.softmax(q @ k.transpose(1, 2) / math.sqrt(head_dim), dim=-1)  # no causal mask
        x = x + (attn @ v).transpose(0, 1).reshape(t, -1) @ layer["wo"].T
        h = rms_norm(x, layer["norm2"], eps)
        gate, up = h @ layer["w_gate"].T, h @ layer["w_up"].T
        x = x + (gate * torch.sigmoid(gate) * up) @ layer["w_down"].T
    x = rms_norm(x, w["norm"], eps)
    return (x @ w["head"].T)[None]


def random_weights(seed: int, *, kv_heads: int, qkv_bias: bool, tied: bool = False) -> dict:
    g = torch.Generator().manual_seed(seed)

    def rand(*shape: int, scale: float = 0.2) -> torch.Tensor:
        return torch.randn(*shape, generator=g, dtype=torch.float64) * scale

    kv_dim = kv_heads * HIDDEN // HEADS
    layers = []
    for _ in range(LAYERS):
        layer = {
            "norm1": 1 + rand(HIDDEN, scale=0.1),
            "norm2": 1 + rand(HIDDEN, scale=0.1),
            "wq": rand(HIDDEN, HIDDEN),
            "wk": rand(kv_dim, HIDDEN),
            "wv": rand(kv_dim, HIDDEN),
            "wo": rand(HIDDEN, HIDDEN),
            "w_gate": rand(FFN, HIDDEN),
            "w_up": rand(FFN, HIDDEN),
            "w_down": rand(HIDDEN, FFN),
        }
        if qkv_bias:
            layer.update(bq=rand(HIDDEN), bk=rand(kv_dim), bv=rand(kv_dim))
        layers.append(layer)
    embed = rand(VOCAB, HIDDEN, scale=1.0)
    return {
        "embed": embed,
        "layers": layers,
        "norm": 1 + rand(HIDDEN, scale=0.1),
        "head": embed if tied else rand(VOCAB, HIDDEN),
    }


def write_sharded(folder: Path, tensors: dict[str, torch.Tensor], shards: int = 3) -> None:
    """Split over ``shards`` files named and indexed like transformers' save_pretrained does."""
    names = list(tensors)
    weight_map = {}
    for number in range(shards):
        filename = f"model-{number + 1:05d}-of-{shards:05d}.safetensors"
        part = {name: tensors[name].contiguous() for name in names[number::shards]}
        save_file(part, str(folder / filename), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(part, filename))
    total = sum(t.numel() * t.element_size() for t in tensors.values())
    (folder / "model.safetensors.index.json").write_text(
        json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map})
    )


# ---------------------------------------------------------------- Dream


DREAM_THETA = 50.0  # far from every default, so a dropped rope_theta changes the logits


def dream_config(**overrides) -> dict:
    config = {
        "architectures": ["DreamModel"],
        "auto_map": {
            "AutoConfig": "configuration_dream.DreamConfig",
            "AutoModel": "modeling_dream.DreamModel",
        },
        "attention_dropout": 0.0,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "hidden_act": "silu",
        "hidden_size": HIDDEN,
        "initializer_range": 0.02,
        "intermediate_size": FFN,
        "mask_token_id": 250,
        "max_position_embeddings": 128,
        "max_window_layers": LAYERS,
        "model_type": "Dream",
        "num_attention_heads": HEADS,
        "num_hidden_layers": LAYERS,
        "num_key_value_heads": KV_HEADS,
        "pad_token_id": 2,
        "rms_norm_eps": 1e-06,
        "rope_scaling": None,
        "rope_theta": DREAM_THETA,
        "sliding_window": None,
        "tie_word_embeddings": False,
        "torch_dtype": "float64",
        "transformers_version": "4.46.2",
        "use_cache": False,
        "use_sliding_window": False,
        "vocab_size": VOCAB,
    }
    config.update(overrides)
    return config


def dream_tensors(w: dict) -> dict[str, torch.Tensor]:
    tensors = {
        "model.embed_tokens.weight": w["embed"],
        "model.norm.weight": w["norm"],
        "lm_head.weight": w["head"],
    }
    for i, layer in enumerate(w["layers"]):
        p = f"model.layers.{i}."
        tensors.update(
            {
                p + "input_layernorm.weight": layer["norm1"],
                p + "post_attention_layernorm.weight": layer["norm2"],
                p + "self_attn.q_proj.weight": layer["wq"],
                p + "self_attn.q_proj.bias": layer["bq"],
                p + "self_attn.k_proj.weight": layer["wk"],
                p + "self_attn.k_proj.bias": layer["bk"],
                p + "self_attn.v_proj.weight": layer["wv"],
                p + "self_attn.v_proj.bias": layer["bv"],
                p + "self_attn.o_proj.weight": layer["wo"],
                p + "mlp.gate_proj.weight": layer["w_gate"],
                p + "mlp.up_proj.weight": layer["w_up"],
                p + "mlp.down_proj.weight": layer["w_down"],
            }
        )
    return tensors


@pytest.fixture(scope="module")
def dream_folder(tmp_path_factory) -> tuple[Path, dict]:
    folder = tmp_path_factory.mktemp("dream")
    w = random_weights(0, kv_heads=KV_HEADS, qkv_bias=True)
    write_sharded(folder, dream_tensors(w))
    (folder / "config.json").write_text(json.dumps(dream_config()))
    return folder, w


def test_dream_checkpoint_matches_reference(dream_folder):
    folder, w = dream_folder
    model, mask_token_id, shifted = load_diffusion_model(folder)
    assert (mask_token_id, shifted) == (250, True)
    assert model.dtype == torch.float64 and not model.training
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    expected = reference_logits(w, IDS, heads=HEADS, kv_heads=KV_HEADS, eps=1e-6, theta=DREAM_THETA)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # HF RoPE angles are float32


def test_dream_dtype_and_attn_implementation(dream_folder):
    folder, w = dream_folder
    model, _, _ = load_diffusion_model(folder, dtype="float32", attn_implementation="eager")
    assert model.dtype == torch.float32 and model.config._attn_implementation == "eager"
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    expected = reference_logits(w, IDS, heads=HEADS, kv_heads=KV_HEADS, eps=1e-6, theta=DREAM_THETA)
    torch.testing.assert_close(logits, expected.float(), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize(
    "edit, message",
    [
        (
            lambda t: t.pop("model.layers.1.self_attn.k_proj.bias"),
            "missing model.layers.1.self_attn.k_proj.bias",
        ),
        (
            lambda t: t.update({"model.layers.0.extra.weight": torch.zeros(2)}),
            "unexpected model.layers.0.extra",
        ),
        (
            lambda t: t.update({"model.norm.weight": torch.ones(HIDDEN + 1)}),
            "shape mismatch model.norm.weight",
        ),
    ],
)
def test_dream_strict_loading(tmp_path, edit, message):
    tensors = dream_tensors(random_weights(0, kv_heads=KV_HEADS, qkv_bias=True))
    edit(tensors)
    write_sharded(tmp_path, tensors, shards=2)
    (tmp_path / "config.json").write_text(json.dumps(dream_config()))
    with pytest.raises(ValueError, match=message):
        load_diffusion_model(tmp_path)


# ---------------------------------------------------------------- LLaDA


LLADA_THETA = 200.0


def llada_config(**overrides) -> dict:
    config = {
        "activation_type": "silu",
        "alibi": False,
        "alibi_bias_max": 8.0,
        "architectures": ["LLaDAModelLM"],
        "attention_dropout": 0.0,
        "attention_layer_norm": False,
        "attention_layer_norm_with_affine": True,
        "auto_map": {
            "AutoConfig": "configuration_llada.LLaDAConfig",
            "AutoModelForCausalLM": "modeling_llada.LLaDAModelLM",
            "AutoModel": "modeling_llada.LLaDAModelLM",
        },
        "bias_for_layer_norm": False,
        "block_group_size": 1,
        "block_type": "llama",
        "d_model": HIDDEN,
        "embedding_dropout": 0.0,
        "embedding_layer_norm": False,
        "embedding_size": VOCAB,
        "eos_token_id": 2,
        "flash_attention": False,
        "include_bias": False,
        "include_qkv_bias": False,
        "init_cutoff_factor": None,
        "init_device": "meta",
        "init_fn": "mitchell",
        "init_std": 0.02,
        "input_emb_norm": False,
        "layer_norm_type": "rms",
        "layer_norm_with_affine": True,
        "mask_token_id": 240,
        "max_sequence_length": 64,
        "mlp_hidden_size": FFN,
        "mlp_ratio": 4,
        "model_type": "llada",
        "multi_query_attention": None,
        "n_heads": HEADS,
        "n_kv_heads": KV_HEADS,
        "n_layers": LAYERS,
        "pad_token_id": 2,
        "precision": "amp_bf16",
        "residual_dropout": 0.0,
        "rms_norm_eps": 1e-05,
        "rope": True,
        "rope_full_precision": True,
        "rope_theta": LLADA_THETA,
        "scale_logits": False,
        "torch_dtype": "float64",
        "transformers_version": "4.46.3",
        "use_cache": False,
        "vocab_size": 250,  # smaller than embedding_size, as OLMo allows: the row count wins
        "weight_tying": False,
    }
    config.update(overrides)
    return config


def llada_tensors(w: dict, tied: bool) -> dict[str, torch.Tensor]:
    tensors = {"model.transformer.wte.weight": w["embed"], "model.transformer.ln_f.weight": w["norm"]}
    if not tied:
        tensors["model.transformer.ff_out.weight"] = w["head"]
    for i, layer in enumerate(w["layers"]):
        p = f"model.transformer.blocks.{i}."
        tensors.update(
            {
                p + "attn_norm.weight": layer["norm1"],
                p + "ff_norm.weight": layer["norm2"],
                p + "q_proj.weight": layer["wq"],
                p + "k_proj.weight": layer["wk"],
                p + "v_proj.weight": layer["wv"],
                p + "attn_out.weight": layer["wo"],
                p + "ff_proj.weight": layer["w_gate"],  # the SwiGLU gate
                p + "up_proj.weight": layer["w_up"],
                p + "ff_out.weight": layer["w_down"],
            }
        )
    return tensors


@pytest.mark.parametrize("tied, kv_heads", [(False, KV_HEADS), (True, HEADS)])
def test_llada_checkpoint_matches_reference(tmp_path, tied, kv_heads):
    w = random_weights(1, kv_heads=kv_heads, qkv_bias=False, tied=tied)
    write_sharded(tmp_path, llada_tensors(w, tied))
    overrides = {"weight_tying": tied, "n_kv_heads": None if kv_heads == HEADS else kv_heads}
    (tmp_path / "config.json").write_text(json.dumps(llada_config(**overrides)))
    model, mask_token_id, shifted = load_diffusion_model(tmp_path)
    assert (mask_token_id, shifted) == (240, False)
    assert model.config.vocab_size == VOCAB and model.config.intermediate_size == FFN
    with torch.no_grad():
        logits = model(input_ids=IDS).logits
    expected = reference_logits(w, IDS, heads=HEADS, kv_heads=kv_heads, eps=1e-5, theta=LLADA_THETA)
    torch.testing.assert_close(logits, expected, rtol=1e-5, atol=1e-5)  # HF RoPE angles are float32


@pytest.mark.parametrize("field, value", [("include_bias", True), ("block_type", "sequential"), ("scale_logits", True)])
def test_llada_refuses_other_olmo_variants(tmp_path, field, value):
    (tmp_path / "config.json").write_text(json.dumps(llada_config(**{field: value})))
    with pytest.raises(ValueError, match=field):
        load_diffusion_model(tmp_path)


# ---------------------------------------------------------------- Dream-format export


def small_tokenizer():
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    vocab = {"<unk>": 0, "<eos>": 1, "hello": 2}
    return PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")), eos_token="<eos>")


def test_dream_format_round_trip(tmp_path):
    source = tiny_qwen2(seed=3, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=2, causal=False, init_std=0.2)
    source = source.to(torch.float64)
    out = tmp_path / "drafter"
    save_dream_format(source, small_tokenizer(), out, mask_token_id=VOCAB - 1, max_shard_size=40_000)
    assert (out / "tokenizer.json").is_file()

    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "Dream" and config["architectures"] == ["DreamModel"]
    assert config["mask_token_id"] == VOCAB - 1 and config["rope_theta"] == 10000.0
    assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
    assert [p.name for p in tmp_path.iterdir()] == ["drafter"]  # no temporary folders left behind

    model, mask_token_id, shifted = load_diffusion_model(out)
    assert (mask_token_id, shifted) == (VOCAB - 1, True)
    with torch.no_grad():
        assert torch.equal(model(input_ids=IDS).logits, source(input_ids=IDS).logits)


def test_dream_format_round_trip_llama_gets_zero_biases(tmp_path):
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=1,
        num_attention_heads=HEADS, num_key_value_heads=KV_HEADS, is_causal=False, tie_word_embeddings=True,
        rope_parameters={"rope_type": "default", "rope_theta": 500.0},
    )  # fmt: skip
    torch.manual_seed(0)
    source = LlamaForCausalLM(config).eval()
    save_dream_format(source, None, tmp_path / "d", mask_token_id=7)
    model, _, _ = load_diffusion_model(tmp_path / "d")
    assert model.config.tie_word_embeddings and model.lm_head.weight is model.model.embed_tokens.weight
    assert torch.count_nonzero(model.model.layers[0].self_attn.q_proj.bias) == 0
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=IDS).logits, source(input_ids=IDS).logits)


def test_save_dream_format_refuses_causal_and_existing(tmp_path):
    causal = tiny_qwen2(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1)
    with pytest.raises(ValueError, match="is_causal"):
        save_dream_format(causal, None, tmp_path / "a", mask_token_id=1)
    bidirectional = tiny_qwen2(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, causal=False)
    (tmp_path / "b").mkdir()
    with pytest.raises(FileExistsError):
        save_dream_format(bidirectional, None, tmp_path / "b", mask_token_id=1)
    save_dream_format(bidirectional, None, tmp_path / "b", mask_token_id=1, overwrite=True)
    assert (tmp_path / "b" / "model.safetensors").is_file()


# ---------------------------------------------------------------- native folders, remote code, the Hub


def test_native_folder(tmp_path):
    source = tiny_qwen2(seed=4, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1, causal=False, init_std=0.2)
    source.save_pretrained(tmp_path)
    (tmp_path / "diffuspec_config.json").write_text(json.dumps({"mask_token_id": 9, "shifted": False}))
    model, mask_token_id, shifted = load_diffusion_model(tmp_path)
    assert (mask_token_id, shifted) == (9, False)
    with torch.no_grad():
        first = model(input_ids=IDS).logits[0, 0]
        changed = model(input_ids=torch.cat([IDS[:, :-1], IDS[:, -1:] + 1], dim=1)).logits[0, 0]
        assert torch.equal(model(input_ids=IDS).logits, source(input_ids=IDS).logits)
    assert not torch.equal(first, changed)  # still bidirectional after from_pretrained


def test_native_marker_on_a_causal_model_is_refused(tmp_path):
    tiny_qwen2(vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=1).save_pretrained(tmp_path)
    (tmp_path / "diffuspec_config.json").write_text(json.dumps({"mask_token_id": 9, "shifted": True}))
    with pytest.raises(ValueError, match="is_causal"):
        load_diffusion_model(tmp_path)


def test_unknown_model_type_needs_trust_remote_code(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "mystery_dlm"}))
    with pytest.raises(ValueError, match=r"'mystery_dlm'.*trust_remote_code"):
        load_diffusion_model(tmp_path)
    with pytest.raises(ValueError, match="mask_token_id= and shifted="):
        load_diffusion_model(tmp_path, trust_remote_code=True)


def test_offline_hub_id_fails_fast(monkeypatch, tmp_path):
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read once, at import
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    with pytest.raises(OSError, match=r"'Dream-org/Dream-v0-Instruct-7B'.*unreachable"):
        load_diffusion_model("Dream-org/Dream-v0-Instruct-7B")


# ---------------------------------------------------------------- 8-bit / 4-bit loading (bitsandbytes)


def fake_find_spec(installed: bool):
    """importlib.util.find_spec with bitsandbytes present or absent, whatever this machine has."""
    real = importlib.util.find_spec

    def find_spec(name, *args, **kwargs):
        if name == "bitsandbytes":
            return importlib.machinery.ModuleSpec("bitsandbytes", None) if installed else None
        return real(name, *args, **kwargs)

    return find_spec


def test_unknown_quantization_is_refused_before_anything_loads(tmp_path):
    with pytest.raises(ValueError, match=r"quantization must be one of \('8bit', '4bit'\) or None, got '3bit'"):
        load_diffusion_model(tmp_path / "not_there", quantization="3bit")


@pytest.mark.parametrize("quantization", ["8bit", "4bit"])
def test_missing_bitsandbytes_is_named_with_its_pip_command(monkeypatch, tmp_path, quantization):
    from diffuspec import DiffusionDrafter, SpeculativeDecoder

    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec(installed=False))
    match = rf"quantization='{quantization}' needs the bitsandbytes package.*pip install 'bitsandbytes>=0.46.1'"
    missing = tmp_path / "not_there"  # reaching the path would raise FileNotFoundError instead
    with pytest.raises(ImportError, match=match):
        load_diffusion_model(missing, quantization=quantization)
    with pytest.raises(ImportError, match=match):
        DiffusionDrafter.from_pretrained(missing, quantization=quantization)
    with pytest.raises(ImportError, match=match):  # before the verifier loads
        SpeculativeDecoder.from_pretrained(verifier=missing, drafter=missing, drafter_quantization=quantization)


def test_bitsandbytes_configs(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", fake_find_spec(installed=True))
    assert bitsandbytes_config(None) is None
    eight = bitsandbytes_config("8bit")
    assert eight.load_in_8bit and not eight.load_in_4bit
    four = bitsandbytes_config("4bit", dtype="float16")
    assert four.load_in_4bit and four.bnb_4bit_quant_type == "nf4" and four.bnb_4bit_compute_dtype == torch.float16
    assert bitsandbytes_config("4bit").bnb_4bit_compute_dtype == torch.bfloat16


def test_from_pretrained_path_computes_what_the_strict_loader_computes(dream_folder, tmp_path):
    """Quantized loading goes through from_pretrained (Dream names as is, LLaDA via LLADA_KEY_MAPPING); without a
    quantization config that path must load exactly the model the strict loader builds."""
    cpu = torch.device("cpu")
    folder, _ = dream_folder
    raw = json.loads((folder / "config.json").read_text())
    via_hf = load_with_from_pretrained(
        Qwen2ForCausalLM, qwen2_config_from_dream(raw), folder, device=cpu, dtype=None, quantization_config=None
    )
    strict, _, _ = load_diffusion_model(folder)
    set_bidirectional(via_hf)
    with torch.no_grad():  # the last bit may differ: mmapped weights are not SIMD-aligned (weights.py)
        torch.testing.assert_close(via_hf(input_ids=IDS).logits, strict(input_ids=IDS).logits, rtol=1e-12, atol=1e-12)

    for tied in (False, True):
        llada = tmp_path / f"llada_{tied}"
        llada.mkdir()
        write_sharded(llada, llada_tensors(random_weights(2, kv_heads=KV_HEADS, qkv_bias=False, tied=tied), tied))
        raw = llada_config(weight_tying=tied)
        (llada / "config.json").write_text(json.dumps(raw))
        via_hf = load_with_from_pretrained(
            LlamaForCausalLM,
            llama_config_from_llada(raw),
            llada,
            device=cpu,
            dtype=None,
            quantization_config=None,
            rename=llama_key_from_llada,
            key_mapping=LLADA_KEY_MAPPING,
        )
        strict, _, _ = load_diffusion_model(llada)
        assert via_hf.state_dict().keys() == strict.state_dict().keys()
        assert all(torch.equal(via_hf.state_dict()[k], v) for k, v in strict.state_dict().items())


def test_from_pretrained_path_checks_names_first_and_fills_dream_zero_biases(tmp_path):
    tensors = dream_tensors(random_weights(0, kv_heads=KV_HEADS, qkv_bias=True))
    tensors.pop("model.layers.1.self_attn.k_proj.bias")
    write_sharded(tmp_path, tensors, shards=2)
    (tmp_path / "config.json").write_text(json.dumps(dream_config()))
    config = qwen2_config_from_dream(dream_config())
    kwargs = {"device": torch.device("cpu"), "dtype": None, "quantization_config": None}
    with pytest.raises(ValueError, match="missing model.layers.1.self_attn.k_proj.bias"):
        load_with_from_pretrained(Qwen2ForCausalLM, config, tmp_path, **kwargs)
    zero = frozenset({"model.layers.1.self_attn.k_proj.bias"})  # Dream's attention_bias: false exports
    model = load_with_from_pretrained(Qwen2ForCausalLM, config, tmp_path, zero_keys=zero, **kwargs)
    assert torch.count_nonzero(model.model.layers[1].self_attn.k_proj.bias) == 0
    assert torch.equal(model.model.layers[1].self_attn.k_proj.weight, tensors["model.layers.1.self_attn.k_proj.weight"])
