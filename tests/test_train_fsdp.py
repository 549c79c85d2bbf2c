"""FSDP2 and DeepSpeed ZeRO-2 / ZeRO-3 run, not parsed: both trainers on 2 CPU processes through ``accelerate
launch`` with ``recipes/accelerate_configs/*_cpu.yaml`` (the GPU configs' sharding; FSDP2 in CI, the DeepSpeed runs
slow and only where deepspeed is installed).

Each run is checked against one process accumulating the same global batch (2 micro-batches of 2: the objectives
are per-micro-batch means, which data parallelism averages as accumulation does), so losses and weights agree to
float rounding. A run killed (SIGKILL) after its sharded checkpoint resumes from it to the uninterrupted run's losses
and weights; the final folder is an ordinary drafter folder that loads, decodes losslessly and (conditioned)
exports to DFlash. The feature precompute sharded over 2 processes writes the rows one process writes.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import datasets
import pytest
import torch
from safetensors.torch import load_file

from diffuspec import ConditionedDrafter, DecodeConfig, DiffusionDrafter, SpeculativeDecoder
from diffuspec.drafter_config import write_diffuspec_config
from diffuspec.models.tiny import tiny_qwen2

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = ROOT / "recipes" / "accelerate_configs"
V, MASK = 64, 63
STEPS, SAVE_AT, KILL_AT = 4, 2, 3  # the kill comes in step 4, after checkpoint-2 and step 3

# Runs a train/ script as __main__, with process 1 killing itself when the Trainer starts step KILL_AT + 1.
KILLER = """
import os, runpy, signal, sys
import transformers

kill_at, script = int(sys.argv[1]), sys.argv[2]
step = transformers.Trainer.training_step


def training_step(self, *args, **kwargs):
    if self.state.global_step == kill_at and self.args.process_index == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return step(self, *args, **kwargs)


transformers.Trainer.training_step = training_step
sys.argv = [script, *sys.argv[3:]]
runpy.run_path(script, run_name="__main__")
"""

# Runs train/precompute_features.py, recording the (rank, world) each process computed its shards as.
RECORDER = """
import json, os, runpy, sys
from diffuspec.training import run

compute = run.precompute_features


def precompute_features(*args, rank, world_size, **kwargs):
    with open(os.path.join({out!r}, f"rank{{rank}}.json"), "w") as f:
        json.dump({{"rank": rank, "world": world_size}}, f)
    return compute(*args, rank=rank, world_size=world_size, **kwargs)


run.precompute_features = precompute_features
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def launch(tmp_path: Path, config: str, script: str, argv: list[str], kill_at: int | None = None):
    """``accelerate launch --config_file recipes/accelerate_configs/<config>.yaml train/<script> argv`` (with
    ``kill_at``: through KILLER); DeepSpeed runs on its CPU accelerator."""
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / f"{config}.yaml")]
    if kill_at is not None:
        killer = tmp_path / "killer.py"
        killer.write_text(KILLER)
        command += [str(killer), str(kill_at)]
    command += [str(ROOT / "train" / script), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false", "DS_ACCELERATOR": "cpu"}
    return subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)


def launched(tmp_path: Path, config: str, script: str, argv: list[str]) -> str:
    """The launch's standard output, once it succeeded."""
    result = launch(tmp_path, config, script, argv)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout


def flags(**values) -> list[str]:
    return [item for key, value in values.items() for item in (f"--{key}", str(value))]


def losses(folder: Path) -> list[float]:
    return [entry["loss"] for entry in json.loads((folder / "train_log.json").read_text()) if "loss" in entry]


def assert_same_weights(a: Path, b: Path, atol: float = 1e-5) -> None:
    left, right = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert sorted(left) == sorted(right)
    for name in left:
        torch.testing.assert_close(left[name], right[name], rtol=0, atol=atol, msg=name)


def assert_sharded_checkpoint(checkpoint: Path, config: str) -> None:
    """Each process wrote its own shard of the optimizer state (and with FSDP2 / ZeRO-3, of the weights): FSDP2
    through torch.distributed.checkpoint, DeepSpeed in its global_stepN folder."""
    if config.startswith("fsdp2"):
        for part in ("pytorch_model_fsdp_0", "optimizer_0"):
            assert sorted(p.name for p in (checkpoint / part).glob("*.distcp")) == ["__0_0.distcp", "__1_0.distcp"]
        return
    files = {p.name for p in (checkpoint / f"global_step{checkpoint.name.split('-')[1]}").iterdir()}
    kinds = ["optim"] + (["model"] if config.startswith("deepspeed_zero3") else [])
    assert {f"zero_pp_rank_{r}_mp_rank_00_{kind}_states.pt" for r in (0, 1) for kind in kinds} <= files


def kill_and_resume(tmp_path: Path, config: str, script: str, argv: list[str], uninterrupted: Path) -> None:
    """A run killed in step KILL_AT + 1 leaves checkpoint-SAVE_AT only; the same command again resumes from it to
    the uninterrupted run's losses and weights."""
    out = tmp_path / "killed"
    killed = launch(tmp_path, config, script, [*argv, "--output_dir", str(out)], kill_at=KILL_AT)
    assert killed.returncode != 0  # the launcher ends the other process too (which one it names first varies)
    assert [p.name for p in out.iterdir() if p.name.startswith("checkpoint")] == [f"checkpoint-{SAVE_AT}"]
    assert_sharded_checkpoint(out / f"checkpoint-{SAVE_AT}", config)
    resumed = launched(tmp_path, config, script, [*argv, "--output_dir", str(out)])
    assert resumed.count("{'loss'") == STEPS - SAVE_AT  # the steps after the checkpoint, not a fresh run
    assert losses(out) == pytest.approx(losses(uninterrupted), rel=1e-6)
    assert_same_weights(out, uninterrupted, atol=1e-6)


def decodes_losslessly(verifier, drafter, prompts: list[list[int]], config: DecodeConfig | None = None) -> bool:
    plain, speculative = SpeculativeDecoder(verifier), SpeculativeDecoder(verifier, drafter, config)
    for prompt in prompts:
        ids = torch.tensor([prompt])
        if not torch.equal(speculative.generate(ids, 12).sequences, plain.generate(ids, 12).sequences):
            return False
    return True


def slow(config: str):
    return pytest.param(config, marks=pytest.mark.slow)


# FSDP2 in CI; DeepSpeed where it is installed (the deepspeed extra; DS_BUILD_OPS=0, no compiled ops), slow.
CONFIGS_RUN = ["fsdp2_cpu", slow("deepspeed_zero2_cpu"), slow("deepspeed_zero3_cpu")]


def needs(config: str) -> None:
    if config.startswith("deepspeed"):
        pytest.importorskip("deepspeed")


# ---------------------------------------------------------------- the diffusion drafter (train/train_drafter.py)


@pytest.fixture(scope="module")
def drafter_setup(tmp_path_factory):
    """A 2-layer bidirectional drafter (two sharded decoder layers), 16 prompt / completion rows, a verifier."""
    root = tmp_path_factory.mktemp("fsdp_drafter")
    drafter = tiny_qwen2(seed=0, vocab_size=V, hidden_size=32, num_layers=2, causal=False)
    drafter.save_pretrained(root / "drafter")
    write_diffuspec_config(root / "drafter", mask_token_id=MASK, shifted=True)
    g = torch.Generator().manual_seed(0)
    rows = [
        {"prompt_ids": torch.randint(2, MASK, (4,), generator=g).tolist(),
         "completion_ids": torch.randint(2, MASK, (6,), generator=g).tolist()}
        for _ in range(16)
    ]  # fmt: skip
    (root / "train.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    verifier = tiny_qwen2(seed=1, vocab_size=V, hidden_size=32, num_layers=2).eval()
    return root, verifier, [row["prompt_ids"] for row in rows[:3]]


def drafter_argv(root: Path, **extra) -> list[str]:
    return flags(
        drafter_name_or_path=root / "drafter", dataset_path=root / "train.jsonl", max_steps=STEPS,
        per_device_train_batch_size=2, learning_rate=1e-2, block_ce_weight=1, block_size=4, anchors_per_sequence=2,
        save_steps=SAVE_AT, logging_steps=1, report_to="none", disable_tqdm="true", use_cpu="true", **extra,
    )  # fmt: skip


def one_process_drafter(argv: list[str], out: Path) -> Path:
    """The same run in this process, accumulating 2 micro-batches of 2 per step (the 2 processes' global batch)."""
    from diffuspec.training import parse_config
    from diffuspec.training.run import run_drafter_training

    run_drafter_training(*parse_config([*argv, "--output_dir", str(out), "--gradient_accumulation_steps", "2"]))
    return out


@pytest.mark.parametrize("config", CONFIGS_RUN)
def test_drafter_run_matches_one_process_and_resumes_after_a_kill(drafter_setup, tmp_path, config):
    needs(config)
    root, verifier, prompts = drafter_setup
    argv = drafter_argv(root)
    reference = one_process_drafter(argv, tmp_path / "one")
    run = tmp_path / "run"
    launched(tmp_path, config, "train_drafter.py", [*argv, "--output_dir", str(run)])
    assert len(losses(run)) == STEPS and losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert_same_weights(run, reference)
    assert_sharded_checkpoint(run / f"checkpoint-{SAVE_AT}", config)
    assert decodes_losslessly(verifier, DiffusionDrafter.from_pretrained(run), prompts)
    kill_and_resume(tmp_path, config, "train_drafter.py", argv, run)


@pytest.mark.parametrize("config", CONFIGS_RUN)
def test_lora_run_matches_one_process_and_saves_a_merged_drafter(drafter_setup, tmp_path, config):
    """LoRA adapters (no dropout, whose draws differ per process); with FSDP2 and ZeRO-3 the merged drafter is built
    from the saved adapters, since the trained weights in memory are shards."""
    needs(config)
    root, verifier, prompts = drafter_setup
    argv = drafter_argv(root, use_lora="true", lora_r=4, lora_dropout=0.0)
    reference = one_process_drafter(argv, tmp_path / "one")
    run = tmp_path / "run"
    launched(tmp_path, config, "train_drafter.py", [*argv, "--output_dir", str(run)])
    assert losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert (run / "adapter_model.safetensors").exists() and (run / f"checkpoint-{SAVE_AT}" / "adapter_config.json")
    assert_sharded_checkpoint(run / f"checkpoint-{SAVE_AT}", config)
    assert_same_weights(run / "merged", reference / "merged")
    merged = DiffusionDrafter.from_pretrained(run / "merged")
    assert any(not torch.equal(p, q) for p, q in zip(merged.model.parameters(), load_base(root), strict=True))
    assert decodes_losslessly(verifier, merged, prompts)


def load_base(root: Path) -> list[torch.Tensor]:
    return list(DiffusionDrafter.from_pretrained(root / "drafter").model.parameters())


# ---------------------------------------------------------------- the conditioned drafter (train/train_conditioned.py)


@pytest.fixture(scope="module")
def conditioned_setup(tmp_path_factory):
    """A tiny verifier with a word-level tokenizer (mask token included) and 16 rows of its own vocabulary."""
    from test_train_conditioned import VOCAB, tiny_tokenizer

    root = tmp_path_factory.mktemp("fsdp_conditioned")
    verifier = tiny_qwen2(seed=0, vocab_size=VOCAB, hidden_size=64, num_layers=2, init_std=0.1).eval()
    verifier.save_pretrained(root / "verifier")
    tiny_tokenizer().save_pretrained(root / "verifier")
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB - 2, (6,), generator=g).tolist() for _ in range(16)]
    completions = [torch.randint(0, VOCAB - 2, (12,), generator=g).tolist() for _ in range(16)]
    rows = {"id": [str(i) for i in range(16)], "prompt_ids": prompts, "completion_ids": completions}
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "dataset"))
    return root, verifier, prompts[:3]


@pytest.mark.parametrize("config", CONFIGS_RUN)
def test_conditioned_run_matches_one_process_resumes_and_exports(conditioned_setup, tmp_path, config):
    from diffuspec.export import export_drafter
    from diffuspec.loading import load_conditioned_model
    from diffuspec.training.conditioned_config import parse_conditioned_config
    from diffuspec.training.run import run_conditioned_training

    needs(config)
    root, verifier, prompts = conditioned_setup
    argv = flags(
        verifier_name_or_path=root / "verifier", dataset_path=root / "dataset", block_size=4, num_hidden_layers=2,
        max_steps=STEPS, per_device_train_batch_size=2, learning_rate=1e-2, kl_weight=0.5, streak_weight=0.5,
        logging_steps=1, save_steps=SAVE_AT, report_to="none", disable_tqdm="true", use_cpu="true",
    )  # fmt: skip
    reference = tmp_path / "one"
    one = [*argv, "--output_dir", str(reference), "--gradient_accumulation_steps", "2"]
    run_conditioned_training(*parse_conditioned_config(one))
    run = tmp_path / "run"
    launched(tmp_path, config, "train_conditioned.py", [*argv, "--output_dir", str(run)])
    assert len(losses(run)) == STEPS and losses(run) == pytest.approx(losses(reference), rel=1e-5)
    assert_same_weights(run, reference)
    assert_sharded_checkpoint(run / f"checkpoint-{SAVE_AT}", config)
    drafter = ConditionedDrafter.from_pretrained(run, verifier)
    assert decodes_losslessly(verifier, drafter, prompts, DecodeConfig.for_block(4))
    exported = export_drafter(run, tmp_path / "dflash")
    trained = load_conditioned_model(run).state_dict()
    for name, value in load_conditioned_model(exported).state_dict().items():
        assert torch.equal(value, trained[name]), name
    kill_and_resume(tmp_path, config, "train_conditioned.py", argv, run)


# ---------------------------------------------------------------- the feature precompute, sharded by process


def test_feature_precompute_over_two_processes_writes_the_rows_of_one(conditioned_setup, tmp_path):
    """train/precompute_features.py through accelerate launch (2 CPU processes): each computes its own shards as
    rank r of 2, and the rows equal a one-process precompute's."""
    from diffuspec.training.features import FeatureArguments, FeatureStore
    from diffuspec.training.run import run_feature_precompute

    root = conditioned_setup[0]
    settings = {"verifier": str(root / "verifier"), "dataset_path": str(root / "dataset"), "shard_rows": 3}
    settings |= {"dtype": "float32", "model_dtype": "float32"}
    run_feature_precompute(FeatureArguments(**settings, out=str(tmp_path / "one")))
    recorder = tmp_path / "recorder.py"
    recorder.write_text(RECORDER.format(out=str(tmp_path)))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(CONFIGS / "ddp_cpu.yaml")]
    command += [str(recorder), str(ROOT / "train" / "precompute_features.py"), *flags(**settings, out=tmp_path / "two")]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)] == [
        {"rank": 0, "world": 2},
        {"rank": 1, "world": 2},
    ]
    one, two = FeatureStore(tmp_path / "one"), FeatureStore(tmp_path / "two")
    assert one.spec == two.spec and one.spec.shards == 6  # 16 rows, 3 a shard: 3 shards each
    for row in range(one.spec.rows):
        assert torch.equal(one[row], two[row]), row
