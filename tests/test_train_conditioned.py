"""Training the conditioned drafter: loss falls, the saved folder loads, decoding stays lossless, and the trained
drafter gets more tokens accepted than an untrained one on the prompts it was trained on. LoRA adaptation trains
only the adapters, resumes from adapter checkpoints and saves a merged drafter that loads and exports as usual."""

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import datasets
import pytest
import torch
from tokenizers import Tokenizer
from tokenizers.models import WordLevel
from tokenizers.pre_tokenizers import WhitespaceSplit
from transformers import AutoModelForCausalLM, PreTrainedTokenizerFast

from diffuspec import ConditionedDrafter, DecodeConfig, SpeculativeDecoder
from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training.conditioned_collator import ConditionedCollator, completion_mask, sample_anchors
from diffuspec.training.conditioned_trainer import slot_logits
from diffuspec.training.run import LOG_FILE, train_conditioned_drafter

ROOT = Path(__file__).resolve().parents[1]
VOCAB, MASK, PAD = 128, 127, 126
PROMPT_LEN, COMPLETION_LEN, ROWS = 8, 24, 12
BLOCK = 6


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer over ids: token ``t{i}`` is id i, with a pad and a mask token at the top."""
    vocab = {f"t{i}": i for i in range(VOCAB - 2)} | {"<pad>": PAD, "<mask>": MASK}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="<pad>"))
    tokenizer.pre_tokenizer = WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", mask_token="<mask>")


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """A saved tiny verifier (with tokenizer) and a dataset of its own greedy continuations."""
    root = tmp_path_factory.mktemp("conditioned")
    model = tiny_qwen2(seed=0, vocab_size=VOCAB, hidden_size=64, num_layers=2, init_std=0.1)
    model.save_pretrained(root / "verifier")
    tiny_tokenizer().save_pretrained(root / "verifier")
    verifier = AutoModelForCausalLM.from_pretrained(root / "verifier").eval()
    generator = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, VOCAB - 2, (PROMPT_LEN,), generator=generator).tolist() for _ in range(ROWS)]
    plain = SpeculativeDecoder(verifier)
    completions = [
        plain.generate(torch.tensor([p]), max_new_tokens=COMPLETION_LEN).sequences[0, PROMPT_LEN:].tolist()
        for p in prompts
    ]
    rows = {"id": [str(i) for i in range(ROWS)], "prompt_ids": prompts, "completion_ids": completions}
    datasets.Dataset.from_dict(rows).save_to_disk(str(root / "dataset"))
    out = train_conditioned_drafter(
        root / "verifier",
        root / "dataset",
        root / "drafter",
        block_size=BLOCK,
        max_steps=60,
        batch_size=4,
        learning_rate=3e-2,
        anchors_per_sequence=8,
        decay_gamma=4.0,
        kl_weight=0.5,
        streak_weight=0.5,
        feature_layers=[1, 2],
    )
    return root, out, verifier, prompts, completions


def mean_accepted(verifier, drafter, prompts) -> tuple[float, list[list[int]]]:
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=BLOCK))
    total, rounds, outputs = 0, 0, []
    for prompt in prompts:
        out = decoder.generate(torch.tensor([prompt]), max_new_tokens=COMPLETION_LEN)
        total, rounds = total + sum(out.stats.accepted), rounds + out.stats.rounds
        outputs.append(out.sequences[0].tolist())
    return total / rounds, outputs


def test_collator_and_anchors():
    batch = ConditionedCollator(pad_token_id=PAD)(
        [{"prompt_ids": [1, 2, 3], "completion_ids": [4, 5]}, {"prompt_ids": [6], "completion_ids": [7, 8, 9, 10]}]
    )
    assert batch["input_ids"].tolist() == [[1, 2, 3, 4, 5], [6, 7, 8, 9, 10]]
    assert batch["prompt_lengths"].tolist() == [3, 1]
    mask = completion_mask(batch["attention_mask"], batch["prompt_lengths"])
    assert mask.tolist() == [[False, False, False, True, True], [False, True, True, True, True]]
    anchors, ok = sample_anchors(torch.tensor([3, 1, 4]), torch.tensor([5, 5, 4]), 3, torch.Generator().manual_seed(0))
    assert set(anchors[0].tolist()) == {2, 3}  # a in prompt_len-1..len-2; 2 candidates for 3 anchors: a repeat
    assert len(set(anchors[1].tolist())) == 3 and set(anchors[1].tolist()) <= {0, 1, 2, 3}  # distinct when possible
    assert ok.tolist() == [[True] * 3, [True] * 3, [False] * 3]  # an empty completion scores nothing


def test_slot_logits_read_the_position_before_each_target():
    logits = torch.arange(2 * 6, dtype=torch.float32).view(2, 6, 1).expand(-1, -1, 3)  # value = b * 6 + position
    out = slot_logits(logits, torch.tensor([[0, 3], [4, 1]]), block_size=3)
    assert out.shape == (2, 2, 3, 3)
    # slot i of anchor a targets token a + 1 + i, which the causal verifier predicts at position a + i
    assert out[..., 0].tolist() == [[[0, 1, 2], [3, 4, 5]], [[10, 11, 11], [7, 8, 9]]]  # clamped at the end


def test_training_loss_decreases(setup):
    _, out, *_ = setup
    losses = [row["loss"] for row in json.loads((out / LOG_FILE).read_text()) if "loss" in row]
    logged = [row for row in json.loads((out / LOG_FILE).read_text()) if "loss/block_ce" in row]
    assert len(losses) >= 3 and losses[-1] < 0.7 * losses[0]
    assert logged and "loss/streak" in logged[0] and "loss/kl" in logged[0]


def test_trained_drafter_is_lossless_and_better(setup):
    _, out, verifier, prompts, completions = setup
    trained = ConditionedDrafter.from_pretrained(out, verifier)
    assert trained.block_size == BLOCK and trained.mask_token_id == MASK
    trained_accepted, outputs = mean_accepted(verifier, trained, prompts)
    assert outputs == [p + c for p, c in zip(prompts, completions, strict=True)]  # greedy == plain decoding
    config = ConditionedDrafterConfig.from_pretrained(out)
    torch.manual_seed(1)
    untrained = ConditionedDrafter(ConditionedDrafterModel(config), verifier)
    untrained_accepted, outputs = mean_accepted(verifier, untrained, prompts)
    assert outputs == [p + c for p, c in zip(prompts, completions, strict=True)]
    assert trained_accepted > untrained_accepted + 0.3, (trained_accepted, untrained_accepted)


# ---------------------------------------------------------------- the training script: resume after a kill, push


def script_args(root, out, **overrides):
    from diffuspec.training.conditioned_config import parse_conditioned_config

    values = {
        "verifier_name_or_path": root / "verifier",
        "dataset_path": root / "dataset",
        "output_dir": out,
        "block_size": BLOCK,
        "feature_layers": [1, 2],
        "max_steps": 6,
        "save_steps": 3,
        "logging_steps": 1,
        "per_device_train_batch_size": 4,
        "learning_rate": 1e-2,
        "kl_weight": 0.5,
        "streak_weight": 0.5,
        "use_cpu": True,
        "report_to": "none",
        "disable_tqdm": True,
        **overrides,
    }
    argv = []
    for key, value in values.items():
        argv += [f"--{key}", *map(str, value if isinstance(value, list) else [value])]
    return parse_conditioned_config(argv)


def step_losses(out) -> dict[int, dict]:
    rows = json.loads((out / LOG_FILE).read_text())
    return {row["step"]: row for row in rows if "loss" in row}


def kill_in_step_5(args, monkeypatch) -> list[str]:
    """Run the parsed script ``args`` and kill it during step 5, after checkpoint-3 was saved; the names then in
    its output_dir."""
    from diffuspec.training.conditioned_trainer import ConditionedDrafterTrainer
    from diffuspec.training.run import run_conditioned_training

    original = ConditionedDrafterTrainer.compute_loss

    def killed_in_step_5(self, *args, **kwargs):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed")
        return original(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(ConditionedDrafterTrainer, "compute_loss", killed_in_step_5)
        with pytest.raises(KeyboardInterrupt):
            run_conditioned_training(*args)
    return sorted(p.name for p in Path(args[2].output_dir).iterdir())


def assert_resumed_like_uninterrupted(full: Path, resumed: Path) -> None:
    """Steps 4-6 of the resumed run log the uninterrupted run's losses, and it ends with the same weights."""
    expected, got = step_losses(full), step_losses(resumed)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]
    for step in (4, 5, 6):
        for key in ("loss", "loss/block_ce", "loss/kl", "loss/streak"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-6), (step, key)
    full_state = ConditionedDrafterModel.from_pretrained(full).state_dict()
    resumed_state = ConditionedDrafterModel.from_pretrained(resumed).state_dict()
    for name, value in full_state.items():
        torch.testing.assert_close(resumed_state[name], value, rtol=1e-5, atol=1e-6)


def test_killed_run_resumes_to_the_uninterrupted_losses(setup, tmp_path, monkeypatch):
    from diffuspec.training.run import run_conditioned_training

    root = setup[0]
    run_conditioned_training(*script_args(root, tmp_path / "full"))
    assert kill_in_step_5(script_args(root, tmp_path / "killed"), monkeypatch) == ["checkpoint-3"]
    run_conditioned_training(*script_args(root, tmp_path / "killed"))  # the same command again: resumes
    assert_resumed_like_uninterrupted(tmp_path / "full", tmp_path / "killed")


def test_script_output_loads_and_pushes(setup, tmp_path):
    from test_hub_push import FakeHfApi

    from diffuspec.drafter_config import read_diffuspec_config
    from diffuspec.hub import push_drafter

    root, _, verifier, prompts, completions = setup
    script = importlib.util.spec_from_file_location("train_conditioned", ROOT / "train" / "train_conditioned.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    out = tmp_path / "drafter"
    module.main(*script_args(root, out, save_steps=100))
    marker = read_diffuspec_config(out)
    assert marker.mask_token_id == MASK and marker.verifier["name"] == str(root / "verifier")
    assert set(marker.objectives) == {"block_ce", "kl", "streak"}
    drafter = ConditionedDrafter.from_pretrained(out, verifier)
    _, outputs = mean_accepted(verifier, drafter, prompts[:3])
    assert outputs == [p + c for p, c in zip(prompts[:3], completions[:3], strict=True)]

    api = FakeHfApi(tmp_path / "remote")
    push_drafter(out, "you/conditioned", api=api)
    remote = api.remote("you/conditioned")
    assert {"config.json", "model.safetensors", "diffuspec_config.json", "README.md"} <= {
        p.name for p in remote.iterdir()
    }
    assert ConditionedDrafter.from_pretrained(remote, verifier).block_size == BLOCK


def test_bad_settings_are_refused_before_any_model_loads(setup, tmp_path):
    root = setup[0]
    with pytest.raises(ValueError, match="anchors_per_sequence"):
        script_args(root, tmp_path / "x", anchors_per_sequence=0)
    with pytest.raises(ValueError, match="num_hidden_layers"):
        script_args(root, tmp_path / "x", num_hidden_layers=9)
    with pytest.raises(ValueError, match="unknown keys"):
        from diffuspec.training.conditioned_config import parse_conditioned_config

        recipe = tmp_path / "r.yaml"
        recipe.write_text("verifier_name_or_path: v\ndataset_path: [d]\noutput_dir: o\nlerning_rate: 1\n")
        parse_conditioned_config(["--config", str(recipe)])


# ---------------------------------------------------------------- offline features


def test_offline_features_resume_and_train_like_online(setup, tmp_path):
    """Precomputed features equal the verifier's own (float32), a killed precompute resumes to the same shards,
    and offline training reproduces the online run's losses (no KL: offline features carry no distributions)."""
    from diffuspec.models.conditioned import verifier_features
    from diffuspec.training.features import FeatureStore, precompute_features, shard_path
    from diffuspec.training.run import run_conditioned_training

    root, _, verifier, prompts, completions = setup
    dataset = datasets.load_from_disk(str(root / "dataset"))
    logs = []
    cuts = dict(max_prompt_length=512, max_completion_length=512)  # the training defaults (DataArguments)
    kw = dict(feature_layers=[1, 2], dtype="float32", shard_rows=5, log=logs.append, **cuts)
    precompute_features(verifier, str(root / "verifier"), dataset, tmp_path / "f", **kw)
    assert "GB in 3 shards" in logs[0] and f"{ROWS * (PROMPT_LEN + COMPLETION_LEN):,} tokens" in logs[0]
    store = FeatureStore(tmp_path / "f")
    for i in (0, 7, ROWS - 1):
        ids = torch.tensor([prompts[i] + completions[i]])
        torch.testing.assert_close(store[i], verifier_features(verifier, ids, [1, 2])[0])

    first = shard_path(tmp_path / "f", 1).read_bytes()
    shard_path(tmp_path / "f", 1).unlink()  # a kill before shard 1 was renamed into place
    shard_path(tmp_path / "f", 1).with_suffix(".tmp").write_bytes(b"torn")
    with pytest.raises(FileNotFoundError, match="lacks 1 of 3 shards"):
        FeatureStore(tmp_path / "f")
    precompute_features(verifier, str(root / "verifier"), dataset, tmp_path / "f", **kw)
    assert shard_path(tmp_path / "f", 1).read_bytes() == first
    with pytest.raises(ValueError, match="other settings"):
        precompute_features(verifier, str(root / "verifier"), dataset, tmp_path / "f", **{**kw, "shard_rows": 4})

    no_kl = dict(kl_weight=0.0, max_steps=3, save_steps=100)
    run_conditioned_training(*script_args(root, tmp_path / "online", **no_kl))
    run_conditioned_training(*script_args(root, tmp_path / "offline", **no_kl, features_path=tmp_path / "f"))
    online, offline = step_losses(tmp_path / "online"), step_losses(tmp_path / "offline")
    for step in (1, 2, 3):
        assert offline[step]["loss"] == pytest.approx(online[step]["loss"], rel=1e-5), step
    with pytest.raises(ValueError, match="offline features do not carry"):
        run_conditioned_training(*script_args(root, tmp_path / "x", features_path=tmp_path / "f"))
    with pytest.raises(ValueError, match="computed for"):
        run_conditioned_training(
            *script_args(root, tmp_path / "x", kl_weight=0.0, features_path=tmp_path / "f", max_completion_length=8)
        )


def test_a_stem_drafter_scales_its_channels_by_the_training_features(setup, tmp_path):
    """A new drafter's anchor stem divides each feature channel by its RMS over the first training rows, the same
    from the feature store as from the verifier; it trains, loads and decodes losslessly."""
    from diffuspec.models.conditioned import verifier_features
    from diffuspec.training.features import precompute_features
    from diffuspec.training.run import run_conditioned_training

    root, _, verifier, prompts, completions = setup
    dataset = datasets.load_from_disk(str(root / "dataset"))
    precompute_features(verifier, str(root / "verifier"), dataset, tmp_path / "f", feature_layers=[1, 2],
                        dtype="float32", max_prompt_length=512, max_completion_length=512)  # fmt: skip
    stem = dict(kl_weight=0.0, max_steps=3, save_steps=100, stem_size=16)
    run_conditioned_training(*script_args(root, tmp_path / "online", **stem))
    run_conditioned_training(*script_args(root, tmp_path / "offline", **stem, features_path=tmp_path / "f"))
    assert step_losses(tmp_path / "offline")[3]["loss"] == pytest.approx(step_losses(tmp_path / "online")[3]["loss"])
    rows = torch.cat(
        [
            verifier_features(verifier, torch.tensor([p + c]), [1, 2])[0]
            for p, c in zip(prompts, completions, strict=True)
        ]
    )
    drafter = ConditionedDrafter.from_pretrained(tmp_path / "online", verifier)
    torch.testing.assert_close(drafter.model.stem.feature_scale, rows.pow(2).mean(0).sqrt().clamp(min=1e-3))
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig(cps=None, adl=None, draft_length=BLOCK))
    out = decoder.generate(torch.tensor([prompts[0]]), max_new_tokens=COMPLETION_LEN)
    assert out.sequences[0].tolist() == prompts[0] + completions[0]


def test_precompute_script(setup, tmp_path, capsys):
    root = setup[0]
    script = importlib.util.spec_from_file_location("precompute_features", ROOT / "train" / "precompute_features.py")
    module = importlib.util.module_from_spec(script)
    script.loader.exec_module(module)
    argv = ["--verifier", str(root / "verifier"), "--dataset_path", str(root / "dataset"), "--out", str(tmp_path / "f")]
    spec = module.main([*argv, "--feature_layers", "1", "2", "--shard_rows", "8", "--model_dtype", "float32"])
    assert spec.shards == 2 and spec.dtype == "bfloat16" and "GB in 2 shards" in capsys.readouterr().out
    with pytest.raises(FileNotFoundError):
        module.main([*argv[:3], str(tmp_path / "missing"), *argv[4:]])


DDP_WORKER = """
import hashlib, json, os, sys
import torch
sys.path.insert(0, {train_dir!r})
from train_conditioned import main
from diffuspec.launch import end_launched_process
from diffuspec.training.conditioned_config import parse_conditioned_config

torch.set_num_threads(1)
trainer = main(*parse_conditioned_config(sys.argv[1:]))
state = trainer.accelerator.unwrap_model(trainer.model).state_dict()
digest = hashlib.sha256(b"".join(state[k].detach().cpu().numpy().tobytes() for k in sorted(state))).hexdigest()
with open(os.path.join({out!r}, f"rank{{torch.distributed.get_rank()}}.json"), "w") as f:
    json.dump({{"world": torch.distributed.get_world_size(), "digest": digest, "step": trainer.state.global_step}}, f)
end_launched_process()  # as the script's __main__ does
"""


def test_two_process_data_parallel_training_keeps_ranks_identical(setup, tmp_path):
    """torchrun + gloo, 2 processes through train/train_conditioned.py: both ranks end with the same weights."""
    import os
    import subprocess
    import sys

    root = setup[0]
    (tmp_path / "worker.py").write_text(DDP_WORKER.format(train_dir=str(ROOT / "train"), out=str(tmp_path)))
    argv = []
    for key, value in {
        "verifier_name_or_path": root / "verifier", "dataset_path": root / "dataset", "output_dir": tmp_path / "run",
        "block_size": BLOCK, "max_steps": 3, "per_device_train_batch_size": 2, "learning_rate": 1e-2,
        "kl_weight": 0.5, "logging_steps": 1, "save_steps": 3, "report_to": "none", "disable_tqdm": "true",
    }.items():  # fmt: skip
        argv += [f"--{key}", str(value)]
    command = [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
        str(tmp_path / "worker.py"), *argv, "--use_cpu",
    ]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in ranks] == [2, 2] and [r["step"] for r in ranks] == [3, 3]
    assert ranks[0]["digest"] == ranks[1]["digest"]
    assert ConditionedDrafter.from_pretrained(tmp_path / "run", setup[2]).block_size == BLOCK


def test_the_slot_mask_comes_from_the_tokenizer_or_a_named_token(setup):
    from transformers import AutoTokenizer

    from diffuspec.training.run import slot_mask_id

    tokenizer = AutoTokenizer.from_pretrained(setup[0] / "verifier")
    assert slot_mask_id(tokenizer, None, "v") == tokenizer.mask_token_id
    named = next(token for token, i in tokenizer.get_vocab().items() if i == 5)
    assert slot_mask_id(tokenizer, named, "v") == 5
    with pytest.raises(ValueError, match=r"mask_token '<nope>' is not in the vocabulary of v's tokenizer"):
        slot_mask_id(tokenizer, "<nope>", "v")
    tokenizer.mask_token = None
    with pytest.raises(ValueError, match="has no mask token; the drafter's slots need one: set mask_token"):
        slot_mask_id(tokenizer, None, "v")


def test_an_adapted_drafter_keeps_its_mask_id(setup, tmp_path):
    """A fine-tuned verifier's tokenizer may name no mask token: the drafter being adapted brings its own."""
    import shutil

    from transformers import AutoTokenizer

    root, base = setup[0], setup[1]
    shutil.copytree(root / "verifier", tmp_path / "verifier")
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "verifier")
    tokenizer.mask_token = None
    tokenizer.save_pretrained(tmp_path / "verifier")
    common = dict(max_steps=1, batch_size=2, learning_rate=1e-3, drafter=base)
    out = train_conditioned_drafter(tmp_path / "verifier", root / "dataset", tmp_path / "adapted", **common)
    assert ConditionedDrafterModel.from_pretrained(out).config.mask_token_id == MASK
    other = next(token for token, i in tokenizer.get_vocab().items() if i == 5)
    with pytest.raises(ValueError, match=rf"mask_token '{other}' is id 5, but .* was trained with mask id {MASK}"):
        train_conditioned_drafter(tmp_path / "verifier", root / "dataset", tmp_path / "x", mask_token=other, **common)


# ---------------------------------------------------------------- LoRA: adapters train, a merged drafter is saved

LORA_R = 4


@pytest.fixture(scope="module")
def lora_run(setup, tmp_path_factory):
    """A LoRA run (rank 4, every linear layer) from the setup's trained drafter: 6 steps, a checkpoint at 3. Records
    the parameters that were trainable once the adapters were applied."""
    from diffuspec.training import run
    from diffuspec.training.modeling import apply_lora

    root, base = setup[0], setup[1]
    out = tmp_path_factory.mktemp("lora") / "drafter"
    wrapped = {}

    def recording_apply_lora(*args, **kwargs):
        model = apply_lora(*args, **kwargs)
        wrapped["trainable"] = [name for name, p in model.named_parameters() if p.requires_grad]
        wrapped["counts"] = model.get_nb_trainable_parameters()
        return model

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run, "apply_lora", recording_apply_lora)
        run.run_conditioned_training(*lora_args(root, out, base))
    return out, wrapped


def lora_args(root, out, drafter, **overrides):
    return script_args(root, out, **{"drafter_name_or_path": drafter, "use_lora": True, "lora_r": LORA_R, **overrides})


def test_lora_trains_only_the_adapters_and_saves_the_merged_drafter(setup, lora_run):
    from diffuspec.loading import load_conditioned_model

    _, base_folder, verifier, prompts, completions = setup
    out, wrapped = lora_run
    trainable, total = wrapped["counts"]
    assert wrapped["trainable"] and all(".lora_" in name for name in wrapped["trainable"])
    assert 0 < 10 * trainable < total
    assert not (out / "adapter_config.json").exists()  # the folder full training writes, nothing else
    base = ConditionedDrafterModel.from_pretrained(base_folder).state_dict()
    merged = load_conditioned_model(out).state_dict()
    assert merged.keys() == base.keys()
    for name, value in base.items():
        if value.ndim == 2:  # a linear layer: moved by a rank-r update, the merged adapters
            singular = torch.linalg.svdvals(merged[name] - value)
            assert singular[0] > 0 and singular[LORA_R] <= 1e-4 * singular[0], (name, singular[: LORA_R + 1])
        else:  # norms: frozen
            assert torch.equal(merged[name], value), name
    drafter = ConditionedDrafter.from_pretrained(out, verifier)
    _, outputs = mean_accepted(verifier, drafter, prompts[:3])
    assert outputs == [p + c for p, c in zip(prompts[:3], completions[:3], strict=True)]


def test_a_killed_lora_run_resumes_from_its_adapter_checkpoint(setup, lora_run, tmp_path, monkeypatch):
    from diffuspec.training.run import run_conditioned_training

    root, base = setup[0], setup[1]
    assert kill_in_step_5(lora_args(root, tmp_path, base), monkeypatch) == ["checkpoint-3"]
    saved = {p.name for p in (tmp_path / "checkpoint-3").iterdir()}
    assert "adapter_model.safetensors" in saved and "model.safetensors" not in saved
    run_conditioned_training(*lora_args(root, tmp_path, base))  # the same command again: resumes the adapters
    assert_resumed_like_uninterrupted(lora_run[0], tmp_path)


def test_lora_adapts_a_dflash_checkpoint_and_exports_it_again(setup, tmp_path):
    from diffuspec.cli import main as cli_main
    from diffuspec.loading import load_conditioned_model
    from diffuspec.models.dflash import export_dflash
    from diffuspec.training.run import run_conditioned_training

    root, base_folder, verifier, prompts, completions = setup
    public = export_dflash(ConditionedDrafterModel.from_pretrained(base_folder), tmp_path / "public")
    targets = ["fc", "q_proj", "v_proj"]
    args = lora_args(root, tmp_path / "adapted", public, lora_target_modules=targets, max_steps=3, save_steps=100)
    run_conditioned_training(*args)
    base = load_conditioned_model(public).state_dict()
    adapted = load_conditioned_model(tmp_path / "adapted").state_dict()
    changed = {name for name, value in base.items() if not torch.equal(adapted[name], value)}
    assert changed == {"fc.weight", "layers.0.self_attn.q_proj.weight", "layers.0.self_attn.v_proj.weight"}

    served = tmp_path / "served"
    assert cli_main(["export", str(tmp_path / "adapted"), "--format", "dflash", "--output-dir", str(served)]) == 0
    for name, value in load_conditioned_model(served).state_dict().items():
        assert torch.equal(value, adapted[name]), name
    _, outputs = mean_accepted(verifier, ConditionedDrafter.from_pretrained(served, verifier), prompts[:2])
    assert outputs == [p + c for p, c in zip(prompts[:2], completions[:2], strict=True)]


def test_bad_lora_settings_are_refused_before_training(setup, tmp_path, monkeypatch):
    from diffuspec.training.conditioned_trainer import ConditionedDrafterTrainer
    from diffuspec.training.run import run_conditioned_training

    root, base = setup[0], setup[1]
    with pytest.raises(ValueError, match="lora_r must be >= 1, got 0"):
        lora_args(root, tmp_path / "x", base, lora_r=0)
    with pytest.raises(ValueError, match="use_lora needs drafter_name_or_path"):
        script_args(root, tmp_path / "x", use_lora=True)

    def no_trainer(*args, **kwargs):
        raise AssertionError("the trainer was built")

    monkeypatch.setattr(ConditionedDrafterTrainer, "__init__", no_trainer)
    linear = "down_proj, fc, gate_proj, k_proj, o_proj, q_proj, up_proj, v_proj"
    for overrides, message in [
        ({"lora_target_modules": ["q_proj", "qkv_proj"]}, "lora_target_modules: qkv_proj match no module"),
        ({"lora_target_modules": [r".*\.attn\.q_proj"]}, r"the regex .*\.attn\.q_proj matches no module"),
        (
            {"lora_target_modules": ["q"]},
            f"q match no module of the ConditionedDrafterModel (its linear layers: {linear})",
        ),
        ({"lora_modules_to_save": ["final_norm"]}, "lora_modules_to_save: final_norm match no module"),
    ]:
        with pytest.raises(ValueError, match=re.escape(message)):
            run_conditioned_training(*lora_args(root, tmp_path / "x", base, **overrides))
    assert not (tmp_path / "x").exists()


def test_a_draft_vocabulary_run_scores_only_its_ids_and_logs_held_out_tau(setup, tmp_path):
    """With draft_vocab the losses read the head's rows of the subset only: the slot log-probs equal the whole
    vocabulary's restricted to those ids and renormalised, targets outside the subset are skipped; held-out tau is
    logged at step 0 and every eval_acceptance_steps, and the drafter decodes losslessly with the subset."""
    from diffuspec.drafters.vocabulary import DraftVocabulary
    from diffuspec.training.conditioned_trainer import ConditionedDrafterTrainer

    root, _, verifier, prompts, completions = setup
    counts = torch.bincount(torch.tensor([t for c in completions for t in c]), minlength=VOCAB)
    counts[MASK] = 0
    vocabulary = DraftVocabulary(counts.topk(40).indices.sort().values, VOCAB)
    vocabulary.save(tmp_path / "vocab.json")
    datasets.Dataset.from_dict({"prompt_ids": prompts[:4]}).save_to_disk(str(tmp_path / "heldout"))
    seen = {}
    original = ConditionedDrafterTrainer.compute_loss

    def recording(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        loss, outputs = original(self, model, inputs, return_outputs=True)
        seen.setdefault("subset", outputs["logprobs"])
        return (loss, outputs) if return_outputs else loss

    ConditionedDrafterTrainer.compute_loss = recording
    try:
        out = train_conditioned_drafter(
            root / "verifier", root / "dataset", tmp_path / "drafter", block_size=BLOCK, max_steps=6, batch_size=4,
            learning_rate=3e-2, anchors_per_sequence=4, feature_layers=[1, 2], draft_vocab=tmp_path / "vocab.json",
            eval_prompts_path=tmp_path / "heldout", eval_acceptance_steps=3, eval_max_new_tokens=8,
        )  # fmt: skip
    finally:
        ConditionedDrafterTrainer.compute_loss = original
    assert seen["subset"].shape[-1] == len(vocabulary)
    assert torch.allclose(seen["subset"].exp().sum(-1), torch.ones(()), atol=1e-5)
    log = json.loads((out / LOG_FILE).read_text())
    assert [row["step"] for row in log if "eval_tau" in row] == [0, 3, 6]
    assert all(row["eval_tau"] >= 1.0 for row in log if "eval_tau" in row)
    drafter = ConditionedDrafter.from_pretrained(out, verifier, vocabulary=vocabulary)
    decoder = SpeculativeDecoder(verifier, drafter, DecodeConfig.for_block(BLOCK))
    plain = SpeculativeDecoder(verifier)
    for prompt in prompts[:3]:
        ids = torch.tensor([prompt])
        assert torch.equal(decoder.generate(ids, 12).sequences, plain.generate(ids, 12).sequences)


def test_the_subset_loss_is_the_whole_vocabulary_loss_restricted(setup):
    """The draft-vocabulary log-probs of a slot are the whole-vocabulary logits at the subset's ids, renormalised."""
    from diffuspec.drafters.vocabulary import DraftVocabulary
    from diffuspec.training.losses import drafter_logprobs

    root, out, verifier, _, _ = setup
    model = ConditionedDrafterModel.from_pretrained(out)
    model.attach_verifier(verifier)
    ids = torch.tensor([3, 5, 9, 40, 100])
    vocabulary = DraftVocabulary(ids, VOCAB)
    hidden = torch.randn(2, 3, BLOCK, model.config.hidden_size)
    whole = model.lm_logits(hidden)
    subset = drafter_logprobs(model.lm_logits(hidden, vocabulary.head(verifier.lm_head.weight)), None)
    assert torch.allclose(subset, torch.log_softmax(whole[..., ids], dim=-1), atol=1e-6)


def test_learning_curves_read_the_logged_tau_and_plot(tmp_path):
    from diffuspec.training.curve import learning_curve, plot_learning_curves, write_learning_curve

    log = [
        {"step": 0, "eval_tau": 1.1},
        {"step": 5, "loss": 2.0},
        {"step": 10, "eval_tau": 1.6},
        {"step": 5, "eval_tau": 1.4},
    ]
    assert learning_curve(log, 100.0) == [
        {"step": 0, "answer_tokens": 0.0, "tau": 1.1},
        {"step": 5, "answer_tokens": 500.0, "tau": 1.4},
        {"step": 10, "answer_tokens": 1000.0, "tau": 1.6},
    ]
    (tmp_path / "log.json").write_text(json.dumps(log))
    points = write_learning_curve(tmp_path / "log.json", 100.0, tmp_path / "curve.json")
    assert json.loads((tmp_path / "curve.json").read_text()) == points
    assert plot_learning_curves({"a": points, "b": points[:2]}, tmp_path / "curve.png").stat().st_size > 0
    (tmp_path / "empty.json").write_text(json.dumps([{"step": 1, "loss": 1.0}]))
    with pytest.raises(ValueError, match="logs no eval_tau"):
        write_learning_curve(tmp_path / "empty.json", 100.0, tmp_path / "x.json")
    with pytest.raises(ValueError, match="answer_tokens_per_step must be > 0"):
        learning_curve(log, 0)


def test_train_throughput_script_times_each_arm(setup, tmp_path, monkeypatch):
    from diffuspec.drafters.vocabulary import DraftVocabulary

    root, *_ = setup
    DraftVocabulary(torch.arange(0, 60), VOCAB).save(tmp_path / "vocab.json")
    argv = ["--verifier", str(root / "verifier"), "--dataset", str(root / "dataset"),
            "--draft-vocab", str(tmp_path / "vocab.json"), "--mask-token", "<mask>", "--anchors", "2",
            "--steps", "2", "--batch", "2", "--block", "4", "--repeats", "1", "--threads", "1",
            "--out", str(tmp_path / "t.json")]  # fmt: skip
    run_eval_script("train_throughput", argv, monkeypatch)
    report = json.loads((tmp_path / "t.json").read_text())
    assert set(report["answer_tokens_per_s"]) == {"whole vocabulary, 2 anchors", "draft vocabulary, 2 anchors"}
    assert all(v > 0 for v in report["answer_tokens_per_s"].values())


def test_overfit_gate_script_logs_loss_and_tau_on_its_own_prompts(setup, tmp_path, monkeypatch):
    root, *_ = setup
    argv = ["--verifier", str(root / "verifier"), "--dataset", str(root / "dataset"),
            "--mask-token", "<mask>", "--first-row", "2", "--rows", "4", "--steps", "4", "--block", "4",
            "--anchors", "2", "--eval-every", "2", "--eval-tokens", "6", "--threads", "1", "--out", str(tmp_path)]  # fmt: skip
    run_eval_script("overfit_gate", argv, monkeypatch)
    gate = json.loads((tmp_path / "gate.json").read_text())
    assert [row["step"] for row in gate["log"] if "eval_tau" in row] == [0, 2, 4]
    assert any("loss" in row for row in gate["log"])
    assert len(datasets.load_from_disk(str(tmp_path / "rows"))) == 4


def test_conditioned_ablation_script_logs_each_arm(setup, tmp_path, monkeypatch):
    from diffuspec.drafters.vocabulary import DraftVocabulary

    root, *_ = setup
    DraftVocabulary(torch.arange(0, 120), VOCAB).save(tmp_path / "vocab.json")
    argv = ["--verifier", str(root / "verifier"), "--dataset", str(root / "dataset"),
            "--draft-vocab", str(tmp_path / "vocab.json"), "--mask-token", "<mask>", "--block", "4",
            "--train-rows", "4", "--val-rows", "2", "--steps", "4", "--eval-every", "2", "--threads", "1",
            "--arm", "base:anchors=2,batch=2", "--arm", "two:num_layers=2,anchors=2,batch=2,learning_rate=3e-2,window=6",
            "--arm", "probe:probe=16,rows=2,anchors=2,batch=2", "--arm", "stem:stem=8,anchors=2,batch=2", "--out", str(tmp_path)]  # fmt: skip
    script = run_eval_script("conditioned_ablation", argv, monkeypatch)
    log_of_base = json.loads((tmp_path / "base.json").read_text())["log"]
    for arm in ("base", "two", "probe", "stem"):
        log = json.loads((tmp_path / f"{arm}.json").read_text())["log"]
        assert [row["step"] for row in log] == [0, 2, 4]
        assert all(1.0 <= row["tau_offline"] <= 5.0 and len(row["slot_accuracy"]) == 4 for row in log)
        assert "train_block_ce" not in log[0] and all(0 < row["train_block_ce"] < 20 for row in log[1:])
        assert log[-1]["val_block_ce"] != log[0]["val_block_ce"]  # the steps trained the evaluated drafter
    assert [row["layer"] for row in json.loads((tmp_path / "features.json").read_text())["layers"]]
    # a longer rerun resumes from the saved state and trains what one uninterrupted run trains
    longer = [*argv[: argv.index("--steps") + 1], "6", *argv[argv.index("--steps") + 2 : argv.index("--arm")]]
    run_eval_script("conditioned_ablation", [*longer, "--arm", "base:anchors=2,batch=2", "--out", str(tmp_path)],
                    monkeypatch)  # fmt: skip
    resumed = json.loads((tmp_path / "base.json").read_text())["log"]
    run_eval_script("conditioned_ablation", [*longer, "--arm", "base:anchors=2,batch=2", "--out",
                    str(tmp_path / "whole")], monkeypatch)  # fmt: skip
    whole = json.loads((tmp_path / "whole" / "base.json").read_text())["log"]
    assert [row["step"] for row in resumed] == [0, 2, 4, 6] and resumed[:3] == log_of_base
    assert ConditionedDrafter.from_pretrained(tmp_path / "stem.model", setup[2]).model.config.stem_size == 8
    assert not (tmp_path / "probe.model").exists()
    assert resumed[-1]["val_block_ce"] == pytest.approx(whole[-1]["val_block_ce"], rel=1e-4)
    with pytest.raises(ValueError, match="unknown setting 'depth'"):
        script.parse_arm("x:depth=3")


def run_eval_script(name: str, argv: list[str], monkeypatch) -> ModuleType:
    """Run ``eval/<name>.py``'s main() with ``argv`` and return the script (eval tools are not package modules)."""
    spec = importlib.util.spec_from_file_location(name, ROOT / "eval" / f"{name}.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(sys, "argv", [f"{name}.py", *argv])
    script.main()
    return script
