"""Alpha-beta times of collectives per link level, from the ClusterSpec, the rank order and an optional
measured profile.

Model (Thakur, Rabenseifner & Gropp 2005; Patarasuk & Yuan 2009 for the bandwidth-optimal ring), for a
group of n ranks, message ``nbytes`` per rank, link latency alpha and achieved per-rank bandwidth B:

* ring all-reduce:      2 (n-1) alpha + 2 (n-1)/n nbytes / B  (or NCCL's tree, 2 log2(n) alpha + 2 nbytes / B,
                        when faster)
* all-gather:           (n-1) alpha + (n-1)/n nbytes / B       (nbytes = the gathered output)
* reduce-scatter:       (n-1) alpha + (n-1)/n nbytes / B       (nbytes = the input)
* all-to-all:           (n-1) alpha + (n-1)/n nbytes / B       (nbytes = what one rank holds)
* send/recv:            alpha + nbytes / B
* hierarchical all-reduce (reduce-scatter inside the node, all-reduce of the 1/k shard across nodes,
  all-gather inside; Jia et al. 2018, NCCL's tree/ring split): three terms on their own link levels
* parameter server (central, one server rank; Li et al. 2014): every worker pushes and pulls nbytes
  through the server's one link: 2 (n-1) nbytes / B + 2 alpha

B is the ClusterSpec link's per-device bandwidth times ``BUS_EFFICIENCY`` (what NCCL achieves of the
spec-sheet number). A group's link level is the slowest level its members cross under the planner's
rank order (planner/rank_order.py): a group inside one node uses NVLink, one that spans nodes uses the
per-GPU NIC share. A ``profile`` (planner.profile.Profile) replaces both where it measured the
(op, group size, level); uncovered queries fall back to the spec sheet with one warning.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from planner.cluster_spec import ClusterSpec, LinkLevel
from planner.rank_order import Degrees, groups

log = logging.getLogger(__name__)

BUS_EFFICIENCY = {"intra_node": 0.80, "inter_node": 0.90}
"""Achieved bus bandwidth / spec-sheet bandwidth. Intra-node: nccl-tests all_reduce_perf on DGX A100
reaches ~230-240 GB/s bus bandwidth of NVLink3's 300 GB/s per direction, DGX H100 ~360 of 450 GB/s;
inter-node: ~22-23 GB/s of HDR's 25 GB/s per NIC (NVIDIA DGX SuperPOD reference numbers). Other level
names use the inter-node value."""

OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")


def _bw(link: LinkLevel) -> float:
    return link.bandwidth_bytes_per_s * BUS_EFFICIENCY.get(link.name, BUS_EFFICIENCY["inter_node"])


def ring_all_reduce_s(nbytes: float, n: int, link: LinkLevel) -> float:
    """Patarasuk & Yuan 2009: 2 (n-1) steps of nbytes / n each; NCCL switches to its double binary tree
    (2 log2 n latency steps, each rank sending the message twice; Sanders et al. 2009) when that is faster,
    i.e. for small messages on large groups."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    ring = 2 * (n - 1) * link.latency_s + 2 * (n - 1) / n * nbytes / _bw(link)
    tree = 2 * math.ceil(math.log2(n)) * link.latency_s + 2 * nbytes / _bw(link)
    return min(ring, tree)


def all_gather_s(nbytes: float, n: int, link: LinkLevel) -> float:
    """Ring all-gather of an ``nbytes`` output (Thakur et al. 2005)."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return (n - 1) * link.latency_s + (n - 1) / n * nbytes / _bw(link)


def reduce_scatter_s(nbytes: float, n: int, link: LinkLevel) -> float:
    """Ring reduce-scatter of an ``nbytes`` input: the mirror of all-gather."""
    return all_gather_s(nbytes, n, link)


def all_to_all_s(nbytes: float, n: int, link: LinkLevel) -> float:
    """Pairwise exchange: each rank keeps 1/n of its ``nbytes`` and sends the rest."""
    return all_gather_s(nbytes, n, link)


def send_recv_s(nbytes: float, link: LinkLevel) -> float:
    if nbytes <= 0:
        return 0.0
    return link.latency_s + nbytes / _bw(link)


def hierarchical_all_reduce_s(nbytes: float, n_intra: int, n_inter: int, intra: LinkLevel,
                              inter: LinkLevel) -> float:
    """Reduce-scatter in the node, all-reduce of the 1/n_intra shard across nodes, all-gather in the node."""
    return (reduce_scatter_s(nbytes, n_intra, intra)
            + ring_all_reduce_s(nbytes / max(n_intra, 1), n_inter, inter)
            + all_gather_s(nbytes, n_intra, intra))


def parameter_server_s(nbytes: float, n: int, link: LinkLevel) -> float:
    """Central parameter server: n-1 workers push their gradients and pull the update through one link."""
    if n <= 1 or nbytes <= 0:
        return 0.0
    return 2 * link.latency_s + 2 * (n - 1) * nbytes / _bw(link)


@lru_cache(maxsize=4096)
def group_layout(degrees: Degrees, axis: str, devices_per_node: int) -> tuple[int, int]:
    """(group size, members per node) of one ``axis`` group under the planner's rank order."""
    g = groups(degrees, axis)[0]
    first_node = g[0] // devices_per_node
    per_node = sum(1 for r in g if r // devices_per_node == first_node)
    return len(g), per_node


@dataclass
class Collectives:
    """Collective times for one cluster; ``profile`` (optional) replaces the spec sheet where it covers."""

    cluster: ClusterSpec
    profile: Any = None

    def __post_init__(self) -> None:
        self._warned: set[tuple[str, int, str]] = set()
        self._cache: dict[tuple, float] = {}

    def level(self, group_size: int, per_node: int) -> LinkLevel:
        """Intra-node link when the whole group shares a node, else the inter-node link."""
        return self.cluster.intra_node if per_node >= group_size else self.cluster.inter_node

    def time_s(self, op: str, nbytes: float, group_size: int, per_node: int | None = None) -> float:
        """Time of one collective ``op`` over a group of ``group_size`` with ``per_node`` members per node
        (default: as many as fit in one node; rank-order-aware callers pass ``group_layout``)."""
        if group_size <= 1 or nbytes <= 0:
            return 0.0
        if per_node is None:
            per_node = min(group_size, self.cluster.devices_per_node)
        key = (op, nbytes, group_size, per_node)
        got = self._cache.get(key)
        if got is None:
            got = self._time_s(op, nbytes, group_size, per_node)
            if len(self._cache) > 100_000:
                self._cache.clear()
            self._cache[key] = got
        return got

    def _time_s(self, op: str, nbytes: float, n: int, per_node: int) -> float:
        link = self.level(n, per_node)
        if self.profile is not None and op in OPS:
            measured = self.profile.collective_time_s(op, n, link.name, nbytes)
            if measured is not None:
                return float(measured)
            key = (op, n, link.name)
            if key not in self._warned:
                self._warned.add(key)
                log.warning("profile has no %s over %d ranks on %s; using the spec sheet", op, n, link.name)
        if op == "all_to_all" and per_node < n:
            # each rank sends (n - per_node)/n of its data through its own NIC and the rest over NVLink
            inter = self.cluster.inter_node
            return max((n - 1) * inter.latency_s + (n - per_node) / n * nbytes / _bw(inter),
                       (per_node - 1) / n * nbytes / _bw(self.cluster.intra_node))
        if op == "all_reduce":
            return ring_all_reduce_s(nbytes, n, self._ring_link(link, per_node))
        if op in ("all_gather", "reduce_scatter", "all_to_all"):
            return all_gather_s(nbytes, n, self._ring_link(link, per_node))
        if op == "send_recv":
            return send_recv_s(nbytes, link)
        if op == "hierarchical_all_reduce":
            if per_node >= n or per_node <= 1:
                return ring_all_reduce_s(nbytes, n, link)
            return hierarchical_all_reduce_s(nbytes, per_node, n // per_node, self.cluster.intra_node,
                                             self.cluster.inter_node)
        if op == "parameter_server":
            return parameter_server_s(nbytes, n, link)
        raise ValueError(f"unknown collective {op!r}")

    def _ring_link(self, link: LinkLevel, per_node: int) -> LinkLevel:
        """A ring over nodes with k members per node runs k rings at once (NCCL channels), each through
        a different NIC: the inter-node hop carries k x the per-GPU NIC share, capped by NVLink."""
        if per_node <= 1 or link is self.cluster.intra_node:
            return link
        intra = self.cluster.intra_node
        bw = min(_bw(intra), per_node * _bw(link)) / BUS_EFFICIENCY.get(link.name, BUS_EFFICIENCY["inter_node"])
        return LinkLevel(link.name, bw, link.latency_s, link.source)

    def p2p_s(self, nbytes: float, degrees: Degrees) -> float:
        """Send/recv between pipeline neighbours: tp x dp ranks apart in the rank order."""
        if degrees.pp <= 1:
            return 0.0
        stride = degrees.tp * degrees.dp
        same_node = stride < self.cluster.devices_per_node and degrees.world_size <= self.cluster.devices_per_node
        return self.time_s("send_recv", nbytes, 2, 2 if same_node else 1)
