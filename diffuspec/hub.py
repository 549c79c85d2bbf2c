"""Hub I/O for drafters: resolving names to local folders, ``diffuspec_config.json``, model cards and push.

A drafter folder holds its weights (or a LoRA adapter), the tokenizer, ``diffuspec_config.json`` (what decoding
needs: mask token, logit shift, recommended CPS/ADL settings, the verifier it was aligned to, the training
objectives) and a ``README.md`` model card. ``diffuspec eval --model-card FOLDER`` rewrites the card's evaluation
section between the markers of ``diffuspec.evaluation.report``; everything else in the card is written here.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .config import ADLConfig, CPSConfig, DecodeConfig

logger = logging.getLogger(__name__)

CONFIG_FILE = "diffuspec_config.json"  # the marker models.loading reads (NATIVE_MARKER_FILE there)
CARD_FILE = "README.md"
# Trainer leftovers that are not part of a drafter: resumable checkpoints, logs, optimizer state, staging dirs.
PUSH_IGNORE = ["checkpoint-*/", "runs/", ".partial-*/", "*.tmp", "training_args.bin", "optimizer.pt", "scheduler.pt"]
WEIGHT_SUFFIXES = (".safetensors", ".bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model")


# ---------------------------------------------------------------- resolving names


def _looks_like_path(name: str) -> bool:
    """Hub ids are ``name`` or ``owner/name``; anything else is a filesystem path."""
    return name.startswith((".", "/", "~")) or name.count("/") > 1 or "\\" in name


def resolve_local(name_or_path: str | os.PathLike) -> str:
    """Return a local folder for ``name_or_path``, downloading a Hub id; fail at once, clearly, when offline."""
    path = Path(name_or_path)
    if path.exists():
        return str(path)
    if _looks_like_path(str(name_or_path)):
        raise FileNotFoundError(f"{str(name_or_path)!r} does not exist (a local path, not a Hugging Face Hub id)")
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(str(name_or_path))
    except Exception as error:  # the hub raises several types for 'offline' and 'unreachable'
        raise OSError(
            f"{name_or_path!r} is not a local folder and the Hugging Face Hub is unreachable or does not have it "
            f"({type(error).__name__}: {error}). Download it on a machine with network access and pass the folder."
        ) from error


# ---------------------------------------------------------------- diffuspec_config.json


def _no_proxy(cps: CPSConfig) -> dict[str, Any]:
    """CPS settings as JSON; the proxy LM is a runtime object, so it is never stored (pass it when decoding)."""
    return {k: v for k, v in dataclasses.asdict(cps).items() if k != "proxy"}


def decode_settings(config: DecodeConfig) -> dict[str, Any]:
    """A ``DecodeConfig`` as plain JSON (``cps`` / ``adl`` None when off)."""
    return {
        "cps": None if config.cps is None else _no_proxy(config.cps),
        "adl": None if config.adl is None else dataclasses.asdict(config.adl),
        "draft_length": config.draft_length,
    }


@dataclass
class DiffuspecConfig:
    """The contents of ``diffuspec_config.json``. Only ``mask_token_id`` and ``shifted`` are needed to load."""

    mask_token_id: int
    shifted: bool  # slot s is read from output row s - 1 (Dream) rather than row s (LLaDA)
    verifier: dict[str, Any] | None = None  # {"name": str, "vocab_size": int}: the model it was aligned to
    recommended_decode: dict[str, Any] | None = None  # decode_settings(DecodeConfig) that the evaluation chose
    objectives: dict[str, float] = field(default_factory=dict)  # objective name -> loss weight
    diffuspec_version: str | None = None

    def __post_init__(self) -> None:
        if isinstance(self.mask_token_id, bool) or not isinstance(self.mask_token_id, int) or self.mask_token_id < 0:
            raise ValueError(f"mask_token_id must be an int >= 0, got {self.mask_token_id!r}")
        if not isinstance(self.shifted, bool):
            raise ValueError(f"shifted must be true or false, got {self.shifted!r}")
        if self.verifier is not None:
            unknown = set(self.verifier) - {"name", "vocab_size"}
            if unknown or not isinstance(self.verifier.get("name"), str):
                raise ValueError(f'verifier must be {{"name": str, "vocab_size": int}}, got {self.verifier!r}')
            vocab = self.verifier.get("vocab_size")
            if vocab is not None and not (isinstance(vocab, int) and self.mask_token_id < vocab):
                raise ValueError(
                    f"verifier vocab_size must be an int > mask_token_id ({self.mask_token_id}), got {vocab}"
                )
        for name, weight in self.objectives.items():
            if not isinstance(weight, int | float) or weight < 0:
                raise ValueError(f"objective {name!r} needs a weight >= 0, got {weight!r}")
        if self.recommended_decode is not None:
            self.decode_config()  # CPSConfig / ADLConfig reject unknown keys and bad values

    def decode_config(self, proxy: Any = None) -> DecodeConfig:
        """The recommended ``DecodeConfig`` (defaults when none is recorded); ``proxy`` goes to CPS."""
        if self.recommended_decode is None:
            return DecodeConfig()
        settings = dict(self.recommended_decode)
        cps, adl = settings.pop("cps", None), settings.pop("adl", None)
        return DecodeConfig(
            cps=None if cps is None else CPSConfig(**cps, proxy=proxy),
            adl=None if adl is None else ADLConfig(**adl),
            **settings,
        )


def _atomic_write_text(path: Path, text: str) -> Path:
    """Write to a temporary file in the same folder and rename it into place: never half a file."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def write_diffuspec_config(
    folder: str | os.PathLike,
    *,
    mask_token_id: int,
    shifted: bool,
    verifier: str | None = None,
    verifier_vocab_size: int | None = None,
    recommended_decode: DecodeConfig | None = None,
    objectives: Mapping[str, float] | None = None,
) -> Path:
    """Write ``folder/diffuspec_config.json`` (validated first); returns its path."""
    from . import __version__

    config = DiffuspecConfig(
        mask_token_id=mask_token_id,
        shifted=shifted,
        verifier=None if verifier is None else {"name": str(verifier), "vocab_size": verifier_vocab_size},
        recommended_decode=None if recommended_decode is None else decode_settings(recommended_decode),
        objectives={str(k): float(v) for k, v in (objectives or {}).items()},
        diffuspec_version=__version__,
    )
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"drafter folder {folder} does not exist")
    return _atomic_write_text(folder / CONFIG_FILE, json.dumps(dataclasses.asdict(config), indent=2) + "\n")


def read_diffuspec_config(folder: str | os.PathLike) -> DiffuspecConfig:
    """Read and validate ``folder/diffuspec_config.json``; unknown keys are an error, not ignored."""
    path = Path(folder) / CONFIG_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: not a diffuspec drafter folder (see write_diffuspec_config)")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as error:
        raise ValueError(f"{path} is not valid JSON: {error}") from error
    known = {f.name for f in dataclasses.fields(DiffuspecConfig)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise ValueError(f"{path}: unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        return DiffuspecConfig(**raw)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{path}: {error}") from error


# ---------------------------------------------------------------- model card


def _card_markers() -> tuple[str, str]:
    """The evaluation owns the section's markers; imported lazily (evaluation imports this module)."""
    from .evaluation.report import CARD_BEGIN, CARD_END

    return CARD_BEGIN, CARD_END


def _eval_section(existing_card: str, eval_table: str | None) -> str:
    """The marked evaluation section: ``eval_table`` if given, else the card's current one, else a placeholder."""
    begin, end = _card_markers()
    if eval_table is not None:
        body = eval_table.replace(begin, "").replace(end, "").strip("\n")
        return f"{begin}\n{body}\n{end}\n"
    start, stop = existing_card.find(begin), existing_card.find(end)
    if start != -1 and stop > start:
        return existing_card[start : stop + len(end)] + "\n"
    placeholder = (
        "## Speculative decoding results\n\nNot evaluated yet: `diffuspec eval --model-card FOLDER` fills this."
    )
    return f"{begin}\n{placeholder}\n{end}\n"


def _front_matter(base_model: str | None, dataset: str | None, license: str | None, diffuspec: dict[str, Any]) -> str:
    import yaml

    meta: dict[str, Any] = {}
    if license is not None:
        meta["license"] = license
    if base_model is not None:
        meta["base_model"] = base_model
    if dataset is not None:
        meta["datasets"] = [dataset]
    meta["library_name"] = "transformers"
    meta["pipeline_tag"] = "text-generation"
    meta["tags"] = ["diffuspec", "speculative-decoding", "diffusion-language-model", "drafter"]
    meta["diffuspec"] = {k: v for k, v in diffuspec.items() if v is not None}
    return "---\n" + yaml.safe_dump(meta, sort_keys=False, allow_unicode=True) + "---\n"


def _read_front_matter(card: str) -> dict[str, Any]:
    """The YAML front matter of a card ({} if it has none; a broken one is logged and rewritten)."""
    import yaml

    if not card.startswith("---\n") or "\n---\n" not in card[4:]:
        return {}
    try:
        meta = yaml.safe_load(card[4 : card.index("\n---\n", 4)])
    except yaml.YAMLError as error:
        logger.warning("the model card's YAML front matter is broken (%s); writing a fresh one", error)
        return {}
    return meta if isinstance(meta, dict) else {}


def _settings_line(decode: dict[str, Any] | None) -> str:
    if decode is None:
        return "No recommended decoding settings recorded (diffuspec defaults apply)."
    cps = "off" if decode["cps"] is None else ", ".join(f"{k}={v}" for k, v in decode["cps"].items())
    if decode["adl"] is None:
        return f"Recommended decoding: CPS ({cps}); fixed draft length {decode['draft_length']}."
    adl = ", ".join(f"{k}={v}" for k, v in decode["adl"].items())
    return f"Recommended decoding: CPS ({cps}); ADL ({adl})."


def _usage(verifier: str, name: str) -> str:
    code = (
        "from diffuspec import SpeculativeDecoder\n"
        "from diffuspec.hub import read_diffuspec_config, resolve_local\n\n"
        f'drafter = resolve_local("{name}")\n'
        "decode = read_diffuspec_config(drafter).decode_config()  # the recommended CPS / ADL settings\n"
        f'decoder = SpeculativeDecoder.from_pretrained("{verifier}", drafter, config=decode)\n'
    )
    return f"```python\n{code}```\n\nor `diffuspec generate --verifier {verifier} --drafter {name} --prompt ...`.\n\n"


def write_model_card(
    folder: str | os.PathLike,
    *,
    base_model: str | None = None,
    verifier: str | None = None,
    dataset: str | None = None,
    objectives: Mapping[str, float] | None = None,
    steps: int | None = None,
    eval_table: str | None = None,
    license: str | None = None,
    repo_id: str | None = None,
) -> Path:
    """Write ``folder/README.md``: YAML front matter, usage, training facts and the marked evaluation section.

    Arguments not given keep the current card's values (base model, dataset, steps, license); ``verifier`` and
    ``objectives`` then come from ``diffuspec_config.json``. ``eval_table`` (markdown) fills the evaluation
    section; without it the current section is kept, so rewriting a card never loses results.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"drafter folder {folder} does not exist")
    card_path = folder / CARD_FILE
    existing = card_path.read_text(encoding="utf-8") if card_path.is_file() else ""
    previous = _read_front_matter(existing)
    base_model = base_model if base_model is not None else previous.get("base_model")
    dataset = dataset if dataset is not None else (previous.get("datasets") or [None])[0]
    license = license if license is not None else previous.get("license")
    steps = steps if steps is not None else (previous.get("diffuspec") or {}).get("steps")
    stored = read_diffuspec_config(folder) if (folder / CONFIG_FILE).is_file() else None
    if verifier is None and stored is not None and stored.verifier is not None:
        verifier = stored.verifier["name"]
    if objectives is None and stored is not None:
        objectives = stored.objectives
    vocab = stored.verifier.get("vocab_size") if stored is not None and stored.verifier else None

    name = repo_id or folder.resolve().name
    objective_text = ", ".join(f"{k} {v:g}" for k, v in (objectives or {}).items()) or "not recorded"
    rows = [
        ("base model", base_model or "not recorded"),
        ("verifier", f"{verifier} (vocabulary {vocab})" if vocab else verifier or "not recorded"),
        ("dataset", dataset or "not recorded"),
        ("objectives (weights)", objective_text),
        ("training steps", "not recorded" if steps is None else str(steps)),
    ]
    if stored is not None:
        rows.append(("mask token id / shifted logits", f"{stored.mask_token_id} / {str(stored.shifted).lower()}"))
    table = "| | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)
    diffuspec_meta = {"verifier": verifier, "verifier_vocab_size": vocab, "steps": steps}
    diffuspec_meta["objectives"] = dict(objectives) if objectives else None
    text = (
        _front_matter(base_model, dataset, license, diffuspec_meta)
        + f"\n# {name}\n\n"
        + f"A diffusion drafter aligned to `{verifier or 'its verifier'}` for lossless speculative decoding with "
        + "diffuspec: the verifier checks every drafted token, so the output distribution is the verifier's own.\n\n"
        + "## Use\n\n"
        + _usage(verifier or "VERIFIER", name)
        + "## Training\n\n"
        + table
        + "\n"
        + _settings_line(stored.recommended_decode if stored is not None else None)
        + "\n\n"
        + _eval_section(existing, eval_table)
    )
    return _atomic_write_text(card_path, text)


# ---------------------------------------------------------------- push


def check_drafter_folder(folder: str | os.PathLike) -> DiffuspecConfig:
    """Fail before any upload if ``folder`` is not a complete drafter (or adapter) folder; returns its config."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"drafter folder {folder} does not exist")
    config = read_diffuspec_config(folder)
    weights = [p.name for p in folder.iterdir() if p.is_file() and p.name.endswith(WEIGHT_SUFFIXES)]
    if not weights:
        raise FileNotFoundError(f"{folder} has no weights (*.safetensors or *.bin)")
    if not (folder / "config.json").is_file() and not (folder / "adapter_config.json").is_file():
        raise FileNotFoundError(f"{folder} has neither config.json (a model) nor adapter_config.json (an adapter)")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise FileNotFoundError(f"{folder} has no tokenizer ({' / '.join(TOKENIZER_FILES)}); save the verifier's")
    model_config = folder / "config.json"
    vocab = config.verifier.get("vocab_size") if config.verifier else None
    if vocab is not None and model_config.is_file():
        raw = json.loads(model_config.read_text(encoding="utf-8"))
        drafter_vocab = raw.get("vocab_size", (raw.get("text_config") or {}).get("vocab_size"))
        if drafter_vocab is not None and drafter_vocab != vocab:
            raise ValueError(
                f"{folder}: the drafter's vocabulary ({drafter_vocab}) differs from its verifier's ({vocab}); "
                "speculative decoding needs one embedding size"
            )
    return config


def push_drafter(
    folder: str | os.PathLike,
    repo_id: str,
    *,
    token: str | None = None,
    private: bool = False,
    api: Any = None,
    commit_message: str = "Upload diffuspec drafter",
) -> str:
    """Check ``folder``, create ``repo_id`` (kept if it exists) and upload the folder; returns the repo URL.

    ``api`` is an ``huggingface_hub.HfApi`` (or anything with its ``create_repo`` / ``upload_folder``); tests pass
    a fake. A folder without a README.md gets a card from ``diffuspec_config.json`` first (logged).
    """
    folder = Path(folder)
    check_drafter_folder(folder)
    if not (folder / CARD_FILE).is_file():
        logger.warning("%s has no %s; writing a model card from %s", folder, CARD_FILE, CONFIG_FILE)
        write_model_card(folder, repo_id=repo_id)
    if api is None:
        from huggingface_hub import HfApi

        api = HfApi(token=token)
    url = api.create_repo(repo_id=repo_id, token=token, private=private, repo_type="model", exist_ok=True)
    api.upload_folder(
        folder_path=str(folder),
        repo_id=repo_id,
        repo_type="model",
        token=token,
        commit_message=commit_message,
        ignore_patterns=PUSH_IGNORE,
    )
    return str(url)
