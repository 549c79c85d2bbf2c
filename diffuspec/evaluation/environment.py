"""The environment record of a run (what a reader needs to reproduce its numbers), peak memory, and the CPU
allocator setting that interleaved timing needs."""

from __future__ import annotations

import functools
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch


def environment(device: torch.device) -> dict[str, Any]:
    """What a reader needs to reproduce the numbers: versions, threads, device, commit, command."""
    import transformers

    from .. import __version__

    commit = None
    try:
        repo = Path(__file__).resolve().parents[2]
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    env = {
        "date_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "diffuspec": __version__,
        "git_commit": commit,
        "cpu_count": os.cpu_count(),
        "torch_num_threads": torch.get_num_threads(),
        "steady_cpu_allocator": device.type == "cpu" and steady_cpu_allocator(),
        "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else _cpu_name(),
        "cuda": torch.version.cuda if device.type == "cuda" else None,
        "command": " ".join(sys.argv),
    }
    return env


def _cpu_name() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def peak_memory(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        return {
            "kind": "cuda_max_memory_allocated",
            "bytes": int(torch.cuda.max_memory_allocated(device)),
            "note": "per method in methods.<name>.peak_memory_bytes (reset before each call); this is the last call's",
        }
    return {
        "kind": "process_rss_peak",
        "bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,  # Linux reports KiB
        "note": "peak resident set size of the whole process (all models loaded, every method), from "
        "resource.getrusage; CPU memory cannot be attributed per method",
    }


@functools.cache
def steady_cpu_allocator() -> bool:
    """Stop glibc's malloc from handing freed memory back to the system between calls (Linux/glibc only; returns
    whether it applied; applied once per process, later calls only report).

    With glibc's defaults, large tensors are mmap-ed and freed memory is trimmed, so a method timed right after
    another one (interleaving) pays page faults to fault its buffers back in. On the quickstart's CPU models this
    slowed plain decoding by a third (256 vs 376 tok/s) and speculative methods less, inflating every speedup.
    A fixed mmap threshold (its largest value) and no trimming keep each method's memory warm."""
    import ctypes.util

    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    m_trim_threshold, m_mmap_threshold = -1, -3
    return bool(mallopt(m_mmap_threshold, 32 * 1024 * 1024)) and bool(mallopt(m_trim_threshold, 2**30))
