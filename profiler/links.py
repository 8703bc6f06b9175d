"""`python -m profiler links`: collective time over message sizes, every rank running at once.

Run on the real world (torchrun, or ``--nproc N`` local gloo processes). For each link level and group
size, the world is cut into disjoint groups that all run the same collective at the same time, as the
TP / DP groups of a training run do, so a shared NIC or shared CPU cores are measured under their real
load (issue #5). Groups:

* ``intra_node``: consecutive ranks inside one node (the planner's rank order puts TP, then DP, there);
  group sizes: every power of two from 2 up to the ranks per node, and the ranks per node itself.
* ``inter_node``: one rank per node, same local rank, consecutive nodes; group sizes likewise up to the
  node count. On one machine (``--nproc``, or torchrun with one node) there is no inter_node level.

Each repeat: world barrier, then ``inner`` back-to-back calls on each rank (``inner`` agreed by all ranks
from the warm-up so one repeat lasts at least ``--min-repeat-ms``; amortises the barrier skew of tiny
messages); the sample is the slowest rank's mean per-call time (a collective finishes when its last
member does). send_recv is a ping-pong between the two ranks of a pair, half the round trip (one-way).
``nbytes`` conventions: see planner.profile.CollectiveSample.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from planner.profile import COLLECTIVE_OPS, CollectiveSample
from profiler.timing import synchronize, time_call_s


@dataclass(frozen=True)
class LinkSweep:
    """What to sweep; defaults suit a CPU host (a GPU host wants --max-bytes 1GiB)."""

    ops: tuple[str, ...] = COLLECTIVE_OPS
    min_bytes: int = 4096
    max_bytes: int = 16 * 2**20
    factor: int = 4
    warmup: int = 2
    repeats: int = 7
    min_repeat_ms: float = 2.0

    def sizes(self) -> list[int]:
        out, n = [], self.min_bytes
        while n <= self.max_bytes:
            out.append(n)
            n *= self.factor
        return out


def _group_sizes(n: int) -> list[int]:
    sizes = [2**k for k in range(1, int(math.log2(n)) + 1)] if n >= 2 else []
    if n >= 2 and n not in sizes:
        sizes.append(n)
    return sizes


def group_layouts(world: int, per_node: int) -> list[tuple[str, int, list[list[int]]]]:
    """(link_level, group_size, disjoint groups of global ranks that run concurrently)."""
    nodes = world // per_node
    out = []
    for g in _group_sizes(per_node):
        groups = [list(range(node * per_node + i * g, node * per_node + (i + 1) * g))
                  for node in range(nodes) for i in range(per_node // g)]
        out.append(("intra_node", g, groups))
    for g in _group_sizes(nodes):
        groups = [[lr + per_node * (j * g + k) for k in range(g)] for lr in range(per_node) for j in range(nodes // g)]
        out.append(("inter_node", g, groups))
    return out


def _op_fn(op: str, nbytes: int, group_ranks: list[int], group, device: torch.device):
    """A closure running one ``op`` of about ``nbytes`` on this rank's group, and the exact bytes."""
    g = len(group_ranks)
    numel = max(g, (nbytes // 4) // g * g)
    x = torch.ones(numel, dtype=torch.float32, device=device)
    if op == "all_reduce":
        return (lambda: dist.all_reduce(x, group=group)), x.nbytes
    if op == "all_gather":  # nbytes = gathered output
        shard = torch.ones(numel // g, dtype=torch.float32, device=device)
        out = torch.empty(numel, dtype=torch.float32, device=device)
        fn = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        return (lambda: fn(out, shard, group=group)), out.nbytes
    if op == "reduce_scatter":  # nbytes = input
        out = torch.empty(numel // g, dtype=torch.float32, device=device)
        fn = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        return (lambda: fn(out, x, group=group)), x.nbytes
    if op == "all_to_all":
        out = torch.empty_like(x)
        return (lambda: dist.all_to_all_single(out, x, group=group)), x.nbytes
    if op == "send_recv":
        me = dist.get_rank()
        peer = group_ranks[1] if me == group_ranks[0] else group_ranks[0]
        first = me == group_ranks[0]

        def ping_pong() -> None:
            if first:
                dist.send(x, dst=peer)
                dist.recv(x, src=peer)
            else:
                dist.recv(x, src=peer)
                dist.send(x, dst=peer)
        return ping_pong, x.nbytes
    raise ValueError(f"unknown collective {op!r}")


def _world_max(values: list[float], device: torch.device) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return t.tolist()


def run_sweep(sweep: LinkSweep, per_node: int, device: torch.device) -> list[CollectiveSample]:
    """Collective samples of every (level, group size, op, size); identical list on every rank.

    Repeats are taken in rounds (one timed repeat of every size of an op per round), so load drift on a
    shared machine spreads over the whole curve instead of bending one part of it.
    """
    world, rank = dist.get_world_size(), dist.get_rank()
    samples: list[CollectiveSample] = []
    for level, g, groups in group_layouts(world, per_node):
        handles = [dist.new_group(ranks) for ranks in groups]  # every rank creates every group, same order
        mine = next(i for i, ranks in enumerate(groups) if rank in ranks)
        ranks, group = groups[mine], handles[mine]
        for op in sweep.ops:
            if op == "send_recv" and g != 2:
                continue
            cases = []  # one op at a time: its buffers of every size live together (memory bound)
            for size in sweep.sizes():
                fn, nbytes = _op_fn(op, size, ranks, group, device)
                warm = []
                for _ in range(sweep.warmup):
                    dist.barrier()
                    warm.append(time_call_s(fn, device))
                per_call = _world_max([min(warm) if warm else 1e-3], device)[0]
                inner = int(min(64, max(1, math.ceil(sweep.min_repeat_ms / 1000.0 / max(per_call, 1e-9)))))
                cases.append((nbytes, fn, inner, []))
            for _ in range(sweep.repeats):
                for nbytes, fn, inner, times in cases:
                    dist.barrier()
                    times.append(time_call_s(fn, device, inner))
            synchronize(device)
            for nbytes, fn, inner, times in cases:
                for t in _world_max(times, device):
                    if op == "send_recv":
                        t /= 2.0  # ping-pong round trip -> one-way
                    samples.append(CollectiveSample(op=op, group_size=g, link_level=level, nbytes=float(nbytes),
                                                    time_s=max(t, 1e-9), concurrency=per_node))
    return samples


def init_from_env(backend: str | None = None) -> tuple[torch.device, str, int]:
    """Join the process group torchrun (or the local launcher) describes; returns device, backend, per-node."""
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if torch.cuda.is_available() \
        else torch.device("cpu")
    backend = backend or ("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend)
    per_node = int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))
    return device, backend, per_node
