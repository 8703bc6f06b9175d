"""Run a profiler worker on N local processes through the runtime's one launcher (runtime/local_launch.py).

Why not our own: the team keeps one robust launcher (free port, per-rank timeout, kill all ranks on the
first failure, every rank's log); the profiler only adapts to it. Workers are forked from this process,
which has imported torch, so each rank starts in ~0.1 s.
"""

from __future__ import annotations

from typing import Any, Callable

from planner.errors import CheckFailedError


def _free_port() -> int:
    import socket

    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rendezvous_worker(worker: Callable[..., Any], port: int, threads: int, *args: Any) -> Any:
    """Join a gloo group whose store rank 0 hosts on ``port`` (tcp:// rendezvous), then run the worker.

    Why not the launcher's own rendezvous: its parent-hosted TCPStore left a forked rank stuck creating
    its store client in ~1 of 3 launches of 4 ranks here (traceback: runtime/local_launch.py _child,
    ``dist.TCPStore(..., is_master=False)``), while rank-0-hosted stores never hung in our trials.
    Drop this once runtime/local_launch.py is fixed.
    """
    import os

    import torch
    import torch.distributed as dist

    os.environ.pop("TORCHELASTIC_USE_AGENT_STORE", None)  # else torch connects to the launcher's store
    torch.set_num_threads(threads)
    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    try:
        return worker(*args)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


def run_local(worker: Callable[..., Any], nproc: int, *args: Any, timeout_s: float = 900.0,
              threads_per_rank: int = 1) -> list[Any]:
    """``worker(*args)`` on ``nproc`` forked gloo ranks (runtime.local_launch.run_ranks for forking,
    timeouts, logs and kill-on-failure); each rank's JSON-able return value. Raises LaunchError."""
    from runtime.local_launch import run_ranks

    port = _free_port()
    return run_ranks(_rendezvous_worker, nproc, worker, port, threads_per_rank, *args, timeout_s=timeout_s,
                     init_process_group=False, threads_per_rank=threads_per_rank).values


def launch_local(worker: Callable[[dict], Any], nproc: int, opts: dict, *, timeout_s: float = 900.0,
                 distributed: bool = True, threads_per_rank: int = 1) -> list[Any]:
    """Each rank's JSON-able return value; a failed rank becomes one line (its log goes to stderr)."""
    import sys

    from runtime.local_launch import LaunchError, run_ranks

    try:
        if distributed:
            return run_local(worker, nproc, opts, timeout_s=timeout_s, threads_per_rank=threads_per_rank)
        result = run_ranks(worker, nproc, opts, timeout_s=timeout_s, init_process_group=False,
                           threads_per_rank=threads_per_rank)
    except LaunchError as exc:
        print(str(exc), file=sys.stderr)
        first = str(exc).splitlines()[0] if str(exc) else "a rank failed"
        raise CheckFailedError(f"profiler run on {nproc} local processes failed: {first}") from None
    return result.values
