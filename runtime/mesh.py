"""Process topology of a plan: the DeviceMesh and the process groups, from the planner's rank order.

The rank order is planner/rank_order.py's (tp fastest, then dp, then pp): the world mesh is
``arange(world).reshape(pp, dp, tp)`` with dims named ("pp", "dp", "tp"), and every group used
here is checked against ``rank_order.groups`` so the runtime cannot drift from the planner.
Expert parallelism cuts the tp x dp ranks of a stage into consecutive blocks of ``ep``
(rank_order's 'ep' and 'edp' groups), which is a second view ``reshape(pp, edp, ep)``.

Groups are created collectively (every rank calls ``dist.new_group`` for every group in the same
order), as torch.distributed requires; a rank keeps the one it belongs to.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh

from planner.errors import ConfigError
from planner.plan import Plan
from planner.rank_order import Degrees, coords_of, groups


@dataclass
class Topology:
    """This rank's place in the plan and the groups it talks over. ``None`` groups mean 'size 1'."""

    degrees: Degrees
    rank: int
    coords: dict[str, int]
    """tp, dp, pp, ep, edp coordinates of this rank (planner.rank_order.coords_of)."""
    device: torch.device
    world_mesh: DeviceMesh | None
    tp_group: dist.ProcessGroup | None
    dp_group: dist.ProcessGroup | None
    pp_group: dist.ProcessGroup | None
    ep_group: dist.ProcessGroup | None
    edp_group: dist.ProcessGroup | None
    tied_group: dist.ProcessGroup | None
    """{first pp rank, last pp rank} of this (tp, dp) position: sums the tied embedding's gradient."""

    @property
    def tp_mesh(self) -> DeviceMesh | None:
        return self.world_mesh["tp"] if self.world_mesh is not None and self.degrees.tp > 1 else None

    @property
    def dp_mesh(self) -> DeviceMesh | None:
        return self.world_mesh["dp"] if self.world_mesh is not None and self.degrees.dp > 1 else None

    @property
    def pp_rank(self) -> int:
        return self.coords["pp"]

    @property
    def dp_rank(self) -> int:
        return self.coords["dp"]

    @property
    def tp_rank(self) -> int:
        return self.coords["tp"]


def _my_group(degrees: Degrees, axis: str, rank: int, backend: str | None) -> dist.ProcessGroup | None:
    mine = None
    for ranks in groups(degrees, axis):
        g = dist.new_group(ranks, backend=backend)  # collective: every rank creates every group
        if rank in ranks:
            mine = g
    return mine


def default_device() -> torch.device:
    """cuda:LOCAL_RANK when CUDA is available (torchrun sets LOCAL_RANK), else cpu."""
    import os

    if torch.cuda.is_available():
        idx = int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count()
        torch.cuda.set_device(idx)
        return torch.device("cuda", idx)
    return torch.device("cpu")


def build_topology(plan: Plan, device: torch.device | None = None) -> Topology:
    """Create the mesh and groups for ``plan`` on the already initialised default process group."""
    degrees = plan.config.degrees
    device = device or default_device()
    if not dist.is_initialized():
        if degrees.world_size != 1:
            raise ConfigError(f"plan {plan.config.name} needs {degrees.world_size} processes; torch.distributed is "
                              "not initialised (launch with torchrun or runtime.local_launch)")
        return Topology(degrees, 0, coords_of(degrees, 0), device, None, None, None, None, None, None, None)
    world, rank = dist.get_world_size(), dist.get_rank()
    if world != degrees.world_size:
        raise ConfigError(f"plan {plan.config.name} needs dp x tp x pp = {degrees.world_size} processes, "
                          f"launched with {world}")
    mesh_ranks = torch.arange(world).reshape(degrees.pp, degrees.dp, degrees.tp)
    world_mesh = DeviceMesh(device.type, mesh_ranks, mesh_dim_names=("pp", "dp", "tp"))
    _check_mesh_matches_rank_order(world_mesh, degrees, rank)
    backend = None  # the default group's backend
    tp = world_mesh["tp"].get_group() if degrees.tp > 1 else None
    dp = world_mesh["dp"].get_group() if degrees.dp > 1 else None
    pp = world_mesh["pp"].get_group() if degrees.pp > 1 else None
    ep = _my_group(degrees, "ep", rank, backend) if degrees.ep > 1 else None
    edp = _my_group(degrees, "edp", rank, backend) if degrees.tp * degrees.dp // degrees.ep > 1 and plan.model.is_moe else None
    tied = None
    if plan.model.tied_embeddings and degrees.pp > 1:
        first = plan.stages[0].pp_rank
        last = plan.stages[-1].pp_rank
        if first != last:
            for ranks in groups(degrees, "pp"):
                pair = sorted({ranks[first], ranks[last]})
                g = dist.new_group(pair, backend=backend)
                if rank in pair:
                    tied = g
    return Topology(degrees, rank, coords_of(degrees, rank), device, world_mesh, tp, dp, pp, ep, edp, tied)


def _check_mesh_matches_rank_order(mesh: DeviceMesh, degrees: Degrees, rank: int) -> None:
    """The mesh's groups through this rank must be exactly planner.rank_order's."""
    for axis in ("tp", "dp", "pp"):
        mine = [g for g in groups(degrees, axis) if rank in g][0]
        got = sorted(int(r) for r in mesh[axis].mesh.flatten().tolist())
        if got != mine:
            raise ConfigError(f"device mesh {axis} group {got} disagrees with the planner's rank order {mine}")
