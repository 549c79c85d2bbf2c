"""Where the conditioned drafter's verifier features should come from: the generation pass or one more prefill.

    python eval/feature_cost.py --verifier runs/smollm2/verifier/model --dataset runs/smollm2/data/dataset \
        --out runs/bench/feature_cost.json

A benchmark, not a test. On the first ``--rows`` rows of a generated dataset (prompt + the verifier's answer), in
batches of ``--batch`` and interleaved over ``--repeats`` rounds (median per arm), it times

- ``generate``: batched greedy ``generate`` of the answers (what the data stage runs anyway);
- ``generate+capture``: the same with forward hooks keeping the feature layers' hidden states of every step (the
  features would then cost only this difference);
- ``prefill``: one forward pass per row over prompt + answer with ``output_hidden_states`` (what
  ``training.features.precompute_features`` runs after the data stage);

and reports tokens per second of each (generated answer tokens for the first two, prompt + answer tokens for the
prefill) and the seconds per 1,000 answer rows each way of getting features.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import torch
from datasets import load_from_disk
from transformers import GenerationConfig

from diffuspec.evaluation.environment import environment
from diffuspec.files import write_json
from diffuspec.loading import load_causal_lm
from diffuspec.models.conditioned import spread_feature_layers
from diffuspec.training.collator import left_pad


def feature_hooks(model, layers: list[int], store: list) -> list:
    """Forward hooks that append the hidden states ``hidden_states[i]`` (i in ``layers``) of every forward call."""
    blocks, count = model.model.layers, model.config.num_hidden_layers
    modules = [model.model.norm if i == count else blocks[i - 1] for i in layers]

    def keep(module, args, output):
        store.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    return [m.register_forward_hook(keep) for m in modules]


def time_generate(model, batch: dict, new_tokens: int, layers: list[int] | None) -> float:
    config = GenerationConfig(do_sample=False, max_new_tokens=new_tokens, min_new_tokens=new_tokens, pad_token_id=0)
    store: list = []
    hooks = feature_hooks(model, layers, store) if layers else []
    start = time.perf_counter()
    with torch.inference_mode():
        model.generate(batch["input_ids"], attention_mask=batch["attention_mask"], generation_config=config)
    seconds = time.perf_counter() - start
    for hook in hooks:
        hook.remove()
    return seconds


def time_prefill(model, rows: list[list[int]], layers: list[int]) -> float:
    start = time.perf_counter()
    with torch.inference_mode():
        for ids in rows:
            out = model(input_ids=torch.tensor([ids]), output_hidden_states=True, logits_to_keep=1)
            torch.cat([out.hidden_states[i] for i in layers], dim=-1)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("--dataset", required=True, help="A data stage's datasets folder (prompt_ids, completion_ids).")
    parser.add_argument("--rows", type=int, default=64)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    model = load_causal_lm(args.verifier).eval()
    layers = spread_feature_layers(model.config.num_hidden_layers)
    data = load_from_disk(args.dataset).select(range(args.rows))
    prompts = [list(p) for p in data["prompt_ids"]]
    full = [list(p) + list(c) for p, c in zip(data["prompt_ids"], data["completion_ids"], strict=True)]
    batches = [left_pad(prompts[i : i + args.batch], 0) for i in range(0, len(prompts), args.batch)]
    arms = {
        "generate": lambda: sum(time_generate(model, b, args.new_tokens, None) for b in batches),
        "generate+capture": lambda: sum(time_generate(model, b, args.new_tokens, layers) for b in batches),
        "prefill": lambda: time_prefill(model, full, layers),
    }
    arms["generate"]()  # warm-up
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, run in arms.items():
            seconds[name].append(run())
    median = {name: statistics.median(values) for name, values in seconds.items()}
    answer_tokens = args.rows * args.new_tokens
    report = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "feature_layers": layers,
        "seconds": seconds,
        "tokens_per_s": {
            "generate": answer_tokens / median["generate"],
            "generate+capture": answer_tokens / median["generate+capture"],
            "prefill": sum(map(len, full)) / median["prefill"],
        },
        "feature_seconds_per_1000_rows": {
            "capture in generation": 1000 / args.rows * (median["generate+capture"] - median["generate"]),
            "one prefill per row": 1000 / args.rows * median["prefill"],
        },
        "environment": environment(torch.device("cpu")),
    }
    write_json(args.out, report)
    print(report["tokens_per_s"], report["feature_seconds_per_1000_rows"])


if __name__ == "__main__":
    main()
