"""Safetensors checkpoints in and out: strict loading onto a meta-built model, sharded atomic saving.

Loading never random-initialises a 7B model first: the model is built on the meta device, every checkpoint
tensor is checked against the expected name and shape (missing, unexpected or mis-shaped keys all fail
loudly, nanoGPT-style), then assigned in place. Quantized loading goes through transformers' own
``from_pretrained`` (bitsandbytes quantizes while loading), after the same name and shape check on the safetensors
headers alone. Saving writes to a temporary folder and renames it, so a crash never leaves a half-written
checkpoint behind (``diffuspec.files.replace_folder_atomically``).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import PreTrainedConfig, PreTrainedModel

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
CPU = torch.device("cpu")


# ---------------------------------------------------------------- reading


def checkpoint_files(folder: str | os.PathLike) -> list[Path]:
    """The safetensors files of a folder: the shards named in the index, or the single file."""
    folder = Path(folder)
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text())["weight_map"]
        return [folder / name for name in sorted(set(weight_map.values()))]
    single = folder / SINGLE_FILE
    if single.is_file():
        return [single]
    raise FileNotFoundError(f"{folder} has neither {INDEX_FILE} nor {SINGLE_FILE} (only safetensors are supported)")


def iter_checkpoint(folder: str | os.PathLike, device: torch.device = CPU) -> Iterator[tuple[str, torch.Tensor]]:
    """Yield (name, tensor) over all shards, memory-mapped and loaded straight onto ``device``."""
    seen: set[str] = set()
    for path in checkpoint_files(folder):
        with safe_open(str(path), framework="pt", device=str(device)) as handle:
            for name in handle.keys():
                if name in seen:
                    raise ValueError(f"tensor {name!r} appears in more than one shard of {folder}")
                seen.add(name)
                yield name, handle.get_tensor(name)


def read_checkpoint(
    folder: str | os.PathLike,
    *,
    rename: Callable[[str], str] = lambda name: name,
    device: torch.device = CPU,
    dtype: torch.dtype | None = None,
) -> dict[str, torch.Tensor]:
    """All tensors of a folder under their renamed keys, cast to ``dtype`` when given."""
    state: dict[str, torch.Tensor] = {}
    for name, tensor in iter_checkpoint(folder, device):
        key = rename(name)
        if key in state:
            raise ValueError(f"two checkpoint tensors map onto {key!r} (the second is {name!r})")
        if dtype is not None and tensor.is_floating_point() and tensor.dtype != dtype:
            tensor = tensor.to(dtype)
        elif tensor.device.type == "cpu":
            # Own memory instead of a view into the mmapped file: the file's offsets are not SIMD-aligned, and
            # unaligned weights take other kernel paths, so logits would differ from the saved model's in the
            # last bit (and the file would stay open for the model's lifetime).
            tensor = tensor.clone()
        state[key] = tensor
    if dtype is None:  # one dtype for the whole model: the one holding most of the weights
        totals: dict[torch.dtype, int] = {}
        for tensor in state.values():
            if tensor.is_floating_point():
                totals[tensor.dtype] = totals.get(tensor.dtype, 0) + tensor.numel()
        if len(totals) > 1:
            main = max(totals, key=totals.__getitem__)
            state = {k: t.to(main) if t.is_floating_point() else t for k, t in state.items()}
    return state


# ---------------------------------------------------------------- strict loading


def _listing(names: set[str] | list[str], limit: int = 6) -> str:
    names = sorted(names)
    shown = ", ".join(names[:limit])
    return shown + (f" ... ({len(names)} in all)" if len(names) > limit else "")


def check_state_dict(expected: dict[str, torch.Size], state: dict[str, torch.Tensor], source: str) -> None:
    """Fail loudly unless ``state`` has exactly the expected keys with exactly the expected shapes."""
    missing = set(expected) - set(state)
    unexpected = set(state) - set(expected)
    problems = []
    if missing:
        problems.append(f"missing {_listing(missing)}")
    if unexpected:
        problems.append(f"unexpected {_listing(unexpected)}")
    wrong = [
        f"{key}: checkpoint {tuple(state[key].shape)} vs model {tuple(shape)}"
        for key, shape in sorted(expected.items())
        if key in state and state[key].shape != shape
    ]
    if wrong:
        problems.append(
            "shape mismatch " + "; ".join(wrong[:6]) + (f" ... ({len(wrong)} in all)" if len(wrong) > 6 else "")
        )
    if problems:
        raise ValueError(f"checkpoint {source} does not match the model: " + " | ".join(problems))


def build_from_state_dict(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    state: dict[str, torch.Tensor],
    *,
    source: str,
    device: torch.device,
) -> PreTrainedModel:
    """Build ``model_class(config)`` on the meta device and assign ``state`` into it, strictly.

    With tied embeddings the checkpoint carries no LM head; it is re-tied after assignment. Non-persistent
    buffers (RoPE inverse frequencies) are in no checkpoint, so their modules are rebuilt from the config.
    """
    with torch.device("meta"):
        model = model_class(config)
    expected = {key: tensor.shape for key, tensor in model.state_dict().items()}
    tied = bool(getattr(config, "tie_word_embeddings", False))
    if tied:
        expected.pop("lm_head.weight", None)
        state.pop("lm_head.weight", None)  # some exporters write the tied head anyway; the embedding wins
    check_state_dict(expected, state, source)
    model.load_state_dict(state, strict=False, assign=True)
    if tied:
        model.lm_head.weight = model.get_input_embeddings().weight
    _rebuild_meta_buffers(model, device)
    leftovers = [name for name, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if leftovers:
        raise RuntimeError(f"tensors left on the meta device after loading {source}: {_listing(leftovers)}")
    model.config.dtype = next(model.parameters()).dtype
    return model.eval()


def checkpoint_shapes(
    folder: str | os.PathLike, rename: Callable[[str], str] = lambda name: name
) -> dict[str, torch.Tensor]:
    """Every tensor of a folder as an empty meta tensor of its shape, read from the headers (no weights load)."""
    shapes: dict[str, torch.Tensor] = {}
    for path in checkpoint_files(folder):
        with safe_open(str(path), framework="pt") as handle:
            for name in handle.keys():
                key = rename(name)
                if key in shapes:
                    raise ValueError(f"two checkpoint tensors map onto {key!r} (the second is {name!r})")
                shapes[key] = torch.empty(handle.get_slice(name).get_shape(), device="meta")
    return shapes


def load_with_from_pretrained(
    model_class: type[PreTrainedModel],
    config: PreTrainedConfig,
    folder: str | os.PathLike,
    *,
    device: torch.device,
    dtype: torch.dtype | None,
    quantization_config: Any | None,
    rename: Callable[[str], str] = lambda name: name,
    key_mapping: dict[str, str] | None = None,
    zero_keys: frozenset[str] = frozenset(),
) -> PreTrainedModel:
    """Load a mapped checkpoint through ``model_class.from_pretrained`` (the path bitsandbytes quantizes on).

    The names and shapes are checked first, from the safetensors headers, as strictly as ``build_from_state_dict``
    checks them; ``key_mapping`` (transformers' regex renaming) must rename exactly as ``rename`` does.
    ``zero_keys`` are expected parameters the checkpoint may lack and that mean zero (Dream's q/k/v biases).
    """
    with torch.device("meta"):
        expected = {key: tensor.shape for key, tensor in model_class(config).state_dict().items()}
    if getattr(config, "tie_word_embeddings", False):
        expected.pop("lm_head.weight", None)
    shapes = checkpoint_shapes(folder, rename)
    if getattr(config, "tie_word_embeddings", False):
        shapes.pop("lm_head.weight", None)
    absent = {key for key in zero_keys if key not in shapes}
    check_state_dict({k: v for k, v in expected.items() if k not in absent}, shapes, str(folder))
    model = model_class.from_pretrained(
        folder,
        config=config,
        dtype=dtype or "auto",
        device_map={"": device},
        quantization_config=quantization_config,
        key_mapping=key_mapping,
    )
    with torch.no_grad():
        for key in absent:
            model.get_parameter(key).zero_()
    return model.eval()


def _rebuild_meta_buffers(model: torch.nn.Module, device: torch.device) -> None:
    for name, module in list(model.named_modules()):
        if any(buffer.is_meta for buffer in module.buffers(recurse=False)):
            rebuilt = type(module)(config=module.config).to(device)  # rotary embeddings take only the config
            parent_name, _, child = name.rpartition(".")
            setattr(model.get_submodule(parent_name), child, rebuilt)


def set_bidirectional(model: PreTrainedModel) -> None:
    """Full attention: the config flag drives the mask, the module flag drives flash/SDPA kernels."""
    model.config.is_causal = False
    for module in model.modules():
        if hasattr(module, "is_causal"):
            module.is_causal = False


# ---------------------------------------------------------------- writing


def write_checkpoint(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int) -> None:
    """Write ``state`` as one ``model.safetensors`` or as numbered shards plus the standard index."""
    shards: list[dict[str, torch.Tensor]] = [{}]
    sizes = [0]
    for key, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if shards[-1] and sizes[-1] + nbytes > max_shard_size:
            shards.append({})
            sizes.append(0)
        shards[-1][key] = tensor.detach().to("cpu").contiguous()
        sizes[-1] += nbytes
    metadata = {"format": "pt"}
    if len(shards) == 1:
        save_file(shards[0], str(folder / SINGLE_FILE), metadata=metadata)
        return
    weight_map = {}
    for number, shard in enumerate(shards, start=1):
        filename = f"model-{number:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(folder / filename), metadata=metadata)
        weight_map.update({key: filename for key in shard})
    index = {"metadata": {"total_size": sum(sizes)}, "weight_map": dict(sorted(weight_map.items()))}
    (folder / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")


def parse_size(size: int | str) -> int:
    """``5_000_000_000``, ``"5GB"`` or ``"500MiB"`` in bytes (decimal and binary units)."""
    if isinstance(size, int):
        return size
    text = size.strip().upper()
    for suffix, factor in (
        ("GIB", 2**30),
        ("MIB", 2**20),
        ("KIB", 2**10),
        ("GB", 10**9),
        ("MB", 10**6),
        ("KB", 10**3),
    ):
        if text.endswith(suffix):
            return int(float(text.removesuffix(suffix)) * factor)
    return int(text)
