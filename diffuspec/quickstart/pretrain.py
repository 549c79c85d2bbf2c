"""Causal-LM pretraining for the quickstart's verifier and small AR drafter, on transformers' Trainer."""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import PreTrainedModel, Trainer, TrainingArguments, default_data_collator


class BlockDataset(torch.utils.data.Dataset):
    """Fixed-length token blocks as Trainer examples (the labels are the inputs; the model shifts them)."""

    def __init__(self, blocks: list[list[int]]) -> None:
        self.blocks = blocks

    def __len__(self) -> int:
        return len(self.blocks)

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        ids = torch.tensor(self.blocks[i])
        return {"input_ids": ids, "labels": ids}


def cpu_training_args(out_dir: Path, *, max_steps: int, batch_size: int, lr: float, seed: int) -> TrainingArguments:
    """Arguments shared by the quickstart's small CPU runs: cosine schedule, no checkpoints, quiet logging."""
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
    args = cpu_training_args(out_dir, max_steps=max_steps, batch_size=batch_size, lr=lr, seed=seed)
    trainer = Trainer(model=model, args=args, train_dataset=BlockDataset(blocks), data_collator=default_data_collator)
    trainer.train()
    return model.eval()
