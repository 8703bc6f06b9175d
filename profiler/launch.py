"""Run a profiler worker on N local processes through the runtime's one launcher (runtime/local_launch.py).

Why not our own: the team keeps one robust launcher (free port, per-rank timeout, kill all ranks on the
first failure, every rank's log); the profiler only adapts to it. Workers are forked from this process,
which has imported torch, so each rank starts in ~0.1 s.
"""

from __future__ import annotations

from typing import Any, Callable

from planner.errors import CheckFailedError


def parent_store_without_libuv() -> None:
    """Workaround, until runtime/local_launch.py does it: its parent-hosted rendezvous TCPStore (libuv
    backend) hangs ~1 in 3 launches of 4 forked ranks on this machine (empty rank logs, stuck in
    init_process_group); the same store with ``use_libuv=False`` never did in our trials (0 of 12 vs 4 of 12)."""
    import torch.distributed as dist

    if getattr(dist.TCPStore, "_hp_no_libuv", False):
        return
    original = dist.TCPStore

    def store(*args, **kwargs):
        if kwargs.get("is_master"):
            kwargs.setdefault("use_libuv", False)
        return original(*args, **kwargs)
    store._hp_no_libuv = True
    dist.TCPStore = store


def launch_local(worker: Callable[[dict], Any], nproc: int, opts: dict, *, timeout_s: float = 900.0,
                 distributed: bool = True, threads_per_rank: int = 1) -> list[Any]:
    """Each rank's JSON-able return value; a failed rank becomes one line (its log goes to stderr)."""
    import sys

    from runtime.local_launch import LaunchError, run_ranks

    parent_store_without_libuv()
    try:
        result = run_ranks(worker, nproc, opts, timeout_s=timeout_s, init_process_group=distributed,
                           threads_per_rank=threads_per_rank)
    except LaunchError as exc:
        print(str(exc), file=sys.stderr)
        first = str(exc).splitlines()[0] if str(exc) else "a rank failed"
        raise CheckFailedError(f"profiler run on {nproc} local processes failed: {first}") from None
    return result.values
