"""Aggregation topologies: hierarchical all-reduce and the central parameter server equal ring all-reduce.

Exactness: the inputs are small integers (as float32) divided by a power-of-two group size, so every
partial sum is a multiple of 1/p far below 2^24 and exactly representable; the sum is then independent of
the order in which a ring, a tree or a server adds it, and the topologies must agree bit for bit.
"""

from __future__ import annotations

import threading

import pytest
import torch
import torch._dynamo  # noqa: F401  DDP imports it lazily (~5 s per forked rank): once, in the parent
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel as DDP

from planner.parallel_config import ParallelConfig
from runtime.aggregation import AggregationState, CommThread, DpGroups, NodeLayout, aggregation_hook, make_sum
from runtime.compression import FlatBucket, register
from runtime.local_launch import launch


def test_node_layout():
    assert NodeLayout((0, 1, 2, 3), 2).nodes == [(0, 1), (2, 3)]
    assert NodeLayout((0, 1, 2, 3), 2).leaders == (0, 2)
    assert NodeLayout((0, 1, 2, 3), 3).nodes == [(0, 1, 2), (3,)]
    # a DP group strided by tp = 2 over nodes of 4 ranks
    lay = NodeLayout((1, 3, 5, 7), 4)
    assert lay.nodes == [(1, 3), (5, 7)] and lay.leaders == (1, 5) and lay.node_of(7) == (5, 7)


def test_hook_returns_before_the_sync_finishes():
    """Overlap: the hook hands the bucket to the comm thread and returns an unfinished future."""
    release = threading.Event()

    def slow_sum(t: torch.Tensor) -> torch.Tensor:
        release.wait(10)
        return t

    state = AggregationState(slow_sum, size=2, comm=CommThread())
    fut = aggregation_hook(state, FlatBucket(torch.full((4,), 3.0)))
    assert not fut.done()
    release.set()
    assert fut.wait().tolist() == [1.5] * 4
    inline = AggregationState(slow_sum, size=2, comm=None)  # overlap_grad_reduce off
    assert aggregation_hook(inline, FlatBucket(torch.ones(2))).done()


def _topologies_vs_ring(dpn_values: list[int], strided: bool) -> list[bool]:
    me, world = dist.get_rank(), dist.get_world_size()
    pg = None
    if strided:  # two DP groups [0, 2] and [1, 3], as with tp = 2
        made = [dist.new_group([0, 2]), dist.new_group([1, 3])]
        pg = made[me % 2]
    p = dist.get_world_size(pg)
    torch.manual_seed(me)
    x = torch.randint(-1000, 1000, (4099,)).float()
    ok = []
    for dpn in dpn_values:
        groups = DpGroups(pg, devices_per_node=dpn)
        ring = make_sum("allreduce", groups)(x.clone().div_(p))
        for mode in ("hierarchical", "ps"):
            out = make_sum(mode, groups)(x.clone().div_(p))
            ok.append(torch.equal(out, ring))
    assert world in (2, 4)
    return ok


@pytest.mark.parametrize("world,dpns,strided", [(4, [1, 2, 3, 4], False), (4, [2], True), (2, [1], False)])
def test_hierarchical_and_ps_equal_ring_bit_for_bit(world, dpns, strided):
    results = launch(_topologies_vs_ring, world, dpns, strided, timeout_s=120)
    assert all(all(r) for r in results), results


def _ddp_params_after_steps(grad_sync: str, overlap: bool) -> list[float]:
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.Tanh(), torch.nn.Linear(32, 2))
    ddp = DDP(net, bucket_cap_mb=0.001)  # several buckets in flight
    cfg = ParallelConfig(dp=4, tp=1, pp=1, micro_batch_size=1, global_batch_size=4, seq_len=1,
                         grad_sync=grad_sync, overlap_grad_reduce=overlap)
    register(ddp, cfg, None, devices_per_node=2)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1)
    for step in range(5):
        g = torch.Generator().manual_seed(100 * step + dist.get_rank())
        x = torch.randn(16, 8, generator=g)
        loss = ddp(x).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in net.parameters()]).tolist()


def test_ddp_training_with_each_topology_matches_ring():
    ring = launch(_ddp_params_after_steps, 4, "allreduce", True)
    for mode, overlap in (("hierarchical", True), ("ps", True), ("hierarchical", False)):
        got = launch(_ddp_params_after_steps, 4, mode, overlap)
        for r in range(4):
            # fp32 gradients of backward are not integers: the topologies add in different orders, so
            # results agree to fp32 rounding (~1e-7 relative), not bit for bit.
            assert torch.allclose(torch.tensor(got[r]), torch.tensor(ring[0]), atol=1e-6), mode
        assert got[0] == got[3]  # replicas stay identical: every rank receives the same sum
