"""Devices: where a model goes, and the one synchronisation every timer uses."""

from __future__ import annotations

import torch


def synchronize(device: torch.device | str) -> None:
    """Wait for queued accelerator work, so that a wall-clock reading brackets the real work (no-op on CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def resolve_device(device_map: str | int | torch.device | dict | None) -> torch.device:
    """One device for a whole model: ``None`` (CPU), a device or its name, an int (that CUDA device), ``"auto"``
    (the first CUDA device, else the CPU) or ``{"": device}``. A map that splits a model is refused."""
    if device_map is None:
        return torch.device("cpu")
    if isinstance(device_map, dict):
        if set(device_map) != {""}:
            raise ValueError(
                f"device_map {device_map!r} splits the model across devices; diffuspec places each model on one "
                'device: pass a device such as "cuda:0" or {"": "cuda:0"}'
            )
        device_map = device_map[""]
    if device_map == "auto":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    if isinstance(device_map, int):
        return torch.device("cuda", device_map)
    try:
        return torch.device(device_map)
    except RuntimeError as error:
        raise ValueError(f"device {device_map!r} is not a torch device: {error}") from None
