"""What both quickstart presets build with (``tiny.py``, ``smollm2.py``): named stages cached in the folders of
a run directory, presets read from the recipes, and the helpers their stages share (causal-LM pretraining, drafter
training through the recipe run, the methods every quickstart times, the evaluation stage).

A stage writes into a temporary folder that is renamed into place when it finishes
(``diffuspec.files.replace_folder_atomically``), together with a ``stage.json`` holding the fingerprint of the
settings it was built with. A rerun skips every stage whose folder exists with the same fingerprint; ``force``
rebuilds. A killed stage leaves no half-written folder.

Long stages (``Stage.resumable``) also get a work folder, ``.<name>.work-<fingerprint>`` beside their output, for
journals, shards and checkpoints that survive a kill: a rerun with the same settings continues from them, and the
folder is removed once the stage is in place.

The recipes ship inside the package (``diffuspec/recipes``, package data), so an installed diffuspec runs the
quickstart from any folder; a checkout's top-level ``recipes/`` is a link to the same files.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch
import yaml
from transformers import PreTrainedModel

from ..files import replace_folder_atomically, write_json

RECIPES = Path(__file__).resolve().parents[1] / "recipes"


# ---------------------------------------------------------------------------- stages and presets

STAGE_FILE = "stage.json"  # the fingerprint a stage folder was built with


@dataclass
class Stage:
    name: str
    needs: tuple[str, ...]
    build: Callable[..., None]  # (settings, output folder, inputs[, work=])
    settings: tuple[str, ...]  # config fields this stage depends on (besides its inputs)
    resumable: bool = False  # build(config, out, inputs, work=...) gets a work folder that survives a kill


def fingerprint(config: Any, stage: Stage, upstream: dict[str, str]) -> str:
    values = {name: config.to_dict()[name] for name in stage.settings}
    blob = json.dumps({"settings": values, "inputs": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stages(
    stages: list[Stage],
    config: Any,
    run_dir: Path,
    force: bool = False,
    only: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the stages in order (or just ``only``); returns each stage's folder."""
    names = [s.name for s in stages]
    if only is not None and only not in names:
        raise ValueError(f"unknown quickstart stage {only!r}; stages are {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    prints: dict[str, str] = {}
    for stage in stages:
        out = run_dir / stage.name
        key = fingerprint(config, stage, {n: prints[n] for n in stage.needs})
        prints[stage.name] = key
        folders[stage.name] = out
        if only is not None and stage.name != only:
            continue
        for need in stage.needs:
            if not _is_built(folders[need], prints[need]):
                raise RuntimeError(f"stage {stage.name!r} needs stage {need!r}, which is not built; run it first")
        if not force and _is_built(out, key):
            log(f"[{stage.name}] cached in {out}")
            continue
        log(f"[{stage.name}] building ...")
        start = time.perf_counter()

        work = run_dir / f".{stage.name}.work-{key}"

        def fill(folder: Path, stage: Stage = stage, key: str = key, start: float = start, work: Path = work) -> None:
            inputs = {n: folders[n] for n in stage.needs}
            if stage.resumable:
                work.mkdir(exist_ok=True)
                stage.build(config, folder, inputs, work=work)
            else:
                stage.build(config, folder, inputs)
            write_json(folder / STAGE_FILE, {"fingerprint": key, "seconds": time.perf_counter() - start})

        replace_folder_atomically(fill, out, overwrite=True)
        shutil.rmtree(work, ignore_errors=True)
        log(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s")
    return folders


def _is_built(folder: Path, key: str) -> bool:
    marker = folder / STAGE_FILE
    return marker.exists() and json.loads(marker.read_text())["fingerprint"] == key


def check_preset(config: Any, what: str) -> None:
    """The checks every preset's settings share: no number below 0, and at least 3 timed repeats."""
    for f in fields(config):
        value = getattr(config, f.name)
        if isinstance(value, int | float) and not isinstance(value, bool) and value < 0:
            raise ValueError(f"{what} setting {f.name} must be >= 0, got {value}")
    if config.repeats < 3:
        raise ValueError(f"repeats must be >= 3 (speedup is a median of interleaved repeats), got {config.repeats}")


def read_preset(config_class: type, name: str, path: Path, overrides: dict) -> Any:
    """``config_class`` from preset ``name`` of the YAML file ``path``, ``overrides`` on top; unknown keys are
    refused by name."""
    presets = yaml.safe_load(path.read_text())
    if name not in presets:
        raise ValueError(f"unknown quickstart preset {name!r}; {path} has {sorted(presets)}")
    values = {**(presets[name] or {}), **overrides}
    known = {f.name for f in fields(config_class)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"unknown quickstart setting(s) {unknown} in preset {name!r} of {path}")
    return config_class(**values)


# ---------------------------------------------------------------------------- training


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length token blocks as Trainer examples (the labels are the inputs; the model shifts them)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.blocks[i])
        return {"input_ids": ids, "labels": ids}


def cpu_training_args(out_dir: Path, *, max_steps: int, batch_size: int, lr: float, seed: int) -> Any:
    """Arguments shared by the quickstart's small CPU runs: cosine schedule, no checkpoints, quiet logging."""
    from transformers import TrainingArguments

    return TrainingArguments(
        output_dir=str(out_dir),
        max_steps=max_steps,
        per_device_train_batch_size=batch_size,
        learning_rate=lr,
        lr_scheduler_type="cosine",
        warmup_steps=max(1, max_steps // 20),
        weight_decay=0.01,
        logging_steps=max(1, max_steps // 10),
        save_strategy="no",
        report_to=[],
        seed=seed,
        data_seed=seed,
        use_cpu=not torch.cuda.is_available(),
        dataloader_num_workers=0,
    )


def train_causal_lm(
    model: PreTrainedModel,
    blocks: list[list[int]],
    out_dir: Path,
    *,
    max_steps: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> PreTrainedModel:
    """Pretrain ``model`` on token blocks with transformers' Trainer; returns it in eval mode."""
    from transformers import Trainer, default_data_collator

    args = cpu_training_args(out_dir, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=BlockDataset(blocks), data_collator=default_data_collator)
    trainer.train()
    return model.eval()


def run_training(recipe: Path, overrides: dict[str, object]) -> None:
    """Train in-process on a recipe with command-line style overrides, through the run ``train/train_drafter.py``
    launches (``run_drafter_training``), so the quickstart trains exactly as users do with accelerate."""
    from ..training.config import parse_config
    from ..training.run import run_drafter_training

    argv = ["--config", str(recipe)]
    for key, value in overrides.items():
        argv += [f"--{key}", str(value)]
    run_drafter_training(*parse_config(argv))


# ---------------------------------------------------------------------------- evaluation

TREE = {"max_nodes": 64, "max_children": 8}  # token trees of the *_tree methods (the *_tree_cost ones at most this)
HYBRID = "select"  # the *_hybrid methods: each round the copy or the lattice, whichever expects more accepted tokens
EVAL_CPS = {"m_max": 8}  # CPS of every lattice method the quickstarts time (its proxy: the proxy stage's file)
EVAL_DRAFT_LENGTH = 8  # the fixed draft length where ADL is off


def record_eval_decoding(folder: Path, adl: dict[str, int]) -> None:
    """Record in a drafter stage's ``folder`` the CPS, ADL and draft length the preset's evaluation times it with, so
    the one-liner ``SpeculativeDecoder.from_pretrained(verifier, folder)`` with no config drafts as the table did
    (the proxy, the draft vocabulary and the context window are the evaluation method's, not recorded here)."""
    from ..decoding.config import ADLConfig, CPSConfig, DecodeConfig
    from ..drafter_config import record_recommended_decode

    decode = DecodeConfig(cps=CPSConfig(**EVAL_CPS), adl=ADLConfig(**adl), draft_length=EVAL_DRAFT_LENGTH)
    record_recommended_decode(folder, decode)


def quickstart_methods(
    inputs: dict[str, Path],
    window: int | None,
    adl: dict[str, int],
    tree: dict[str, int] | None = TREE,
    draft_vocab: Path | None = None,
    copy_margin: float | None = None,
) -> list[dict]:
    """The methods every quickstart times: plain decoding, the copy and AR peers, the unaligned and the aligned
    diffusion drafters (with and without CPS + ADL) and the conditioned drafter, from the stage folders; the aligned
    and the conditioned drafter also verify token trees, of ``tree``'s size (``*_tree``) and of the size the cost
    model picks each round (``*_tree_cost``); ``tree`` None leaves the tree methods out. Both also run as hybrids
    with pld's copy (``*_hybrid``; ``copy_margin``: HybridDrafter's, None for its default). ``draft_vocab`` (a
    ``DraftVocabulary`` file) gives every diffusion and conditioned drafter that head."""
    proxy = str(inputs["proxy"] / "proxy.json")
    vocab = {} if draft_vocab is None else {"draft_vocab": str(draft_vocab)}
    conditioned = {
        "kind": "conditioned",
        "name": "dlm_conditioned",
        "drafter": str(inputs["drafter_conditioned"] / "model"),
        "cps": dict(EVAL_CPS),
        "proxy": proxy,
        "adl": dict(adl),
        **vocab,
    }

    def with_trees(method: dict) -> list[dict]:
        name = method["name"]
        if tree is None:
            return [method]
        return [
            method,
            {**method, "name": f"{name}_tree", "tree": dict(tree)},
            {**method, "name": f"{name}_tree_cost", "tree": {**tree, "budget": "cost"}},
        ]

    def hybrid(method: dict) -> dict:
        margin = {} if copy_margin is None else {"copy_margin": copy_margin}
        return {**method, "name": f"{method['name']}_hybrid", "hybrid": HYBRID, **margin}

    def dlm(name: str, stage: str, cps: bool, adl_on: bool) -> dict:
        return {
            "kind": "diffusion",
            "name": name,
            "drafter": str(inputs[stage] / "model"),
            "context_window": window,
            "cps": dict(EVAL_CPS) if cps else None,
            "proxy": proxy if cps else None,
            "adl": dict(adl) if adl_on else None,
            "draft_length": EVAL_DRAFT_LENGTH,
            **vocab,
        }

    aligned = dlm("dlm_aligned", "drafter_aligned", cps=True, adl_on=True)
    return [
        {"kind": "ar"},
        {"kind": "hf_generate"},
        {"kind": "pld"},
        {"kind": "hf_pld"},
        {"kind": "hf_assisted"},
        dlm("dlm_unaligned", "drafter_unaligned", cps=True, adl_on=True),
        *with_trees(aligned),
        hybrid(aligned),
        dlm("dlm_aligned_plain", "drafter_aligned", cps=False, adl_on=False),
        *with_trees(conditioned),
        hybrid(conditioned),
    ]


def run_evaluation(out: Path, **settings) -> None:
    """A quickstart's evaluation stage: ``EvalConfig(**settings)`` in float32 on the CPU after one warm-up call,
    written to ``out``; a lossless mismatch or a failed call fails the stage. Its resume journal lives beside the
    stage folders (``out`` is a temporary folder until the stage ends), so a killed evaluation picks up."""
    from ..evaluation import EvalConfig, evaluate

    config = EvalConfig(dtype="float32", device="cpu", warmup=1, output_dir=str(out), **settings)
    if evaluate(config, journal=out.parent / ".eval.journal.jsonl") != 0:
        raise RuntimeError(f"the evaluation failed (a lossless mismatch or a failed call); see {out / 'results.md'}")
