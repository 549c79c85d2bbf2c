"""Draft time per round against prefix length: the cached conditioned drafter beside the uncached diffusion drafter.

    python eval/bench_draft_cost.py --threads 2 --out runs/bench/draft_cost.json

A benchmark, not a test. Models are random (timing does not depend on the weights) in the tiny CPU shape: a
Qwen2 verifier with hidden 256, 4 layers, 8 heads / 2 KV heads, FFN 768, vocab 2048 (the quickstart's), the
conditioned drafter (1 and 2 layers, hidden 256, block 8) and a bidirectional tiny Qwen2 DiffusionDrafter
(1 and 2 layers, hidden 256, full prefix, no window) drafting k = 8.

One timed round at prefix n is one ``propose`` on the ids ``[n]`` with the verifier's features of ``ids[:-1]``.
The conditioned drafter is first brought to the state it has in decoding (its memory holds the first
``n - 1 - new_rows`` rows, untimed), so the round projects ``new_rows`` new rows (one round's accepted tokens
plus the correction) and runs one block. The diffusion drafter re-reads all n tokens every round. Rounds of all
drafters and lengths are interleaved in a new random order each repeat, so a load change hits them alike;
the tables give the median wall time (with quartiles) and the median process CPU time over ``--repeats`` after
``--warmup`` rounds. The target: the conditioned drafter's median wall time at 1024 is at most 1.3x its median
at 64 (its round cost must not grow with the prefix).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

from diffuspec import DiffusionDrafter, Drafter, DraftRequest
from diffuspec.drafters.conditioned import ConditionedDrafter
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel, verifier_features
from diffuspec.models.tiny import tiny_qwen2

VOCAB, HIDDEN, VERIFIER_LAYERS, FFN = 2048, 256, 4, 768
MASK = VOCAB - 1
TARGET_RATIO = 1.3


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prefix-lengths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--layers", type=int, nargs="+", default=[1, 2], help="Drafter depths to time.")
    parser.add_argument("--block-size", type=int, default=8, help="Draft slots per round (k = block size).")
    parser.add_argument("--new-rows", type=int, default=4, help="Committed tokens added per round (tau).")
    parser.add_argument("--repeats", type=int, default=30)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch.set_num_threads for the whole run.")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=Path("draft_cost.json"), help="Where the JSON results go.")
    return parser


def build_drafters(verifier, layers: list[int], block_size: int) -> dict[str, Drafter]:
    drafters: dict[str, Drafter] = {}
    for depth in layers:
        config = ConditionedDrafterConfig.for_verifier(
            verifier.config, mask_token_id=MASK, num_hidden_layers=depth, block_size=block_size
        )
        drafters[f"conditioned-L{depth}"] = ConditionedDrafter(ConditionedDrafterModel(config).eval(), verifier)
    for depth in layers:
        dlm = tiny_qwen2(
            seed=depth, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=depth, num_heads=8, num_kv_heads=2,
            intermediate_size=FFN, causal=False,
        )  # fmt: skip
        drafters[f"diffusion-L{depth}"] = DiffusionDrafter(dlm, mask_token_id=MASK)
    return drafters


def time_round(
    drafter: Drafter, ids: torch.Tensor, features: torch.Tensor, k: int, new_rows: int
) -> tuple[float, float]:
    """Wall and process-CPU seconds of one propose at prefix ``ids``; a cached drafter is first given the memory
    of a prior round. CPU time ignores time the process spends preempted, so it is the steadier reading on a
    shared machine (with one torch thread it is the compute itself; with more it also counts spinning)."""
    n = ids.numel()
    if isinstance(drafter, ConditionedDrafter):
        drafter.reset()
        prior = n - new_rows
        drafter.propose(DraftRequest(ids[:prior], k, 1, (), features[: prior - 1]))  # untimed: the previous round
    request = DraftRequest(ids, k, 1, (), features[: n - 1])
    start, start_cpu = time.perf_counter(), time.process_time()
    drafter.propose(request)
    return time.perf_counter() - start, time.process_time() - start_cpu


def run(args: argparse.Namespace) -> dict:
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    verifier = tiny_qwen2(
        seed=args.seed, vocab_size=VOCAB, hidden_size=HIDDEN, num_layers=VERIFIER_LAYERS, num_heads=8,
        num_kv_heads=2, intermediate_size=FFN,
    )  # fmt: skip
    drafters = build_drafters(verifier, args.layers, args.block_size)
    longest = max(args.prefix_lengths)
    ids = torch.randint(0, MASK, (longest,), generator=torch.Generator().manual_seed(args.seed))
    layers = next(d for d in drafters.values() if isinstance(d, ConditionedDrafter)).feature_layers
    features = verifier_features(verifier, ids[None], layers)[0]  # row j = position j, as the verifier sends them

    times: dict[str, dict[int, list[tuple[float, float]]]] = {
        name: {n: [] for n in args.prefix_lengths} for name in drafters
    }
    cells = [(name, n) for n in args.prefix_lengths for name in drafters]
    order = torch.Generator().manual_seed(args.seed)
    with torch.inference_mode():
        for repeat in range(args.warmup + args.repeats):
            # a fresh order every repeat: no cell always runs right after a cache-flushing long diffusion pass
            for i in torch.randperm(len(cells), generator=order).tolist():
                name, n = cells[i]
                wall_and_cpu = time_round(drafters[name], ids[:n], features, args.block_size, args.new_rows)
                if repeat >= args.warmup:
                    times[name][n].append(wall_and_cpu)

    rows = []
    for name, per_length in times.items():
        for n, samples in per_length.items():
            q1, median, q3 = statistics.quantiles([wall for wall, _ in samples], n=4)
            cpu = statistics.median([cpu for _, cpu in samples])
            rows.append(
                {"drafter": name, "prefix": n, "median_ms": 1e3 * median, "q1_ms": 1e3 * q1, "q3_ms": 1e3 * q3,
                 "median_cpu_ms": 1e3 * cpu}
            )  # fmt: skip
    first, last = min(args.prefix_lengths), max(args.prefix_lengths)
    ratios, cpu_ratios = {}, {}
    for name in drafters:
        by_length = {r["prefix"]: r for r in rows if r["drafter"] == name}
        ratios[name] = by_length[last]["median_ms"] / by_length[first]["median_ms"]
        cpu_ratios[name] = by_length[last]["median_cpu_ms"] / by_length[first]["median_cpu_ms"]
    return {
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "cuda": torch.cuda.is_available(),
            "torch": torch.__version__,
            "torch_threads": torch.get_num_threads(),
            "load_average_at_end": os.getloadavg(),
        },
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "rows": rows,
        "ratio_longest_to_shortest": ratios,
        "cpu_ratio_longest_to_shortest": cpu_ratios,
        "target": f"conditioned median at {last} <= {TARGET_RATIO} x median at {first}",
        "target_met": {name: ratio <= TARGET_RATIO for name, ratio in ratios.items() if name.startswith("conditioned")},
    }


def print_table(result: dict) -> None:
    names = list(result["ratio_longest_to_shortest"])
    lengths = sorted({r["prefix"] for r in result["rows"]})
    cell = {(r["drafter"], r["prefix"]): r for r in result["rows"]}
    print(f"draft time per round, median ms [q1-q3], torch threads = {result['machine']['torch_threads']}")
    print("prefix  " + "".join(f"{name:>24}" for name in names))
    for n in lengths:
        parts = [
            f"{cell[name, n]['median_ms']:7.2f} [{cell[name, n]['q1_ms']:.2f}-{cell[name, n]['q3_ms']:.2f}]"
            for name in names
        ]
        print(f"{n:>6}  " + "".join(f"{p:>24}" for p in parts))
    print("ratio   " + "".join(f"{result['ratio_longest_to_shortest'][name]:>23.2f}x" for name in names))
    print("process CPU time per round, median ms")
    for n in lengths:
        print(f"{n:>6}  " + "".join(f"{cell[name, n]['median_cpu_ms']:>24.2f}" for name in names))
    print("ratio   " + "".join(f"{result['cpu_ratio_longest_to_shortest'][name]:>23.2f}x" for name in names))
    for name, met in result["target_met"].items():
        print(f"{name}: {result['target']}: {'met' if met else 'NOT met'}")


def main(args: argparse.Namespace) -> int:
    result = run(args)
    print_table(result)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    parser = build_parser()
    args = parser.parse_args()
    raise SystemExit(main(args))
