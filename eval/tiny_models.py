"""Random-weight tiny models and a tokenizer, saved as folders, for running the evaluation recipes on a CPU.

    python eval/tiny_models.py --out runs/tiny-random

Writes ``verifier/`` (a Qwen2 causal LM), ``ar_drafter/`` (a copy of the verifier: it always agrees, so SpS and
assisted generation accept every token), ``dlm/`` (a bidirectional Qwen2 with a diffuspec marker: a diffusion
drafter), ``conditioned/`` (a 1-layer feature-conditioned block drafter for the verifier, block of 8),
``proxy.json`` (a trigram proxy) and ``prompts.jsonl``. All share one byte-level BPE tokenizer trained
on the Spec-Bench questions, with a minimal chat template. The weights are random: use these folders for timing
and losslessness, not for acceptance.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from diffuspec.decoding.proxy import NGramProxy
from diffuspec.drafter_config import write_diffuspec_config
from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS
from diffuspec.jsonl import read_jsonl, write_jsonl
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel
from diffuspec.models.tiny import tiny_qwen2

SPECIALS = ["<|endoftext|>", "<|pad|>", "<|mask|>", "<|user|>", "<|assistant|>"]
CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}<|endoftext|>{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def make_tokenizer(texts: list[str], vocab_size: int):
    """Byte-level BPE (any text encodes) with EOS/PAD/MASK and chat-role specials, in the transformers format."""
    from diffuspec.models.tokenizers import train_bpe_tokenizer

    tokenizer = train_bpe_tokenizer(texts, vocab_size, extra_special_tokens=SPECIALS[3:])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def write_models(
    out: Path, texts: list[str], vocab_size: int, hidden_size: int, num_layers: int, drafter_layers: int, **shape
) -> dict[str, Path]:
    """Save the folders described in the module docstring; ``shape`` goes to tiny_qwen2 (e.g. init_std)."""
    tokenizer = make_tokenizer(texts, vocab_size)
    common = dict(vocab_size=len(tokenizer), hidden_size=hidden_size, eos_token_id=tokenizer.eos_token_id, **shape)
    paths = {name: out / name for name in ("verifier", "ar_drafter", "dlm")}
    verifier = tiny_qwen2(seed=0, num_layers=num_layers, **common)
    verifier.save_pretrained(paths["verifier"])
    tiny_qwen2(seed=0, num_layers=num_layers, **common).save_pretrained(paths["ar_drafter"])
    tiny_qwen2(seed=1, num_layers=drafter_layers, causal=False, **common).save_pretrained(paths["dlm"])
    mask_id = tokenizer.convert_tokens_to_ids("<|mask|>")
    write_diffuspec_config(paths["dlm"], mask_token_id=mask_id, shifted=True)
    paths["conditioned"] = out / "conditioned"
    ConditionedDrafterModel(
        ConditionedDrafterConfig.for_verifier(verifier.config, mask_token_id=mask_id)
    ).save_pretrained(paths["conditioned"])
    for path in paths.values():
        tokenizer.save_pretrained(path)
    paths["proxy"] = out / "proxy.json"
    NGramProxy.fit([tokenizer(t).input_ids for t in texts], vocab_size=len(tokenizer), order=3).save(paths["proxy"])
    paths["prompts"] = out / "prompts.jsonl"
    write_jsonl(paths["prompts"], [{"prompt": t, "task": "spec_bench_sample"} for t in texts[:8]])
    return paths


def main(args: argparse.Namespace) -> None:
    rows = [row for _, row in read_jsonl(args.questions, "question file")]
    texts = [turn for row in rows for turn in row["turns"]]
    paths = write_models(Path(args.out), texts, args.vocab_size, args.hidden_size, args.num_layers, args.drafter_layers)
    print("wrote " + ", ".join(str(p) for p in paths.values()))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/tiny-random")
    parser.add_argument(
        "--questions",
        default=str(SPEC_BENCH_QUESTIONS),
        help="Spec-Bench question.jsonl: the tokenizer's training text.",
    )
    parser.add_argument("--vocab-size", type=int, default=1024)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=4)
    parser.add_argument("--drafter-layers", type=int, default=1)
    return parser


if __name__ == "__main__":
    parser = build_parser()
    args = parser.parse_args()
    main(args)
