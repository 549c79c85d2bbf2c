"""DrafterTrainer behaviour: short runs, logging, non-finite stops, atomic checkpoints, exact resume, LoRA, and the
acceptance callback. Tiny models (hidden 32, 1 layer, vocab 64) on CPU."""

import json
import os

import datasets
import pytest
import torch
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from diffuspec.loading import load_diffusion_model
from diffuspec.models.tiny import tiny_qwen2
from diffuspec.training import (
    AcceptanceCallback,
    DrafterCollator,
    DrafterTrainer,
    DrafterTrainingConfig,
    ModelArguments,
    NonFiniteLossError,
    drafter_objectives,
)
from diffuspec.training.modeling import apply_lora, save_merged
from diffuspec.training.teacher import OfflineTeacher, OnlineTeacher

V, MASK, EOS = 64, 63, 1


def new_drafter(seed=0):
    return tiny_qwen2(seed=seed, vocab_size=V, hidden_size=32, num_layers=1, causal=False, init_std=0.1)


@pytest.fixture(scope="module")
def verifier():
    return tiny_qwen2(seed=11, vocab_size=V, hidden_size=32, num_layers=1, eos_token_id=EOS, init_std=0.1)


@pytest.fixture(scope="module")
def dataset(verifier):
    """Verifier-greedy completions of random prompts, with the verifier's top-8 per completion token."""
    g = torch.Generator().manual_seed(0)
    rows = {"prompt_ids": [], "completion_ids": [], "teacher_topk_ids": [], "teacher_topk_logprobs": []}
    with torch.no_grad():
        for _ in range(8):
            prompt = torch.randint(2, MASK, (5,), generator=g)
            ids = prompt
            for _ in range(8):
                ids = torch.cat([ids, verifier(input_ids=ids[None]).logits[0, -1, :MASK].argmax()[None]])
            lp = torch.log_softmax(verifier(input_ids=ids[None]).logits[0, 4:-1], -1)
            values, top = lp.topk(8, -1)
            rows["prompt_ids"].append(prompt.tolist())
            rows["completion_ids"].append(ids[5:].tolist())
            rows["teacher_topk_ids"].append(top.tolist())
            rows["teacher_topk_logprobs"].append(values.tolist())
    return datasets.Dataset.from_dict(rows)


def config(tmp_path, **kw):
    base = dict(
        output_dir=str(tmp_path / "out"),
        max_steps=4,
        per_device_train_batch_size=4,
        learning_rate=3e-3,
        logging_steps=1,
        save_steps=2,
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
        block_size=4,
        block_size_min=2,
        anchors_per_sequence=2,
        ce_weight=1.0,
        block_ce_weight=1.0,
        kl_weight=0.5,
        streak_weight=1.0,
        streak_kind="greedy",
        seed=3,
    )
    return DrafterTrainingConfig(**(base | kw))


def losses(trainer):
    return {h["step"]: h for h in trainer.state.log_history if "loss" in h}


def test_short_run_logs_every_term_and_saves_loadable_checkpoints(tmp_path, dataset):
    trainer = DrafterTrainer(new_drafter(), config(tmp_path), dataset, mask_token_id=MASK, shifted=True)
    trainer.train()
    logged = losses(trainer)
    assert sorted(logged) == [1, 2, 3, 4]
    for key in ("loss/ce", "loss/block_ce", "loss/kl", "loss/streak", "block/greedy_accepted", "block/top1"):
        assert all(key in row for row in logged.values()), key
    total = (
        1.0 * logged[1]["loss/ce"] + logged[1]["loss/block_ce"] + 0.5 * logged[1]["loss/kl"] + logged[1]["loss/streak"]
    )
    assert logged[1]["loss"] == pytest.approx(total, rel=1e-4)
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]  # no staging folder left
    model, mask, shifted = load_diffusion_model(out / "checkpoint-4")
    assert (mask, shifted) == (MASK, True)
    for name, value in trainer.model.state_dict().items():
        torch.testing.assert_close(model.state_dict()[name], value)


def test_online_and_offline_teachers_give_the_same_objectives(dataset, verifier, tmp_path):
    """Offline top-k holding every drafter-proposable id equals the online full-vocabulary teacher."""
    model = new_drafter()
    full = []
    with torch.no_grad():
        for ex in dataset:
            ids = torch.tensor(ex["prompt_ids"] + ex["completion_ids"])
            lp = torch.log_softmax(verifier(input_ids=ids[None]).logits[0, len(ex["prompt_ids"]) - 1 : -1], -1)
            values, top = lp[:, :MASK].topk(MASK, -1)
            full.append({**ex, "teacher_topk_ids": top.tolist(), "teacher_topk_logprobs": values.tolist()})
    args = config(tmp_path, kl_kind="jsd", streak_kind="acceptance")
    base = dict(mask_token_id=MASK, pad_token_id=0, shifted=True, block_size=4, anchors_per_sequence=2)
    offline_batch = DrafterCollator(**base, teacher_columns=True)(full)
    online_batch = DrafterCollator(**base, clean_rows=True)(list(dataset))
    assert torch.equal(offline_batch["input_ids"], online_batch["input_ids"])
    results = []
    for batch, teacher in ((offline_batch, OfflineTeacher()), (online_batch, OnlineTeacher(verifier, 0, MASK))):
        logits = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            position_ids=batch["position_ids"],
            logits_to_keep=batch["logits_to_keep"],
        ).logits
        results.append(drafter_objectives(logits, batch, args, MASK, True, teacher(batch))[0])
    for name in ("ce", "block_ce", "kl", "streak"):
        torch.testing.assert_close(results[0][name], results[1][name], rtol=1e-4, atol=1e-5)


class PoisonWeights(TrainerCallback):
    """Set one weight to NaN at the end of ``step`` (after its optimizer step)."""

    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if state.global_step == self.step:
            with torch.no_grad():
                model.lm_head.weight[0, 0] = float("nan")


def test_nonfinite_loss_stops_naming_the_step_and_keeps_the_last_checkpoint(tmp_path, dataset):
    trainer = DrafterTrainer(
        new_drafter(), config(tmp_path), dataset, mask_token_id=MASK, shifted=True, callbacks=[PoisonWeights(3)]
    )
    with pytest.raises(NonFiniteLossError, match=r"step 4 .*checkpoint-2"):
        trainer.train()
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2"]
    model, _, _ = load_diffusion_model(out / "checkpoint-2")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_nonfinite_weights_are_never_saved(tmp_path, dataset):
    trainer = DrafterTrainer(
        new_drafter(), config(tmp_path), dataset, mask_token_id=MASK, shifted=True, callbacks=[PoisonWeights(2)]
    )
    with pytest.raises(NonFiniteLossError, match="refusing to save"):
        trainer.train()
    assert not (tmp_path / "out" / "checkpoint-2").exists()


def test_interrupted_save_leaves_the_last_checkpoint_complete_and_resumable(tmp_path, dataset, monkeypatch):
    original = Trainer._save_rng_state

    def crash_at_step_4(self, output_dir):
        if self.state.global_step == 4:
            raise KeyboardInterrupt("killed while saving")
        original(self, output_dir)

    monkeypatch.setattr(Trainer, "_save_rng_state", crash_at_step_4)
    trainer = DrafterTrainer(new_drafter(), config(tmp_path), dataset, mask_token_id=MASK, shifted=True)
    with pytest.raises(KeyboardInterrupt):
        trainer.train()
    out = tmp_path / "out"
    assert not (out / "checkpoint-4").exists() and (out / ".partial-checkpoint-4").exists()
    assert get_last_checkpoint(out) == str(out / "checkpoint-2")
    files = {p.name for p in (out / "checkpoint-2").iterdir()}
    assert {"model.safetensors", "optimizer.pt", "rng_state.pth", "trainer_state.json"} <= files

    monkeypatch.setattr(Trainer, "_save_rng_state", original)
    resumed = DrafterTrainer(new_drafter(seed=5), config(tmp_path), dataset, mask_token_id=MASK, shifted=True)
    resumed.train(resume_from_checkpoint=get_last_checkpoint(out))
    assert resumed.state.global_step == 4
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-2", "checkpoint-4"]


class StopAt(TrainerCallback):
    def __init__(self, step):
        self.step = step

    def on_step_end(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            control.should_training_stop = True


def test_resume_reproduces_the_uninterrupted_loss_trajectory(tmp_path, dataset):
    """6 steps over 3 epochs (2 steps each) vs. 3 steps, stop, resume from checkpoint-3: identical losses."""
    kw = dict(max_steps=6, save_steps=3)
    full = DrafterTrainer(new_drafter(), config(tmp_path / "a", **kw), dataset, mask_token_id=MASK, shifted=True)
    full.train()
    first = DrafterTrainer(
        new_drafter(), config(tmp_path / "b", **kw), dataset, mask_token_id=MASK, shifted=True, callbacks=[StopAt(3)]
    )
    first.train()
    assert first.state.global_step == 3
    second = DrafterTrainer(
        new_drafter(seed=9), config(tmp_path / "b", **kw), dataset, mask_token_id=MASK, shifted=True
    )
    second.train(resume_from_checkpoint=str(tmp_path / "b" / "out" / "checkpoint-3"))
    expected, got = losses(full), losses(second)
    assert sorted(got) == [1, 2, 3, 4, 5, 6]  # steps 1-3 come from the checkpoint's trainer state
    for step in (4, 5, 6):
        for key in ("loss", "loss/ce", "loss/block_ce", "loss/kl", "loss/streak"):
            assert got[step][key] == pytest.approx(expected[step][key], rel=1e-5, abs=1e-6), (step, key)
    for name, value in full.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[name], value, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "targets, expected_modules",
    [(["q_proj", "v_proj"], 2), (r".*\.mlp\.(gate|up)_proj", 2), ("all-linear", 7)],
)
def test_lora_target_module_forms(targets, expected_modules):
    args = ModelArguments(drafter_name_or_path="unused", use_lora=True, lora_r=4, lora_target_modules=targets)
    model = apply_lora(new_drafter(), args, activation_checkpointing=False)
    wrapped = {name for name, module in model.named_modules() if hasattr(module, "lora_A")}
    assert len(wrapped) == expected_modules  # one decoder layer; all-linear skips lm_head


def test_lora_run_saves_adapter_and_merged_drafter(tmp_path, dataset):
    args = ModelArguments(drafter_name_or_path="unused", use_lora=True, lora_r=4, lora_target_modules="all-linear")
    model = apply_lora(new_drafter(), args, activation_checkpointing=True)
    run = config(tmp_path, max_steps=2, save_steps=2, activation_checkpointing=True, learning_rate=1e-2)
    trainer = DrafterTrainer(model, run, dataset, mask_token_id=MASK, shifted=True)
    trainer.train()
    out = tmp_path / "out"
    trainer.save_model(str(out))
    assert (out / "adapter_config.json").exists() and (out / "diffuspec_config.json").exists()
    x = torch.tensor([[5, 6, 7, MASK, MASK]])
    model.eval()
    with torch.no_grad():
        expected = model(input_ids=x).logits
    save_merged(model, out / "merged", MASK, True)
    merged, mask, shifted = load_diffusion_model(out / "merged")
    assert (mask, shifted) == (MASK, True)
    assert not any("lora" in name for name in merged.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=x).logits, expected, rtol=1e-4, atol=1e-5)
    assert json.loads((out / "merged" / "config.json").read_text())["is_causal"] is False


class Recorder(TrainerCallback):
    def __init__(self):
        self.logs = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        self.logs.append((state.global_step, dict(logs)))


def test_acceptance_callback_logs_tau_through_the_trainer(tmp_path, dataset, verifier):
    prompts = [dataset[i]["prompt_ids"] for i in range(2)]
    acceptance = AcceptanceCallback(verifier, prompts, every_n_steps=2, max_new_tokens=6)
    recorder = Recorder()
    run = config(tmp_path, max_steps=2, save_strategy="no", report_to=["tensorboard"])
    trainer = DrafterTrainer(
        new_drafter(), run, dataset, mask_token_id=MASK, shifted=True, callbacks=[acceptance, recorder]
    )
    trainer.train()
    evals = [(step, logs) for step, logs in recorder.logs if "eval_tau" in logs]
    assert [step for step, _ in evals] == [0, 2]  # a baseline at step 0, then every 2 steps
    for _, logs in evals:
        assert logs["eval_tau"] >= 1.0 and logs["eval_tau"] == pytest.approx(1.0 + logs["eval_mean_accepted"])
    assert sorted(losses(trainer)) == [1, 2]  # the step-2 loss log survives the evaluation logged before it
    assert trainer.model.training
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    (run_dir,) = {os.path.dirname(p) for p in map(str, (tmp_path / "out").rglob("events.out.tfevents*"))}
    events = EventAccumulator(run_dir)
    events.Reload()
    assert {"eval/tau", "eval/mean_accepted", "train/loss/ce"} <= set(events.Tags()["scalars"])


def test_missing_teacher_is_an_error_before_training(tmp_path, dataset):
    bare = dataset.remove_columns(["teacher_topk_ids", "teacher_topk_logprobs"])
    with pytest.raises(ValueError, match="verifier's distributions"):
        DrafterTrainer(new_drafter(), config(tmp_path), bare, mask_token_id=MASK, shifted=True)


def test_frozen_embeddings_stay_as_loaded_while_the_layers_train(tmp_path, dataset):
    from diffuspec.training import ModelArguments
    from diffuspec.training.modeling import freeze_embeddings

    with pytest.raises(ValueError, match="freeze_embeddings applies to full training"):
        ModelArguments(drafter_name_or_path="d", freeze_embeddings=True, use_lora=True)
    model = freeze_embeddings(new_drafter())
    embedding = model.get_input_embeddings().weight.detach().clone()
    head = model.get_output_embeddings().weight.detach().clone()
    layer = model.model.layers[0].mlp.up_proj.weight.detach().clone()
    DrafterTrainer(model, config(tmp_path, save_strategy="no"), dataset, mask_token_id=MASK, shifted=True).train()
    assert torch.equal(model.get_input_embeddings().weight, embedding)
    assert torch.equal(model.get_output_embeddings().weight, head)
    assert not torch.equal(model.model.layers[0].mlp.up_proj.weight, layer)
