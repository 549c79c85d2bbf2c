"""Evaluation recipes: YAML + CLI parsing, validation before any model loads."""

import argparse
from pathlib import Path

import pytest
import yaml

from diffuspec.evaluation.config import EvalConfig, add_arguments, config_from_args, load_config

BASE = {"verifier": "models/verifier", "benchmark": "jsonl", "benchmark_path": "prompts.jsonl"}


def parse(argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return config_from_args(parser.parse_args(argv))


def write(tmp_path, values) -> str:
    path = tmp_path / "config_test.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


def test_yaml_then_cli_override_wins(tmp_path):
    recipe = write(tmp_path, {**BASE, "max_new_tokens": 64, "tasks": ["a"], "chat_template": True, "repeats": 5})
    config = parse(["--config", recipe])
    assert (config.max_new_tokens, config.tasks, config.chat_template, config.repeats) == (64, ["a"], True, 5)
    config = parse(["--config", recipe, "--max-new-tokens", "8", "--tasks", "a,b", "--no-chat-template"])
    assert (config.max_new_tokens, config.tasks, config.chat_template, config.repeats) == (8, ["a", "b"], False, 5)
    assert parse(["--config", recipe, "--temperature", "0.5"]).temperature == 0.5


def test_defaults_and_baseline_first():
    config = EvalConfig(**BASE, methods=[{"kind": "pld"}, {"kind": "hf_generate"}])
    assert [m.name for m in config.methods] == ["ar", "pld", "hf_generate"]  # ar added, first
    assert config.repeats == 3 and config.temperature == 0.0 and config.warmup == 3
    pld = config.methods[1]
    assert (pld.draft_length, pld.max_ngram, pld.min_ngram) == (10, 3, 1)


def test_unknown_yaml_key_is_named(tmp_path):
    recipe = write(tmp_path, {**BASE, "max_new_token": 64})
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['max_new_token'\]"):
        load_config(recipe)


def test_missing_config_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.yaml"):
        load_config(tmp_path / "nope.yaml")


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"methods": [{"kind": "medusa"}]}, "unknown method kind 'medusa'"),
        ({"methods": [{"kind": "pld", "beam": 3}]}, r"unknown key\(s\) \['beam'\] for a 'pld' method"),
        ({"methods": [{"kind": "sps"}]}, "needs a 'drafter' folder"),
        (
            {"methods": [{"kind": "diffusion", "drafter": "d", "cps": {"beems": 2}}]},
            r"cps: unknown key\(s\) \['beems'\]",
        ),
        ({"methods": [{"kind": "diffusion", "drafter": "d", "adl": {"k_min": 9, "k_max": 3}}]}, "k_min"),
        ({"methods": [{"kind": "diffusion", "drafter": "d", "cps": None, "proxy": "p.json"}]}, "cps is null"),
        ({"methods": [{"kind": "pld"}, {"kind": "pld"}]}, "unique"),
        ({"methods": [{"kind": "pld", "name": "ar"}]}, "reserved"),
        ({"benchmark": "spec_bench", "tasks": ["qa", "poetry"]}, r"unknown Spec-Bench task\(s\) \['poetry'\]"),
        ({"benchmark": "mmlu"}, "benchmark must be one of"),
        ({"repeats": 2}, "repeats must be >= 3"),
        ({"temperature": -1.0}, "temperature"),
        ({"dtype": "int8"}, "dtype"),
        ({"turns": "all", "chat_template": False}, "chat_template"),
        ({"only": ["sps"]}, "only names unknown"),
        ({"verifier": ""}, "verifier is required"),
        ({"benchmark": "jsonl", "benchmark_path": None}, "benchmark_path is required for a 'jsonl' benchmark"),
    ],
)
def test_bad_settings_fail_before_any_model_loads(change, message):
    with pytest.raises(ValueError, match=message):
        EvalConfig(**{**BASE, **change})


def test_ar_drafter_is_the_default_drafter_and_only_filters():
    config = EvalConfig(
        **BASE,
        ar_drafter="models/small",
        methods=[{"kind": "sps"}, {"kind": "hf_assisted", "drafter": "other"}, {"kind": "pld"}],
        only=["sps"],
    )
    assert [(m.name, m.drafter) for m in config.methods] == [("ar", None), ("sps", "models/small")]


def test_ablation_grid_is_one_config():
    grid = [
        {
            "kind": "diffusion",
            "name": f"cps{int(c)}_adl{int(a)}",
            "drafter": "d",
            "cps": {} if c else None,
            "adl": {} if a else None,
            "draft_length": 20,
        }
        for c in (True, False)
        for a in (True, False)
    ]
    config = EvalConfig(**BASE, methods=grid)
    cps_on = config.methods[1]
    assert cps_on.decode.cps.beam == 3 and cps_on.decode.adl.k_max == 30
    assert config.methods[4].decode.cps is None and config.methods[4].decode.adl is None


@pytest.mark.parametrize("recipe", sorted(Path(__file__).resolve().parents[1].glob("recipes/*/eval/*.yaml")), ids=str)
def test_every_recipe_parses(recipe):
    config = load_config(recipe, {"benchmark_path": "question.jsonl"})
    assert config.methods[0].name == "ar" and config.repeats >= 3


def test_cli_reports_a_bad_recipe_without_a_traceback(tmp_path, capsys):
    from diffuspec.cli import main

    recipe = write(tmp_path, {**BASE, "warm_up": 3})
    assert main(["eval", "--config", recipe]) == 2
    assert "unknown key(s) ['warm_up']" in capsys.readouterr().err
