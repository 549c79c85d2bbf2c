"""Benchmark prompts: Spec-Bench questions, a JSONL of prompts, a folder of text files, or ready token ids.

Loading happens in two steps so that a bad path or task fails before any model loads:

1. ``load_questions`` reads the source into :class:`Question` items (user turns as text, or token ids);
2. ``build_prompts`` tokenises them into :class:`Prompt` items, with the verifier's chat template or without.

Spec-Bench (``hemingkx/Spec-Bench``, ``data/spec_bench/question.jsonl``, Apache-2.0) ships with the package as
``SPEC_BENCH_QUESTIONS`` (``data/README.md`` beside it names its source and licence), the default wherever a
Spec-Bench path is asked for: one JSON object per line with ``question_id``, ``category`` and ``turns``. The eight MT-bench categories form the task ``mt_bench``; the other
five categories are tasks of their own. Only MT-bench rows have two turns. With ``turns='all'`` the second turn is
asked after the verifier's own greedy answer to the first, so every method sees the same conversation.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..jsonl import read_jsonl

MT_BENCH_CATEGORIES = ("writing", "roleplay", "reasoning", "math", "coding", "extraction", "stem", "humanities")
SPEC_BENCH_TASKS = ("mt_bench", "translation", "summarization", "qa", "math_reasoning", "rag")
BENCHMARK_KINDS = ("spec_bench", "jsonl", "text_dir")
DEFAULT_TASK = "default"  # task of JSONL rows without a "task" field
SPEC_BENCH_QUESTIONS = Path(__file__).parent / "data" / "spec_bench_question.jsonl"  # 480 rows, unchanged


@dataclass
class Question:
    """One benchmark item before tokenisation: user turns as text, or token ids ready to use."""

    task: str
    qid: str
    category: str
    turns: list[str] = field(default_factory=list)
    ids: list[int] | None = None


@dataclass
class Prompt:
    """One prompt every method decodes: ``index`` is its position in the run, ``turn`` counts from 0."""

    index: int
    task: str
    qid: str
    turn: int
    ids: list[int]


def spec_bench_task(category: str) -> str:
    return "mt_bench" if category in MT_BENCH_CATEGORIES else category


def _require_file(path: str | Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{what} {path} does not exist (or is not a file)")
    return path


def _read_jsonl(path: Path) -> Iterable[tuple[int, dict[str, Any]]]:
    return read_jsonl(path, "benchmark file")


def _select(
    questions: list[Question], tasks: Sequence[str] | None, per_task: int | None, source: str
) -> list[Question]:
    """Keep ``tasks`` (all if None) and the first ``per_task`` of each, taken round-robin over categories so that a
    small sample of mt_bench covers several categories instead of only 'writing'."""
    present = list(dict.fromkeys(q.task for q in questions))
    if tasks:
        missing = [t for t in tasks if t not in present]
        if missing:
            raise ValueError(f"task(s) {missing} not found in {source}; it has {present}")
    chosen = []
    for task in tasks or present:
        by_category: dict[str, list[Question]] = defaultdict(list)
        for q in questions:
            if q.task == task:
                by_category[q.category].append(q)
        queues = list(by_category.values())
        picked: list[Question] = []
        while any(queues) and (per_task is None or len(picked) < per_task):
            for queue in queues:
                if queue and (per_task is None or len(picked) < per_task):
                    picked.append(queue.pop(0))
        chosen.extend(picked)
    return chosen


def load_spec_bench(
    path: str | Path | None = None, tasks: Sequence[str] | None = None, per_task: int | None = None
) -> list[Question]:
    """Spec-Bench questions grouped into its six tasks (see the module docstring); ``path`` None: the shipped file."""
    path = _require_file(SPEC_BENCH_QUESTIONS if path is None else path, "Spec-Bench question file")
    questions = []
    for number, row in _read_jsonl(path):
        missing = {"question_id", "category", "turns"} - set(row)
        if missing:
            raise ValueError(f"{path}:{number}: a Spec-Bench row needs {sorted(missing)}")
        task = spec_bench_task(row["category"])
        if task not in SPEC_BENCH_TASKS:
            raise ValueError(f"{path}:{number}: unknown Spec-Bench category {row['category']!r}")
        turns = [str(t) for t in row["turns"]]
        if not turns:
            raise ValueError(f"{path}:{number}: question {row['question_id']} has no turns")
        questions.append(Question(task, str(row["question_id"]), row["category"], turns))
    return _select(questions, tasks, per_task, str(path))


def load_jsonl(path: str | Path, tasks: Sequence[str] | None = None, per_task: int | None = None) -> list[Question]:
    """Rows ``{"prompt": ...}`` or ``{"text": ...}``, or ``{"prompt_ids": [...]}`` (token ids used as they are, as
    the data generator's held-out prompts are stored), with an optional ``"task"`` (default ``'default'``)."""
    path = _require_file(path, "prompt file")
    questions = []
    for number, row in _read_jsonl(path):
        task = str(row.get("task", DEFAULT_TASK))
        qid = str(row.get("id", f"{path.name}:{number}"))
        if "prompt_ids" in row:
            ids = row["prompt_ids"]
            if not isinstance(ids, list) or not ids or not all(isinstance(t, int) and t >= 0 for t in ids):
                raise ValueError(f"{path}:{number}: 'prompt_ids' must be a non-empty list of token ids")
            questions.append(Question(task, qid, task, ids=ids))
            continue
        text = row.get("prompt", row.get("text"))
        if not isinstance(text, str) or not text:
            raise ValueError(
                f"{path}:{number}: a prompt row needs a non-empty 'prompt' or 'text' string, or 'prompt_ids'"
            )
        questions.append(Question(task, qid, task, [text]))
    return _select(questions, tasks, per_task, str(path))


def load_text_dir(
    path: str | Path,
    tokenizer: Any,
    window_tokens: int,
    tasks: Sequence[str] | None = None,
    per_task: int | None = None,
) -> list[Question]:
    """Every ``*.txt`` file under ``path`` cut into consecutive windows of ``window_tokens`` tokens (the short tail
    is dropped). The task is the file's folder name, so subfolders become tasks."""
    root = Path(path)
    if not root.is_dir():
        raise FileNotFoundError(f"text folder {root} does not exist (or is not a folder)")
    files = sorted(root.rglob("*.txt"))
    if not files:
        raise ValueError(f"text folder {root} holds no .txt files")
    questions = []
    for file in files:
        task = file.parent.name
        ids = tokenizer(file.read_text(encoding="utf-8", errors="replace"), add_special_tokens=False).input_ids
        for start in range(0, len(ids) - window_tokens + 1, window_tokens):
            window = list(ids[start : start + window_tokens])
            questions.append(Question(task, f"{file.relative_to(root)}@{start}", task, ids=window))
    if not questions:
        raise ValueError(f"no text file under {root} is at least {window_tokens} tokens long")
    return _select(questions, tasks, per_task, str(root))


def questions_from_token_ids(items: Sequence[tuple[str, Sequence[int]]]) -> list[Question]:
    """The programmatic hook (the quickstart's tiny benchmark): ``[(task, prompt_token_ids), ...]``."""
    questions = []
    for i, (task, ids) in enumerate(items):
        ids = [int(t) for t in ids]
        if not ids:
            raise ValueError(f"prompt {i} (task {task!r}) has no tokens")
        questions.append(Question(str(task), str(i), str(task), ids=ids))
    return questions


def load_questions(
    kind: str,
    path: str | Path | None,
    tokenizer: Any = None,
    tasks: Sequence[str] | None = None,
    per_task: int | None = None,
    window_tokens: int = 256,
) -> list[Question]:
    if kind == "spec_bench":
        return load_spec_bench(path, tasks, per_task)
    if path is None:
        raise ValueError(f"a {kind!r} benchmark needs a path (only spec_bench has a shipped default)")
    if kind == "jsonl":
        return load_jsonl(path, tasks, per_task)
    if kind == "text_dir":
        if tokenizer is None:
            raise ValueError("a text_dir benchmark needs the verifier's tokenizer to cut windows")
        return load_text_dir(path, tokenizer, window_tokens, tasks, per_task)
    raise ValueError(f"unknown benchmark kind {kind!r}; kinds are {list(BENCHMARK_KINDS)}")


# ---------------------------------------------------------------- tokenisation


def _truncate(text: str, tokenizer: Any, max_tokens: int | None) -> str:
    """Keep the first ``max_tokens`` tokens of a user turn (before the chat template is applied)."""
    if max_tokens is None:
        return text
    ids = tokenizer(text, add_special_tokens=False).input_ids
    return text if len(ids) <= max_tokens else tokenizer.decode(ids[:max_tokens])


def encode_messages(messages: list[dict[str, str]], tokenizer: Any, chat_template: bool) -> list[int]:
    """Token ids of a conversation ending in a user turn: chat template with the generation prompt, or the bare
    text of the single user turn."""
    if chat_template:
        if not getattr(tokenizer, "chat_template", None):
            raise ValueError(
                f"the verifier's tokenizer ({type(tokenizer).__name__}) has no chat template; set chat_template: false"
            )
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        ids = tokenizer(text, add_special_tokens=False).input_ids
    else:
        if len(messages) != 1:
            raise ValueError("multi-turn prompts need the chat template")
        ids = tokenizer(messages[0]["content"]).input_ids
    if not ids:
        raise ValueError(f"a prompt tokenised to no tokens: {messages[-1]['content'][:80]!r}")
    return list(ids)


def build_prompts(
    questions: Sequence[Question],
    tokenizer: Any,
    *,
    chat_template: bool,
    turns: str = "first",
    max_prompt_tokens: int | None = None,
    answer: Callable[[list[int]], list[int]] | None = None,
) -> list[Prompt]:
    """Tokenise questions into prompts; with ``turns='all'`` each later turn follows ``answer``'s reply (the
    verifier's greedy new tokens) to the previous one, decoded to text and laid out by the chat template."""
    if turns == "all" and answer is None:
        raise ValueError("turns='all' needs an answer function (the verifier's greedy decoding)")
    prompts: list[Prompt] = []
    for q in questions:
        if q.ids is not None:
            ids = q.ids[:max_prompt_tokens] if max_prompt_tokens else q.ids
            prompts.append(Prompt(len(prompts), q.task, q.qid, 0, list(ids)))
            continue
        user_turns = q.turns if turns == "all" else q.turns[:1]
        messages: list[dict[str, str]] = []
        for t, text in enumerate(user_turns):
            messages.append({"role": "user", "content": _truncate(text, tokenizer, max_prompt_tokens)})
            ids = encode_messages(messages, tokenizer, chat_template)
            prompts.append(Prompt(len(prompts), q.task, q.qid, t, ids))
            if t + 1 < len(user_turns):
                reply = answer(ids)
                messages.append({"role": "assistant", "content": tokenizer.decode(reply, skip_special_tokens=True)})
    return prompts
