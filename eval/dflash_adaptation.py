"""A DFlash drafter whose verifier was fine-tuned on another domain, before and after a short adaptation run.

    python eval/dflash_adaptation.py --preset tiny --run-dir runs/quickstart --out runs/dflash_adaptation
    python eval/dflash_adaptation.py --preset smollm2 --run-dir runs/smollm2 --out runs/dflash_adaptation_smollm2

From a full quickstart run of either preset, V is its verifier and D its conditioned drafter, exported to the DFlash
format (``export_dflash``) as a public drafter would be published. V' is V fine-tuned on a shifted domain:

- ``tiny``: V was pretrained on Python sources; V' is fine-tuned on prose (the docstrings and help topics that ship
  with Python), and the home prompts are held-out code windows;
- ``smollm2``: V is SmolLM2-135M-Instruct and D was trained on its chat answers about the Python documentation;
  V' is fine-tuned on Python sources (plain code, no chat template), and the home prompts are held-out chat turns.

The adaptation starts from the exported DFlash checkpoint (imported by ``train_conditioned_drafter``, as
``train/train_conditioned.py`` does) and trains on V''s own greedy continuations of shifted-domain prompts with
the preset's conditioned recipe (for ``smollm2`` from features computed once per row, as its quickstart stage
does). tau (tokens per round, the verifier's bonus token included, plain k = block size, no CPS or ADL) is
measured on held-out prompts of both domains with V and with V', before and after.
Writes results.json and results.md in ``--out``, with the wall time of every step.
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from diffuspec import DecodeConfig, SpeculativeDecoder
from diffuspec.datagen import DataGenerationConfig, generate_dataset
from diffuspec.drafters import load_drafter
from diffuspec.files import write_json
from diffuspec.jsonl import read_jsonl, write_jsonl
from diffuspec.loading import load_causal_lm, load_tokenizer
from diffuspec.models.conditioned import ConditionedDrafterConfig
from diffuspec.models.dflash import export_dflash
from diffuspec.quickstart import smollm2, tiny
from diffuspec.quickstart.corpus import file_stream, pack, split_files, stdlib_files, windows
from diffuspec.quickstart.prose import python_documents, split_documents
from diffuspec.quickstart.stages import train_causal_lm
from diffuspec.training.run import train_conditioned_drafter


@dataclass
class Scenario:
    """What the two presets' scenarios differ in; the steps themselves are shared."""

    home: str  # V's domain, as the table names it
    shifted: str  # the domain V' is fine-tuned on
    verifier: Path
    drafter: Path
    tokenizer: PreTrainedTokenizerBase
    shifted_train: list[str]  # documents of the shifted domain
    shifted_heldout: list[str]
    home_prompts: list[list[int]]
    finetune_batch: int
    finetune_lr: float
    adapt_batch: int
    recipe: dict  # train_conditioned_drafter's objective and optimiser settings
    offline_features: bool  # the verifier's features computed once per row instead of once per step
    defaults: dict  # this preset's step and prompt counts (the command line overrides them)


def tiny_scenario(run: Path) -> Scenario:
    train_docs, heldout_docs = split_documents(python_documents(), 0.1)
    heldout = read_jsonl(run / "data" / "heldout_prompts.jsonl")
    return Scenario(
        home="code", shifted="prose", verifier=run / "verifier", drafter=run / "drafter_conditioned" / "model",
        tokenizer=load_tokenizer(run / "verifier"), shifted_train=[d.text for d in train_docs],
        shifted_heldout=[d.text for d in heldout_docs], home_prompts=[row["prompt_ids"] for _, row in heldout],
        finetune_batch=16, finetune_lr=3e-4, adapt_batch=16, recipe=tiny.CONDITIONED_RECIPE, offline_features=False,
        defaults={"finetune_steps": 200, "adapt_steps": 150, "data_prompts": 600, "eval_prompts": 20},
    )  # fmt: skip


def smollm2_scenario(run: Path) -> Scenario:
    verifier = run / "verifier" / "model"
    train_files, heldout_files = split_files(stdlib_files(1_500_000), 0.1)

    def texts(files: list[Path]) -> list[str]:
        return [p.read_text(encoding="utf-8", errors="replace") for p in files]

    heldout = read_jsonl(run / "data" / "heldout_prompt_ids.jsonl")
    return Scenario(
        home="chat", shifted="code", verifier=verifier, drafter=run / "drafter_conditioned" / "model",
        tokenizer=load_tokenizer(verifier), shifted_train=texts(train_files),
        shifted_heldout=texts(heldout_files),
        home_prompts=[row["prompt_ids"] for _, row in heldout], finetune_batch=4, finetune_lr=1e-4, adapt_batch=8,
        recipe=smollm2.CONDITIONED_RECIPE, offline_features=True,
        defaults={"finetune_steps": 80, "adapt_steps": 150, "data_prompts": 200, "eval_prompts": 8},
    )  # fmt: skip


SCENARIOS: dict[str, Callable[[Path], Scenario]] = {"tiny": tiny_scenario, "smollm2": smollm2_scenario}


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


def precompute(verifier_folder: Path, drafter_folder: Path, data: Path, out: Path) -> Path:
    """The verifier's features at the drafter's layers, once per row of ``data`` (``training.features``)."""
    from datasets import load_from_disk

    from diffuspec.training.features import precompute_features

    model = load_causal_lm(verifier_folder)
    layers = load_drafter(drafter_folder, model).model.config.feature_layers
    with torch.inference_mode():
        precompute_features(model, str(verifier_folder), load_from_disk(str(data)), out, feature_layers=layers,
                            dtype="float32")  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", choices=sorted(SCENARIOS), default="tiny", help="The quickstart preset run.")
    parser.add_argument("--run-dir", type=Path, default=None, help="Its full run (runs/quickstart, runs/smollm2).")
    parser.add_argument("--out", type=Path, default=None, help="Default: runs/dflash_adaptation[_smollm2].")
    parser.add_argument("--finetune-steps", type=int, default=None, help="Steps of V on the shifted domain (V').")
    parser.add_argument("--adapt-steps", type=int, default=None, help="Steps of the drafter on V''s continuations.")
    parser.add_argument("--data-prompts", type=int, default=None, help="Shifted-domain prompts V' answers.")
    parser.add_argument("--eval-prompts", type=int, default=None, help="Held-out prompts per tau measurement.")
    parser.add_argument("--max-new-tokens", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    suffix = "" if args.preset == "tiny" else f"_{args.preset}"
    run = args.run_dir or Path("runs/quickstart" if args.preset == "tiny" else f"runs/{args.preset}")
    out = args.out or Path(f"runs/dflash_adaptation{suffix}")
    for name in ("verifier", "drafter_conditioned", "data"):
        if not (run / name).is_dir():
            raise SystemExit(f"{run / name} is missing: run `diffuspec quickstart --preset {args.preset}` first")
    stem = ConditionedDrafterConfig.from_pretrained(run / "drafter_conditioned" / "model").stem_size
    if stem:  # DFlash's format has no anchor stem: the published drafter D must be a plain one
        raise SystemExit(
            f"{run / 'drafter_conditioned'} has an anchor stem (stem_size={stem}), which the DFlash format cannot "
            f"hold: build it with `diffuspec quickstart --preset {args.preset} --set conditioned_stem=0` first"
        )
    torch.set_num_threads(2)
    scenario = SCENARIOS[args.preset](run)
    counts = {k: getattr(args, k) if getattr(args, k) is not None else v for k, v in scenario.defaults.items()}
    out.mkdir(parents=True, exist_ok=True)
    tokenizer, verifier = scenario.tokenizer, scenario.verifier
    minutes: dict[str, float] = {}

    def timed(name: str, step) -> None:
        start = time.perf_counter()
        step()
        minutes[name] = round((time.perf_counter() - start) / 60, 2)
        print(f"[{name}] {minutes[name]} min", flush=True)

    public = out / "dflash_for_V"
    timed("export D as DFlash", lambda: export_dflash(load_drafter(scenario.drafter, load_causal_lm(verifier)).model,
                                                      public, verifier=str(verifier), overwrite=True))  # fmt: skip

    blocks = pack(scenario.shifted_train, tokenizer, 128)
    shifted_train = [token for block in blocks for token in block]
    shifted = out / "verifier_prime"

    def finetune() -> None:
        model = load_causal_lm(verifier)
        train_causal_lm(model, blocks, out / "finetune_trainer", max_steps=counts["finetune_steps"],
                        batch_size=scenario.finetune_batch, lr=scenario.finetune_lr, seed=args.seed)  # fmt: skip
        model.save_pretrained(shifted)
        tokenizer.save_pretrained(shifted)
        shutil.rmtree(out / "finetune_trainer", ignore_errors=True)

    timed(f"fine-tune V on {scenario.shifted} -> V'", finetune)

    prompts = windows(shifted_train, counts["data_prompts"], 64, args.seed)
    write_jsonl(out / "shifted_prompts.jsonl", [{"id": f"p{i}", "prompt_ids": p} for i, p in enumerate(prompts)])
    data = out / "data_prime"
    timed(f"V' answers {scenario.shifted} prompts", lambda: generate_dataset(DataGenerationConfig(
        verifier=str(shifted), out=str(data), prompt_token_ids=str(out / "shifted_prompts.jsonl"), max_new_tokens=64,
        seed=args.seed, cpu=True, backend="transformers", chunk_size=64,
    )))  # fmt: skip
    features = None
    if scenario.offline_features:
        features = out / "features_prime"
        timed("V' features, once per row", lambda: precompute(shifted, public, data, features))

    adapted = out / "adapted"
    timed("adapt the DFlash drafter to V'", lambda: train_conditioned_drafter(
        shifted, data, adapted, drafter=public, max_steps=counts["adapt_steps"], batch_size=scenario.adapt_batch,
        seed=args.seed, features_path=features, **scenario.recipe,
    ))  # fmt: skip
    served = out / "dflash_for_V_prime"
    timed("export the adapted drafter", lambda: export_dflash(load_drafter(adapted, load_causal_lm(shifted)).model,
                                                              served, verifier=str(shifted), overwrite=True))  # fmt: skip

    home_prompts = scenario.home_prompts[: counts["eval_prompts"]]
    shifted_prompts = windows(file_stream(scenario.shifted_heldout, tokenizer), counts["eval_prompts"], 128, args.seed)
    n = args.max_new_tokens
    cases = {f"V, {scenario.home}": (verifier, home_prompts), f"V, {scenario.shifted}": (verifier, shifted_prompts),
             f"V', {scenario.shifted}": (shifted, shifted_prompts), f"V', {scenario.home}": (shifted, home_prompts)}  # fmt: skip
    rows = {}
    for name, (model, eval_prompts) in cases.items():
        rows[name] = {"before": tau(model, public, eval_prompts, n), "after": tau(model, served, eval_prompts, n)}
        print(f"[tau] {name}: {rows[name]['before']:.2f} -> {rows[name]['after']:.2f}", flush=True)
    settings = {"preset": args.preset, "run_dir": str(run), **counts, "max_new_tokens": n, "seed": args.seed}
    results = {"tau": rows, "minutes": minutes, "settings": settings}
    write_json(out / "results.json", results)
    lines = ["| verifier, prompts | tau before | tau after |", "|---|---|---|"]
    lines += [f"| {name} | {row['before']:.2f} | {row['after']:.2f} |" for name, row in rows.items()]
    lines += ["", "| step | minutes |", "|---|---|"] + [f"| {k} | {v} |" for k, v in minutes.items()]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    print(json.dumps(settings))


if __name__ == "__main__":
    main()
