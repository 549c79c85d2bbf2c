"""The conditioned drafter's model side: config checks, save/load, verifier checks, train == infer, memory cache."""

import json

import pytest
import torch
from conftest import VOCAB
from safetensors import safe_open
from transformers import AutoConfig, AutoModel

from diffuspec import DraftRequest
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.models.conditioned import (
    ConditionedDrafterConfig,
    ConditionedDrafterModel,
    block_targets,
    spread_feature_layers,
    verifier_features,
)
from diffuspec.models.tiny import tiny_qwen2

MASK = VOCAB - 1


def make_drafter(verifier, seed=0, layers=2, block_size=6, **overrides) -> ConditionedDrafterModel:
    """A random conditioned drafter for ``verifier`` in its dtype; wide init so its lattices are not flat."""
    config = ConditionedDrafterConfig.for_verifier(
        verifier.config,
        mask_token_id=MASK,
        num_hidden_layers=layers,
        block_size=block_size,
        **{"initializer_range": 0.3, **overrides},
    )
    torch.manual_seed(seed)
    return ConditionedDrafterModel(config, verifier=verifier).to(verifier.dtype).eval()


def request(verifier, layers, ids, k, width=VOCAB) -> DraftRequest:
    """What the decoder sends: ids [n] and the verifier features of ids[:-1]."""
    ids = torch.as_tensor(ids)
    features = verifier_features(verifier, ids[None, :-1], layers)[0] if ids.numel() > 1 else None
    return DraftRequest(ids=ids, k=k, width=width, eos_token_ids=(), features=features)


def full_logprobs(lattice) -> torch.Tensor:
    """Undo the top-M sort of a full-width lattice: [k, V] log-probs by token id."""
    out = torch.full((lattice.k, VOCAB), float("-inf"))
    return out.scatter(1, lattice.ids, lattice.logprobs)


# -- config --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "field,value,message",
    [
        ("num_hidden_layers", 0, "num_hidden_layers must be in 1..8"),
        ("num_hidden_layers", 9, "num_hidden_layers must be in 1..8"),
        ("head_dim", 7, "head_dim must be even"),
        ("layer_types", ["full_attention", "full_attention"], "layer_types must name one of"),
        ("layer_types", ["chunked_attention"], "layer_types must name one of"),
        ("layer_types", ["sliding_attention"], "sliding_window must be >= 1"),
        ("final_logit_softcapping", 0.0, "final_logit_softcapping must be > 0"),
        ("input_embedding_scale", 0.0, "input_embedding_scale and output_multiplier must be > 0"),
        ("verifier_hidden_size", 64, "must equal verifier_hidden_size"),
        ("feature_layers", [1, 1], "must not repeat"),
        ("feature_layers", [-1], "feature_layers must lie in"),
        ("feature_layers", [5], "feature_layers must lie in 0..4"),
        ("mask_token_id", 4096, "mask_token_id must be in"),
        ("block_size", 0, "block_size must be >= 1"),
        ("stem_size", -1, "stem_size must be >= 0"),
        ("num_key_value_heads", 3, "must divide num_attention_heads"),
        ("rope_parameters", {"rope_type": "dynamic", "factor": 2.0}, "rope_type 'dynamic' is not supported"),
        ("rope_parameters", {"rope_type": "proportional"}, r"supported: default, linear, llama3, yarn"),
        ("rope_parameters", {"rope_type": "linear", "factor": 2.0, "partial_rotary_factor": 0.5}, "whole heads"),
        ("rope_parameters", {"rope_type": "default", "rope_theta": -1.0}, "rope_theta must be > 0"),
    ],
)
def test_config_rejects_bad_values(field, value, message):
    with pytest.raises(ValueError, match=message):
        ConditionedDrafterConfig(**{"mask_token_id": 5, "verifier_num_hidden_layers": 4, field: value})


def test_config_for_verifier_copies_the_shape(verifier):
    config = ConditionedDrafterConfig.for_verifier(verifier.config, mask_token_id=MASK, feature_layers=[0, 2])
    assert (config.hidden_size, config.verifier_hidden_size, config.num_attention_heads) == (32, 32, 4)
    assert (config.verifier_num_hidden_layers, config.vocab_size, config.feature_size) == (2, VOCAB, 64)
    assert spread_feature_layers(36) == [1, 19, 36] and spread_feature_layers(28, 4) == [1, 10, 19, 28]


def test_config_for_verifier_takes_its_rope(caplog):
    """A Llama-3.1 verifier's llama3 RoPE is copied, and the drafter's frequencies are the verifier's own; a RoPE
    the drafter cannot follow (dynamic) falls back to default RoPE with the verifier's theta, logged."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    from diffuspec.models.conditioned import rope_frequencies

    llama3 = {
        "rope_type": "llama3",
        "rope_theta": 500000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 256,
    }
    shape = {"vocab_size": VOCAB, "hidden_size": 64, "num_attention_heads": 2, "num_key_value_heads": 1}
    verifier_config = LlamaConfig(**shape, max_position_embeddings=2048, rope_parameters=dict(llama3))
    config = ConditionedDrafterConfig.for_verifier(verifier_config, mask_token_id=MASK)
    assert config.rope_parameters == llama3
    inv_freq, scaling = rope_frequencies(config)
    rotary = LlamaRotaryEmbedding(verifier_config)
    assert torch.equal(inv_freq, rotary.inv_freq) and scaling == rotary.attention_scaling
    assert not torch.equal(inv_freq, rope_frequencies(ConditionedDrafterConfig(rope_theta=500000.0, head_dim=32))[0])

    dynamic = LlamaConfig(**shape, rope_parameters={"rope_type": "dynamic", "rope_theta": 50.0, "factor": 2.0})
    with caplog.at_level("WARNING", logger="diffuspec.models.conditioned"):
        config = ConditionedDrafterConfig.for_verifier(dynamic, mask_token_id=MASK)
    assert config.rope_parameters == {"rope_type": "default", "rope_theta": 50.0}
    assert "rope_type 'dynamic' is not supported" in caplog.text


def test_model_needs_a_mask_token():
    with pytest.raises(ValueError, match="mask_token_id must be set"):
        ConditionedDrafterModel(ConditionedDrafterConfig())


# -- save / load / Auto ---------------------------------------------------------------------------------------------


def test_save_load_round_trip_keeps_logits_and_leaves_the_verifier_out(verifier, tmp_path):
    model = make_drafter(verifier)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        saved = set(f.keys())
    assert saved == set(dict(model.named_parameters()))  # drafter weights only, no embedding / LM head
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "diffuspec_conditioned"

    loaded = ConditionedDrafter.from_pretrained(tmp_path, verifier)
    fresh = ConditionedDrafter(model)
    req = request(verifier, model.config.feature_layers, [3, 1, 4, 1, 5, 9, 2, 6], k=6)
    assert loaded.model.dtype == torch.float64
    assert torch.equal(loaded.propose(req).logprobs, fresh.propose(req).logprobs)


def test_a_stem_drafter_saves_its_feature_scale(verifier, tmp_path):
    model = make_drafter(verifier, stem_size=8)
    model.stem.set_feature_scale(torch.rand(3, 7, model.config.feature_size) + 0.5)
    model.save_pretrained(tmp_path)
    with safe_open(str(tmp_path / "model.safetensors"), "pt") as f:
        assert set(f.keys()) == set(dict(model.named_parameters())) | {"stem.feature_scale"}
    loaded = ConditionedDrafter.from_pretrained(tmp_path, verifier)
    assert torch.equal(loaded.model.stem.feature_scale, model.stem.feature_scale)
    req = request(verifier, model.config.feature_layers, [3, 1, 4, 1, 5, 9, 2, 6], k=6)
    assert torch.equal(loaded.propose(req).logprobs, ConditionedDrafter(model).propose(req).logprobs)
    with pytest.raises(ValueError, match="needs the features of the row before the anchor"):
        memory = model.new_memory()
        model.extend_memory(memory, req.features[None])
        model.draft(memory, torch.tensor([6]))


def test_auto_classes_load_it(verifier, tmp_path):
    model = make_drafter(verifier, layers=1)
    model.save_pretrained(tmp_path)
    assert type(AutoConfig.from_pretrained(tmp_path)) is ConditionedDrafterConfig
    auto = AutoModel.from_pretrained(tmp_path)
    assert type(auto) is ConditionedDrafterModel and not auto.has_verifier
    with pytest.raises(RuntimeError, match="attach_verifier"):
        auto.draft(ConditionedDrafter(model).memory, torch.tensor([1]))
    auto.attach_verifier(verifier)
    req = request(verifier, model.config.feature_layers, [7, 8, 9, 10], k=3)
    assert torch.equal(ConditionedDrafter(auto).propose(req).logprobs, ConditionedDrafter(model).propose(req).logprobs)


# -- verifier checks --------------------------------------------------------------------------------------------------


def test_mismatched_verifiers_are_refused(verifier, tmp_path):
    model = make_drafter(verifier, verifier_name="org/verifier-a")
    model.save_pretrained(tmp_path)
    cases = {
        "hidden size 64 != recorded 32": tiny_qwen2(vocab_size=VOCAB, hidden_size=64, num_layers=2),
        "3 layers != recorded 2": tiny_qwen2(vocab_size=VOCAB, hidden_size=32, num_layers=3),
        r"feature layers \[2\] outside": tiny_qwen2(vocab_size=VOCAB, hidden_size=32, num_layers=1),
        "vocabulary 128": tiny_qwen2(vocab_size=128, hidden_size=32, num_layers=2),
    }
    zero_mask = tiny_qwen2(vocab_size=VOCAB, hidden_size=32, num_layers=2)
    with torch.no_grad():
        zero_mask.get_input_embeddings().weight[MASK] = 0.0
    cases["row of mask_token_id 95 is all zeros"] = zero_mask
    for message, other in cases.items():
        with pytest.raises(ValueError, match=message):
            ConditionedDrafter.from_pretrained(tmp_path, other)

    renamed = tiny_qwen2(seed=1, vocab_size=VOCAB, hidden_size=32, num_layers=2)
    renamed.config.name_or_path = "/models/verifier-b"
    with pytest.raises(ValueError, match="name '/models/verifier-b' != recorded 'org/verifier-a'"):
        ConditionedDrafter.from_pretrained(tmp_path, renamed)
    ConditionedDrafter.from_pretrained(tmp_path, renamed, check_name=False)  # the explicit opt-out
    renamed.config.name_or_path = "/cache/hub/models--org--verifier-a/snapshots/0123abc"
    ConditionedDrafter.from_pretrained(tmp_path, renamed)  # a Hub cache folder of the recorded model is accepted


def test_drafter_refuses_requests_it_cannot_serve(verifier):
    drafter = ConditionedDrafter(make_drafter(verifier, block_size=4))
    layers = drafter.feature_layers
    with pytest.raises(ValueError, match="1 <= k <= 4"):
        drafter.propose(request(verifier, layers, [1, 2, 3], k=5))
    with pytest.raises(ValueError, match="features for the 2 committed tokens"):
        drafter.propose(DraftRequest(ids=torch.tensor([1, 2, 3]), k=2, width=4, eos_token_ids=()))
    with pytest.raises(ValueError, match="needs the verifier's embedding"):
        ConditionedDrafter(ConditionedDrafterModel(drafter.model.config))


# -- training == inference -------------------------------------------------------------------------------------------


ARCHITECTURES = {
    "default": {},
    "no_qk_norm": {"qk_norm": False},
    "sliding": {"layer_types": ["sliding_attention", "full_attention"], "sliding_window": 3},
    "bidirectional_window": {
        "layer_types": ["full_attention", "sliding_attention"],
        "sliding_window": 2,
        "attention_causal": False,
    },
    "causal": {"attention_causal": True},
    "bias_head_dim_scales": {
        "attention_bias": True,
        "head_dim": 16,
        "input_embedding_scale": 1.7,
        "output_multiplier": 0.6,
        "final_logit_softcapping": 4.0,
    },
    "stem": {"stem_size": 12},
    "rope_yarn": {
        "rope_parameters": {
            "rope_type": "yarn",
            "rope_theta": 100.0,
            "factor": 4.0,
            "original_max_position_embeddings": 512,
        }
    },
}


@pytest.mark.parametrize("options", ARCHITECTURES.values(), ids=ARCHITECTURES.keys())
def test_training_forward_equals_inference_propose(verifier, options):
    """Every anchor of a training batch gives the logits the drafter proposes on the prefix ids[:a + 1], for
    every attention variant (windows and causality are by absolute position in both)."""
    model = make_drafter(verifier, layers=2, block_size=5, **options)
    layers = model.config.feature_layers
    torch.manual_seed(3)
    ids = torch.randint(0, VOCAB - 1, (2, 14))
    if model.config.stem_size:  # channel scales of the features, not ones
        model.stem.set_feature_scale(verifier_features(verifier, ids, layers))
        assert model.stem.feature_scale.std() > 0
    anchors = torch.tensor([[0, 1, 6, 13], [12, 4, 9, 2]])  # any order; 0: empty memory; 13: masks past the end
    out = model(verifier_features(verifier, ids, layers), ids, anchors)
    assert out.logits.shape == (2, 4, 5, VOCAB)
    for b in range(2):
        for j, a in enumerate(anchors[b].tolist()):
            lattice = ConditionedDrafter(model).propose(request(verifier, layers, ids[b, : a + 1], k=5))
            train = out.logits[b, j].clone()
            train[:, MASK] = float("-inf")
            torch.testing.assert_close(full_logprobs(lattice), torch.log_softmax(train, -1).float())


def test_drafters_saved_before_qk_norms_load_and_compute_the_same(verifier, tmp_path):
    """A folder in the old layout (no qk_norm key, the fusion norm named fusion_norm) loads as qk_norm=False."""
    model = make_drafter(verifier, qk_norm=False)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    del config["qk_norm"]
    (tmp_path / "config.json").write_text(json.dumps(config))
    from safetensors.torch import load_file, save_file

    state = load_file(tmp_path / "model.safetensors")
    state["fusion_norm.weight"] = state.pop("hidden_norm.weight")
    save_file(state, tmp_path / "model.safetensors", metadata={"format": "pt"})
    loaded = ConditionedDrafterModel.from_pretrained(tmp_path).to(verifier.dtype)
    assert loaded.config.qk_norm is False
    req = request(verifier, model.config.feature_layers, [3, 9, 4, 7, 1], k=4)
    torch.testing.assert_close(
        ConditionedDrafter(loaded, verifier).propose(req).logprobs, ConditionedDrafter(model).propose(req).logprobs
    )


def test_drafters_saved_before_rope_parameters_load_with_their_theta(verifier, tmp_path):
    """A config.json with a top-level rope_theta and no rope_parameters (the old layout) loads as default RoPE with
    that theta and computes what the drafter computed; with neither key, theta is the old default 10000."""
    model = make_drafter(verifier, rope_parameters={"rope_type": "default", "rope_theta": 50.0})
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config.pop("rope_parameters") == {"rope_type": "default", "rope_theta": 50.0}
    (tmp_path / "config.json").write_text(json.dumps({**config, "rope_theta": 50.0}))
    loaded = ConditionedDrafterModel.from_pretrained(tmp_path).to(verifier.dtype)
    assert loaded.config.rope_parameters == {"rope_type": "default", "rope_theta": 50.0}
    req = request(verifier, model.config.feature_layers, [3, 9, 4, 7, 1, 8, 2], k=4)
    expected = ConditionedDrafter(model).propose(req).logprobs
    torch.testing.assert_close(ConditionedDrafter(loaded, verifier).propose(req).logprobs, expected)
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert ConditionedDrafterConfig.from_pretrained(tmp_path).rope_parameters == {
        "rope_type": "default",
        "rope_theta": 10000.0,
    }


def test_eager_and_sdpa_attention_agree(verifier):
    model = make_drafter(verifier, layers=2, block_size=4)
    ids = torch.randint(0, VOCAB - 1, (2, 11), generator=torch.Generator().manual_seed(0))
    anchors = torch.tensor([[0, 4, 10], [3, 7, 9]])
    features = verifier_features(verifier, ids, model.config.feature_layers)
    req = request(verifier, model.config.feature_layers, ids[0, :8], k=4)
    sdpa = model(features, ids, anchors).logits, ConditionedDrafter(model).propose(req).logprobs
    model.set_attn_implementation("eager")
    eager = model(features, ids, anchors).logits, ConditionedDrafter(model).propose(req).logprobs
    torch.testing.assert_close(eager, sdpa)


def test_block_targets():
    ids = torch.arange(10)[None] * 10
    labels, valid = block_targets(ids, torch.tensor([[0, 7]]), 3, valid=(torch.arange(10) < 9)[None])
    assert labels.tolist() == [[[10, 20, 30], [80, 90, 90]]]
    assert valid.tolist() == [[[True, True, True], [True, False, False]]]


def test_training_leaves_the_verifier_frozen(verifier):
    model = make_drafter(verifier, layers=1).train()
    ids = torch.randint(0, VOCAB - 1, (1, 9))
    out = model(verifier_features(verifier, ids, model.config.feature_layers), ids, torch.tensor([[2, 5]]))
    labels, valid = block_targets(ids, torch.tensor([[2, 5]]), model.config.block_size)
    torch.nn.functional.cross_entropy(out.logits[valid], labels[valid]).backward()
    assert all(p.grad is not None for p in model.parameters())
    assert all(p.grad is None for p in verifier.parameters())


# -- the memory cache -----------------------------------------------------------------------------------------------


def test_memory_cache_after_a_rejected_round_equals_a_fresh_drafter(verifier):
    model = make_drafter(verifier, layers=2, block_size=4)
    layers = model.config.feature_layers
    cached = ConditionedDrafter(model)
    torch.manual_seed(5)
    ids = torch.randint(0, VOCAB - 1, (12,))
    long = torch.randint(0, VOCAB - 1, (600,))
    sequences = [
        ids[:5],  # prefill
        ids[:8],  # some drafts accepted
        ids[:9],  # none accepted (the correction token only)
        torch.cat([ids[:6], torch.tensor([3, 3, 3, 3])]),  # a different continuation: crop back to 6
        ids[:1],  # one token: empty memory
        ids,
        long[:200],
        long[:300],  # past the first buffer (256 rows): it grows, keeping the rows it holds
        long[:290],
        long[:600],
    ]
    for seq in sequences:
        req = request(verifier, layers, seq, k=4)
        torch.testing.assert_close(cached.propose(req).logprobs, ConditionedDrafter(model).propose(req).logprobs)
        assert cached.memory.length == seq.numel() - 1
    assert cached.memory.capacity >= 600  # the buffer grew twice (256 -> 512 -> 1024)


def test_verifier_features_follow_the_cache_across_buffer_growth(verifier):
    """The verifier's feature rows equal a fresh pass over the committed tokens after a step that grows the
    buffer (256 rows at first) and a commit that drops rejected rows."""
    from diffuspec.decoding.verifier import Verifier

    layers = [1, 2]
    wrapped = Verifier(verifier, feature_layers=layers)
    generator = torch.Generator().manual_seed(0)
    prompt = torch.randint(0, VOCAB - 1, (250,), generator=generator)
    path = torch.randint(0, VOCAB - 1, (10,), generator=generator)
    wrapped.start(prompt)
    assert wrapped.features.shape[0] == 249
    wrapped.step(path)
    assert wrapped.features.shape[0] == 260
    wrapped.commit(accepted=3, next_token=7)
    cached = torch.cat([prompt, path[:3]])  # the cache holds these 253 tokens; token 7 is pending
    torch.testing.assert_close(wrapped.features, verifier_features(verifier, cached[None], layers)[0])
