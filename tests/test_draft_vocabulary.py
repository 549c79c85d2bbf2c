"""Draft vocabularies: the subset is chosen by frequency, drafters score exactly its rows, and decoding stays
lossless whatever the subset."""

import json

import pytest
import torch
from conftest import VOCAB, reference_greedy
from test_conditioned_lossless import random_drafter
from test_eval_harness import folders, tiny_config  # noqa: F401 - folders is a fixture

from diffuspec import ADLConfig, CPSConfig, DecodeConfig, DiffusionDrafter, SpeculativeDecoder, TreeConfig
from diffuspec.decoding.drafter import DraftRequest
from diffuspec.decoding.lattice import Lattice
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.drafters.vocabulary import DraftVocabulary
from diffuspec.evaluation import evaluate
from diffuspec.evaluation.methods import check_inputs
from diffuspec.models.tiny import tiny_qwen2

MASK = VOCAB - 1


def test_from_counts_ranks_by_frequency_keeps_and_drops():
    counts = torch.tensor([5, 0, 9, 9, 1, 7, 3, 0])
    vocab = DraftVocabulary.from_counts(counts, size=3)
    assert vocab.ids.tolist() == [2, 3, 5]  # 9, 9, 7
    vocab = DraftVocabulary.from_counts(counts, size=4, keep=[1], drop=[3])
    assert vocab.ids.tolist() == [0, 1, 2, 5]  # kept 1 (never seen), dropped 3, then 9, 7, 5
    assert DraftVocabulary.from_counts(torch.zeros(5), size=2).ids.tolist() == [0, 1]  # ties: lower ids first
    seqs = [[4, 4, 4, 2], [2, 6]]
    assert DraftVocabulary.from_sequences(seqs, vocab_size=8, size=2).ids.tolist() == [2, 4]


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"size": 0}, r"size must be in \[1, 8\], got 0"),
        ({"size": 9}, r"size must be in \[1, 8\], got 9"),
        ({"size": 1, "keep": [1, 2]}, r"size must be in \[2, 8\], got 1"),
        ({"size": 7, "drop": [0, 1]}, r"size must be in \[1, 6\], got 7"),
        ({"size": 2, "keep": [8]}, r"ids \[8\] are outside the vocabulary \[0, 8\)"),
        ({"size": 2, "keep": [3], "drop": [3]}, r"ids \[3\] are both kept and dropped"),
    ],
)
def test_bad_settings_are_named(kwargs, message):
    with pytest.raises(ValueError, match=message):
        DraftVocabulary.from_counts(torch.ones(8), **kwargs)


def test_ids_are_checked_and_files_round_trip(tmp_path):
    with pytest.raises(ValueError, match="ascending and unique"):
        DraftVocabulary(torch.tensor([3, 1]), 8)
    with pytest.raises(ValueError, match=r"in \[0, 8\)"):
        DraftVocabulary(torch.tensor([1, 8]), 8)
    with pytest.raises(ValueError, match=r"token ids must lie in \[0, 4\)"):
        DraftVocabulary.from_sequences([[1, 4]], vocab_size=4, size=1)
    vocab = DraftVocabulary(torch.tensor([1, 4, 6]), 8)
    vocab.save(tmp_path / "vocab.json")
    again = DraftVocabulary.load(tmp_path / "vocab.json")
    assert again.ids.tolist() == [1, 4, 6] and again.vocab_size == 8 and len(again) == 3
    assert vocab.coverage([1, 2, 4, 4]) == 0.75
    (tmp_path / "other.json").write_text(json.dumps({"ids": [1]}))
    with pytest.raises(ValueError, match="is not a draft vocabulary"):
        DraftVocabulary.load(tmp_path / "other.json")
    with pytest.raises(ValueError, match="cannot read a draft vocabulary"):
        DraftVocabulary.load(tmp_path / "missing.json")


def test_lattice_over_a_subset_maps_columns_to_ids():
    full = torch.log_softmax(torch.randn(3, 10, generator=torch.Generator().manual_seed(0)), -1)
    ids = torch.tensor([0, 2, 5, 7, 9])
    sub = torch.log_softmax(full[:, ids], -1)
    lattice = Lattice.from_logprobs(sub, width=3, eos_token_ids=(7, 8), token_ids=ids)
    expected = Lattice.from_logprobs(full.index_fill(1, torch.tensor([1, 3, 4, 6, 8]), float("-inf")), 3, (7, 8))
    assert torch.equal(lattice.ids, expected.ids) and torch.equal(lattice.draft, expected.draft)
    assert torch.allclose(lattice.eos_logprobs[:, 0], sub[:, 3])
    assert torch.isinf(lattice.eos_logprobs[:, 1]).all()  # EOS 8 is outside the subset: never drafted


def subset(size: int, seed: int = 0) -> DraftVocabulary:
    ids = torch.randperm(VOCAB - 1, generator=torch.Generator().manual_seed(seed))[:size]  # never the mask
    return DraftVocabulary(ids.sort().values, VOCAB)


def restricted(full: Lattice, vocab: DraftVocabulary, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The full-vocabulary drafter's log-probs restricted to the subset and renormalised, as (ids, log-probs)."""
    logprobs = torch.full((full.k, VOCAB), float("-inf")).scatter(1, full.ids, full.logprobs)[:, vocab.ids]
    logprobs = torch.log_softmax(logprobs, -1)
    values, columns = torch.topk(logprobs, width, dim=-1)
    return vocab.ids[columns], values


@pytest.mark.parametrize("shifted", [True, False])
def test_diffusion_drafter_scores_exactly_the_subset(verifier, dlm, shifted):
    vocab = subset(40)
    request = DraftRequest(torch.tensor([3, 8, 1, 4, 4]), k=5, width=VOCAB, eos_token_ids=(2,))
    full = DiffusionDrafter(dlm, MASK, shifted=shifted).propose(request)
    lattice = DiffusionDrafter(dlm, MASK, shifted=shifted, vocabulary=vocab).propose(request)
    ids, values = restricted(full, vocab, lattice.ids.shape[1])
    assert torch.isin(lattice.ids, vocab.ids).all()
    assert torch.equal(lattice.ids[:, :5], ids[:, :5])
    torch.testing.assert_close(lattice.logprobs, values, atol=1e-5, rtol=0)
    two_steps = DiffusionDrafter(dlm, MASK, shifted=shifted, steps=2, vocabulary=vocab).propose(request)
    assert torch.isin(two_steps.draft, vocab.ids).all()  # committed slots map back to token ids
    assert (two_steps.logprobs[:, 0] == 0).sum() >= 2  # the slots committed in the first pass are point masses


def test_conditioned_drafter_scores_exactly_the_subset(verifier):
    vocab = subset(30, seed=1)
    drafter = random_drafter(verifier, seed=3, layers=1, block_size=6)
    ids = torch.tensor([3, 8, 1, 4, 4])
    features = torch.randn(4, drafter.model.config.feature_size, dtype=verifier.dtype)
    request = DraftRequest(ids, k=4, width=VOCAB, eos_token_ids=(2,), features=features)
    full = ConditionedDrafter(drafter.model).propose(request)
    lattice = ConditionedDrafter(drafter.model, vocabulary=vocab).propose(request)
    expected_ids, values = restricted(full, vocab, lattice.ids.shape[1])
    assert torch.equal(lattice.ids[:, :5], expected_ids[:, :5])
    torch.testing.assert_close(lattice.logprobs, values, atol=1e-5, rtol=0)


def test_a_vocabulary_holding_the_mask_or_of_another_size_is_refused(verifier, dlm):
    with pytest.raises(ValueError, match=f"holds the mask token {MASK}"):
        DiffusionDrafter(dlm, MASK, vocabulary=DraftVocabulary(torch.tensor([1, MASK]), VOCAB))
    with pytest.raises(ValueError, match="indexes 50 ids, the drafter has 96"):
        DiffusionDrafter(dlm, MASK, vocabulary=DraftVocabulary(torch.tensor([1]), 50))
    drafter = random_drafter(verifier, seed=3, layers=1, block_size=6)
    with pytest.raises(ValueError, match=f"holds the mask token {MASK}"):
        ConditionedDrafter(drafter.model, vocabulary=DraftVocabulary(torch.tensor([MASK]), VOCAB))
    capped = tiny_qwen2(seed=2, vocab_size=VOCAB, hidden_size=32, num_layers=1, causal=False)
    capped.config.final_logit_softcapping = 30.0  # logits change after the head: a subset of rows would skip that
    with pytest.raises(ValueError, match=r"post-processes logits \(\['final_logit_softcapping'\]\)"):
        DiffusionDrafter(capped, MASK, vocabulary=subset(4))


@pytest.mark.parametrize("tree", [None, TreeConfig(max_nodes=12, max_children=3)])
@pytest.mark.parametrize("size", [1, 12, 95])
def test_decoding_with_any_subset_is_lossless(verifier, dlm, size, tree):
    vocab = subset(size, seed=size)
    config = DecodeConfig(cps=CPSConfig(beam=2, m_max=4), adl=ADLConfig(k_min=2, k_max=6, delta=2), tree=tree)
    drafters = [
        DiffusionDrafter(dlm, MASK, vocabulary=vocab),
        ConditionedDrafter(random_drafter(verifier, seed=4, layers=1, block_size=6).model, vocabulary=vocab),
    ]
    for drafter in drafters:
        decoder = SpeculativeDecoder(verifier, drafter, config)
        for prompt in ([5, 9, 2], [1, 1, 1, 1, 7]):
            prompt = torch.tensor(prompt)
            out = decoder.generate(prompt, max_new_tokens=20, eos_token_id=[])
            assert out.sequences[0].tolist() == reference_greedy(verifier, prompt, 20).tolist()


def test_eval_methods_take_a_draft_vocabulary(folders, tmp_path):  # noqa: F811 - the fixture
    from diffuspec.loading import config_vocab_size

    size = config_vocab_size(folders["verifier"])
    mask = json.loads((folders["dlm"] / "diffuspec_config.json").read_text())["mask_token_id"]
    vocab_path = tmp_path / "vocab.json"
    DraftVocabulary.from_counts(torch.arange(size).flip(0), size=64, drop=[mask]).save(vocab_path)
    common = {"adl": {"k_min": 2, "k_max": 4, "delta": 1}, "draft_vocab": str(vocab_path)}
    methods = [
        {"kind": "ar"},
        {"kind": "diffusion", "name": "dlm_v64", "drafter": str(folders["dlm"]), **common},
        {"kind": "conditioned", "name": "conditioned_v64", "drafter": str(folders["conditioned"]), **common},
    ]
    assert evaluate(tiny_config(folders, tmp_path, methods=methods)) == 0
    results = json.loads((tmp_path / "out" / "results.json").read_text())
    assert results["lossless"] is True and set(results["methods"]) == {"ar", "dlm_v64", "conditioned_v64"}

    DraftVocabulary(torch.tensor([1, 2]), size + 1).save(vocab_path)
    with pytest.raises(ValueError, match=f"indexes {size + 1} ids, the verifier has {size}"):
        check_inputs(tiny_config(folders, tmp_path, methods=methods))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['draft_vocab'\] for a 'pld' method"):
        tiny_config(folders, tmp_path, methods=[{"kind": "pld", "draft_vocab": str(vocab_path)}])


def test_cli_builds_a_vocabulary_from_verifier_answers(folders, tmp_path, capsys):  # noqa: F811 - the fixture
    from datasets import Dataset

    from diffuspec.cli import main
    from diffuspec.loading import config_vocab_size

    answers = [[5, 6, 7, 5], [5, 6, 9], [5, 6, 7], [5, 6, 6], [5, 6, 5], [5, 6, 7], [5, 6], [6, 5], [5], [6, 42]]
    Dataset.from_dict({"prompt_ids": [[1]] * len(answers), "completion_ids": answers}).save_to_disk(tmp_path / "data")
    out = tmp_path / "vocab.json"
    argv = ["draft-vocab", str(tmp_path / "data"), "--verifier", str(folders["verifier"]), "--output", str(out)]
    assert main([*argv, "--size", "4", "--exclude", "6"]) == 0
    vocab = DraftVocabulary.load(out)
    eos = json.loads((folders["verifier"] / "config.json").read_text())["eos_token_id"]
    assert vocab.vocab_size == config_vocab_size(folders["verifier"]) and 6 not in vocab.ids.tolist()
    assert {5, 7, eos} <= set(vocab.ids.tolist()) and len(vocab) == 4
    # built from the first 9 answers, measured on the last: 6 is excluded and 42 was never seen
    assert "they cover 0.0% of held-out answer tokens" in capsys.readouterr().out
    assert main([*argv, "--size", "0"]) == 2
    assert "draft vocabulary size must be in" in capsys.readouterr().err


def test_sampling_with_a_subset_is_exact():
    """T > 0: a drafter that can only draft half the ids still samples exactly from the processed verifier."""
    from test_sampling import N as samples
    from test_sampling import V, exact_distribution, sampled_tv, tv_bound

    verifier = tiny_qwen2(seed=3, vocab_size=V, hidden_size=32, num_layers=1, init_std=0.5, dtype=torch.float64)
    dlm = tiny_qwen2(seed=4, vocab_size=V, hidden_size=32, num_layers=1, causal=False, init_std=0.5)
    vocab = DraftVocabulary(torch.tensor([0, 2, 3]), V)
    drafter = DiffusionDrafter(dlm.to(torch.float64), mask_token_id=V - 1, vocabulary=vocab)
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=2))
    exact = exact_distribution(verifier, 0.8, None, 0.95)
    assert sampled_tv(decoder, exact, 0.8, None, 0.95, seed=3) < tv_bound(len(exact), samples)


def test_from_pretrained_and_generate_take_a_vocabulary_file(folders, tmp_path, capsys):  # noqa: F811 - the fixture
    from diffuspec.cli import main
    from diffuspec.loading import config_vocab_size

    size = config_vocab_size(folders["verifier"])
    mask = json.loads((folders["dlm"] / "diffuspec_config.json").read_text())["mask_token_id"]
    path = tmp_path / "vocab.json"
    DraftVocabulary.from_counts(torch.ones(size), size=32, drop=[mask]).save(path)
    decoder = SpeculativeDecoder.from_pretrained(folders["verifier"], folders["dlm"], draft_vocab=path)
    assert decoder.drafter.vocabulary.ids.tolist() == [i for i in range(33) if i != mask][:32]
    with pytest.raises(ValueError, match="needs a drafter"):
        SpeculativeDecoder.from_pretrained(folders["verifier"], None, draft_vocab=path)
    argv = ["generate", "--verifier", str(folders["verifier"]), "--drafter", str(folders["conditioned"]),
            "--draft-vocab", str(path), "--prompt", "Summarize the article", "--max-new-tokens", "6",
            "--k-min", "2", "--k-max", "6"]  # fmt: skip
    assert main(argv) == 0
    assert '"rounds"' in capsys.readouterr().err


def test_columns_map_full_ids_to_head_rows():
    vocabulary = DraftVocabulary(torch.tensor([1, 4, 6]), 8)
    assert vocabulary.columns().tolist() == [-1, 0, -1, -1, 1, -1, 2, -1]
