"""DFlash checkpoints against the reference implementation (the ``dflash`` package, installed ``--no-deps``):
import, export, lossless decoding with an imported drafter, acceptance against ``dflash_generate``, and the
train/serve parity gate."""

import copy
import json
import os
import time

import pytest
import torch
import torch.nn.functional as F
from conftest import reference_greedy
from test_sampling import N, exact_distribution, sampled_tv, tv_bound

from diffuspec import DecodeConfig, SpeculativeDecoder
from diffuspec.cli import main as cli_main
from diffuspec.drafters import load_drafter
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.hub import check_drafter_folder
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel, verifier_features
from diffuspec.models.dflash import config_from_dflash, export_dflash, load_dflash_drafter
from diffuspec.models.tiny import tiny_qwen2

if os.environ.get("CI"):  # .ci/run installs the reference: these tests must run there, never skip
    import dflash.model as dflash
else:
    dflash = pytest.importorskip("dflash.model", reason="pip install --no-deps dflash==0.1.0 (the reference)")
from transformers import Qwen3Config  # noqa: E402

VOCAB, HIDDEN, TARGET_LAYERS = 64, 32, 3
MASK = VOCAB - 1

# Scaled RoPE (the reference gets it from Qwen3's rotary embedding). With head_dim 8 and theta 1e4 the wavelengths
# are 6, 63, 628 and 6283 positions, so an original context of 64 puts them in every regime of llama3 and YaRN.
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "rope_theta": 10000.0,
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 64,
}
YARN_ROPE = {"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0, "original_max_position_embeddings": 64}
LINEAR_ROPE = {"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0}

# DFlash options that change the computation, each checked against the reference forward
OPTIONS = {
    "plain": {},
    "sliding": {
        "layer_types": ["sliding_attention", "full_attention"],
        "use_sliding_window": True,
        "sliding_window": 3,
    },
    "causal": {"is_causal": True},
    "bias_and_head_dim": {"attention_bias": True, "head_dim": 16},
    "scales": {"input_embedding_scale": 1.5, "output_multiplier": 0.7, "final_logit_softcapping": 6.0},
    "rope_llama3": {"rope_parameters": LLAMA3_ROPE},
    "rope_yarn": {"rope_parameters": YARN_ROPE},  # its attention factor scales cos/sin too
    "rope_linear": {"rope_parameters": LINEAR_ROPE},
}


@pytest.fixture(scope="module")
def target():
    """A float32 verifier (the reference computes in float32)."""
    return tiny_qwen2(seed=7, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=TARGET_LAYERS, init_std=0.3).eval()


def reference_drafter(tmp_path, options=None, layers=2, block_size=6, seed=0):
    """A random DFlashDraftModel saved by the reference code; norms are randomised so that they matter."""
    options = copy.deepcopy(options or {})  # configs keep (and may fill in) the rope_parameters dict they get
    extra = {
        k: options.pop(k)
        for k in ("input_embedding_scale", "output_multiplier", "final_logit_softcapping")
        if k in options
    }
    config = Qwen3Config(
        vocab_size=VOCAB,
        hidden_size=HIDDEN,
        intermediate_size=64,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=options.pop("head_dim", HIDDEN // 4),
        max_position_embeddings=256,
        initializer_range=0.3,
        **options,
    )
    config.architectures = ["DFlashDraftModel"]
    config.block_size = block_size
    config.num_target_layers = TARGET_LAYERS
    config.dflash_config = {"mask_token_id": MASK, "target_layer_ids": [0, 2]}
    if "is_causal" in options:
        config.is_causal = options["is_causal"]
    for name, value in extra.items():
        setattr(config, name, value)
    torch.manual_seed(seed)
    model = dflash.DFlashDraftModel(config).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
            elif name.endswith(".bias"):
                parameter.normal_(0.0, 0.3)
    folder = tmp_path / "reference"
    model.save_pretrained(folder)
    return dflash.DFlashDraftModel.from_pretrained(folder).eval(), folder


def reference_block_logits(model, target, ids):
    """The reference forward for a block anchored at the last id: context = target states of ids[:-1]."""
    with torch.no_grad():
        states = target(ids[None], output_hidden_states=True).hidden_states
        context = dflash.extract_context_feature(states, model.target_layer_ids)[:, :-1]
        block = torch.full((1, model.block_size), model.mask_token_id)
        block[0, 0] = ids[-1]
        scale = float(getattr(model.config, "input_embedding_scale", 1.0))
        noise = F.embedding(block, target.get_input_embeddings().weight) * scale
        positions = torch.arange(ids.numel() - 1 + model.block_size)[None]
        hidden = model(target_hidden=context, noise_embedding=noise, position_ids=positions)[:, 1:]
        return model.compute_logits(hidden, target.lm_head)[0]


def diffuspec_block_logits(model, target, ids):
    with torch.no_grad():
        memory = model.new_memory()
        if ids.numel() > 1:
            model.extend_memory(memory, verifier_features(target, ids[None, :-1], model.config.feature_layers))
        return model.draft(memory, ids[-1:])[0]


def assert_same_proposals(ours, reference):
    """Same top candidates and the same log-probs (float32 tolerances)."""
    torch.testing.assert_close(torch.log_softmax(ours, -1), torch.log_softmax(reference, -1), atol=2e-5, rtol=1e-5)
    assert torch.equal(ours.topk(4).indices, reference.topk(4).indices)


@pytest.mark.parametrize("options", OPTIONS.values(), ids=OPTIONS.keys())
def test_a_reference_checkpoint_proposes_the_same_in_diffuspec(target, tmp_path, options):
    reference, folder = reference_drafter(tmp_path, options)
    ours = load_dflash_drafter(folder)
    ours.attach_verifier(target)
    assert ours.config.feature_layers == [1, 3] and ours.config.block_size == 5
    for length in (1, 2, 9):  # empty context, one row, a longer one
        ids = torch.randint(0, VOCAB - 1, (length,), generator=torch.Generator().manual_seed(length))
        assert_same_proposals(diffuspec_block_logits(ours, target, ids), reference_block_logits(reference, target, ids))


def native_drafter(target, seed=1, **overrides):
    config = ConditionedDrafterConfig.for_verifier(
        target.config, mask_token_id=MASK, num_hidden_layers=2, block_size=5, feature_layers=[1, 3], **overrides
    )
    torch.manual_seed(seed)
    model = ConditionedDrafterModel(config, verifier=target).eval()
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("norm.weight"):
                parameter.uniform_(0.5, 1.5)
    return model


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 4, "output_multiplier": 0.8},
        {"rope_parameters": LLAMA3_ROPE},
        {"rope_parameters": YARN_ROPE},
    ],
    ids=["plain", "sliding_scaled", "rope_llama3", "rope_yarn"],
)
def test_an_export_loads_in_the_reference_and_computes_the_same(target, tmp_path, overrides):
    model = native_drafter(target, initializer_range=0.3, **copy.deepcopy(overrides))
    out = export_dflash(model, tmp_path / "export", verifier="tiny-verifier")
    raw = json.loads((out / "config.json").read_text())
    assert raw["architectures"] == ["DFlashDraftModel"] and raw["block_size"] == 6
    assert raw["dflash_config"] == {"mask_token_id": MASK, "target_layer_ids": [0, 2]}
    rope = overrides.get(
        "rope_parameters", {"rope_type": "default", "rope_theta": target.config.rope_parameters["rope_theta"]}
    )
    assert raw["rope_parameters"] == model.config.rope_parameters == rope  # written back as it is
    assert load_dflash_drafter(out).config.rope_parameters == rope  # and read again
    card = (out / "README.md").read_text()
    assert '"method": "dflash"' in card and '"num_speculative_tokens": 5' in card and "tiny-verifier" in card
    reference = dflash.DFlashDraftModel.from_pretrained(out).eval()
    ids = torch.randint(0, VOCAB - 1, (7,), generator=torch.Generator().manual_seed(0))
    assert_same_proposals(diffuspec_block_logits(model, target, ids), reference_block_logits(reference, target, ids))
    check_drafter_folder(out)  # pushable as it is


def test_export_refuses_what_the_format_cannot_hold(target, tmp_path):
    with pytest.raises(ValueError, match="predates per-head q/k norms"):
        export_dflash(native_drafter(target, qk_norm=False), tmp_path / "a", verifier="v")
    with pytest.raises(ValueError, match=r"anchor stem \(stem_size=8\), which DFlash's format has no place for"):
        export_dflash(native_drafter(target, stem_size=8), tmp_path / "a", verifier="v")
    config = ConditionedDrafterConfig.for_verifier(target.config, mask_token_id=MASK, feature_layers=[0, 3])
    with pytest.raises(ValueError, match="feature layer 0"):
        export_dflash(ConditionedDrafterModel(config), tmp_path / "b", verifier="v")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_import_refuses_what_diffuspec_does_not_compute(tmp_path):
    base = Qwen3Config(
        vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2
    ).to_dict()
    base.update(architectures=["DFlashDraftModel"], num_target_layers=3, dflash_config={"mask_token_id": MASK})
    assert config_from_dflash(base).feature_layers == [2]  # the format's default: the middle target layer + 1
    with pytest.raises(ValueError, match="DFlash2DraftModel"):
        config_from_dflash({**base, "architectures": ["DFlash2DraftModel"]})
    assert config_from_dflash({**base, "rope_parameters": dict(YARN_ROPE)}).rope_parameters == YARN_ROPE
    longrope = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4}
    for rope in ({"rope_type": "dynamic", "factor": 2.0}, longrope):
        with pytest.raises(ValueError, match=f"RoPE is not computed by diffuspec: rope_type '{rope['rope_type']}'"):
            config_from_dflash({**base, "rope_parameters": {"rope_theta": 1e4, **rope}})
    with pytest.raises(ValueError, match="mask_token_id"):
        config_from_dflash({**base, "dflash_config": {}})


def test_a_dynamic_rope_checkpoint_is_refused_before_its_weights_are_read(tmp_path):
    _, folder = reference_drafter(tmp_path)
    raw = json.loads((folder / "config.json").read_text())
    raw["rope_parameters"] = {"rope_type": "dynamic", "rope_theta": 1e4, "factor": 2.0}
    (folder / "config.json").write_text(json.dumps(raw))
    (folder / "model.safetensors").write_bytes(b"not safetensors")  # reading it would fail with another error
    with pytest.raises(ValueError, match="rope_type 'dynamic' is not supported: dynamic NTK scaling"):
        load_dflash_drafter(folder)
    with pytest.raises(ValueError, match="rope_type 'dynamic'"):
        check_drafter_folder(folder)  # nor pushed


def test_a_checkpoint_with_a_missing_tensor_is_refused_by_name(target, tmp_path):
    _, folder = reference_drafter(tmp_path)
    from safetensors.torch import load_file, save_file

    state = load_file(folder / "model.safetensors")
    del state["layers.1.self_attn.k_norm.weight"]
    save_file(state, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ValueError, match="k_norm"):
        load_dflash_drafter(folder)


def test_decoding_with_an_imported_drafter_is_lossless(target, tmp_path):
    """T = 0 through the public loaders (SpeculativeDecoder / load_drafter), every option set."""
    for name, options in OPTIONS.items():
        _, folder = reference_drafter(tmp_path / name, options, seed=3)
        drafter = load_drafter(folder, target)
        assert isinstance(drafter, ConditionedDrafter)
        decoder = SpeculativeDecoder(target, drafter, DecodeConfig(cps=None, adl=None, draft_length=5))
        for seed in range(3):
            prompt = torch.randint(0, VOCAB - 1, (1 + 3 * seed,), generator=torch.Generator().manual_seed(seed))
            out = decoder.generate(prompt, max_new_tokens=24, eos_token_id=[])
            assert out.sequences[0].tolist() == reference_greedy(target, prompt, 24).tolist(), name


def test_sampling_with_an_imported_drafter_is_exact(tmp_path):
    """T > 0: the law of the generated pair equals AR sampling from the verifier (test_sampling's TV bound)."""
    small = tiny_qwen2(seed=3, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=TARGET_LAYERS, init_std=0.5)
    small = small.double()
    _, folder = reference_drafter(tmp_path, seed=4)
    drafter = ConditionedDrafter(load_dflash_drafter(folder).double(), small)
    decoder = SpeculativeDecoder(small, drafter, DecodeConfig(cps=None, adl=None, draft_length=2))
    exact = exact_distribution(small, 1.0, None, None)
    tv = sampled_tv(decoder, exact, 1.0, None, None, seed=2)
    assert tv < tv_bound(len(exact), N), tv


def acceptance_diffuspec(target, drafter_folder, prompts, max_new):
    drafter = load_drafter(drafter_folder, target)
    block = drafter.block_size
    decoder = SpeculativeDecoder(target, drafter, DecodeConfig(cps=None, adl=None, draft_length=block))
    tokens = rounds = 0
    for prompt in prompts:
        out = decoder.generate(prompt, max_new_tokens=max_new, eos_token_id=[])
        tokens += out.stats.new_tokens
        rounds += len(out.stats.accepted)
    return tokens / rounds


def acceptance_reference(target, drafter_folder, prompts, max_new, monkeypatch):
    monkeypatch.setattr(dflash, "_cuda_time", time.perf_counter)  # its timer synchronises CUDA; this is a CPU
    model = dflash.DFlashDraftModel.from_pretrained(drafter_folder).eval()
    lengths = []
    for prompt in prompts:
        stats = dflash.dflash_generate(model, target, prompt[None], max_new, None, return_stats=True)
        lengths += stats.acceptance_lengths
    return sum(lengths) / len(lengths)


def overfit_drafter(target, sequence, steps=300):
    """A drafter trained on one sequence until its blocks reproduce it (the train side of the parity gate)."""
    model = native_drafter(target, seed=5)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    features = verifier_features(target, sequence[None], model.config.feature_layers)
    anchors = torch.arange(sequence.numel() - 1)[None]
    from diffuspec.models.conditioned import block_targets

    labels, valid = block_targets(sequence[None], anchors, model.config.block_size)
    for _ in range(steps):
        logits = model(features, sequence[None], anchors).logits
        loss = F.cross_entropy(logits[valid], labels[valid])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return model.eval()


def test_train_serve_parity_gate(target, tmp_path, monkeypatch):
    """Overfit one verifier continuation, export, decode it through the reference: every block is accepted whole."""
    prompt = torch.tensor([5, 17, 3, 44])
    sequence = reference_greedy(target, prompt, 30)
    model = overfit_drafter(target, sequence)
    out = export_dflash(model, tmp_path / "export", verifier="tiny-verifier")
    reference = dflash.DFlashDraftModel.from_pretrained(out).eval()
    result = dflash.dflash_generate(reference, target, prompt[None], 30, None)
    assert result[0, : sequence.numel()].tolist() == sequence.tolist()
    # every round but the last accepts the whole block: block_size drafts + the bonus token
    monkeypatch.setattr(dflash, "_cuda_time", time.perf_counter)  # its timer synchronises CUDA; this is a CPU
    stats = dflash.dflash_generate(reference, target, prompt[None], 30, None, return_stats=True)
    assert stats.acceptance_lengths[:-1] == [reference.block_size] * (len(stats.acceptance_lengths) - 1)


def test_acceptance_matches_dflash_generate(target, tmp_path, monkeypatch):
    """Same drafter, same prompts: diffuspec's loop and the reference's give mean tokens per round within 5%.

    Both anchor a round on the newest committed token with the target states of every token before it, and both
    count the verifier's bonus token. They differ at the two ends: the reference's prefill emits the first token
    on its own (not counted as a round) and its first block is anchored on it, where diffuspec's first round
    drafts from the prompt's last token in the prefill pass; and at the budget's end the reference shortens its
    block, where diffuspec runs the whole block and uses fewer slots."""
    prompt = torch.tensor([5, 17, 3, 44])
    sequence = reference_greedy(target, prompt, 40)
    model = overfit_drafter(target, sequence, steps=60)  # partly fitted: some blocks accepted whole, some cut
    folder = export_dflash(model, tmp_path / "export", verifier="tiny-verifier")
    prompts = [prompt, sequence[:9], torch.tensor([8, 1, 30, 2, 2, 61])]
    ours = acceptance_diffuspec(target, folder, prompts, 32)
    theirs = acceptance_reference(target, folder, prompts, 32, monkeypatch)
    assert 1.0 < theirs and abs(ours - theirs) <= 0.05 * theirs, (ours, theirs)


def test_export_command_writes_a_servable_folder(target, tmp_path, capsys):
    model = native_drafter(target)
    model.config.verifier_name = "tiny-verifier"
    model.save_pretrained(tmp_path / "drafter")
    out = tmp_path / "served"
    assert cli_main(["export", str(tmp_path / "drafter"), "--format", "dflash", "--output-dir", str(out)]) == 0
    assert (out / "model.safetensors").is_file() and "tiny-verifier" in (out / "README.md").read_text()
    assert cli_main(["export", str(tmp_path / "drafter"), "--output-dir", str(out)]) == 2  # exists: refused
    assert "exists" in capsys.readouterr().err


def test_training_adapts_an_imported_checkpoint_and_exports_it_again(target, tmp_path):
    """train_conditioned_drafter (the run train/train_conditioned.py launches) starts from a DFlash checkpoint,
    lowers the loss on the verifier's continuations, and the result exports and loads in the reference."""
    import datasets
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import PreTrainedTokenizerFast

    from diffuspec.training.run import LOG_FILE, train_conditioned_drafter

    vocab = {f"t{i}": i for i in range(VOCAB - 2)} | {"<pad>": VOCAB - 2, "<mask>": MASK}
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<pad>")), pad_token="<pad>", mask_token="<mask>"
    )
    target.save_pretrained(tmp_path / "verifier")
    tokenizer.save_pretrained(tmp_path / "verifier")
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB - 2, (6,), generator=generator) for _ in range(8)]
    completions = [reference_greedy(target, p, 16)[6:].tolist() for p in prompts]
    rows = {
        "id": [str(i) for i in range(8)],
        "prompt_ids": [p.tolist() for p in prompts],
        "completion_ids": completions,
    }
    datasets.Dataset.from_dict(rows).save_to_disk(str(tmp_path / "dataset"))
    _, reference_folder = reference_drafter(tmp_path, seed=6)

    out = train_conditioned_drafter(
        tmp_path / "verifier",
        tmp_path / "dataset",
        tmp_path / "adapted",
        drafter=reference_folder,
        max_steps=40,
        batch_size=4,
        learning_rate=1e-2,
    )
    losses = [row["loss"] for row in json.loads((out / LOG_FILE).read_text()) if "loss" in row]
    assert losses[-1] < losses[0]
    adapted = load_drafter(out, target)
    assert adapted.model.config.qk_norm and adapted.model.config.feature_layers == [1, 3]
    served = export_dflash(adapted.model, tmp_path / "served")
    reference = dflash.DFlashDraftModel.from_pretrained(served).eval()
    ids = torch.tensor(rows["prompt_ids"][0] + completions[0][:4])
    assert_same_proposals(
        diffuspec_block_logits(adapted.model, target, ids), reference_block_logits(reference, target, ids)
    )
