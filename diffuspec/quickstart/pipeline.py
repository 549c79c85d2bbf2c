"""The quickstart pipeline: named stages, each cached in its own folder of the run directory.

A stage writes into a temporary folder that is renamed into place when it finishes
(``diffuspec.files.replace_folder_atomically``), together with a ``stage.json`` holding the fingerprint of the
settings it was built with. A rerun skips every stage whose folder exists with the same fingerprint; ``force``
rebuilds. A killed stage leaves no half-written folder.

Long stages (``Stage.resumable``) also get a work folder, ``.<name>.work-<fingerprint>`` beside their output, for
journals, shards and checkpoints that survive a kill: a rerun with the same settings continues from them, and the
folder is removed once the stage is in place.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ..files import replace_folder_atomically, write_json
from .config import QuickstartConfig

STAGE_FILE = "stage.json"  # the fingerprint a stage folder was built with


@dataclass
class Stage:
    name: str
    needs: tuple[str, ...]
    build: Callable[[QuickstartConfig, Path, dict[str, Path]], None]  # (config, output folder, inputs)
    settings: tuple[str, ...]  # config fields this stage depends on (besides its inputs)
    resumable: bool = False  # build(config, out, inputs, work=...) gets a work folder that survives a kill


def fingerprint(config: QuickstartConfig, stage: Stage, upstream: dict[str, str]) -> str:
    values = {name: config.to_dict()[name] for name in stage.settings}
    blob = json.dumps({"settings": values, "inputs": upstream}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def run_stages(
    stages: list[Stage],
    config: QuickstartConfig,
    run_dir: Path,
    force: bool = False,
    only: str | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Path]:
    """Build the stages in order (or just ``only``); returns each stage's folder."""
    names = [s.name for s in stages]
    if only is not None and only not in names:
        raise ValueError(f"unknown quickstart stage {only!r}; stages are {names}")
    run_dir.mkdir(parents=True, exist_ok=True)
    folders: dict[str, Path] = {}
    prints: dict[str, str] = {}
    for stage in stages:
        out = run_dir / stage.name
        key = fingerprint(config, stage, {n: prints[n] for n in stage.needs})
        prints[stage.name] = key
        folders[stage.name] = out
        if only is not None and stage.name != only:
            continue
        for need in stage.needs:
            if not _is_built(folders[need], prints[need]):
                raise RuntimeError(f"stage {stage.name!r} needs stage {need!r}, which is not built; run it first")
        if not force and _is_built(out, key):
            log(f"[{stage.name}] cached in {out}")
            continue
        log(f"[{stage.name}] building ...")
        start = time.perf_counter()

        work = run_dir / f".{stage.name}.work-{key}"

        def fill(folder: Path, stage: Stage = stage, key: str = key, start: float = start, work: Path = work) -> None:
            inputs = {n: folders[n] for n in stage.needs}
            if stage.resumable:
                work.mkdir(exist_ok=True)
                stage.build(config, folder, inputs, work=work)
            else:
                stage.build(config, folder, inputs)
            write_json(folder / STAGE_FILE, {"fingerprint": key, "seconds": time.perf_counter() - start})

        replace_folder_atomically(fill, out, overwrite=True)
        shutil.rmtree(work, ignore_errors=True)
        log(f"[{stage.name}] done in {time.perf_counter() - start:.1f} s")
    return folders


def _is_built(folder: Path, key: str) -> bool:
    marker = folder / STAGE_FILE
    return marker.exists() and json.loads(marker.read_text())["fingerprint"] == key
