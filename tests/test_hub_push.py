"""Hub I/O without the network: diffuspec_config.json round trips, model cards keep their evaluation section, a
pushed drafter (through a fake HfApi that copies to a local 'remote') loads back, and offline names fail at once."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from diffuspec import cards, drafter_config, hub, loading
from diffuspec.cards import CARD_BEGIN, CARD_END, update_model_card
from diffuspec.cli import main as cli_main
from diffuspec.decoding.config import ADLConfig, CPSConfig, DecodeConfig
from diffuspec.loading import load_diffusion_model
from diffuspec.models.tiny import tiny_qwen2

VOCAB = 40
MASK = 39


class FakeHfApi:
    """Records create_repo / upload_folder calls; upload copies the folder (ignore patterns applied) to a remote."""

    def __init__(self, remote_root: Path) -> None:
        self.remote_root, self.calls = remote_root, []

    def create_repo(self, repo_id, *, token=None, private=False, repo_type=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, {"private": private, "repo_type": repo_type, "exist_ok": exist_ok}))
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(
        self, *, folder_path, repo_id, repo_type=None, token=None, commit_message=None, ignore_patterns=None
    ):
        from huggingface_hub.utils import filter_repo_objects

        self.calls.append(("upload_folder", repo_id, {"commit_message": commit_message}))
        source, remote = Path(folder_path), self.remote_root / repo_id
        files = [p.relative_to(source).as_posix() for p in source.rglob("*") if p.is_file()]
        for name in filter_repo_objects(files, ignore_patterns=ignore_patterns):
            (remote / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, remote / name)
        return f"https://huggingface.co/{repo_id}/commit/0"

    def remote(self, repo_id: str) -> Path:
        return self.remote_root / repo_id


def write_tokenizer(folder: Path) -> None:
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {f"w{i}": i for i in range(VOCAB - 1)} | {"<|mask|>": MASK}
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    PreTrainedTokenizerFast(tokenizer_object=tokenizer, mask_token="<|mask|>").save_pretrained(folder)


@pytest.fixture
def drafter(tmp_path) -> Path:
    """A bidirectional tiny Qwen2 with tokenizer, config, card and trainer leftovers that must not be pushed."""
    folder = tmp_path / "drafter"
    tiny_qwen2(seed=4, vocab_size=VOCAB, hidden_size=32, num_layers=1, causal=False).save_pretrained(folder)
    write_tokenizer(folder)
    decode = DecodeConfig(cps=CPSConfig(m_max=4, beam=2), adl=ADLConfig(k_min=4, k_max=12))
    drafter_config.write_diffuspec_config(
        folder,
        mask_token_id=MASK,
        shifted=True,
        verifier="Qwen/Qwen2.5-7B-Instruct",
        verifier_vocab_size=VOCAB,
        recommended_decode=decode,
        objectives={"ce": 1.0, "kl": 0.5},
    )
    cards.write_model_card(folder, base_model="Dream-org/Dream-v0-Instruct-7B", dataset="me/completions", steps=1200)
    (folder / "checkpoint-100").mkdir()
    (folder / "checkpoint-100" / "optimizer.pt").write_bytes(b"x")
    (folder / "runs").mkdir()
    (folder / "runs" / "events.out").write_bytes(b"x")
    (folder / "training_args.bin").write_bytes(b"x")
    return folder


def front_matter(card: str) -> dict:
    assert card.startswith("---\n")
    return yaml.safe_load(card.split("---\n")[1])


# ---------------------------------------------------------------- diffuspec_config.json


def test_config_round_trip_and_marker_compatibility(drafter):
    assert drafter_config.CONFIG_FILE == "diffuspec_config.json"
    config = drafter_config.read_diffuspec_config(drafter)
    assert (config.mask_token_id, config.shifted) == (MASK, True)
    assert config.verifier == {"name": "Qwen/Qwen2.5-7B-Instruct", "vocab_size": VOCAB}
    assert config.objectives == {"ce": 1.0, "kl": 0.5}
    decode = config.decode_config()
    assert (decode.cps.m_max, decode.cps.beam, decode.cps.proxy) == (4, 2, None)
    assert (decode.adl.k_min, decode.adl.k_max) == (4, 12)
    _, mask, shifted = load_diffusion_model(drafter)  # the loader reads the same file
    assert (mask, shifted) == (MASK, True)


def test_trainer_marker_reads_and_bad_configs_fail(tmp_path):
    (tmp_path / drafter_config.CONFIG_FILE).write_text(json.dumps({"mask_token_id": 9, "shifted": False}))
    minimal = drafter_config.read_diffuspec_config(tmp_path)
    assert minimal.verifier is None and minimal.decode_config() == DecodeConfig()
    (tmp_path / drafter_config.CONFIG_FILE).write_text(json.dumps({"mask_token_id": 9, "shifted": False, "shift": 1}))
    with pytest.raises(ValueError, match=r"unknown key\(s\) \['shift'\]"):
        drafter_config.read_diffuspec_config(tmp_path)
    (tmp_path / drafter_config.CONFIG_FILE).write_text(json.dumps({"mask_token_id": 9, "shifted": "yes"}))
    with pytest.raises(ValueError, match="shifted must be true or false"):
        drafter_config.read_diffuspec_config(tmp_path)
    with pytest.raises(ValueError, match=r"vocab_size must be an int > mask_token_id \(9\)"):
        drafter_config.write_diffuspec_config(
            tmp_path, mask_token_id=9, shifted=True, verifier="v", verifier_vocab_size=9
        )
    with pytest.raises(ValueError, match="CPSConfig.beam must be >= 1"):
        drafter_config.DiffuspecConfig(
            mask_token_id=1, shifted=True, recommended_decode={"cps": {"beam": 0}, "adl": None}
        )


# ---------------------------------------------------------------- model card


def test_model_card_front_matter_and_eval_section(drafter):
    card = (drafter / "README.md").read_text()
    meta = front_matter(card)
    assert meta["base_model"] == "Dream-org/Dream-v0-Instruct-7B" and meta["datasets"] == ["me/completions"]
    assert meta["diffuspec"] == {
        "verifier": "Qwen/Qwen2.5-7B-Instruct",
        "verifier_vocab_size": VOCAB,
        "steps": 1200,
        "objectives": {"ce": 1.0, "kl": 0.5},
    }
    assert card.count(CARD_BEGIN) == 1 and card.count(CARD_END) == 1 and "Not evaluated yet" in card
    assert "CPS (m_max=4" in card and "ADL (k_min=4, k_max=12" in card

    # the evaluation replaces the section; rewriting the card later keeps the results
    update_model_card(drafter, f"{CARD_BEGIN}\n## Results\n\n| method | tau |\n|---|---|\n| dlm | 3.1 |\n{CARD_END}\n")
    cards.write_model_card(drafter, steps=2400)
    card = (drafter / "README.md").read_text()
    assert "| dlm | 3.1 |" in card and "Not evaluated yet" not in card and card.count(CARD_BEGIN) == 1
    meta = front_matter(card)  # what was not given again is kept
    assert meta["diffuspec"]["steps"] == 2400 and meta["datasets"] == ["me/completions"]
    assert meta["base_model"] == "Dream-org/Dream-v0-Instruct-7B"

    cards.write_model_card(drafter, eval_table="| method | tau |\n|---|---|\n| dlm | 3.5 |")
    card = (drafter / "README.md").read_text()
    assert "| dlm | 3.5 |" in card and "| dlm | 3.1 |" not in card and card.count(CARD_END) == 1


# ---------------------------------------------------------------- push


def test_push_uploads_a_loadable_drafter(drafter, tmp_path):
    api = FakeHfApi(tmp_path / "remote")
    url = hub.push_drafter(drafter, "me/tiny-drafter", private=True, api=api)
    assert url == "https://huggingface.co/me/tiny-drafter"
    assert [c[0] for c in api.calls] == ["create_repo", "upload_folder"]
    assert api.calls[0][2] == {"private": True, "repo_type": "model", "exist_ok": True}
    remote = api.remote("me/tiny-drafter")
    pushed = sorted(p.relative_to(remote).as_posix() for p in remote.rglob("*") if p.is_file())
    assert "README.md" in pushed and drafter_config.CONFIG_FILE in pushed and "model.safetensors" in pushed
    assert not any(p.startswith(("checkpoint-", "runs/")) or p == "training_args.bin" for p in pushed)

    local = loading.resolve_local(remote)
    assert local == str(remote)
    model, mask, shifted = load_diffusion_model(local)
    original, _, _ = load_diffusion_model(drafter)
    assert (mask, shifted) == (MASK, True)
    ids = torch.tensor([[1, 2, MASK, MASK]])
    torch.testing.assert_close(model(input_ids=ids).logits, original(input_ids=ids).logits, rtol=0, atol=0)
    assert drafter_config.read_diffuspec_config(local) == drafter_config.read_diffuspec_config(drafter)


def test_push_checks_the_folder_before_any_call(drafter, tmp_path):
    api = FakeHfApi(tmp_path / "remote")
    config = json.loads((drafter / "config.json").read_text())
    (drafter / "config.json").write_text(json.dumps({**config, "vocab_size": VOCAB + 8}))
    with pytest.raises(ValueError, match=rf"vocabulary \({VOCAB + 8}\) differs from its verifier's \({VOCAB}\)"):
        hub.push_drafter(drafter, "me/x", api=api)
    (drafter / drafter_config.CONFIG_FILE).unlink()
    with pytest.raises(FileNotFoundError, match="not a diffuspec drafter folder"):
        hub.push_drafter(drafter, "me/x", api=api)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        hub.push_drafter(tmp_path / "nowhere", "me/x", api=api)
    assert api.calls == []


def test_push_without_card_writes_one(drafter, tmp_path):
    (drafter / "README.md").unlink()
    api = FakeHfApi(tmp_path / "remote")
    hub.push_drafter(drafter, "me/carded", api=api)
    card = (api.remote("me/carded") / "README.md").read_text()
    assert "# me/carded" in card and front_matter(card)["diffuspec"]["verifier"] == "Qwen/Qwen2.5-7B-Instruct"


def test_push_uploads_a_dflash_export(tmp_path):
    """A conditioned drafter exported with diffuspec.export pushes as it is: DFlash config, weights and the
    export's card (no diffuspec_config.json or tokenizer needed), and the pushed repo loads back as the drafter."""
    from diffuspec.export import export_drafter
    from diffuspec.models.conditioned import ConditionedDrafterConfig, ConditionedDrafterModel

    verifier = tiny_qwen2(seed=5, vocab_size=VOCAB, hidden_size=32, num_layers=2)
    config = ConditionedDrafterConfig.for_verifier(
        verifier.config, mask_token_id=MASK, block_size=3, feature_layers=[1, 2], verifier_name="me/tiny-verifier"
    )
    torch.manual_seed(0)
    ConditionedDrafterModel(config).save_pretrained(tmp_path / "trained")
    export = export_drafter(tmp_path / "trained", tmp_path / "export", repo_id="me/tiny-dflash")
    api = FakeHfApi(tmp_path / "remote")
    url = hub.push_drafter(export, "me/tiny-dflash", api=api)
    assert url == "https://huggingface.co/me/tiny-dflash"
    assert [(c[0], c[1]) for c in api.calls] == [("create_repo", "me/tiny-dflash"), ("upload_folder", "me/tiny-dflash")]
    remote = api.remote("me/tiny-dflash")
    assert sorted(p.name for p in remote.rglob("*") if p.is_file()) == ["README.md", "config.json", "model.safetensors"]
    raw = json.loads((remote / "config.json").read_text())
    assert raw["architectures"] == ["DFlashDraftModel"] and raw["block_size"] == 4
    card = (remote / "README.md").read_text()
    assert (
        front_matter(card)["base_model"] == "me/tiny-verifier"
        and "--speculative-draft-model-path me/tiny-dflash" in card
    )

    pushed = loading.load_conditioned_model(loading.resolve_local(remote))
    original = loading.load_conditioned_model(tmp_path / "trained")
    assert pushed.config.feature_layers == [1, 2] and pushed.config.block_size == 3
    expected = original.state_dict()
    assert pushed.state_dict().keys() == expected.keys()
    assert all(torch.equal(weight, expected[name]) for name, weight in pushed.state_dict().items())


def test_cli_push(drafter, tmp_path, monkeypatch, capsys):
    import huggingface_hub

    api = FakeHfApi(tmp_path / "remote")
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: api)
    assert cli_main(["push", str(drafter), "--repo-id", "me/cli-drafter", "--private"]) == 0
    assert capsys.readouterr().out.strip() == "https://huggingface.co/me/cli-drafter"
    assert (api.remote("me/cli-drafter") / drafter_config.CONFIG_FILE).is_file() and api.calls[0][2]["private"] is True
    assert cli_main(["push", str(tmp_path / "nowhere"), "--repo-id", "me/x"]) == 2


# ---------------------------------------------------------------- resolving names


def test_resolve_local_offline_unknown_id_fails_at_once(tmp_path):
    code = (
        "import time\nfrom diffuspec.loading import resolve_local\nstart = time.perf_counter()\n"
        "try:\n    resolve_local('nobody/no-such-drafter')\nexcept OSError as e:\n"
        "    print(round(time.perf_counter() - start, 3)); print(e)\n"
    )
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path), "HF_HOME": str(tmp_path)}
    result = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    seconds, message = result.stdout.split("\n", 1)
    assert float(seconds) < 2.0
    assert "'nobody/no-such-drafter' is not a local folder and the Hugging Face Hub is unreachable" in message


def test_resolve_local_missing_path_is_not_a_hub_id(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist .a local path, not a Hugging Face Hub id"):
        loading.resolve_local(tmp_path / "no" / "such" / "folder")
    with pytest.raises(FileNotFoundError):
        loading.resolve_local("./relative-missing")
    assert loading.resolve_local(tmp_path) == str(tmp_path)
