"""Training the conditioned drafter: loss falls, the saved folder loads, decoding stays lossless, and the trained
drafter gets more tokens accepted than an untrained one on the prompts it was trained on."""

import json

import datasets
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from diffuspec import ConditionedDrafter, DecodeConfig, SpeculativeDecoder
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.conditioned import (
    LOG_FILE,
    ConditionedCollator,
    completion_mask,
    sample_anchors,
    train_conditioned_drafter,
)

VOCAB, MASK, PAD = 128, 127, 126
PROMPT_LEN, COMPLETION_LEN, ROWS = 8, 24, 12
BLOCK = 6


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ids: token ``t{i}`` is id i, with a pad and a mask token at the top."""
    vocab = {f"t{i}": i for i in range(VOCAB - 2)} | {"<pad>": PAD, "<mask>": MASK}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", mask_token="<mask>")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny verifier (with tokenizer) and a dataset of its own greedy continuations."""
    root = tmp_path_factory.mktemp("conditioned")
    model = tiny_qwen2(seed=0, vocab_size=VOCAB, hidden_size=64, num_layers=2, init_std=0.1)
    model.save_pretrained(root / "verifier")
    tiny_tokenizer().save_pretrained(root / "verifier")
    verifier = AutoModelForCausalLM.from_pretrained(root / "verifier").eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB - 2, (PROMPT_LEN,), generator=generator).tolist() for _ in range(ROWS)]
    plain = SpeculativeDecoder(verifier)
    completions = [
        plain.generate(torch.tensor([p]), max_new_tokens=COMPLETION_LEN).sequences[0, PROMPT_LEN:].tolist()
        for p in prompts
    ]
    rows = {"id": [str(i) for i in range(ROWS)], "prompt_ids": prompts, "completion_ids": completions}
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "dataset"))
    out = train_conditioned_drafter(
        root / "verifier",
        root / "dataset",
        root / "drafter",
        block_size=BLOCK,
        max_steps=60,
        batch_size=4,
        learning_rate=3e-2,
        anchors_per_sequence=8,
        decay_gamma=4.0,
        streak_weight=0.5,
        feature_layers=[1, 2],
    )
    return root, out, verifier, prompts, completions


def mean_accepted(verifier, drafter, prompts) -> tuple[float, list[list[int]]]:
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=BLOCK))
    total, rounds, outputs = 0, 0, []
    for prompt in prompts:
        out = decoder.generate(torch.tensor([prompt]), max_new_tokens=COMPLETION_LEN)
        total, rounds = total + sum(out.stats.accepted), rounds + out.stats.rounds
        outputs.append(out.sequences[0].tolist())
    return total / rounds, outputs


def test_collator_and_anchors():
    batch = ConditionedCollator(pad_token_id=PAD)(
        [{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5]}, {"prompt_ids": [6], "completion_ids": [7, 8, 9, 10]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert batch["prompt_lengths"].tolist() == [3, 1]
    mask = completion_mask(batch["attention_mask"], batch["prompt_lengths"])
    assert mask.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    anchors, ok = sample_anchors(torch.tensor([3, 1, 4]), torch.tensor([5, 5, 4]), 3, torch.Generator().manual_seed(0))
    assert set(anchors[0].tolist()) == {2, 3}  # a in prompt_len-1..len-2; 2 candidates for 3 anchors: a repeat
    assert len(set(anchors[1].tolist())) == 3 and set(anchors[1].tolist()) <= {0, 1, 2, 3}  # distinct when possible
    assert ok.tolist() == [[True] * 3, [True] * 3, [False] * 3]  # an empty completion scores nothing


def test_training_loss_decreases(setup):
    _, out, *_ = setup
    losses = [row["loss"] for row in json.loads((out / LOG_FILE).read_text()) if "loss" in row]
    logged = [row for row in json.loads((out / LOG_FILE).read_text()) if "loss/block_ce" in row]
    assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0]
    assert logged and "loss/streak" in logged[0]


def test_trained_drafter_is_lossless_and_better(setup):
    _, out, verifier, prompts, completions = setup
    trained = ConditionedDrafter.from_pretrained(out, verifier)
    assert trained.block_size == BLOCK and trained.mask_token_id == MASK
    trained_accepted, outputs = mean_accepted(verifier, trained, prompts)
    assert outputs == [p + c for p, c in zip(prompts, completions, strict=True)]  # greedy == plain decoding
    config = ConditionedDrafterConfig.from_pretrained(out)
    torch.manual_seed(1)
    untrained = ConditionedDrafter(ConditionedDrafterModel(config), verifier)
    untrained_accepted, outputs = mean_accepted(verifier, untrained, prompts)
    assert outputs == [p + c for p, c in zip(prompts, completions, strict=True)]
    assert trained_accepted > untrained_accepted + 0.3, (trained_accepted, untrained_accepted)
