"""The quickstart's --fast preset end to end (the CI smoke run of the whole pipeline)."""

import json

import pytest
import torch
from transformers import AutoTokenizer

from diffuspec.loading import load_diffusion_model
from diffuspec.models.dream import save_dream_format
from diffuspec.quickstart import run_quickstart
from diffuspec.quickstart.stages import run_stages
from diffuspec.quickstart.tiny import STAGES, QuickstartConfig, load_preset

METHODS = {
    "ar",
    "hf_generate",
    "pld",
    "hf_pld",
    "hf_assisted",
    "dlm_unaligned",
    "dlm_aligned",
    "dlm_aligned_tree",
    "dlm_aligned_tree_cost",
    "dlm_aligned_hybrid",
    "dlm_aligned_plain",
    "dlm_conditioned",
    "dlm_conditioned_tree",
    "dlm_conditioned_tree_cost",
    "dlm_conditioned_hybrid",
}


def test_fast_quickstart_runs_every_stage_and_caches(tmp_path, capsys):
    run_dir = run_quickstart("fast", tmp_path / "run")
    results = json.loads((run_dir / "eval" / "results.json").read_text())
    assert set(results["methods"]) == METHODS
    assert results["baseline"] == "ar" and results["repeats"] == 3
    assert all(m["lossless"] for m in results["methods"].values())
    for name in ("results.md",):
        assert (run_dir / "eval" / name).exists()
    assert list((run_dir / "eval").glob("*.png"))
    assert not list(run_dir.glob(".*journal*"))  # the resume journal is gone once the stage has finished
    from diffuspec.drafter_config import read_diffuspec_config
    from diffuspec.quickstart.stages import EVAL_CPS
    from diffuspec.quickstart.tiny import ADL_TINY

    for stage in ("drafter_unaligned", "drafter_aligned", "drafter_conditioned"):  # the decoding the table measured
        decode = read_diffuspec_config(run_dir / stage / "model").decode_config()
        assert {k: getattr(decode.adl, k) for k in ADL_TINY} == ADL_TINY and decode.cps.m_max == EVAL_CPS["m_max"]
    from diffuspec.quickstart.tiny import heldout_loss

    losses = heldout_loss(run_dir, windows_count=4, length=16)
    assert set(losses) == {"verifier", "ar_drafter"} and all(0 < v < 10 for v in losses.values())
    capsys.readouterr()

    run_quickstart("fast", run_dir)  # a rerun skips every finished stage
    log = capsys.readouterr().out
    assert all(f"[{s.name}] cached" in log for s in STAGES)

    # The aligned drafter ships in Dream's on-disk format and loads back through the Dream path, unchanged.
    drafter, mask_id, shifted = load_diffusion_model(run_dir / "drafter_aligned" / "model")
    tokenizer = AutoTokenizer.from_pretrained(run_dir / "drafter_aligned" / "model")
    dream = save_dream_format(drafter, tokenizer, tmp_path / "dream", mask_token_id=mask_id)
    assert json.loads((dream / "config.json").read_text())["model_type"] == "Dream"
    loaded, loaded_mask_id, loaded_shifted = load_diffusion_model(dream)
    assert (loaded_mask_id, loaded_shifted) == (mask_id, shifted) == (tokenizer.mask_token_id, True)
    ids = torch.tensor([[5, 17, mask_id, mask_id, 3]])
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, drafter(input_ids=ids).logits)


def test_a_stage_alone_needs_its_inputs(tmp_path):
    with pytest.raises(RuntimeError, match="needs stage 'corpus'"):
        run_stages(STAGES, load_preset("fast"), tmp_path, only="verifier")


def test_unknown_preset_key_and_stage_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"unknown quickstart setting\(s\) \['verifer_steps'\]"):
        load_preset("fast", verifer_steps=3)
    with pytest.raises(ValueError, match="unknown quickstart stage 'verify'"):
        run_stages(STAGES, QuickstartConfig(), tmp_path, only="verify")


@pytest.mark.parametrize("name", ["drafter_init", "eval_prompts_from"])
def test_unknown_choice_is_refused_naming_it(name):
    with pytest.raises(ValueError, match=f"{name} must be one of .* got 'other'"):
        load_preset("fast", **{name: "other"})


def test_the_shared_preset_checks_refuse_negative_numbers_and_few_repeats():
    with pytest.raises(ValueError, match="quickstart setting lr must be >= 0, got -1"):
        load_preset("fast", lr=-1)
    with pytest.raises(ValueError, match="repeats must be >= 3"):
        load_preset("fast", repeats=2)


def test_heldout_prompts_windows_and_file_starts(tmp_path):
    from diffuspec.quickstart import tiny

    config = load_preset("fast", corpus_bytes=60_000, eval_prompts=4, eval_prompt_tokens=16)
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    tiny.build_corpus(config, corpus, {})
    stream = tiny.token_stream(corpus, "heldout")
    windows = tiny.heldout_prompts(config, corpus)
    assert windows == tiny.heldout_prompts(config, corpus)  # seeded
    assert len(windows) == 4 and all(len(w) == 16 for w in windows)
    assert all(any(stream[i : i + 16] == w for i in range(len(stream))) for w in windows)
    starts = tiny.heldout_prompts(
        load_preset("fast", eval_prompts=4, eval_prompt_tokens=16, eval_prompts_from="file_starts"), corpus
    )
    assert starts and starts != windows and all(len(p) == 16 for p in starts)
    with pytest.raises(ValueError, match=f"{len(stream)} tokens, too few for"):
        tiny.windows(stream, 1, len(stream), seed=0)


def test_quickstart_restores_the_thread_setting(tmp_path):
    import torch

    before = torch.get_num_threads()
    with pytest.raises(RuntimeError):
        run_quickstart("fast", tmp_path, only="verifier")  # fails fast: corpus not built
    assert torch.get_num_threads() == before


def test_cli_set_overrides_reach_the_preset(tmp_path, monkeypatch):
    from diffuspec import cli

    seen = {}
    monkeypatch.setattr("diffuspec.quickstart.run_quickstart", lambda **kwargs: seen.update(kwargs))
    args = cli.build_parser().parse_args(
        ["quickstart", "--fast", "--set", "drafter_init=verifier", "--set", "verifier={hidden_size: 32, num_layers: 1}"]
    )
    assert args.func(args) == 0
    assert seen["preset"] == "fast"
    assert seen["overrides"] == {"drafter_init": "verifier", "verifier": {"hidden_size": 32, "num_layers": 1}}
    config = load_preset("fast", **seen["overrides"])
    assert config.drafter_init == "verifier" and config.verifier.hidden_size == 32
    with pytest.raises(SystemExit):
        cli.build_parser().parse_args(["quickstart", "--set", "drafter_init"])


def test_quickstart_tokenizer_encodes_alike_on_every_loading_path(tmp_path):
    """A model folder (config.json model_type qwen2) loads its tokenizer through AutoTokenizer as the model type's
    class; the ids must be those of the tokenizer the models were trained with."""
    from transformers import PreTrainedTokenizerFast

    from diffuspec.models.tiny import tiny_qwen2
    from diffuspec.quickstart.corpus import train_tokenizer

    text = "def f(x):\n    if x:\n        return _create_careful(x)  # ok\n\n\n"
    tokenizer = train_tokenizer([text * 20, "class A:\n    pass\n" * 20], 300, tmp_path / "tok")
    assert tokenizer.convert_tokens_to_ids(["<|endoftext|>", "<|pad|>", "<|mask|>"]) == [0, 1, 2]
    assert (tokenizer.eos_token_id, tokenizer.pad_token_id, tokenizer.mask_token_id) == (0, 1, 2)
    folder = tmp_path / "model"
    tiny_qwen2(vocab_size=len(tokenizer), hidden_size=32, num_layers=1).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    expected = tokenizer(text).input_ids
    for loaded in (AutoTokenizer.from_pretrained(folder), PreTrainedTokenizerFast.from_pretrained(folder)):
        assert loaded(text).input_ids == expected
        assert loaded.decode(expected) == text and loaded.mask_token_id == 2


def test_a_resumable_stage_keeps_its_work_folder_across_a_kill(tmp_path):
    """A resumable stage gets a work folder that survives a failed build (a rerun continues from it) and is removed
    once the stage is in place; its output folder appears only when complete."""
    from diffuspec.quickstart.stages import Stage

    calls = []

    def build(config, out, inputs, work):
        calls.append(sorted(p.name for p in work.iterdir()))
        (work / f"part-{len(calls)}").write_text("done")
        if len(calls) == 1:
            raise KeyboardInterrupt  # killed after its first part
        (out / "result.txt").write_text("ok")

    stages = [Stage("long", (), build, ("seed",), resumable=True)]
    config = load_preset("fast")
    with pytest.raises(KeyboardInterrupt):
        run_stages(stages, config, tmp_path, log=lambda line: None)
    assert not (tmp_path / "long").exists() and len(list(tmp_path.glob(".long.work-*"))) == 1
    run_stages(stages, config, tmp_path, log=lambda line: None)
    assert calls == [[], ["part-1"]] and (tmp_path / "long" / "result.txt").read_text() == "ok"
    assert not list(tmp_path.glob(".long.work-*"))
