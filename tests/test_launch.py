"""diffuspec.launch: a launched process ends with its group destroyed, its output flushed and its exit handlers run,
without interpreter finalization; a single process returns normally."""

import os
import subprocess
import sys

SCRIPT = """
import atexit, logging, sys
import torch.distributed as dist
from diffuspec.launch import end_launched_process

logging.basicConfig(stream=sys.stdout, level=logging.INFO, format="%(message)s")
atexit.register(lambda: print("exit handler ran"))
if sys.argv[1] == "group":
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=0, world_size=1)
print("buffered", end="")  # no newline: only a flush brings it out of a pipe
logging.getLogger("run").info(" and logged")
end_launched_process()
print("returned", dist.is_initialized())
"""


def run(tmp_path, world_size: str, mode: str) -> subprocess.CompletedProcess:
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "WORLD_SIZE": world_size}
    return subprocess.run(
        [sys.executable, str(script), mode, str(tmp_path / "store")],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_a_launched_process_exits_zero_with_its_output_and_exit_handlers(tmp_path):
    for mode in ("group", "none"):
        result = run(tmp_path, "2", mode)
        assert result.returncode == 0, result.stderr
        assert result.stdout == "buffered and logged\nexit handler ran\n", mode  # nothing after the call ran


def test_a_single_process_returns_with_its_group_destroyed(tmp_path):
    result = run(tmp_path, "1", "group")
    assert result.returncode == 0, result.stderr
    assert result.stdout == "buffered and logged\nreturned False\nexit handler ran\n"
