"""Real 2-process data-parallel training on CPU (torchrun + gloo) through train/train_drafter.py.

``accelerate launch --cpu --num_processes 2`` starts one process on this machine, so the tests launch torchrun
directly; accelerate picks up its environment. The DeepSpeed tests are slow and need ``deepspeed`` importable
(``DS_BUILD_OPS=0 pip install deepspeed``; it runs on CPU with its gloo backend).
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from diffuspec.drafter_config import write_diffuspec_config
from diffuspec.models.tiny import tiny_qwen2

ROOT = Path(__file__).resolve().parents[1]
V, MASK = 64, 63

WORKER = """
import hashlib, json, os, sys
import torch
sys.path.insert(0, {train_dir!r})
from train_drafter import main
from diffuspec.launch import end_launched_process
from diffuspec.training import parse_config

torch.set_num_threads(1)
if "--deepspeed" in sys.argv:  # on GPUs accelerate does this; its CPU path leaves deepspeed.comm uninitialised,
    import deepspeed           # and ZeRO-3's zero.Init at load time would see a world of one process

    deepspeed.init_distributed(dist_backend="gloo")
trainer = main(*parse_config(sys.argv[1:]))
state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
rank = torch.distributed.get_rank()
with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
    json.dump({{"world": torch.distributed.get_world_size(), "digest": digest, "step": trainer.state.global_step,
               "batch": trainer._train_batch_size * trainer.args.world_size,
               "losses": [h["loss"] for h in trainer.state.log_history if "loss" in h]}}, f)
end_launched_process()  # as the script's __main__ does
"""


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("ddp")
    drafter = tiny_qwen2(seed=0, vocab_size=V, hidden_size=32, num_layers=1, causal=False)
    drafter.save_pretrained(root / "drafter")
    write_diffuspec_config(root / "drafter", mask_token_id=MASK, shifted=True)
    g = torch.Generator().manual_seed(0)
    with open(root / "train.jsonl", "w") as f:
        for _ in range(16):
            row = {
                "prompt_ids": torch.randint(2, MASK, (4,), generator=g).tolist(),
                "completion_ids": torch.randint(2, MASK, (6,), generator=g).tolist(),
            }
            f.write(json.dumps(row) + "\n")
    return root, drafter.state_dict()


def run_two_processes(root: Path, name: str, *extra: str, env: dict | None = None) -> list[dict]:
    out = root / name
    out.mkdir()
    (out / "worker.py").write_text(WORKER.format(train_dir=str(ROOT / "train"), out=str(out)))
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(out / "worker.py"),
        "--drafter_name_or_path", str(root / "drafter"), "--dataset_path", str(root / "train.jsonl"),
        "--output_dir", str(out / "run"), "--max_steps", "3", "--per_device_train_batch_size", "2",
        "--learning_rate", "1e-2", "--block_ce_weight", "1", "--streak_weight", "1", "--streak_kind", "greedy",
        "--block_size", "4", "--anchors_per_sequence", "2", "--save_steps", "3", "--logging_steps", "1",
        "--use_cpu", "--report_to", "none", "--disable_tqdm", "true", *extra,
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", **(env or {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return [json.loads((out / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_two_process_data_parallel_run_keeps_ranks_identical(setup):
    root, initial = setup
    ranks = run_two_processes(root, "ddp")
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["batch"] == 4  # 2 per process x 2 processes
    assert ranks[0]["digest"] == ranks[1]["digest"]
    saved = load_file(root / "ddp" / "run" / "checkpoint-3" / "model.safetensors")
    assert any(not torch.equal(saved[k], initial[k]) for k in saved)  # the ranks trained, identically


@pytest.mark.slow
@pytest.mark.parametrize("stage", [2, 3])
def test_deepspeed_zero_matches_data_parallel(setup, stage):
    pytest.importorskip("deepspeed")
    root, _ = setup
    reference = run_two_processes(root, f"ddp_ref{stage}")
    config = json.dumps(
        {
            "zero_optimization": {"stage": stage, "stage3_gather_16bit_weights_on_model_save": True},
            "train_micro_batch_size_per_gpu": "auto",
            "gradient_accumulation_steps": "auto",
            "train_batch_size": "auto",
            "gradient_clipping": "auto",
        }
    )
    ranks = run_two_processes(root, f"zero{stage}", "--deepspeed", config, env={"DS_ACCELERATOR": "cpu"})
    assert len(ranks[0]["losses"]) == 3 and ranks[0]["losses"] == pytest.approx(ranks[1]["losses"])
    assert ranks[0]["losses"] == pytest.approx(reference[0]["losses"], rel=1e-4)
    checkpoint = root / f"zero{stage}" / "run" / "checkpoint-3"
    assert (checkpoint / "model.safetensors").exists() and (checkpoint / "diffuspec_config.json").exists()
    assert (checkpoint / "latest").exists()  # DeepSpeed's own shards, for resuming
