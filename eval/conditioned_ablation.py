"""Which lever speeds up the conditioned drafter's learning on a real verifier? Arms train on the same cached
verifier features and are compared by held-out offline tau.

    python eval/conditioned_ablation.py --verifier runs/smollm2/verifier/model --dataset runs/smollm2/data/dataset \
        --draft-vocab runs/smollm2/draft_vocab/draft_vocab.json --out runs/bench/conditioned_ablation \
        --arm base --arm lr3e-3:learning_rate=3e-3 --arm layers2:num_layers=2 --steps 400

A diagnostic, not a test. Features of the dataset's first ``--train-rows + --val-rows`` rows are computed once
(``features.pt``, reused by later calls); the last ``--val-rows`` are held out. Each arm trains a fresh
``ConditionedDrafterModel`` with the trainer's objective (block CE with position decay plus the greedy-streak term,
over the draft vocabulary), AdamW (betas 0.9 / 0.95, 20 warm-up steps, then a constant rate, gradients clipped at 1)
and writes ``<arm>.json``: train and held-out block CE, per-slot accuracy and offline tau every ``--eval-every``
steps. Offline tau is 1 + the mean greedy streak of the whole block at every held-out answer position: the data are
the verifier's greedy answers, so the streak is what greedy verification of that block accepts. It costs seconds,
where decoding the held-out prompts costs minutes, and it ranks arms the same way decoding would at k = block.
Arms run one after another; start two processes with different ``--arm`` to use two cores. Each evaluation also
saves the arm's state (``<arm>.state.pt``): a rerun with the same settings and more ``--steps`` goes on from it.
A drafter arm's last weights are saved as a drafter folder, ``<arm>.model``, that decodes with its verifier.
``window=W`` limits every draft layer to memory rows less than W positions back (sliding layers, the block still
bidirectional): a block reads a few recent rows instead of spreading its attention over the whole context.
``stem=W`` gives the drafter an anchor stem of width W (``ConditionedDrafterConfig.stem_size``).
``rows=N`` trains on the first N training answers only (a data curve). ``probe=H`` trains ``ProbeArm`` instead of a
drafter, an MLP of width H on the features of the row before each anchor: what the features support with this much
data when nothing has to be found by attention, scored the same way.
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import datasets
import torch
from transformers import AutoTokenizer

from diffuspec.drafters.vocabulary import DraftVocabulary
from diffuspec.files import atomic_path, write_json
from diffuspec.loading import load_causal_lm
from diffuspec.models.conditioned import (
    ConditionedDrafterConfig,
    ConditionedDrafterModel,
    channel_rms,
    model_fingerprint,
    spread_feature_layers,
    verifier_features,
)
from diffuspec.quickstart.smollm2 import CONDITIONED_BLOCK, CONDITIONED_RECIPE
from diffuspec.training.conditioned_collator import ConditionedCollator, sample_anchors
from diffuspec.training.conditioned_trainer import slot_labels
from diffuspec.training.losses import (
    block_ce_loss,
    greedy_accepted_length,
    log_greedy_success,
    position_decay_weights,
    streak_loss,
)
from diffuspec.training.run import STEM_SCALE_ROWS, slot_mask_id

ARM_KEYS = {
    "learning_rate": float, "num_layers": int, "anchors": int, "batch": int, "verifier_norm": int, "window": int,
    "probe": int, "rows": int, "stem": int,
}  # fmt: skip
WARMUP_STEPS = 20


def parse_arm(spec: str) -> tuple[str, dict]:
    """``name`` or ``name:key=value,key=value`` -> (name, settings); unknown keys are refused by name."""
    name, _, rest = spec.partition(":")
    settings = {
        "learning_rate": CONDITIONED_RECIPE["learning_rate"], "num_layers": 1, "verifier_norm": 0,
        "anchors": CONDITIONED_RECIPE["anchors_per_sequence"], "batch": 8, "window": 0, "probe": 0, "rows": 0, "stem": 0,
    }  # fmt: skip
    for item in filter(None, rest.split(",")):
        key, _, value = item.partition("=")
        if key not in ARM_KEYS:
            raise ValueError(f"arm {name!r}: unknown setting {key!r} (known: {sorted(ARM_KEYS)})")
        settings[key] = ARM_KEYS[key](value)
    return name, settings


def cached_features(args: argparse.Namespace, verifier, layers: list[int]) -> list[dict]:
    """Rows ``{ids, prompt_length, features (bf16)}`` for the first train + val rows, computed once per --out."""
    path = args.out / "features.pt"
    count = args.train_rows + args.val_rows
    if path.is_file():
        rows = torch.load(path)
        if len(rows) == count:
            return rows
    dataset = datasets.load_from_disk(args.dataset).select(range(count))
    rows = []
    with torch.inference_mode():
        for row in dataset:
            ids = torch.tensor([row["prompt_ids"] + row["completion_ids"]])
            features = verifier_features(verifier, ids, layers)[0].to(torch.bfloat16)
            rows.append({"ids": ids[0], "prompt_length": len(row["prompt_ids"]), "features": features})
    args.out.mkdir(parents=True, exist_ok=True)
    torch.save(rows, path)
    return rows


def feature_statistics(rows: list[dict], layers: list[int]) -> list[dict]:
    """Per feature layer: RMS, the largest channel's RMS and the share of energy in the top 5 channels. A layer with
    massive activations (a few near-constant channels holding most of the energy) swamps the others in ``fc``."""
    features = torch.cat([r["features"].float() for r in rows])
    width = features.shape[1] // len(layers)
    stats = []
    for i, layer in enumerate(layers):
        energy = features[:, i * width : (i + 1) * width].pow(2).mean(0)
        share = energy.topk(5).values.sum() / energy.sum()
        stats.append({"layer": layer, "rms": energy.mean().sqrt().item(), "max_channel_rms": energy.max().sqrt().item(),
                      "top5_energy_share": share.item()})  # fmt: skip
    return stats


class Arm:
    """One drafter, its optimizer and the objective of ``ConditionedDrafterTrainer`` (without the Trainer)."""

    def __init__(
        self, settings: dict, verifier, layers: list[int], mask_id: int, vocab: DraftVocabulary, block: int,
        rows: list[dict],
    ) -> None:  # fmt: skip
        self.settings, self.block = settings, block
        window = {}  # window > 0: every layer sees memory rows less than `window` positions back (block still whole)
        if settings["window"]:
            window = {"layer_types": ["sliding_attention"] * settings["num_layers"], "attention_causal": False,
                      "sliding_window": max(settings["window"], block + 1)}  # fmt: skip
        config = ConditionedDrafterConfig.for_verifier(
            verifier.config, mask_token_id=mask_id, num_hidden_layers=settings["num_layers"], block_size=block,
            feature_layers=layers, stem_size=settings["stem"], verifier_fingerprint=model_fingerprint(verifier),
            **window,
        )  # fmt: skip
        torch.manual_seed(0)
        self.model = ConditionedDrafterModel(config, verifier=verifier)
        if settings["stem"]:  # as the trainer sets it: channel RMS over the first training rows
            self.model.stem.set_feature_scale(torch.cat([r["features"].float() for r in rows[:STEM_SCALE_ROWS]]))
        if settings["verifier_norm"]:  # the final norm starts as the verifier's (its head reads such states)
            with torch.no_grad():
                self.model.norm.weight.copy_(verifier.get_decoder().norm.weight)
        self.head_rows = vocab.head(verifier.get_output_embeddings().weight, None)
        self.columns = vocab.columns()
        self.weights = position_decay_weights(block, CONDITIONED_RECIPE["decay_gamma"])
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings["learning_rate"], betas=(0.9, 0.95), weight_decay=0.0
        )

    def logits(self, batch: dict, anchors: torch.Tensor) -> torch.Tensor:
        """``[B, A, k, S]`` over the draft vocabulary for the blocks of ``anchors``."""
        out = self.model(
            features=batch["features"], input_ids=batch["input_ids"], anchor_positions=anchors, compute_logits=False
        )
        return self.model.lm_logits(out.hidden_states, self.head_rows)

    def slots(self, batch: dict, anchors: torch.Tensor, anchor_ok: torch.Tensor):
        """Log-probs ``[N, k, S]`` over the draft vocabulary, labels ``[N, k]`` and the slots that score."""
        logprobs = torch.log_softmax(self.logits(batch, anchors).float(), dim=-1)
        labels, valid = slot_labels(
            batch["input_ids"], batch["attention_mask"], batch["prompt_lengths"], anchors, anchor_ok, self.block,
            self.columns,
        )  # fmt: skip
        return logprobs.reshape(-1, self.block, logprobs.shape[-1]), labels, valid

    def step(self, batch: dict, generator: torch.Generator, step: int) -> float:
        lengths = batch["attention_mask"].sum(1)
        anchors, anchor_ok = sample_anchors(batch["prompt_lengths"], lengths, self.settings["anchors"], generator)
        logprobs, labels, valid = self.slots(batch, anchors, anchor_ok)
        ce = block_ce_loss(logprobs, labels, self.weights)
        loss = ce + CONDITIONED_RECIPE["streak_weight"] * streak_loss(log_greedy_success(logprobs, labels), valid)
        for group in self.optimizer.param_groups:
            group["lr"] = self.settings["learning_rate"] * min(1.0, (step + 1) / WARMUP_STEPS)
        self.optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return ce.item()

    @torch.no_grad()
    def evaluate(self, rows: list[dict], collate: ConditionedCollator) -> dict:
        """Held-out block CE, per-slot accuracy and offline tau, anchoring a block at every answer position."""
        self.model.eval()
        hits, counts = torch.zeros(self.block), torch.zeros(self.block)
        streaks, losses = [], []
        for row in rows:
            batch = collate([row])
            anchors = torch.arange(int(batch["prompt_lengths"][0]) - 1, batch["input_ids"].shape[1] - 1)[None]
            logprobs, labels, valid = self.slots(batch, anchors, torch.ones_like(anchors, dtype=torch.bool))
            losses.append(block_ce_loss(logprobs, labels, self.weights).item())
            hits += ((logprobs.argmax(-1) == labels) & valid).float().sum(0)
            counts += valid.float().sum(0)
            streaks.append(greedy_accepted_length(logprobs, labels).float())
        self.model.train()
        return {
            "tau_offline": 1 + torch.cat(streaks).mean().item(),
            "val_block_ce": sum(losses) / len(losses),
            "slot_accuracy": [round(x, 4) for x in (hits / counts.clamp(min=1)).tolist()],
        }


class ProbeArm(Arm):
    """A ceiling for what the features carry, not a drafter: an MLP reads the features of the row before the anchor
    (each channel scaled by its RMS over the training rows, which tames massive activations) and the anchor token's
    embedding, and writes one state per slot, read out by the verifier's final norm and head rows. It sees what the
    drafter's block sees of the context at the row the next token depends on most, without attention to find it."""

    def __init__(self, settings: dict, verifier, layers, mask_id, vocab, block: int, rows: list[dict]) -> None:
        super().__init__(settings, verifier, layers, mask_id, vocab, block, rows)
        width = verifier.config.hidden_size
        features = torch.cat([r["features"].float() for r in rows])
        self.scale = channel_rms(features)
        self.embedding = verifier.get_input_embeddings().weight.detach()
        torch.manual_seed(0)
        self.mlp = torch.nn.Sequential(
            torch.nn.Linear(features.shape[1] + width, settings["probe"]),
            torch.nn.SiLU(),
            torch.nn.Linear(settings["probe"], block * width),
        )
        self.model = torch.nn.ModuleDict({"mlp": self.mlp, "norm": self.model.norm})  # what trains and is saved
        self.optimizer = torch.optim.AdamW(
            self.model.parameters(), lr=settings["learning_rate"], betas=(0.9, 0.95), weight_decay=0.0
        )

    def logits(self, batch: dict, anchors: torch.Tensor) -> torch.Tensor:
        rows = torch.arange(anchors.shape[0])[:, None]
        before = batch["features"][rows, (anchors - 1).clamp(min=0)].float() / self.scale  # [B, A, F]
        tokens = self.embedding[batch["input_ids"][rows, anchors]]  # [B, A, H]
        states = self.mlp(torch.cat([before, tokens], dim=-1)).unflatten(-1, (self.block, -1))
        return self.model["norm"](states) @ self.head_rows[0].T


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--verifier", required=True)
    parser.add_argument("--dataset", required=True)
    parser.add_argument("--draft-vocab", required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--arm", action="append", default=None, help="name[:key=value,...]; keys: " + ", ".join(ARM_KEYS)
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--eval-every", type=int, default=100)
    parser.add_argument("--train-rows", type=int, default=1088)
    parser.add_argument("--val-rows", type=int, default=64)
    parser.add_argument("--mask-token", default="<empty_output>", help="the SmolLM2 preset's mask token")
    parser.add_argument("--block", type=int, default=CONDITIONED_BLOCK)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    arms = [parse_arm(spec) for spec in (args.arm or ["base"])]  # every arm checked before any work
    torch.set_num_threads(args.threads)
    verifier = load_causal_lm(args.verifier)
    layers = spread_feature_layers(verifier.config.num_hidden_layers)
    rows = cached_features(args, verifier, layers)
    write_json(args.out / "features.json", {"layers": feature_statistics(rows[:64], layers)})
    vocab = DraftVocabulary.load(args.draft_vocab)
    tokenizer = AutoTokenizer.from_pretrained(args.verifier)
    mask_id = slot_mask_id(tokenizer, args.mask_token, args.verifier)
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0  # as the trainer pads
    collate = ConditionedCollator(pad_token_id=int(pad), features=[r["features"] for r in rows])
    examples = [
        {"prompt_ids": r["ids"][: r["prompt_length"]].tolist(), "completion_ids": r["ids"][r["prompt_length"] :].tolist(),
         "row": i}
        for i, r in enumerate(rows)
    ]  # fmt: skip
    train, val = examples[: args.train_rows], examples[args.train_rows :]
    for name, settings in arms:
        used = train[: settings["rows"] or None]  # rows > 0: the first `rows` training answers (a data curve)
        kind = ProbeArm if settings["probe"] else Arm
        arm = kind(settings, verifier, layers, mask_id, vocab, args.block, [rows[e["row"]] for e in used])
        run_arm(args, name, settings, arm, used, val, collate)


def run_arm(
    args: argparse.Namespace, name: str, settings: dict, arm: Arm, train: list, val: list, collate: ConditionedCollator
) -> None:
    """Train one arm for ``--steps``, evaluating every ``--eval-every`` steps into ``<out>/<name>.json``. Each
    evaluation also writes ``<name>.state.pt`` (weights, optimizer, sampler, log): a rerun with the same settings
    resumes from it, so a long curve survives a kill."""
    generator = torch.Generator().manual_seed(1)
    start, recent, log, first = time.time(), [], [], 0
    state_path = args.out / f"{name}.state.pt"
    if state_path.is_file():
        state = torch.load(state_path, weights_only=False)
        if state["settings"] == settings:
            arm.model.load_state_dict(state["model"])
            arm.optimizer.load_state_dict(state["optimizer"])
            generator.set_state(state["generator"])
            log, recent, first = state["log"], state["recent"], state["step"] + 1
            start -= log[-1]["seconds"]
            print(name, f"resumed after step {state['step']}", flush=True)
    for step in range(first, args.steps + 1):
        if step:
            index = torch.randint(len(train), (settings["batch"],), generator=generator).tolist()
            recent.append(arm.step(collate([train[i] for i in index]), generator, step - 1))
            if not math.isfinite(recent[-1]):
                raise RuntimeError(f"arm {name}: the loss diverged at step {step}")
        if step % args.eval_every == 0:
            row = {"step": step, "seconds": round(time.time() - start, 1), **arm.evaluate(val, collate)}
            if recent:
                row["train_block_ce"] = sum(recent[-10:]) / len(recent[-10:])
            log.append(row)
            print(name, {k: v for k, v in row.items() if k != "slot_accuracy"}, flush=True)
            record = {"arm": name, "settings": settings, "args": {k: str(v) for k, v in vars(args).items()}}
            write_json(args.out / f"{name}.json", {**record, "log": log})
            state = {"settings": settings, "step": step, "log": log, "recent": recent[-10:],
                     "model": arm.model.state_dict(), "optimizer": arm.optimizer.state_dict(),
                     "generator": generator.get_state()}  # fmt: skip
            with atomic_path(state_path) as tmp:
                torch.save(state, tmp)
    if not isinstance(arm, ProbeArm):  # the trained drafter, for decoding (eval/tau_sweep.py, diffuspec eval)
        arm.model.save_pretrained(args.out / f"{name}.model")


if __name__ == "__main__":
    main()
