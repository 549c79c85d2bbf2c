"""``generate_dataset``: the five steps of data generation on every process of a launch."""

from __future__ import annotations

import datetime
import logging
from pathlib import Path
from typing import Any

import datasets
import torch

from ..eos import folder_eos_ids
from ..loading import resolve_local
from ..version import __version__
from .backends import SEED_RULE, TEACHER_DISTRIBUTION, TEACHER_FROM_GENERATION, build_backend, check_backend
from .config import DataGenerationConfig, _check
from .dataset import SCHEMA, check_out_dir, merge_shards
from .prompts import check_chat_template, load_prompt_specs, prompt_row
from .shards import (
    check_params,
    check_resumed_rows,
    done_marker,
    repair_shard,
    run_shard,
    scan_shards,
    shard_path,
    wait_for_shards,
    write_params,
)

logger = logging.getLogger(__name__)


def generation_params(config: DataGenerationConfig, eos: tuple[int, ...]) -> dict[str, Any]:
    """Everything that decides a row's content; a resumed run must repeat it exactly."""
    keys = ("verifier", "backend", "dtype", "temperature", "top_k", "top_p", "max_new_tokens", "seed", "teacher_topk")
    params = {**{k: getattr(config, k) for k in keys}, "eos_token_ids": list(eos), "chat": config.chat}
    if config.teacher_from_generation:  # recorded only when set, so shards written without the option still resume
        params["teacher_from_generation"] = True
    return params


def _versions() -> dict[str, str]:
    import transformers

    versions = {"diffuspec": __version__, "torch": torch.__version__, "transformers": transformers.__version__}
    versions["datasets"] = datasets.__version__
    return versions


def generate_dataset(config: DataGenerationConfig, state: Any = None) -> Path:
    """Generate, resume or extend the dataset at ``config.out``; call it on every process.

    Rank 0 returns once the dataset is saved, the other ranks as soon as their own shard is complete.
    """
    from accelerate import PartialState
    from transformers import AutoConfig, AutoTokenizer

    state = state or PartialState(cpu=config.cpu or not torch.accelerator.is_available())
    rank, world = state.process_index, state.num_processes
    out, shards = Path(config.out), config.shards

    ###############
    # Step 1: inputs, checked before any model loads
    ###############
    check_out_dir(out)
    check_backend(config, world)
    verifier_path = resolve_local(config.verifier)
    specs = load_prompt_specs(config)
    tokenizer = None if config.prompt_token_ids is not None else AutoTokenizer.from_pretrained(verifier_path)
    chat_template = check_chat_template(specs, tokenizer)
    text_config = AutoConfig.from_pretrained(verifier_path).get_text_config()
    vocab_size, context = int(text_config.vocab_size), getattr(text_config, "max_position_embeddings", None)
    _check(
        config.teacher_topk <= vocab_size, f"teacher_topk ({config.teacher_topk}) exceeds the vocabulary ({vocab_size})"
    )
    eos = folder_eos_ids(verifier_path, tokenizer)
    params = generation_params(config, eos)

    ###############
    # Step 2: this rank's rows
    ###############
    rows = [prompt_row(s, tokenizer, vocab_size, context, config.max_new_tokens) for s in specs[rank::world]]
    if any(r.skip for r in rows):
        logger.warning(
            "rank %d skips %d prompts too long for the context (listed in metadata)",
            rank,
            sum(bool(r.skip) for r in rows),
        )

    ###############
    # Step 3: shards (resume: drop this rank's torn tail, skip finished ids)
    ###############
    if state.is_main_process:
        write_params(shards, params)
    state.wait_for_everyone()
    check_params(shards, params)
    path = shard_path(shards, rank, world)
    done_marker(shards, rank, world).unlink(missing_ok=True)
    dropped = repair_shard(path)
    if dropped:
        logger.warning("%s: dropped a torn last line (%d bytes) left by a killed run", path, dropped)
    state.wait_for_everyone()
    done = scan_shards(shards)
    check_resumed_rows(rows, done)
    if state.is_main_process and done:
        logger.info("resuming: %d of %d prompts already in %s", sum(s.id in done for s in specs), len(specs), shards)
    state.wait_for_everyone()  # nobody appends while another rank is still scanning

    ###############
    # Step 4: generate
    ###############
    if any(row.id not in done for row in rows):
        backend = build_backend(config, verifier_path, eos, state.device)
        run_shard(rows, backend, path, done, config.chunk_size, progress=state.is_local_main_process)
    done_marker(shards, rank, world).touch()

    ###############
    # Step 5: merge on rank 0 (the other ranks are done)
    ###############
    if state.is_main_process:
        wait_for_shards(shards, world)
        source = {"prompts": config.prompts, "prompt_token_ids": config.prompt_token_ids}
        if config.prompts_dataset is not None:
            source.update(prompts_dataset=config.prompts_dataset, prompts_split=config.prompts_split)
        metadata = {
            "schema": SCHEMA,
            **params,
            "verifier_vocab_size": vocab_size,
            "seed_rule": SEED_RULE,
            "teacher_distribution": (
                None
                if not config.teacher_topk
                else TEACHER_FROM_GENERATION
                if config.teacher_from_generation
                else TEACHER_DISTRIBUTION
            ),
            "chat_template": chat_template,
            "prompt_source": {k: v for k, v in source.items() if v is not None},
            "max_prompts": config.max_prompts,
            "prompts": len(specs),
            "versions": _versions(),
            "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        dataset = merge_shards(shards, [s.id for s in specs], out, metadata)
        logger.info("wrote %d rows to %s (%d skipped)", len(dataset), out, len(specs) - len(dataset))
    return out
