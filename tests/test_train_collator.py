"""The collator builds exactly what the drafter sees at inference, deterministically; the teachers read the
right verifier rows."""

import pytest
import torch

from diffuspec.drafters.diffusion import DiffusionDrafter
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.collator import DrafterCollator, example_generator
from diffuspec.training.losses import IGNORE_INDEX, drafter_logprobs, gather_slot_logits
from diffuspec.training.teacher import OfflineTeacher, OnlineTeacher

V, MASK, PAD = 48, 47, 0


def make_examples(n: int = 3, seed: int = 0, teacher_k: int | None = None):
    g = torch.Generator().manual_seed(seed)
    out = []
    for i in range(n):
        prompt = torch.randint(1, 40, (3 + i,), generator=g).tolist()
        completion = torch.randint(1, 40, (6 + 2 * i,), generator=g).tolist()
        example = {"prompt_ids": prompt, "completion_ids": completion}
        if teacher_k:
            lp = torch.log_softmax(torch.randn(len(completion), V - 1, generator=g), -1)
            values, ids = lp.topk(teacher_k, -1)
            example["teacher_topk_ids"], example["teacher_topk_logprobs"] = ids.tolist(), values.tolist()
        out.append(example)
    return out


def collator(**kw):
    base = dict(mask_token_id=MASK, pad_token_id=PAD, shifted=True, block_size=4, anchors_per_sequence=2, seed=0)
    return DrafterCollator(**(base | kw))


def unpad(batch, r):
    keep = batch["attention_mask"][r].bool()
    return batch["input_ids"][r][keep].tolist(), batch["position_ids"][r][keep].tolist()


def test_block_rows_are_prefix_plus_k_masks():
    examples = make_examples()
    batch = collator(diffusion_rows=False, block_size_min=2)(examples)
    rows = batch["input_ids"].shape[0]
    assert rows == 2 * len(examples) and "mdm_labels" not in batch
    width = batch["logits_to_keep"]
    for r in range(rows):
        ids, positions = unpad(batch, r)
        assert positions == list(range(len(ids)))  # positions as in an unpadded inference pass
        example = examples[r // 2]
        k = int((torch.tensor(ids) == MASK).sum())
        assert 2 <= k <= 4 and ids[-k:] == [MASK] * k
        prefix = ids[:-k]
        prompt, completion = example["prompt_ids"], example["completion_ids"]
        assert prefix[: len(prompt)] == prompt
        anchor = len(prefix) - len(prompt)
        assert prefix[len(prompt) :] == completion[:anchor]  # everything before the anchor, nothing after the block
        labels = batch["block_labels"][r]
        scored = min(k, len(completion) - anchor)
        assert labels[:scored].tolist() == completion[anchor : anchor + scored]
        assert (labels[scored:] == IGNORE_INDEX).all()
        assert batch["block_index"][r, :k].tolist() == list(range(width - k, width))


def test_diffusion_rows_never_mask_the_prompt():
    examples = make_examples(40)
    batch = collator(block_size=0)(examples)
    labels, width = batch["mdm_labels"], batch["logits_to_keep"]
    fractions = []
    for r, example in enumerate(examples):
        ids, _ = unpad(batch, r)
        prompt, completion = example["prompt_ids"], example["completion_ids"]
        assert ids[: len(prompt)] == prompt
        masked = [i for i, tok in enumerate(ids[len(prompt) :]) if tok == MASK]
        row_labels = labels[r, width - len(completion) :]
        assert [i for i, lab in enumerate(row_labels.tolist()) if lab != IGNORE_INDEX] == masked
        assert all(row_labels[i] == completion[i] for i in masked)
        assert (labels[r, : width - len(completion)] == IGNORE_INDEX).all()
        t_times_len = 1 / batch["mdm_weights"][r].item()
        assert 1e-3 * len(completion) - 1e-6 <= t_times_len <= len(completion) + 1e-6
        fractions.append(len(masked) / len(completion))
    assert 0.3 < sum(fractions) / len(fractions) < 0.7  # t ~ U(eps, 1): half the tokens masked on average


def test_batches_are_a_pure_function_of_seed_epoch_and_example():
    examples = make_examples(4)
    a = collator()(examples)
    b = collator()(examples)
    for key, value in a.items():
        assert torch.equal(value, b[key]) if torch.is_tensor(value) else value == b[key]
    # the same example draws the same masks in another batch composition
    alone = collator()(examples[2:3])
    assert unpad(alone, 0)[0] == unpad(a, 2)[0]
    assert not torch.equal(collator(seed=1)(examples)["input_ids"], a["input_ids"])
    assert not torch.equal(collator(epoch=1)(examples)["input_ids"], a["input_ids"])
    g1 = example_generator(0, 0, [1, 2], [3])
    g2 = example_generator(0, 0, [1], [2, 3])  # the split point is part of the key
    assert torch.rand(4, generator=g1).tolist() != torch.rand(4, generator=g2).tolist()


def test_padded_training_rows_reproduce_inference_slot_distributions():
    """A block row inside a padded batch gives the drafter the same slot distributions as DiffusionDrafter."""
    model = tiny_qwen2(seed=4, vocab_size=V, hidden_size=32, num_layers=2, causal=False, dtype=torch.float64)
    drafter = DiffusionDrafter(model, mask_token_id=MASK, shifted=True)
    examples = make_examples(3)
    batch = collator(diffusion_rows=True)(examples)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["logits_to_keep"],
    ).logits
    num_mdm = batch["mdm_labels"].shape[0]
    slot_lp = drafter_logprobs(gather_slot_logits(logits[num_mdm:], batch["block_index"], True), MASK)
    for r in range(batch["block_labels"].shape[0]):
        ids, _ = unpad(batch, num_mdm + r)
        k = int((torch.tensor(ids) == MASK).sum())
        expected = drafter._slot_logprobs(torch.tensor(ids), len(ids) - k, k)
        torch.testing.assert_close(slot_lp[r, :k], expected.double(), rtol=1e-6, atol=1e-6)  # inference is float32


def test_context_window_cuts_block_prefixes_as_the_windowed_drafter_does():
    """With context_window W a block row is (committed prefix)[-W:] + k masks: what DiffusionDrafter(context_window=W)
    feeds its model, so the slot distributions match the inference drafter's on that window."""
    model = tiny_qwen2(seed=4, vocab_size=V, hidden_size=32, num_layers=1, causal=False, dtype=torch.float64)
    window = 5
    drafter = DiffusionDrafter(model, mask_token_id=MASK, shifted=True, context_window=window)
    examples = make_examples(3)
    batch = collator(diffusion_rows=False, context_window=window)(examples)
    logits = model(
        input_ids=batch["input_ids"],
        attention_mask=batch["attention_mask"],
        position_ids=batch["position_ids"],
        logits_to_keep=batch["logits_to_keep"],
    ).logits
    slot_lp = drafter_logprobs(gather_slot_logits(logits, batch["block_index"], True), MASK)
    for r in range(batch["block_labels"].shape[0]):
        ids, _ = unpad(batch, r)
        k = int((torch.tensor(ids) == MASK).sum())
        example = examples[r // 2]
        committed = example["prompt_ids"] + example["completion_ids"]
        ends = range(len(example["prompt_ids"]), len(committed))
        assert any(committed[:end][-window:] == ids[:-k] for end in ends)
        expected = drafter._slot_logprobs(torch.tensor(ids), len(ids) - k, k)
        torch.testing.assert_close(slot_lp[r, :k], expected.double(), rtol=1e-6, atol=1e-6)


def test_online_teacher_reads_the_verifier_distribution_of_each_slot():
    verifier = tiny_qwen2(seed=5, vocab_size=V, hidden_size=32, num_layers=1, dtype=torch.float64)
    examples = make_examples(3)
    batch = collator(diffusion_rows=False, clean_rows=True)(examples)
    full = OnlineTeacher(verifier, top_k=0, mask_token_id=MASK)(batch)
    top = OnlineTeacher(verifier, top_k=5, mask_token_id=MASK)(batch)
    assert full.ids is None and top.ids.shape[-1] == 5
    for r in range(batch["block_labels"].shape[0]):
        example = examples[batch["teacher_row"][r]]
        ids, _ = unpad(batch, r)
        anchor = len(ids) - int((torch.tensor(ids) == MASK).sum()) - len(example["prompt_ids"])
        for i, label in enumerate(batch["block_labels"][r].tolist()):
            if label == IGNORE_INDEX:
                continue
            context = torch.tensor(example["prompt_ids"] + example["completion_ids"][: anchor + i])
            logits = verifier(input_ids=context[None]).logits[0, -1]
            logits[MASK] = float("-inf")
            expected = torch.log_softmax(logits, -1)
            torch.testing.assert_close(full.logprobs[r, i].double(), expected, rtol=1e-9, atol=1e-9)
            torch.testing.assert_close(top.logprobs[r, i], expected.topk(5).values.to(top.logprobs.dtype))


def test_offline_teacher_columns_follow_the_block_slots():
    examples = make_examples(2, teacher_k=3)
    batch = collator(diffusion_rows=False, teacher_columns=True)(examples)
    targets = OfflineTeacher()(batch)
    for r in range(batch["block_labels"].shape[0]):
        example = examples[r // 2]
        ids, _ = unpad(batch, r)
        anchor = len(ids) - int((torch.tensor(ids) == MASK).sum()) - len(example["prompt_ids"])
        for i, label in enumerate(batch["block_labels"][r].tolist()):
            if label != IGNORE_INDEX:
                assert targets.ids[r, i].tolist() == example["teacher_topk_ids"][anchor + i]
                torch.testing.assert_close(
                    targets.logprobs[r, i], torch.tensor(example["teacher_topk_logprobs"][anchor + i])
                )


def test_truncation_keeps_the_prompt_end_and_completion_start():
    example = {"prompt_ids": list(range(1, 11)), "completion_ids": list(range(11, 31))}
    batch = collator(block_size=0, max_prompt_length=3, max_completion_length=5)([example])
    ids, _ = unpad(batch, 0)
    assert ids[:3] == [8, 9, 10] and len(ids) == 8


@pytest.mark.parametrize(
    "example, match",
    [
        ({"prompt_ids": [1, 2]}, "lacks"),
        ({"prompt_ids": [1, 2], "completion_ids": []}, "empty"),
        ({"prompt_ids": [], "completion_ids": [3]}, "empty"),
        ({"prompt_ids": [1, MASK], "completion_ids": [3]}, "mask token"),
        (
            {"prompt_ids": [1], "completion_ids": [3, 4], "teacher_topk_ids": [[1]], "teacher_topk_logprobs": [[0.0]]},
            "teacher top-k rows",
        ),
    ],
)
def test_bad_examples_raise(example, match):
    teacher = "teacher_topk_ids" in example
    with pytest.raises((ValueError, KeyError), match=match):
        collator(teacher_columns=teacher)([example])


def test_collator_needs_something_to_build():
    with pytest.raises(ValueError, match="builds nothing"):
        collator(diffusion_rows=False, block_size=0)
