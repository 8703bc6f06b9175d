"""Aggregation topologies for data-parallel gradient sync, executed with torch.distributed.

The search may set ``ParallelConfig.grad_sync`` to one of (planner/parallel_config.py GRAD_SYNC):

- ``allreduce``: one all-reduce over the DP group (gloo/NCCL ring). DDP's default, no hook needed.
- ``hierarchical``: reduce inside each node to a node leader, all-reduce among the node leaders, broadcast
  inside each node (Goyal et al. 2017 Sec 4; Horovod's hierarchical allreduce). Only leaders cross the
  slow inter-node link, with the full gradient.
- ``ps``: a classic central parameter server (Li et al. OSDI'14): every worker sends its gradient to the
  server rank (gather), the server sums, and sends the sum back to each worker (scatter of identical
  copies), so the server moves (p-1) x the gradient each way: the seed's baseline for comparison.
  (The sharded parameter server, reduce-scatter + all-gather, is ZeRO/FSDP: runtime/ DP setup.)

A node is ``devices_per_node`` consecutive global ranks (torchrun's layout, planner.cluster_spec). On one
machine tests pass a fake ``devices_per_node`` to get several "nodes".

Execution model (why a comm thread). DDP calls a communication hook once per bucket during backward and
expects a future. Multi-stage syncs (hierarchical: 3 collectives; int8: 2) cannot be chained with blocking
waits inside gloo future callbacks: those run on gloo's worker threads (2 per group), and two buckets
waiting there for their next stage starve the queue and deadlock (reproduced: 20 buckets on 2 ranks hang). So ``CommThread`` runs each bucket's
whole sync on one dedicated Python thread, buckets in submission order (the same order on every rank, so
collectives match; on CUDA it runs on the training thread's device, not exercised here: no GPU in CI), and the
hook returns at once: backward keeps computing while buckets reduce
(the overlap of ``overlap_grad_reduce``). The syncs use their own process groups (``DpGroups``), created
collectively, so nothing else that runs on the DP group can interleave with them.
"""

from __future__ import annotations

import os
import queue
import threading
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

from planner.errors import ConfigError

SumFn = Callable[[torch.Tensor], torch.Tensor]
"""Sums a tensor over the DP group in place and returns it (blocking; called on the comm thread)."""


@dataclass(frozen=True)
class NodeLayout:
    """Where the ranks of one DP group sit: nodes are ``devices_per_node`` consecutive global ranks."""

    group_ranks: tuple[int, ...]
    """Global ranks of the DP group, sorted."""
    devices_per_node: int

    def __post_init__(self) -> None:
        if self.devices_per_node <= 0:
            raise ConfigError(f"devices_per_node must be positive, got {self.devices_per_node}")

    @property
    def nodes(self) -> list[tuple[int, ...]]:
        """The group's ranks per node, nodes in rank order."""
        out: dict[int, list[int]] = {}
        for r in self.group_ranks:
            out.setdefault(r // self.devices_per_node, []).append(r)
        return [tuple(v) for _, v in sorted(out.items())]

    @property
    def leaders(self) -> tuple[int, ...]:
        return tuple(n[0] for n in self.nodes)

    def node_of(self, rank: int) -> tuple[int, ...]:
        return next(n for n in self.nodes if rank in n)


def default_devices_per_node() -> int:
    """torchrun sets LOCAL_WORLD_SIZE to the ranks of this node; without it everything is one node."""
    return int(os.environ.get("LOCAL_WORLD_SIZE", dist.get_world_size()))


_KEEP_ALIVE: list = []
"""Every group made here lives as long as the process. A gloo group whose last reference is dropped on one
of its own worker threads (by a future callback's closure, as torch's PowerSGD hook holds) aborts the
process ("Resource deadlock avoided": the thread joins itself); ``destroy_process_group`` still ends them."""


class DpGroups:
    """Process groups the syncs run on, for this rank's DP group: a private clone of the DP group, the
    intra-node group of this rank, and the node leaders' group (None where this rank is not a member).

    Collective over the default group: every rank must construct it at the same point (the DP setup runs
    SPMD), because ``new_group`` must be called by all ranks for every group, in the same order."""

    def __init__(self, process_group: dist.ProcessGroup | None, devices_per_node: int | None = None):
        dpn = devices_per_node or default_devices_per_node()
        mine = tuple(dist.get_process_group_ranks(process_group or dist.group.WORLD))
        everyone: list[tuple[int, ...] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(everyone, mine)
        me = dist.get_rank()
        self.layout = NodeLayout(mine, dpn)
        self.clone = self.intra = self.leaders = None
        for ranks in sorted(set(everyone)):  # identical order on every rank
            layout = NodeLayout(ranks, dpn)
            clone = dist.new_group(list(ranks))
            intra = {node: dist.new_group(list(node)) for node in layout.nodes}
            leaders = dist.new_group(list(layout.leaders))
            if ranks == mine:
                self.clone, self.leaders = clone, leaders
                self.intra = intra[layout.node_of(me)]
        _KEEP_ALIVE.extend(g for g in (self.clone, self.intra, self.leaders) if g is not None)

    @property
    def size(self) -> int:
        return len(self.layout.group_ranks)


def ring_sum(groups: DpGroups) -> SumFn:
    def run(t: torch.Tensor) -> torch.Tensor:
        dist.all_reduce(t, group=groups.clone)
        return t
    return run


def hierarchical_sum(groups: DpGroups) -> SumFn:
    """Reduce to the node leader, all-reduce among leaders, broadcast inside the node."""
    me = dist.get_rank()
    node = groups.layout.node_of(me)
    leader = node[0]

    def run(t: torch.Tensor) -> torch.Tensor:
        if len(node) > 1:
            dist.reduce(t, dst=leader, group=groups.intra)
        if me == leader and len(groups.layout.leaders) > 1:
            dist.all_reduce(t, group=groups.leaders)
        if len(node) > 1:
            dist.broadcast(t, src=leader, group=groups.intra)
        return t
    return run


def parameter_server_sum(groups: DpGroups) -> SumFn:
    """Central PS on the group's first rank: gather every gradient, sum in rank order, scatter copies back."""
    me = dist.get_rank()
    server = groups.layout.group_ranks[0]
    p = groups.size

    def run(t: torch.Tensor) -> torch.Tensor:
        if me == server:
            parts = [torch.empty_like(t) for _ in range(p)]
            dist.gather(t, parts, dst=server, group=groups.clone)
            total = parts[0]
            for x in parts[1:]:
                total.add_(x)
            dist.scatter(t, [total] * p, src=server, group=groups.clone)
        else:
            dist.gather(t, None, dst=server, group=groups.clone)
            dist.scatter(t, None, src=server, group=groups.clone)
        return t
    return run


def make_sum(grad_sync: str, groups: DpGroups) -> SumFn:
    if grad_sync == "allreduce":
        return ring_sum(groups)
    if grad_sync == "hierarchical":
        return hierarchical_sum(groups)
    if grad_sync == "ps":
        return parameter_server_sum(groups)
    raise ConfigError(f"grad_sync must be allreduce, hierarchical or ps, got {grad_sync!r}")


class CommThread:
    """One daemon thread that runs bucket syncs in submission order and completes their futures."""

    def __init__(self) -> None:
        self._device = torch.cuda.current_device() if torch.cuda.is_available() and torch.cuda.is_initialized() \
            else None
        self._jobs: queue.Queue = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name="grad-sync", daemon=True)
        self._thread.start()

    def submit(self, fn: Callable[[], torch.Tensor]) -> torch.futures.Future:
        fut: torch.futures.Future = torch.futures.Future()
        self._jobs.put((fn, fut))
        return fut

    def _loop(self) -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            # the current device is per thread: take the training thread's, where the buckets live
            torch.cuda.set_device(self._device)
        while True:
            fn, fut = self._jobs.get()
            try:
                fut.set_result(fn())
            except BaseException as exc:  # surfaced to DDP, which re-raises on the training thread
                fut.set_exception(exc)


@dataclass
class AggregationState:
    """State of the plain (uncompressed) hierarchical / ps hooks."""

    sum_fn: SumFn
    size: int
    comm: CommThread | None
    """None: sync inline in the hook (overlap_grad_reduce off)."""


def aggregation_hook(state: AggregationState, bucket):  # unannotated: DDP checks annotations as objects
    """DDP comm hook: average the bucket over the DP group with ``state.sum_fn`` on the comm thread."""
    buf = bucket.buffer()

    def run() -> torch.Tensor:
        return state.sum_fn(buf.div_(state.size))
    if state.comm is None:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(run())
        return fut
    return state.comm.submit(run)


def register_aggregation(ddp_model, grad_sync: str, process_group: dist.ProcessGroup | None,
                         devices_per_node: int | None = None, *, overlap: bool = True) -> AggregationState:
    groups = DpGroups(process_group, devices_per_node)
    state = AggregationState(make_sum(grad_sync, groups), groups.size, CommThread() if overlap else None)
    ddp_model.register_comm_hook(state, aggregation_hook)
    return state
