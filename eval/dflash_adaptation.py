"""A DFlash drafter whose verifier was fine-tuned on another domain, before and after a short adaptation run.

    python eval/dflash_adaptation.py --run-dir runs/quickstart --out runs/dflash_adaptation

From a full quickstart run: V is its verifier (pretrained on Python sources) and D its conditioned drafter,
exported to the DFlash format (``export_dflash``) as a public drafter would be published. V' is V fine-tuned on
a shifted domain, prose (the docstrings and help topics that ship with Python). The adaptation starts from the
exported DFlash checkpoint (imported by ``train_conditioned_drafter``, as ``train/train_conditioned.py`` does)
and trains on V''s own greedy continuations of prose prompts, with the quickstart's conditioned recipe. tau
(tokens per round, the verifier's bonus token included, plain k = block size, no CPS or ADL) is measured on
held-out code prompts with V and on held-out prose prompts with V', before and after. Writes results.json and
results.md in ``--out``, with the wall time of every step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

import torch

from diffuspec import DecodeConfig, SpeculativeDecoder
from diffuspec.datagen import DataGenerationConfig, generate_dataset
from diffuspec.drafters import load_drafter
from diffuspec.files import write_json, write_jsonl
from diffuspec.jsonl import read_jsonl
from diffuspec.loading import load_causal_lm
from diffuspec.models.dflash import export_dflash
from diffuspec.quickstart import conditioned as recipe
from diffuspec.quickstart.corpus import file_stream, pack, windows
from diffuspec.quickstart.pretrain import train_causal_lm
from diffuspec.quickstart.prose import python_documents, split_documents
from diffuspec.quickstart.stages import load_tokenizer
from diffuspec.training.run import train_conditioned_drafter


def tau(verifier_folder: Path, drafter_folder: Path, prompts: list[list[int]], max_new_tokens: int) -> float:
    """Mean tokens per round over ``prompts`` (greedy; the bonus token counts)."""
    verifier = load_causal_lm(verifier_folder)
    drafter = load_drafter(drafter_folder, verifier)
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=drafter.block_size))
    tokens = rounds = 0
    for prompt in prompts:
        stats = decoder.generate(torch.tensor(prompt), max_new_tokens=max_new_tokens, eos_token_id=[]).stats
        tokens, rounds = tokens + stats.new_tokens, rounds + len(stats.accepted)
    return tokens / rounds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run-dir", type=Path, default=Path("runs/quickstart"), help="A full quickstart run.")
    parser.add_argument("--out", type=Path, default=Path("runs/dflash_adaptation"))
    parser.add_argument("--finetune-steps", type=int, default=200, help="Steps of V on prose (V -> V').")
    parser.add_argument("--adapt-steps", type=int, default=150, help="Steps of the drafter on V''s continuations.")
    parser.add_argument("--data-prompts", type=int, default=600, help="Prose prompts V' answers for the adaptation.")
    parser.add_argument("--eval-prompts", type=int, default=20)
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)
    run, out = args.run_dir, args.out
    out.mkdir(parents=True, exist_ok=True)
    tokenizer = load_tokenizer(run / "corpus")
    verifier, drafter = run / "verifier", run / "drafter_conditioned" / "model"
    minutes: dict[str, float] = {}

    def timed(name: str, step) -> None:
        start = time.perf_counter()
        step()
        minutes[name] = round((time.perf_counter() - start) / 60, 2)
        print(f"[{name}] {minutes[name]} min", flush=True)

    public = out / "dflash_for_V"
    timed("export D as DFlash", lambda: export_dflash(load_drafter(drafter, load_causal_lm(verifier)).model, public,
                                                      verifier=str(verifier), overwrite=True))  # fmt: skip

    train_docs, heldout_docs = split_documents(python_documents(), 0.1)
    prose_blocks = pack([d.text for d in train_docs], tokenizer, 128)
    prose_heldout = file_stream([d.text for d in heldout_docs], tokenizer)
    prose_train = [token for block in prose_blocks for token in block]
    shifted = out / "verifier_prime"

    def finetune() -> None:
        model = load_causal_lm(verifier)
        train_causal_lm(model, prose_blocks, out / "finetune_trainer", max_steps=args.finetune_steps, batch_size=16,
                        lr=3e-4, seed=args.seed)  # fmt: skip
        model.save_pretrained(shifted)
        tokenizer.save_pretrained(shifted)
        shutil.rmtree(out / "finetune_trainer", ignore_errors=True)

    timed("fine-tune V on prose -> V'", finetune)

    prompts = windows(prose_train, args.data_prompts, 64, args.seed)
    write_jsonl(out / "prose_prompts.jsonl", [{"id": f"p{i}", "prompt_ids": p} for i, p in enumerate(prompts)])
    data = out / "data_prime"
    timed("V' answers prose prompts", lambda: generate_dataset(DataGenerationConfig(
        verifier=str(shifted), out=str(data), prompt_token_ids=str(out / "prose_prompts.jsonl"), max_new_tokens=64,
        seed=args.seed, cpu=True, backend="transformers", chunk_size=64,
    )))  # fmt: skip

    adapted = out / "adapted"
    timed("adapt the DFlash drafter to V'", lambda: train_conditioned_drafter(
        shifted, data, adapted, drafter=public, max_steps=args.adapt_steps, batch_size=16,
        learning_rate=recipe.LEARNING_RATE, anchors_per_sequence=recipe.ANCHORS, decay_gamma=recipe.DECAY_GAMMA,
        kl_weight=recipe.KL_WEIGHT, seed=args.seed,
    ))  # fmt: skip
    served = out / "dflash_for_V_prime"
    timed("export the adapted drafter", lambda: export_dflash(load_drafter(adapted, load_causal_lm(shifted)).model,
                                                              served, verifier=str(shifted), overwrite=True))  # fmt: skip

    heldout = read_jsonl(run / "data" / "heldout_prompts.jsonl")
    code_prompts = [row["prompt_ids"] for _, row in heldout][: args.eval_prompts]
    prose_prompts = windows(prose_heldout, args.eval_prompts, 128, args.seed)
    n = args.max_new_tokens
    rows = {
        "V, code": {"before": tau(verifier, public, code_prompts, n), "after": tau(verifier, served, code_prompts, n)},
        "V', prose": {"before": tau(shifted, public, prose_prompts, n), "after": tau(shifted, served, prose_prompts, n)},
        "V', code": {"before": tau(shifted, public, code_prompts, n), "after": tau(shifted, served, code_prompts, n)},
    }
    results = {"tau": rows, "minutes": minutes, "settings": {k: str(v) for k, v in vars(args).items()}}
    write_json(out / "results.json", results)
    lines = ["| verifier, prompts | tau before | tau after |", "|---|---|---|"]
    lines += [f"| {name} | {row['before']:.2f} | {row['after']:.2f} |" for name, row in rows.items()]
    lines += ["", "| step | minutes |", "|---|---|"] + [f"| {k} | {v} |" for k, v in minutes.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(results["settings"]))


if __name__ == "__main__":
    main()
