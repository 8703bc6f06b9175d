"""The one rank order, owned by the planner and imported by the runtime.

Axes, fastest-varying first: ``tp``, then ``dp``, then ``pp`` (Megatron-LM's ``tp-cp-ep-dp-pp``
with no context parallelism; expert parallelism is carved out of the ``tp x dp`` ranks of a
stage, see ``ep_groups``). Fastest-varying TP keeps tensor-parallel groups inside a node,
so the heaviest traffic stays on NVLink; pipeline neighbours are ``tp * dp`` ranks apart.

Worked table, world 8 = tp 2 x dp 2 x pp 2::

    rank  tp dp pp        tp groups: [0,1] [2,3] [4,5] [6,7]
      0    0  0  0        dp groups: [0,2] [1,3] [4,6] [5,7]
      1    1  0  0        pp groups: [0,4] [1,5] [2,6] [3,7]
      2    0  1  0
      3    1  1  0        i.e. numpy.arange(8).reshape(pp, dp, tp)
      4    0  0  1
      5    1  0  1
      6    0  1  1
      7    1  1  1

Expert parallelism (EP divides tp x dp): inside each pipeline stage the ``tp*dp`` ranks, in
rank order, are cut into consecutive blocks of ``ep``; each block holds all experts of a
layer, spread over its ``ep`` ranks, and blocks replicate each other (expert-data-parallel).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.errors import ConfigError

AXES_FASTEST_FIRST = ("tp", "dp", "pp")
RANK_ORDER_NAME = "tp-dp-pp"


@dataclass(frozen=True)
class Degrees:
    tp: int = 1
    dp: int = 1
    pp: int = 1
    ep: int = 1

    def __post_init__(self) -> None:
        for n in ("tp", "dp", "pp", "ep"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{n} degree must be a positive integer, got {v!r}")
        if (self.tp * self.dp) % self.ep:
            raise ConfigError(f"expert parallel degree {self.ep} must divide tp x dp = {self.tp * self.dp}")

    @property
    def world_size(self) -> int:
        return self.tp * self.dp * self.pp


def rank_of(degrees: Degrees, *, tp: int, dp: int, pp: int) -> int:
    return tp + degrees.tp * (dp + degrees.dp * pp)


def coords_of(degrees: Degrees, rank: int) -> dict[str, int]:
    if not 0 <= rank < degrees.world_size:
        raise ConfigError(f"rank {rank} outside world of {degrees.world_size}")
    tp = rank % degrees.tp
    dp = (rank // degrees.tp) % degrees.dp
    pp = rank // (degrees.tp * degrees.dp)
    inner = rank % (degrees.tp * degrees.dp)
    return {"tp": tp, "dp": dp, "pp": pp, "ep": inner % degrees.ep, "edp": inner // degrees.ep}


def groups(degrees: Degrees, axis: str) -> list[list[int]]:
    """All process groups along ``axis`` ('tp', 'dp', 'pp', 'ep', 'edp'), each a sorted rank list."""
    t, d, p, e = degrees.tp, degrees.dp, degrees.pp, degrees.ep
    if axis == "tp":
        return [[rank_of(degrees, tp=i, dp=j, pp=k) for i in range(t)] for k in range(p) for j in range(d)]
    if axis == "dp":
        return [[rank_of(degrees, tp=i, dp=j, pp=k) for j in range(d)] for k in range(p) for i in range(t)]
    if axis == "pp":
        return [[rank_of(degrees, tp=i, dp=j, pp=k) for k in range(p)] for j in range(d) for i in range(t)]
    inner = t * d
    if axis == "ep":
        return [[k * inner + b * e + i for i in range(e)] for k in range(p) for b in range(inner // e)]
    if axis == "edp":
        return [[k * inner + b * e + i for b in range(inner // e)] for k in range(p) for i in range(e)]
    raise ConfigError(f"unknown axis {axis!r} (expected tp, dp, pp, ep or edp)")


def group_span(degrees: Degrees, axis: str) -> int:
    """How many consecutive ranks one group of ``axis`` spans: decides which link level it crosses."""
    g = groups(degrees, axis)[0]
    return g[-1] - g[0] + 1


def crosses_nodes(degrees: Degrees, axis: str, devices_per_node: int) -> bool:
    """True when some group of ``axis`` has members on different nodes."""
    return any(len({r // devices_per_node for r in g}) > 1 for g in groups(degrees, axis))


def ranks_per_node_in_group(degrees: Degrees, axis: str, devices_per_node: int) -> int:
    """Members of one ``axis`` group that share a node (hierarchical collectives reduce inside these first)."""
    g = groups(degrees, axis)[0]
    first_node = g[0] // devices_per_node
    return sum(1 for r in g if r // devices_per_node == first_node)
