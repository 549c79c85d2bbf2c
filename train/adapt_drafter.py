"""Turn a small AR model into a Dream-format diffusion drafter, the starting point for alignment.

    python train/adapt_drafter.py --model Qwen/Qwen2.5-0.5B-Instruct --vocab_size 152064 \
        --output_dir runs/qwen2.5-0.5b-dlm_qwen2.5-7b/adapted --dtype bfloat16

keeps the first --num_layers decoder layers (default: all), switches attention to bidirectional, keeps the AR
logit shift and gives the model a mask token (the tokenizer's own, else a spare embedding row, else an unused
special token, else a new row; the summary says which). Qwen2 and Llama models are written as Dream checkpoints,
Gemma-3 text models (gemma3_text) in their own class. The folder loads with DiffusionDrafter.from_pretrained,
decodes with SpeculativeDecoder.from_pretrained(MODEL, OUTPUT_DIR) and trains with train/train_drafter.py
(drafter_name_or_path: the folder). Logic: diffuspec.models.adapt.adapt_and_save.
"""

import argparse
import logging
import sys

from diffuspec.dtypes import DTYPE_NAMES
from diffuspec.models.adapt import MASK_TOKEN, AdaptResult, adapt_and_save


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", required=True, help="Causal LM folder or Hub id (Qwen2, Llama or Gemma-3 text).")
    parser.add_argument("--output_dir", required=True, help="New (or empty) folder for the Dream-format drafter.")
    parser.add_argument("--num_layers", type=int, default=None, help="Keep the first N decoder layers (default: all).")
    parser.add_argument(
        "--mask_token",
        default=None,
        help=f"Mask token string (default: the tokenizer's mask token, else {MASK_TOKEN!r}, else an unused special "
        "token when the embedding has no spare row). Kept at its id when the vocabulary has it; otherwise registered "
        "at the first spare embedding row, or at one appended row (which a verifier of the original size refuses).",
    )
    parser.add_argument(
        "--vocab_size",
        type=int,
        default=None,
        help="Pad the embedding to this many rows, the verifier's (152064 for Qwen2.5-7B/32B); training against "
        "the verifier needs equal sizes. New rows start as the mean row. Default: keep the model's size.",
    )
    parser.add_argument("--dtype", choices=DTYPE_NAMES, default="auto", help="Weight dtype to save (auto: as stored).")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> AdaptResult:
    args = parse_args(argv)
    result = adapt_and_save(
        args.model,
        args.output_dir,
        num_layers=args.num_layers,
        mask_token=args.mask_token,
        vocab_size=args.vocab_size,
        dtype=None if args.dtype == "auto" else args.dtype,
    )
    print(result.summary())
    return result


if __name__ == "__main__":
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        main()
    except (ValueError, OSError) as error:  # bad input, an existing folder, a missing path or an unreachable Hub
        sys.exit(f"adapt_drafter.py: error: {error}")
