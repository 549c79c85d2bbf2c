"""How a script started by ``accelerate launch`` or ``torchrun`` ends, once its work is saved."""

from __future__ import annotations

import atexit
import os
import sys

import torch.distributed as dist


def end_launched_process() -> None:
    """Destroy the process group and, in a launch of several processes, leave through ``os._exit(0)`` after the
    exit handlers have run (logging, trackers) and the streams are flushed. Call it after the script's last
    collective (the runs end with a barrier): no process waits here for the others.

    Why not a plain return: FSDP2 modules keep the gloo group, and its C++ worker threads, alive past
    ``destroy_process_group`` (measured here on torch 2.13; anything else that holds the group, such as DDP's
    reducer, can do the same). Interpreter finalization then
    joins those threads while tearing Python down, which now and then aborts a process whose run has already
    finished and saved ("terminate called without an active exception"), and the launcher reports the run failed.
    A single process (no ``WORLD_SIZE`` above 1) returns normally.
    """
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return
    atexit._run_exitfuncs()  # what a normal exit runs first: logging.shutdown, trackers' teardown
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
