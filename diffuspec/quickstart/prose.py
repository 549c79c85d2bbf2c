"""Real English text every Python installation ships, and instruction-style prompts written over it.

The text is the Python documentation that comes with the interpreter (PSF License 2.0): the language reference
topics of ``pydoc_data.topics`` and the docstrings of the standard library's modules, classes and functions.
Paragraphs that read as prose (not code, tables or grammar) are kept; documents are split into train and
held-out by a hash of their name, so the split is the same on every machine.

Prompts are task templates (summarise, explain, answer from a passage, translate a sentence, list key points,
rewrite, write about a topic, small arithmetic word problems) filled with train-split passages. None comes from
Spec-Bench, which is kept for evaluation (``tests/test_smollm2.py`` checks that no question is among them).
"""

from __future__ import annotations

import ast
import hashlib
import random
import re
import sysconfig
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__", "encodings"}
_WORD = re.compile(r"[A-Za-z][a-z]+")


@dataclass(frozen=True)
class Document:
    name: str  # "topic:assert", "doc:json.decoder.JSONDecoder"
    paragraphs: tuple[str, ...]

    @property
    def text(self) -> str:
        return "\n\n".join(self.paragraphs)


def is_prose(paragraph: str) -> bool:
    """A paragraph of sentences: mostly words, no indented code, no reST tables or directives."""
    lines = paragraph.splitlines()
    if len(paragraph) < 80 or any(line.startswith((" ", "\t", ">>>", "..", "+-", "==", "**", "--")) for line in lines):
        return False
    words = _WORD.findall(paragraph)
    return len(words) >= 12 and sum(map(len, words)) >= 0.6 * len(paragraph) and paragraph.rstrip()[-1] in ".:)"


def _paragraphs(text: str) -> tuple[str, ...]:
    blocks = (" ".join(line.strip() for line in block.splitlines()) for block in re.split(r"\n\s*\n", text))
    return tuple(block for block, raw in zip(blocks, re.split(r"\n\s*\n", text), strict=True) if is_prose(raw))


def _docstrings(path: Path, module: str) -> Iterator[tuple[str, str]]:
    try:
        tree = ast.parse(path.read_text(encoding="utf-8", errors="replace"))
    except (SyntaxError, ValueError):
        return
    if (doc := ast.get_docstring(tree)) is not None:
        yield module, doc
    for node in ast.walk(tree):
        if isinstance(node, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef) and not node.name.startswith("_"):
            if (doc := ast.get_docstring(node)) is not None:
                yield f"{module}.{node.name}", doc


def python_documents() -> list[Document]:
    """Every document with at least one prose paragraph, in a fixed order."""
    import pydoc_data.topics

    documents = [
        Document(f"topic:{name}", _paragraphs(text)) for name, text in sorted(pydoc_data.topics.topics.items())
    ]
    root = Path(sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        if any(p in SKIP_PARTS or p.startswith("test_") for p in parts):
            continue
        module = ".".join(p for p in parts if p != "__init__")
        documents += [Document(f"doc:{name}", _paragraphs(doc)) for name, doc in _docstrings(path, module)]
    return [d for d in documents if d.paragraphs]


def split_documents(documents: list[Document], heldout_fraction: float) -> tuple[list[Document], list[Document]]:
    """Held-out when the first byte of the name's hash falls under the fraction."""
    held = {d.name for d in documents if hashlib.sha1(d.name.encode()).digest()[0] < 256 * heldout_fraction}
    return [d for d in documents if d.name not in held], [d for d in documents if d.name in held]


# ---------------------------------------------------------------- instruction prompts

LANGUAGES = ("French", "German", "Spanish", "Italian", "Portuguese")
PASSAGE_TASKS = (
    "Summarize the following text in one or two sentences.\n\n{passage}",
    "Explain the following passage in simple words, as if to a beginner.\n\n{passage}",
    "List the three most important points of this text.\n\n{passage}",
    "Rewrite the following paragraph so that it is shorter and easier to read.\n\n{passage}",
    "Read the passage and answer the question.\n\nPassage: {passage}\n\nQuestion: What is the main idea of the passage?",
    "Write a one-sentence title for the following text.\n\n{passage}",
    "{passage}\n\nBased on the text above, what would a programmer need to remember?",
)
SENTENCE_TASKS = (
    "Translate the following sentence into {language}: {sentence}",
    "Is the following statement about Python true or false? Explain briefly. {sentence}",
    "Turn this sentence into a question and answer it: {sentence}",
)
TOPIC_TASKS = (
    "Write a short paragraph that explains what {topic} is used for.",
    "Give an example of when a beginner would use {topic}.",
    "What are the advantages and disadvantages of {topic}?",
)
ARITHMETIC = (
    "A shop sells {a} notebooks on Monday and {b} on Tuesday. How many notebooks did it sell in total?",
    "Tom has {a} apples and gives {b} of them to his friend. How many apples does Tom have left?",
    "A train travels {a} kilometres per hour for {b} hours. How far does it go?",
    "There are {a} students and each table seats {b}. How many tables are needed?",
)


def _sentences(paragraph: str) -> list[str]:
    return [s for s in re.split(r"(?<=[.!?])\s+", paragraph) if 40 <= len(s) <= 200 and s[0].isupper()]


def instruction_prompts(documents: list[Document], count: int, seed: int, max_passage_chars: int = 900) -> list[str]:
    """``count`` distinct prompts drawn with ``seed``: mostly passage tasks, then sentence, topic and arithmetic."""
    rng = random.Random(seed)
    passages = [p for d in documents for p in d.paragraphs if len(p) <= max_passage_chars]
    sentences = [s for p in passages for s in _sentences(p)]
    topics = sorted({f"the Python module {d.name[4:].split('.')[0]}" for d in documents if d.name.startswith("doc:")})
    topics += sorted({f"the Python '{d.name[6:]}' statement" for d in documents if d.name.startswith("topic:")})
    if not passages or not sentences:
        raise ValueError("the documents hold no prose passages to write prompts over")
    prompts: dict[str, None] = {}
    attempts = 0
    while len(prompts) < count and attempts < 20 * count:
        attempts += 1
        kind = rng.random()
        if kind < 0.55:
            prompt = rng.choice(PASSAGE_TASKS).format(passage=rng.choice(passages))
        elif kind < 0.75:
            prompt = rng.choice(SENTENCE_TASKS).format(sentence=rng.choice(sentences), language=rng.choice(LANGUAGES))
        elif kind < 0.9:
            prompt = rng.choice(TOPIC_TASKS).format(topic=rng.choice(topics))
        else:
            prompt = rng.choice(ARITHMETIC).format(a=rng.randint(3, 60), b=rng.randint(2, 12))
        prompts[prompt] = None
    if len(prompts) < count:
        raise ValueError(f"only {len(prompts)} distinct prompts could be written, {count} were asked for")
    return list(prompts)
