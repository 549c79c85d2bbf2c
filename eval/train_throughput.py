"""Training throughput of the conditioned drafter, with and without a draft vocabulary, in answer tokens per second.

    python eval/train_throughput.py --verifier runs/smollm2/verifier/model --dataset runs/smollm2/data/dataset \
        --draft-vocab runs/smollm2/draft_vocab/draft_vocab.json --out runs/bench/train_throughput.json

A benchmark, not a test. Each arm trains a fresh drafter for ``--steps`` steps through ``train_conditioned_drafter``
(the preset's recipe, online features: the verifier reads each batch) on the same rows; arms alternate over
``--repeats`` rounds and each reports the median of its Trainer's ``train_runtime``. Answer tokens per second =
steps x batch x the dataset's mean answer length / runtime, the axis of the preset's learning curves.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from pathlib import Path

import torch
from datasets import load_from_disk

from diffuspec.evaluation.environment import environment
from diffuspec.files import write_json
from diffuspec.quickstart.smollm2 import CONDITIONED_RECIPE
from diffuspec.training.run import LOG_FILE, train_conditioned_drafter


def runtime(args: argparse.Namespace, draft_vocab: str | None, anchors: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        recipe = {**CONDITIONED_RECIPE, "anchors_per_sequence": anchors}  # the SmolLM2 preset's, anchors varied
        train_conditioned_drafter(
            args.verifier, args.dataset, out, num_layers=1, block_size=args.block, max_steps=args.steps,
            batch_size=args.batch, mask_token=args.mask_token, draft_vocab=draft_vocab, **recipe,
        )  # fmt: skip
        log = json.loads((Path(out) / LOG_FILE).read_text())
    return next(row["train_runtime"] for row in log if "train_runtime" in row)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--draft-vocab", required=True)
    parser.add_argument("--mask-token", default="<empty_output>")
    parser.add_argument("--anchors", default="8,32", help="anchors_per_sequence values to time (comma-separated)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--block", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    lengths = [len(c) for c in load_from_disk(args.dataset)["completion_ids"]]
    answer_tokens = args.steps * args.batch * sum(lengths) / len(lengths)
    arms = {
        f"{'draft vocabulary' if vocab else 'whole vocabulary'}, {anchors} anchors": (vocab, anchors)
        for anchors in (int(a) for a in args.anchors.split(","))
        for vocab in (None, args.draft_vocab)
    }
    seconds: dict[str, list[float]] = {name: [] for name in arms}
    for _ in range(args.repeats):
        for name, (vocab, anchors) in arms.items():
            seconds[name].append(runtime(args, vocab, anchors))
    report = {
        "settings": {k: str(v) for k, v in vars(args).items()},
        "seconds": seconds,
        "answer_tokens_per_s": {name: answer_tokens / statistics.median(v) for name, v in seconds.items()},
        "environment": environment(torch.device("cpu")),
    }
    write_json(args.out, report)
    print(json.dumps(report["answer_tokens_per_s"], indent=1))


if __name__ == "__main__":
    main()
