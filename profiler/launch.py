"""Run a profiler worker on N local processes through the runtime's one launcher (runtime/local_launch.py).

Why not our own: the team keeps one robust launcher (free port, per-rank timeout, kill all ranks on the
first failure, every rank's log); the profiler only adapts to it.
"""

from __future__ import annotations

from typing import Callable

from planner.errors import SpecError


def launch_local(worker: Callable[[dict], None], nproc: int, opts: dict, timeout_s: float = 600.0) -> None:
    try:
        from runtime import local_launch
    except ImportError:
        raise SpecError("--nproc needs runtime/local_launch.py (not installed yet); run under "
                        "`torchrun --standalone --nproc-per-node N -m profiler ...` instead") from None
    local_launch.launch(worker, nproc, opts, timeout_s=timeout_s)  # interface agreed with the runtime engineer
