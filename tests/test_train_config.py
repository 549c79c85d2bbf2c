"""Configuration: range checks, YAML + CLI parsing, every recipe, every accelerate config."""

from pathlib import Path

import pytest
import torch
import yaml

from diffuspec.training import DataArguments, DrafterTrainingConfig, ModelArguments, parse_config
from diffuspec.training.conditioned_config import parse_conditioned_config

ROOT = Path(__file__).resolve().parents[1]
TRAIN_RECIPES = sorted(ROOT.glob("recipes/*/train/*.yaml"))
ACCELERATE_CONFIGS = sorted(ROOT.glob("recipes/accelerate_configs/*.yaml"))


def args(**kw):
    return DrafterTrainingConfig(**({"output_dir": "unused", "report_to": [], "use_cpu": True} | kw))


@pytest.mark.parametrize(
    "kw, field",
    [
        ({"ce_weight": -1.0}, "ce_weight"),
        ({"ce_weight": 0.0}, "at least one objective"),
        ({"kl_kind": "hellinger"}, "kl_kind"),
        ({"streak_kind": "oracle"}, "streak_kind"),
        ({"jsd_beta": 1.5}, "jsd_beta"),
        ({"greedy_temperature": 0.0}, "greedy_temperature"),
        ({"decay_gamma": -2.0}, "decay_gamma"),
        ({"block_size": 0}, "block_size"),
        ({"block_size": 4, "block_size_min": 5}, "block_size_min"),
        ({"anchors_per_sequence": 0}, "anchors_per_sequence"),
        ({"mask_eps": 0.0}, "mask_eps"),
        ({"mask_token_id": -1}, "mask_token_id"),
        ({"teacher_topk": -1}, "teacher_topk"),
        ({"eval_acceptance_steps": -1}, "eval_acceptance_steps"),
        ({"eval_k_min": 8, "eval_k_max": 4}, "eval_k_min"),
        ({"remove_unused_columns": True}, "remove_unused_columns"),
    ],
)
def test_training_config_rejects_out_of_range_values(kw, field):
    with pytest.raises(ValueError, match=field):
        args(**kw)


def test_training_config_derived_properties():
    plain = args()
    assert not plain.uses_blocks and not plain.needs_teacher
    assert args(streak_weight=1.0, streak_kind="greedy").uses_blocks
    assert not args(streak_weight=1.0, streak_kind="greedy").needs_teacher
    assert args(streak_weight=1.0, streak_kind="acceptance").needs_teacher
    assert args(kl_weight=1.0).needs_teacher
    decode = args(eval_cps=False, eval_adl=False, eval_k_min=2, eval_k_max=6).eval_decode_config()
    assert decode.cps is None and decode.adl is None and decode.draft_length == 6
    decode = args(eval_k_min=3, eval_k_max=9).eval_decode_config()
    assert (decode.adl.k_min, decode.adl.k_max) == (3, 9) and decode.cps is not None


@pytest.mark.parametrize(
    "value, expected",
    [
        (["q_proj", "v_proj"], ["q_proj", "v_proj"]),
        ("all-linear", "all-linear"),
        (["all-linear"], "all-linear"),
        ([r".*\.(q|v)_proj"], r".*\.(q|v)_proj"),
        (r".*mlp.*", r".*mlp.*"),
    ],
)
def test_lora_target_modules_forms(value, expected):
    assert ModelArguments(drafter_name_or_path="d", lora_target_modules=value).lora_target_modules == expected


def test_model_and_data_arguments_checks():
    with pytest.raises(ValueError, match="lora_r"):
        ModelArguments(drafter_name_or_path="d", lora_r=0)
    with pytest.raises(ValueError, match="lora_dropout"):
        ModelArguments(drafter_name_or_path="d", lora_dropout=1.0)
    with pytest.raises(ValueError, match="must stand alone"):
        ModelArguments(drafter_name_or_path="d", lora_target_modules=["q_proj", "all-linear"])
    with pytest.raises(ValueError, match="max_prompt_length"):
        DataArguments(dataset_path=["x.jsonl"], max_prompt_length=0)
    assert DataArguments(dataset_path="x.jsonl").dataset_path == ["x.jsonl"]


def write_yaml(tmp_path, values):
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump(values))
    return str(path)


BASE = {
    "drafter_name_or_path": "drafter",
    "dataset_path": ["a.jsonl", "b.jsonl"],
    "output_dir": "out",
    "use_cpu": True,
    "report_to": "none",
    "learning_rate": 1.0e-4,
    "kl_weight": 1.0,
    "kl_kind": "tv",
    "lora_target_modules": ["q_proj", "k_proj"],
}


def test_yaml_sets_defaults_and_the_cli_overrides(tmp_path):
    path = write_yaml(tmp_path, BASE)
    model_args, data_args, training_args = parse_config(["--config", path])
    assert model_args.drafter_name_or_path == "drafter" and model_args.lora_target_modules == ["q_proj", "k_proj"]
    assert data_args.dataset_path == ["a.jsonl", "b.jsonl"]
    assert training_args.learning_rate == 1e-4 and training_args.kl_kind == "tv"
    model_args, data_args, training_args = parse_config(
        [
            "--config",
            path,
            "--learning_rate",
            "3e-4",
            "--kl_kind",
            "jsd",
            "--dataset_path",
            "c.jsonl",
            "--lora_target_modules",
            "all-linear",
            "--shifted",
            "false",
        ]
    )
    assert training_args.learning_rate == 3e-4 and training_args.kl_kind == "jsd"
    assert data_args.dataset_path == ["c.jsonl"] and model_args.lora_target_modules == "all-linear"
    assert training_args.shifted is False


def test_unknown_yaml_keys_and_flags_are_errors(tmp_path):
    path = write_yaml(tmp_path, BASE | {"learning_rat": 1.0, "num_processes": 8})
    with pytest.raises(ValueError, match=r"unknown keys \['learning_rat', 'num_processes'\]"):
        parse_config(["--config", path])
    with pytest.raises(ValueError, match="not used"):
        parse_config(["--config", write_yaml(tmp_path, BASE), "--no_such_flag", "1"])
    with pytest.raises(ValueError, match="kl_kind"):  # YAML values get the same checks as flags
        parse_config(["--config", write_yaml(tmp_path, BASE | {"kl_kind": "l2"})])


def test_required_fields_still_required_without_yaml():
    with pytest.raises(SystemExit):
        parse_config(["--output_dir", "x"])


@pytest.mark.parametrize("recipe", TRAIN_RECIPES, ids=lambda p: str(p.relative_to(ROOT)))
def test_every_training_recipe_parses(recipe):
    values = yaml.safe_load(recipe.read_text())
    gpu = values.get("bf16", False)
    overrides = ["--bf16", "false", "--use_cpu", "true"] if gpu and not torch.cuda.is_available() else []
    assert "num_processes" not in values  # launcher settings live in recipes/accelerate_configs
    assert recipe.parent.parent.joinpath("README.md").exists()  # command, hardware, time and memory
    if recipe.parent.parent.name.startswith("conditioned-"):  # train/train_conditioned.py's recipes
        model_args, data_args, training_args = parse_conditioned_config(["--config", str(recipe), *overrides])
        assert model_args.block_size >= 1 and training_args.anchors_per_sequence >= 1
        return
    model_args, data_args, training_args = parse_config(["--config", str(recipe), *overrides])
    assert training_args.ce_weight + training_args.block_ce_weight + training_args.kl_weight > 0
    if training_args.eval_acceptance_steps > 0:
        assert data_args.eval_prompts_path is not None and model_args.verifier_name_or_path is not None


@pytest.mark.parametrize("path", ACCELERATE_CONFIGS, ids=lambda p: p.name)
def test_accelerate_configs_load_and_resolve_to_launch_settings(path):
    from accelerate.commands.config.config_args import load_config_from_file
    from accelerate.commands.launch import _validate_launch_command, launch_command_parser
    from accelerate.utils import prepare_deepspeed_cmd_env, prepare_multi_gpu_env, prepare_simple_launcher_cmd_env

    config = load_config_from_file(str(path))
    assert config.num_machines == 1
    launch = launch_command_parser().parse_args(["--config_file", str(path), "train/train_drafter.py"])
    launch, defaults, _ = _validate_launch_command(launch)
    if launch.use_deepspeed:  # as accelerate launch does before building the DeepSpeed environment
        launch.deepspeed_fields_from_accelerate_config = ",".join(defaults.deepspeed_config)
        _, env = prepare_deepspeed_cmd_env(launch)
        assert env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == str(config.deepspeed_config["zero_stage"])
    elif launch.use_fsdp or launch.multi_gpu:
        env = prepare_multi_gpu_env(launch)
        assert env.get("FSDP_VERSION", "2") == "2"
    else:
        _, env = prepare_simple_launcher_cmd_env(launch)
        assert env["ACCELERATE_USE_CPU"] == "True"
    assert env["ACCELERATE_MIXED_PRECISION"] == config.mixed_precision
    kinds = {"single_cpu": "NO", "ddp": "MULTI_GPU", "ddp_cpu": "MULTI_GPU", "fsdp2": "FSDP", "fsdp2_cpu": "FSDP"}
    expected = kinds.get(path.stem, "DEEPSPEED")
    assert config.distributed_type.value == expected


@pytest.mark.parametrize("name", ["ddp", "fsdp2", "deepspeed_zero2", "deepspeed_zero3"])
def test_cpu_launch_configs_shard_as_their_gpu_configs(name):
    """The *_cpu.yaml configs the CPU tests launch differ from the GPU ones only in process count and precision."""
    import yaml

    folder = ROOT / "recipes" / "accelerate_configs"
    gpu, cpu = (yaml.safe_load((folder / f"{stem}.yaml").read_text()) for stem in (name, f"{name}_cpu"))
    assert cpu.pop("num_processes") == 2 and cpu.pop("mixed_precision") == "no" and cpu["use_cpu"] is False
    for key in ("num_processes", "mixed_precision", "gpu_ids"):
        gpu.pop(key, None)
    assert cpu == gpu
