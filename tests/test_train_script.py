"""train/train_drafter.py end to end on tiny folders, its resume, and the errors it must raise before training."""

import importlib.util
import json
import logging
from pathlib import Path

import pytest
import torch

from diffuspec.drafter_config import write_diffuspec_config
from diffuspec.drafters.diffusion import DiffusionDrafter
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training import parse_config

ROOT = Path(__file__).resolve().parents[1]
V, MASK, EOS = 64, 63, 1


def load_script():
    spec = importlib.util.spec_from_file_location("train_drafter", ROOT / "train" / "train_drafter.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return str(path)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """A native drafter folder, a verifier folder, data without teacher columns, held-out prompts."""
    root = tmp_path_factory.mktemp("script")
    drafter = tiny_qwen2(seed=0, vocab_size=V, hidden_size=32, num_layers=1, causal=False, eos_token_id=EOS)
    drafter.save_pretrained(root / "drafter")
    write_diffuspec_config(root / "drafter", mask_token_id=MASK, shifted=True)
    verifier = tiny_qwen2(seed=1, vocab_size=V, hidden_size=32, num_layers=1, eos_token_id=EOS)
    verifier.save_pretrained(root / "verifier")
    tiny_qwen2(seed=2, vocab_size=V, hidden_size=32, num_layers=1).save_pretrained(root / "causal")  # no marker
    g = torch.Generator().manual_seed(0)
    rows = [
        {
            "prompt_ids": torch.randint(2, MASK, (4,), generator=g).tolist(),
            "completion_ids": torch.randint(2, MASK, (6,), generator=g).tolist(),
        }
        for _ in range(8)
    ]
    write_jsonl(root / "train.jsonl", rows)
    write_jsonl(root / "heldout.jsonl", [{"prompt_ids": r["prompt_ids"]} for r in rows[:2]])
    write_jsonl(root / "no_completion.jsonl", [{"prompt_ids": [2, 3]}])
    (root / "empty.jsonl").write_text("")
    return root


def cli(folders, out, *extra, prompts=True):
    held_out = ["--eval_prompts_path", str(folders / "heldout.jsonl")] if prompts else []
    return [
        "--drafter_name_or_path",
        str(folders / "drafter"),
        "--verifier_name_or_path",
        str(folders / "verifier"),
        "--dataset_path",
        str(folders / "train.jsonl"),
        *held_out,
        "--output_dir",
        str(out),
        "--max_steps",
        "2",
        "--per_device_train_batch_size",
        "4",
        "--learning_rate",
        "1e-3",
        "--block_size",
        "4",
        "--anchors_per_sequence",
        "2",
        "--save_steps",
        "2",
        "--logging_steps",
        "1",
        "--use_cpu",
        "--report_to",
        "none",
        "--disable_tqdm",
        "true",
        *extra,
    ]


def test_main_trains_lora_with_online_teacher_and_acceptance_eval_then_resumes(folders, tmp_path, caplog):
    script = load_script()
    out = tmp_path / "run"
    argv = cli(
        folders,
        out,
        "--use_lora",
        "--lora_r",
        "4",
        "--kl_weight",
        "1",
        "--streak_weight",
        "1",
        "--streak_kind",
        "acceptance",
        "--eval_acceptance_steps",
        "2",
        "--eval_max_new_tokens",
        "4",
        "--eval_k_min",
        "2",
        "--eval_k_max",
        "4",
    )
    trainer = script.main(*parse_config(argv))
    assert trainer.teacher is not None and type(trainer.teacher).__name__ == "OnlineTeacher"
    assert any("eval_tau" in h for h in trainer.state.log_history)
    assert json.loads((out / "train_log.json").read_text()) == trainer.state.log_history  # the learning curve's input
    assert (out / "adapter_config.json").exists() and (out / "checkpoint-2").exists()
    merged = DiffusionDrafter.from_pretrained(out / "merged")
    assert merged.mask_token_id == MASK and merged.shifted

    with caplog.at_level(logging.INFO):
        resumed = script.main(*parse_config([*argv, "--max_steps", "4"]))
    assert resumed.state.global_step == 4
    assert f"resuming training at {out / 'checkpoint-2'}" in caplog.text


@pytest.mark.parametrize(
    "extra, match",
    [
        (["--dataset_path", "{root}/no_completion.jsonl"], r"lacks columns \['completion_ids'\]"),
        (["--dataset_path", "{root}/empty.jsonl"], "is empty"),
        (["--drafter_name_or_path", "{root}/causal"], "not a known diffusion LM"),
        (["--mask_token_id", "5"], "mask_token_id: the config says 5"),
        (["--eval_acceptance_steps", "2"], "needs eval_prompts_path"),
    ],
)
def test_main_fails_clearly_before_training(folders, tmp_path, extra, match):
    script = load_script()
    extra = [e.format(root=folders) for e in extra]
    argv = cli(folders, tmp_path / "run", *extra, prompts="--eval_acceptance_steps" not in extra)
    with pytest.raises(ValueError, match=match):
        script.main(*parse_config(argv))
    assert not (tmp_path / "run" / "checkpoint-2").exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="bf16 is allowed on a GPU")
def test_half_precision_on_cpu_is_refused(folders, tmp_path):
    script = load_script()
    with pytest.raises(ValueError, match="bf16/fp16 needs a GPU"):
        script.main(*parse_config(cli(folders, tmp_path / "run", "--dtype", "bfloat16")))
