"""Which objective aligns a drafter best? A tiny CPU ablation, end to end.

    python train/ablation_tiny.py --out runs/ablation_tiny            # ~70 min on 2 shared CPU cores
    python train/ablation_tiny.py --out runs/ablation_smoke --fast    # a few minutes: checks the plumbing

Stages (each cached under --out, so a rerun only redoes what is missing):

1. corpus: the standard library's Python sources (no tests, no site-packages) as bytes (vocab 256 + EOS, PAD,
   MASK), split by file;
2. verifier: a causal tiny Qwen2 trained briefly on it, so its greedy continuations are code-like, not noise;
3. drafter: a bidirectional tiny Qwen2 pretrained with plain masked-diffusion CE on the corpus (the unaligned
   baseline; Dream-style shifted logits);
4. data: the verifier's greedy continuations of training-split prompts, with its top-k log-probs per token;
5. one alignment run per objective, from the same pretrained drafter, same steps and learning rate, through
   DrafterTrainer;
6. tau of every drafter: greedy SpeculativeDecoder on held-out prompts, with CPS + ADL and with the raw argmax
   draft at a fixed length.

Prints one table; recipes/tiny-cpu/README.md records a run.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import sysconfig
import time
from dataclasses import dataclass
from pathlib import Path

import datasets
import torch
from transformers import AutoModelForCausalLM, set_seed

from diffuspec import ADLConfig, CPSConfig, DecodeConfig, DiffusionDrafter, SpeculativeDecoder
from diffuspec.drafter_config import write_diffuspec_config
from diffuspec.loading import load_diffusion_model
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.quickstart.corpus import windows
from diffuspec.training import AcceptanceCallback, DrafterTrainer, DrafterTrainingConfig

EOS, PAD, MASK = 256, 257, 258
VOCAB = 259


@dataclass
class Sizes:
    corpus_bytes: int = 1_500_000
    hidden: int = 128
    verifier_layers: int = 4
    drafter_layers: int = 2
    seq: int = 128
    verifier_steps: int = 800
    verifier_batch: int = 32
    pretrain_steps: int = 800
    align_steps: int = 1500
    batch: int = 16
    prompt_len: int = 32
    completion_len: int = 80  # >= eval max_new_tokens: the drafter sees every eval prefix length in training
    data_prompts: int = 8000
    teacher_k: int = 16
    eval_prompts: int = 24
    max_new_tokens: int = 64
    lr: float = 1e-3


FAST = Sizes(
    corpus_bytes=200_000,
    hidden=64,
    verifier_layers=2,
    drafter_layers=1,
    seq=64,
    verifier_steps=30,
    verifier_batch=8,
    pretrain_steps=20,
    align_steps=10,
    batch=4,
    completion_len=24,
    data_prompts=32,
    eval_prompts=3,
    max_new_tokens=24,
)

#: name -> objective weights (everything else as in DrafterTrainingConfig); block size 12 drawn in [4, 12].
OBJECTIVES = {
    "mdm_ce": dict(ce_weight=1.0),
    "block_ce": dict(ce_weight=0.0, block_ce_weight=1.0),
    "kl_forward": dict(ce_weight=0.0, kl_weight=1.0, kl_kind="forward"),
    "streak_likelihood": dict(ce_weight=0.0, streak_weight=1.0, streak_kind="likelihood"),
    "streak_acceptance": dict(ce_weight=0.0, streak_weight=1.0, streak_kind="acceptance"),
    "streak_greedy": dict(ce_weight=0.0, streak_weight=1.0, streak_kind="greedy"),
    "block_ce+streak_greedy": dict(ce_weight=0.0, block_ce_weight=1.0, streak_weight=1.0, streak_kind="greedy"),
    "mix": dict(ce_weight=0.5, block_ce_weight=1.0, kl_weight=1.0, streak_weight=1.0, streak_kind="greedy"),
}


# ---------------------------------------------------------------- 1. corpus


def corpus(out: Path, sizes: Sizes) -> tuple[list[int], list[list[int]]]:
    """Train stream (files joined with EOS) and held-out files, as byte ids."""
    cache = out / "corpus.json"
    if not cache.exists():
        root = Path(sysconfig.get_paths()["stdlib"])
        skip = ("test", "site-packages", "dist-packages", "idlelib", "turtledemo")
        files = [p for p in root.rglob("*.py") if not any(part.startswith(skip) for part in p.relative_to(root).parts)]
        files.sort(key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())
        train, heldout, total = [], [], 0
        for path in files:
            ids = list(path.read_bytes()) + [EOS]
            if hashlib.sha1(path.name.encode()).digest()[0] < 26:  # ~10% of files held out
                heldout.append(ids)
            else:
                train.extend(ids)
                total += len(ids)
            if total >= sizes.corpus_bytes:
                break
        cache.write_text(json.dumps({"train": train, "heldout": heldout}))
    data = json.loads(cache.read_text())
    return data["train"], data["heldout"]


# ---------------------------------------------------------------- 2. verifier


def train_verifier(out: Path, stream: list[int], sizes: Sizes) -> torch.nn.Module:
    folder = out / "verifier"
    if (folder / "config.json").exists():
        return AutoModelForCausalLM.from_pretrained(folder).eval()
    model = tiny_qwen2(
        seed=0,
        vocab_size=VOCAB,
        hidden_size=sizes.hidden,
        num_layers=sizes.verifier_layers,
        eos_token_id=EOS,
        pad_token_id=PAD,
    ).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=2 * sizes.lr, weight_decay=0.01)
    g = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(sizes.verifier_steps):
        lr_scale = min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * step / sizes.verifier_steps))
        for group in optimizer.param_groups:
            group["lr"] = 2 * sizes.lr * lr_scale
        starts = torch.randint(0, len(stream) - sizes.seq, (sizes.verifier_batch,), generator=g)
        batch = torch.stack([torch.tensor(stream[s : s + sizes.seq]) for s in starts.tolist()])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        if step % 100 == 0 or step == sizes.verifier_steps - 1:
            print(f"verifier step {step}: loss {loss.item():.3f} ({time.time() - start:.0f}s)", flush=True)
    model.save_pretrained(folder)
    return model.eval()


# ---------------------------------------------------------------- 3. + 5. drafter training through DrafterTrainer


def training_args(out: Path, steps: int, sizes: Sizes, **objective) -> DrafterTrainingConfig:
    return DrafterTrainingConfig(
        output_dir=str(out),
        max_steps=steps,
        per_device_train_batch_size=sizes.batch,
        learning_rate=sizes.lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, steps // 5),
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        seed=0,
        disable_tqdm=True,
        block_size=12,
        block_size_min=4,
        anchors_per_sequence=4,
        **objective,
    )


def train_drafter(folder: Path, model, dataset, args: DrafterTrainingConfig, callbacks=()) -> torch.nn.Module:
    if (folder / "config.json").exists():
        return load_diffusion_model(folder)[0]
    trainer = DrafterTrainer(model, args, dataset, mask_token_id=MASK, shifted=True, callbacks=list(callbacks))
    trainer.train()
    model.save_pretrained(folder)
    write_diffuspec_config(folder, mask_token_id=MASK, shifted=True)
    (folder / "log_history.json").write_text(json.dumps(trainer.state.log_history, indent=1))
    return model.eval()


def pretrain_drafter(out: Path, stream: list[int], sizes: Sizes) -> torch.nn.Module:
    examples = windows(stream, sizes.pretrain_steps * sizes.batch, sizes.prompt_len + sizes.completion_len, seed=1)
    dataset = datasets.Dataset.from_dict(
        {
            "prompt_ids": [w[: sizes.prompt_len] for w in examples],
            "completion_ids": [w[sizes.prompt_len :] for w in examples],
        }
    )
    model = tiny_qwen2(
        seed=1,
        vocab_size=VOCAB,
        hidden_size=sizes.hidden,
        num_layers=sizes.drafter_layers,
        causal=False,
        eos_token_id=EOS,
        pad_token_id=PAD,
    )
    args = training_args(out / "pretrain_run", sizes.pretrain_steps, sizes, ce_weight=1.0)
    return train_drafter(out / "drafter_pretrained", model, dataset, args)


# ---------------------------------------------------------------- 4. alignment data


@torch.no_grad()
def alignment_data(out: Path, verifier, stream: list[int], sizes: Sizes) -> datasets.Dataset:
    folder = out / f"align_data_{sizes.data_prompts}"
    if folder.exists():
        return datasets.load_from_disk(str(folder))
    prompts = windows(stream, sizes.data_prompts, sizes.prompt_len, seed=2)
    rows = {"prompt_ids": [], "completion_ids": [], "teacher_topk_ids": [], "teacher_topk_logprobs": []}
    for i in range(0, len(prompts), 64):
        batch = torch.tensor(prompts[i : i + 64])
        generated = verifier.generate(
            batch, max_new_tokens=sizes.completion_len, do_sample=False, eos_token_id=EOS, pad_token_id=PAD
        )
        logprobs = torch.log_softmax(verifier(input_ids=generated).logits.float(), -1)
        for row, prompt in enumerate(batch.tolist()):
            completion = generated[row, sizes.prompt_len :].tolist()
            if EOS in completion:
                completion = completion[: completion.index(EOS) + 1]
            # row t of the completion is predicted from position prompt_len + t - 1
            lp = logprobs[row, sizes.prompt_len - 1 : sizes.prompt_len - 1 + len(completion)]
            values, ids = lp.topk(sizes.teacher_k, -1)
            rows["prompt_ids"].append(prompt)
            rows["completion_ids"].append(completion)
            rows["teacher_topk_ids"].append(ids.tolist())
            rows["teacher_topk_logprobs"].append(values.tolist())
    dataset = datasets.Dataset.from_dict(rows)
    dataset.save_to_disk(str(folder))
    return dataset


# ---------------------------------------------------------------- 6. tau


def eval_prompts(heldout: list[list[int]], sizes: Sizes) -> list[list[int]]:
    """Windows at evenly spaced offsets of the held-out files (none crossing a file end)."""
    stream = [t for ids in heldout for t in ids]
    step = (len(stream) - sizes.prompt_len) // sizes.eval_prompts
    prompts = [stream[i * step : i * step + sizes.prompt_len] for i in range(sizes.eval_prompts)]
    return [p for p in prompts if EOS not in p]


DECODES = {
    "cps+adl": DecodeConfig(cps=CPSConfig(), adl=ADLConfig(k_min=4, k_max=12, delta=4)),
    "argmax k=8": DecodeConfig(cps=None, adl=None, draft_length=8),
}


@torch.no_grad()
def tau(verifier, drafter_model, prompts: list[list[int]], sizes: Sizes) -> dict[str, float]:
    result = {}
    for name, config in DECODES.items():
        decoder = SpeculativeDecoder(verifier, DiffusionDrafter(drafter_model, MASK, shifted=True), config)
        new_tokens = rounds = 0
        for prompt in prompts:
            stats = decoder.generate(torch.tensor(prompt), sizes.max_new_tokens, eos_token_id=EOS).stats
            new_tokens += stats.new_tokens
            rounds += stats.rounds
        result[name] = new_tokens / rounds
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path("runs/ablation_tiny"))
    parser.add_argument("--fast", action="store_true", help="Tiny sizes: a plumbing check, not a result.")
    parser.add_argument("--only", nargs="*", default=None, help="Objectives to run (default: all).")
    parser.add_argument("--data-prompts", type=int, default=None, help="Override the number of alignment prompts.")
    parser.add_argument("--align-steps", type=int, default=None, help="Override the alignment steps.")
    parser.add_argument(
        "--confirm", nargs="*", default=None, help="Objectives to re-measure with the evaluation harness at the end."
    )
    args = parser.parse_args()
    sizes = FAST if args.fast else Sizes()
    if args.data_prompts is not None:
        sizes.data_prompts = args.data_prompts
    if args.align_steps is not None:
        sizes.align_steps = args.align_steps
    args.out.mkdir(parents=True, exist_ok=True)
    set_seed(0)
    torch.set_num_threads(1)  # 2 threads on 2 shared cores is ~10x slower here (spinning OMP workers)

    start = time.time()
    stream, heldout = corpus(args.out, sizes)
    verifier = train_verifier(args.out, stream, sizes)
    pretrained = pretrain_drafter(args.out, stream, sizes)
    data = alignment_data(args.out, verifier, stream, sizes)
    prompts = eval_prompts(heldout, sizes)
    print(
        f"corpus {len(stream)} tokens, {len(data)} alignment examples, {len(prompts)} held-out prompts, "
        f"setup {time.time() - start:.0f}s",
        flush=True,
    )

    results = {"pretrained (unaligned)": tau(verifier, pretrained, prompts, sizes)}
    print(f"{'pretrained (unaligned)':28s} {results['pretrained (unaligned)']}", flush=True)
    for name, objective in OBJECTIVES.items():
        if args.only is not None and name not in args.only:
            continue
        t0 = time.time()
        model, _, _ = load_diffusion_model(args.out / "drafter_pretrained")
        tag = f"{name}_{sizes.align_steps}steps_{sizes.data_prompts}prompts"
        run_args = training_args(args.out / f"run_{tag}", sizes.align_steps, sizes, **objective)
        callback = AcceptanceCallback(  # tau in the training log: step 0 (unaligned) and every fifth of the run
            verifier,
            prompts,
            max(1, sizes.align_steps // 5),
            sizes.max_new_tokens,
            DECODES["cps+adl"],
            eos_token_id=EOS,
        )
        aligned = train_drafter(args.out / f"drafter_{tag}", model, data, run_args, [callback])
        results[name] = tau(verifier, aligned, prompts, sizes)
        print(f"{name:28s} {results[name]}  ({time.time() - t0:.0f}s)", flush=True)

    base = results["pretrained (unaligned)"]
    print("\ntau (tokens per verifier pass, verifier token included); ratio to the unaligned drafter")
    print(f"{'drafter':28s} " + " ".join(f"{d:>12s} {'x':>5s}" for d in DECODES))
    for name, values in results.items():
        print(f"{name:28s} " + " ".join(f"{values[d]:12.3f} {values[d] / base[d]:5.2f}" for d in DECODES))
    (args.out / "results.json").write_text(json.dumps(results, indent=2))
    if args.confirm:
        confirm_with_harness(args.out, verifier, prompts, sizes, args.confirm)


def confirm_with_harness(out: Path, verifier, prompts: list[list[int]], sizes: Sizes, names: list[str]) -> None:
    """The same comparison through the evaluation harness (the code behind ``diffuspec eval``): interleaved repeats,
    every method checked token for token against plain decoding, tau and speedup; written to ``out/confirm``."""
    from diffuspec.evaluation import MethodSpec, build_prompts, build_runner, measure, questions_from_token_ids
    from diffuspec.evaluation.harness import report_run

    folders = {"dlm_unaligned": out / "drafter_pretrained"}
    for name in names:
        folders[f"dlm_{name}"] = out / f"drafter_{name}_{sizes.align_steps}steps_{sizes.data_prompts}prompts"
    adl = {"k_min": 4, "k_max": 12, "delta": 4}
    runners = [build_runner(MethodSpec.from_dict("ar", "confirm", None), verifier, (EOS,), PAD)]
    for method, folder in folders.items():
        raw = {"kind": "diffusion", "name": method, "drafter": str(folder), "cps": {}, "adl": adl}
        spec = MethodSpec.from_dict(raw, "confirm", None)
        runners.append(build_runner(spec, verifier, (EOS,), PAD, diffusion=load_diffusion_model(folder)))
    questions = questions_from_token_ids([("stdlib_heldout", p) for p in prompts])
    cases = build_prompts(questions, None, chat_template=False)
    records = measure(cases, runners, repeats=3, warmup=1, max_new_tokens=sizes.max_new_tokens)
    report_run(
        records,
        cases,
        runners,
        repeats=3,
        warmup=1,
        max_new_tokens=sizes.max_new_tokens,
        temperature=0.0,
        verifier=str(out / "verifier"),
        benchmark={"kind": "token_ids", "turns": "first", "chat_template": False},
        output_dir=out / "confirm",
    )


if __name__ == "__main__":
    main()
