"""Benchmark loading: the real Spec-Bench file, JSONL prompts, text folders, token-id lists."""

import json

import pytest

from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS as SPEC_BENCH
from diffuspec.evaluation.benchmarks import (
    SPEC_BENCH_TASKS,
    build_prompts,
    load_jsonl,
    load_questions,
    load_spec_bench,
    load_text_dir,
    questions_from_token_ids,
)


class CharTokenizer:
    """One token per character: enough to test windows and truncation without a real tokenizer."""

    chat_template = "user: {content}"

    def __call__(self, text, add_special_tokens=True):
        return type("Encoding", (), {"input_ids": [ord(c) for c in text]})()

    def decode(self, ids, skip_special_tokens=False):
        return "".join(chr(i) for i in ids)

    def apply_chat_template(self, messages, tokenize=False, add_generation_prompt=True):
        return "".join(f"<{m['role']}>{m['content']}" for m in messages) + (
            "<assistant>" if add_generation_prompt else ""
        )


def test_spec_bench_tasks_and_counts():
    assert SPEC_BENCH.is_file()  # shipped inside the package, no path of any machine
    questions = load_spec_bench()
    counts = {task: sum(q.task == task for q in questions) for task in SPEC_BENCH_TASKS}
    assert counts == {"mt_bench": 80, "translation": 80, "summarization": 80, "qa": 80, "math_reasoning": 80, "rag": 80}
    assert all(len(q.turns) == 2 for q in questions if q.task == "mt_bench")


def test_spec_bench_sample_covers_mt_bench_categories():
    questions = load_spec_bench(SPEC_BENCH, tasks=["mt_bench", "qa"], per_task=3)
    assert [q.task for q in questions] == ["mt_bench"] * 3 + ["qa"] * 3
    assert [q.category for q in questions[:3]] == ["writing", "roleplay", "reasoning"]  # round-robin, not 3x writing


def test_unknown_task_and_missing_files(tmp_path):
    with pytest.raises(ValueError, match=r"task\(s\) \['poetry'\] not found"):
        load_spec_bench(SPEC_BENCH, tasks=["poetry"])
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_questions("spec_bench", tmp_path / "missing.jsonl")
    with pytest.raises(FileNotFoundError, match="missing.jsonl"):
        load_jsonl(tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="'jsonl' benchmark needs a path"):
        load_questions("jsonl", None)
    with pytest.raises(FileNotFoundError, match="no_dir"):
        load_text_dir(tmp_path / "no_dir", CharTokenizer(), 4)


def test_jsonl_prompts(tmp_path):
    path = tmp_path / "p.jsonl"
    rows = [{"prompt": "abc", "task": "x"}, {"text": "defg"}, {"prompt": "hi", "task": "x"}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    questions = load_jsonl(path, per_task=1)
    assert [(q.task, q.turns) for q in questions] == [("x", ["abc"]), ("default", ["defg"])]
    path.write_text(json.dumps({"question": "no prompt"}) + "\n")
    with pytest.raises(ValueError, match=r"p.jsonl:1: .*'prompt' or 'text'"):
        load_jsonl(path)


def test_jsonl_token_id_prompts_are_used_as_they_are(tmp_path):
    path = tmp_path / "ids.jsonl"
    path.write_text(json.dumps({"prompt_ids": [5, 6, 7]}) + "\n" + json.dumps({"prompt": "ab"}) + "\n")
    questions = load_jsonl(path)
    assert questions[0].ids == [5, 6, 7] and questions[1].turns == ["ab"]
    prompts = build_prompts(questions[:1], CharTokenizer(), chat_template=True)
    assert prompts[0].ids == [5, 6, 7]  # no template laid over ids that already carry one
    for bad in ([], [1, -2], "12"):
        path.write_text(json.dumps({"prompt_ids": bad}) + "\n")
        with pytest.raises(ValueError, match=r"ids.jsonl:1: 'prompt_ids' must be a non-empty list"):
            load_jsonl(path)


def test_text_dir_windows(tmp_path):
    (tmp_path / "code").mkdir()
    (tmp_path / "code" / "a.txt").write_text("0123456789")  # 10 chars -> windows 0-3, 4-7; tail dropped
    (tmp_path / "prose.txt").write_text("abcd")
    questions = load_text_dir(tmp_path, CharTokenizer(), 4)
    assert [(q.task, q.ids) for q in questions] == [
        ("code", [ord(c) for c in "0123"]),
        ("code", [ord(c) for c in "4567"]),
        (tmp_path.name, [ord(c) for c in "abcd"]),
    ]


def test_build_prompts_chat_truncation_and_turns():
    tok = CharTokenizer()
    questions = load_spec_bench(SPEC_BENCH, tasks=["mt_bench", "qa"], per_task=1)
    answers = []

    def answer(ids):
        answers.append(ids)
        return [ord("!")] * 3

    prompts = build_prompts(questions, tok, chat_template=True, turns="all", max_prompt_tokens=5, answer=answer)
    assert [(p.task, p.turn) for p in prompts] == [("mt_bench", 0), ("mt_bench", 1), ("qa", 0)]
    first_turn = questions[0].turns[0][:5]
    assert tok.decode(prompts[0].ids) == f"<user>{first_turn}<assistant>"
    assert tok.decode(prompts[1].ids) == f"<user>{first_turn}<assistant>!!!<user>{questions[0].turns[1][:5]}<assistant>"
    assert answers == [prompts[0].ids]  # the second turn follows the verifier's answer to the first
    plain = build_prompts(questions, tok, chat_template=False, max_prompt_tokens=5)
    assert [tok.decode(p.ids) for p in plain] == [q.turns[0][:5] for q in questions]


def test_token_id_hook():
    questions = questions_from_token_ids([("code", [1, 2, 3]), ("code", [4, 5])])
    prompts = build_prompts(questions, None, chat_template=True, max_prompt_tokens=2)
    assert [(p.task, p.ids, p.index) for p in prompts] == [("code", [1, 2], 0), ("code", [4, 5], 1)]
    with pytest.raises(ValueError, match="no tokens"):
        questions_from_token_ids([("code", [])])
