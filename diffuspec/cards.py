"""The model card of a drafter folder (``README.md``): front matter, usage, training facts and a marked evaluation
section.

``write_model_card`` writes the whole card from ``diffuspec_config.json`` and what training knows;
``update_model_card`` replaces only the section between ``CARD_BEGIN`` and ``CARD_END``, which ``diffuspec eval
--model-card FOLDER`` fills with its tables. Rewriting one part never loses the other.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .drafter_config import CONFIG_FILE, read_diffuspec_config
from .files import atomic_write_text

logger = logging.getLogger(__name__)

CARD_FILE = "README.md"
CARD_BEGIN = "<!-- diffuspec-eval:begin -->"
CARD_END = "<!-- diffuspec-eval:end -->"


def _eval_section(existing_card: str, eval_table: str | None) -> str:
    """The marked evaluation section: ``eval_table`` if given, else the card's current one, else a placeholder."""
    begin, end = CARD_BEGIN, CARD_END
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
        "from diffuspec.drafter_config import read_diffuspec_config\nfrom diffuspec.loading import resolve_local\n\n"
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
    return atomic_write_text(card_path, text)


def write_dflash_card(
    folder: str | os.PathLike, *, verifier: str, name: str, block_size: int, commands: Mapping[str, str]
) -> Path:
    """Write the card of an exported DFlash checkpoint: the verifier it serves with and the serving commands."""
    import yaml

    meta = {
        "base_model": verifier,
        "library_name": "transformers",
        "pipeline_tag": "text-generation",
        "tags": ["dflash", "diffuspec", "speculative-decoding", "drafter"],
    }
    served = "".join(f"{engine}:\n\n```bash\n{command}\n```\n\n" for engine, command in commands.items())
    text = (
        "---\n"
        + yaml.safe_dump(meta, sort_keys=False)
        + "---\n\n"
        + f"# {name}\n\n"
        + f"A DFlash block drafter for `{verifier}`, trained with diffuspec: it reads the verifier's hidden states and "
        + f"drafts {block_size - 1} tokens per block (block_size {block_size} counts the anchor). Its embedding and LM "
        + "head are the verifier's, so it serves only with that verifier; the verifier checks every drafted token, "
        + "so the output is the verifier's own.\n\n"
        + "## Serve\n\n"
        + served
        + "## Decode with diffuspec\n\n"
        + f'```python\nfrom diffuspec import SpeculativeDecoder\n\ndecoder = SpeculativeDecoder.from_pretrained("{verifier}", '
        + f'"{name}")\n```\n'
    )
    folder = Path(folder)
    return atomic_write_text(folder / CARD_FILE, text)


def update_model_card(folder: str | os.PathLike, section: str) -> Path:
    """Replace the marked section of ``folder/README.md`` with ``section`` (appended if the markers are absent)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"model card folder {folder} does not exist")
    readme = folder / CARD_FILE
    text = readme.read_text(encoding="utf-8") if readme.is_file() else ""
    begin, end = text.find(CARD_BEGIN), text.find(CARD_END)
    if begin != -1 and end > begin:
        text = text[:begin] + section + text[end + len(CARD_END) :].lstrip("\n")
    else:
        text = text.rstrip("\n") + ("\n\n" if text else "") + section
    return atomic_write_text(readme, text)
