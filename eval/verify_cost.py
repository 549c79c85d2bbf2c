"""What a verify pass costs on this machine, per dtype, and whether block passes keep greedy decoding exact.

    python eval/verify_cost.py --verifier runs/smollm2/verifier/model \
        --out runs/bench/verify_cost.json

A benchmark, not a test. For each dtype (``--dtypes``; ``float32-onednn`` is float32 with every linear layer's
weights prepacked for oneDNN by ``torch.utils.mkldnn.to_mkldnn``, the CPU kernel library's own layout):

- cost: one ``Verifier.step`` of m tokens (the pending token + m - 1 path tokens) after a KV-cached context of
  ``--context`` tokens, for every m of ``--blocks``, in plain decoding steps (m = 1); the calls of all dtypes and
  sizes are interleaved in one loop, and each cell is the median of ``--repeats`` after one warm-up round;
- exactness: the verifier decodes ``--new-tokens`` greedy tokens one at a time from each of the first turns of
  ``--prompts`` (Spec-Bench rows or ``{"prompt": ...}`` rows, through the chat template); the same sequence is then
  re-read in blocks of ``--block`` tokens, as a verify pass reads it, and every position whose argmax differs from
  the token the one-token pass chose is a flip. A flip means the block pass would reject a token plain decoding
  emits, so speculative decoding in that dtype is not token-for-token equal to plain decoding.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import time
from pathlib import Path

import torch
import torch.utils.mkldnn

from diffuspec.decoding.verifier import Verifier
from diffuspec.dtypes import resolve_dtype
from diffuspec.evaluation.benchmarks import SPEC_BENCH_QUESTIONS
from diffuspec.evaluation.environment import environment
from diffuspec.files import write_json
from diffuspec.jsonl import read_jsonl
from diffuspec.loading import load_causal_lm, load_tokenizer


def load(folder: str, name: str) -> Verifier:
    dtype, _, kernels = name.partition("-")
    model = load_causal_lm(folder, resolve_dtype(dtype), "cpu")
    if kernels == "onednn":
        model = torch.utils.mkldnn.to_mkldnn(model)
    elif kernels:
        raise SystemExit(f"unknown kernels {kernels!r} in {name!r} (known: onednn)")
    return Verifier(model)


def step_cost(verifier: Verifier, context: torch.Tensor, m: int) -> float:
    """Seconds of one verify pass of m tokens after ``context`` (cached); the cache is left as it was."""
    path = torch.randint(0, verifier.vocab_size, (m - 1,))
    start = time.perf_counter()
    verifier.step(path)
    elapsed = time.perf_counter() - start
    verifier.commit(0, verifier.pending)
    return elapsed


def flips(verifier: Verifier, prompt: torch.Tensor, new_tokens: int, block: int) -> tuple[int, int]:
    """(flipped positions, positions): greedy one token at a time, then the same tokens re-read in blocks."""
    verifier.start(prompt)
    greedy = []
    for _ in range(new_tokens):
        token = int(verifier.step(torch.empty(0, dtype=torch.long))[0].argmax())
        verifier.commit(0, token)
        greedy.append(token)
    verifier.start(prompt)
    flipped = 0
    for at in range(0, new_tokens, block):
        chunk = greedy[at : at + block]
        logits = verifier.step(torch.tensor(chunk[:-1], dtype=torch.long))
        flipped += sum(int(a != b) for a, b in zip(logits.argmax(-1).tolist(), chunk, strict=True))
        verifier.commit(len(chunk) - 1, chunk[-1])
    return flipped, new_tokens


def read_prompts(path: Path, count: int, tokenizer) -> list[torch.Tensor]:
    rows = [row for _, row in read_jsonl(path, "prompt file")]
    step = max(1, len(rows) // count)
    texts = [r["turns"][0] if "turns" in r else r.get("prompt", r.get("text")) for r in rows[::step][:count]]
    return [
        torch.tensor(tokenizer.apply_chat_template([{"role": "user", "content": t}], add_generation_prompt=True,
                                                   return_dict=True)["input_ids"][-384:])
        for t in texts
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier", required=True)
    parser.add_argument(
        "--prompts",
        type=Path,
        default=SPEC_BENCH_QUESTIONS,
        help="Spec-Bench question.jsonl (default: shipped) or prompt rows.",
    )
    parser.add_argument("--dtypes", default="float32,float32-onednn,bfloat16")
    parser.add_argument("--blocks", default="1,2,4,8,12,16,32,64")
    parser.add_argument("--context", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=10)
    parser.add_argument("--num-prompts", type=int, default=6)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--block", type=int, default=5, help="Block size of the exactness re-read.")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    dtypes = args.dtypes.split(",")
    blocks = [int(b) for b in args.blocks.split(",")]
    verifiers = {name: load(args.verifier, name) for name in dtypes}
    context = torch.randint(0, next(iter(verifiers.values())).vocab_size, (args.context,))
    times: dict[tuple[str, int], list[float]] = {key: [] for key in itertools.product(dtypes, blocks)}
    with torch.inference_mode():
        for verifier in verifiers.values():
            verifier.start(context)
        for repeat in range(args.repeats + 1):
            for m, name in itertools.product(blocks, dtypes):
                elapsed = step_cost(verifiers[name], context, m)
                if repeat:  # the first round warms up
                    times[name, m].append(elapsed)
        tokenizer = load_tokenizer(args.verifier)
        prompts = read_prompts(args.prompts, args.num_prompts, tokenizer)
        exact = {}
        for name, verifier in verifiers.items():
            counts = [flips(verifier, p, args.new_tokens, args.block) for p in prompts]
            exact[name] = {"flips": sum(f for f, _ in counts), "positions": sum(n for _, n in counts)}
    cost = {}
    for name in dtypes:
        step = statistics.median(times[name, blocks[0]])
        cost[name] = {m: {"ms": 1e3 * statistics.median(times[name, m]), "steps": statistics.median(times[name, m]) / step}
                      for m in blocks}  # fmt: skip
    write_json(args.out, {"settings": vars(args) | {"out": str(args.out), "prompts": str(args.prompts)},
                          "cost": cost, "exactness": exact, "env": environment(torch.device("cpu"))})  # fmt: skip
    print("| dtype | " + " | ".join(f"m={m}" for m in blocks) + " | flips (block re-read) |")
    print("|---|" + "---|" * (len(blocks) + 1))
    for name in dtypes:
        cells = " | ".join(f"{cost[name][m]['ms']:.1f} ms ({cost[name][m]['steps']:.2f})" for m in blocks)
        print(f"| {name} | {cells} | {exact[name]['flips']} of {exact[name]['positions']} |")


if __name__ == "__main__":
    main()
