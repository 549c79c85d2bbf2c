"""Can the conditioned drafter learn at all? Train it on a handful of answers for many passes and measure tau on
those very prompts.

    python eval/overfit_gate.py --verifier runs/smollm2/verifier/model --dataset runs/smollm2/data/dataset \
        --draft-vocab runs/smollm2/draft_vocab/draft_vocab.json --out runs/bench/overfit_gate

A diagnostic, not a test. A drafter that can learn memorises ``--rows`` answers in a few dozen passes: its block
loss falls towards zero and tau on their prompts approaches the block. If the loss stalls far above zero, more data
cannot help: the model, its initialisation or the objective is what limits it. Trains through
``train_conditioned_drafter`` (the preset's recipe, online features) and writes ``gate.json``: the loss and
held-out tau rows of the run's log.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import datasets
import torch

from diffuspec.files import write_json
from diffuspec.quickstart.smollm2 import CONDITIONED_RECIPE
from diffuspec.training.run import LOG_FILE, train_conditioned_drafter


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--draft-vocab", default=None)
    parser.add_argument("--mask-token", default="<empty_output>")
    parser.add_argument("--first-row", type=int, default=0)
    parser.add_argument("--rows", type=int, default=16)
    parser.add_argument("--steps", type=int, default=150)
    parser.add_argument("--lr", type=float, default=CONDITIONED_RECIPE["learning_rate"])
    parser.add_argument("--anchors", type=int, default=CONDITIONED_RECIPE["anchors_per_sequence"])
    parser.add_argument("--block", type=int, default=12)
    parser.add_argument("--eval-every", type=int, default=50)
    parser.add_argument("--eval-tokens", type=int, default=48)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows = datasets.load_from_disk(args.dataset).select(range(args.first_row, args.first_row + args.rows))
    rows.save_to_disk(str(args.out / "rows"))
    datasets.Dataset.from_dict({"prompt_ids": rows["prompt_ids"]}).save_to_disk(str(args.out / "prompts"))
    recipe = {**CONDITIONED_RECIPE, "learning_rate": args.lr, "anchors_per_sequence": args.anchors}  # the preset's
    train_conditioned_drafter(
        args.verifier, args.out / "rows", args.out / "drafter", num_layers=1, block_size=args.block,
        max_steps=args.steps, batch_size=min(8, args.rows), mask_token=args.mask_token, draft_vocab=args.draft_vocab,
        eval_prompts_path=args.out / "prompts", eval_acceptance_steps=args.eval_every,
        eval_max_new_tokens=args.eval_tokens, **recipe,
    )  # fmt: skip
    log = json.loads((args.out / "drafter" / LOG_FILE).read_text())
    keep = ("step", "loss", "loss/block_ce", "eval_tau")
    rows_out = [{k: row[k] for k in keep if k in row} for row in log if "loss" in row or "eval_tau" in row]
    write_json(args.out / "gate.json", {"settings": {k: str(v) for k, v in vars(args).items()}, "log": rows_out})
    for row in rows_out:
        print(row)


if __name__ == "__main__":
    main()
