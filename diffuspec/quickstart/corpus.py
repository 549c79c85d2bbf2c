"""The quickstart corpus: the standard library's own Python sources, split by file, and a BPE tokenizer.

Every Python installation ships this text, so the quickstart needs no download. Files are assigned to
train / held-out by a hash of their relative path, which keeps the split stable across machines and runs.
"""

from __future__ import annotations

import hashlib
import sysconfig
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from ..jsonl import read_jsonl, write_jsonl
from ..models.tokenizers import train_bpe_tokenizer

SKIP_PARTS = {"test", "tests", "idlelib", "site-packages", "lib2to3", "turtledemo", "__pycache__"}


def stdlib_files(max_bytes: int) -> list[Path]:
    """Standard-library .py files (no tests), in a fixed order, until ``max_bytes`` of source is collected."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).parts
        if any(p in SKIP_PARTS or p.startswith("test_") for p in parts):
            continue
        files.append(path)
    files.sort(key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())  # mixes packages
    chosen, total = [], 0
    for path in files:
        if total >= max_bytes:
            break
        chosen.append(path)
        total += path.stat().st_size
    return chosen


def split_files(files: list[Path], heldout_fraction: float) -> tuple[list[Path], list[Path]]:
    """Held-out if the first byte of the file name's hash falls under the fraction."""
    heldout = [p for p in files if hashlib.sha1(p.name.encode()).digest()[0] < 256 * heldout_fraction]
    train = [p for p in files if p not in set(heldout)]
    return train, heldout


def write_corpus(out_dir: Path, max_bytes: int, heldout_fraction: float = 0.1) -> dict[str, Path]:
    """Write train.jsonl / heldout.jsonl, one source file per line ({"path", "text"})."""
    out_dir.mkdir(parents=True, exist_ok=True)
    train, heldout = split_files(stdlib_files(max_bytes), heldout_fraction)
    paths = {}
    for name, files in (("train", train), ("heldout", heldout)):
        rows = [{"path": p.name, "text": p.read_text(encoding="utf-8", errors="replace")} for p in files]
        paths[name] = write_jsonl(out_dir / f"{name}.jsonl", rows)
    return paths


def read_texts(path: Path) -> list[str]:
    return [row["text"] for _, row in read_jsonl(path, "corpus split")]


def train_tokenizer(texts: list[str], vocab_size: int, out_dir: Path) -> PreTrainedTokenizerBase:
    """Byte-level BPE with EOS, PAD and MASK as special tokens, saved in the transformers format."""
    tokenizer = train_bpe_tokenizer(texts, vocab_size)
    tokenizer.save_pretrained(out_dir)
    return tokenizer


def file_stream(texts: list[str], tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """Tokenize each file, end it with EOS and concatenate them into one token stream."""
    stream: list[int] = []
    for ids in tokenizer(texts, add_special_tokens=False).input_ids:
        stream.extend(ids + [tokenizer.eos_token_id])
    return stream


def windows(stream: list[int], count: int, length: int, seed: int) -> list[list[int]]:
    """``count`` windows of ``length`` tokens at seeded offsets of ``stream``."""
    if len(stream) <= length:
        raise ValueError(f"the corpus split has {len(stream)} tokens, too few for {length}-token prompts")
    starts = torch.randint(0, len(stream) - length, (count,), generator=torch.Generator().manual_seed(seed))
    return [stream[s : s + length] for s in starts.tolist()]


def pack(texts: list[str], tokenizer: PreTrainedTokenizerBase, block: int) -> list[list[int]]:
    """The files' token stream (``file_stream``) cut into blocks of ``block`` tokens."""
    stream = file_stream(texts, tokenizer)
    return [stream[i : i + block] for i in range(0, len(stream) - block + 1, block)]
