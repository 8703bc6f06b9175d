"""After backward, before the optimizer: finish every gradient reduction, then clip by the global norm.

Order (each step is a no-op where its group has one rank):

1. pending TP sums: sequence-parallel norm gradients left as ``Partial(sum)`` DTensors are reduced;
2. expert gradients: summed over replicas and averaged over the expert-data-parallel group
   (``runtime.moe.reduce_expert_grads``; DDP / FSDP leave expert parameters alone);
3. tied embeddings across pipeline stages: the first stage's embedding and the last stage's output
   copy receive the sum of both gradients (Megatron-LM's embedding group), so the copies stay equal;
4. global gradient norm over every unique parameter element of the whole model (each replicated copy
   counted once), and clipping by it: the same number ``torch.nn.utils.clip_grad_norm_`` gives on the
   single-process model.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
import torch.nn as nn
from torch.distributed.tensor import DTensor, Replicate

from runtime.mesh import Topology
from runtime.model import ModelChunk, registered
from runtime.tensor_parallel import TP_SPEC_ATTR, reduce_partial_grads


def is_expert(p: torch.Tensor) -> bool:
    return bool(getattr(p, "_hybridplan_expert", False))


def unwrap(module: nn.Module) -> ModelChunk:
    """The ModelChunk inside a DDP / FSDP wrapper."""
    m = module
    while not isinstance(m, ModelChunk):
        m = m.module
    return m


def local_grad(p: torch.Tensor) -> torch.Tensor | None:
    g = p.grad
    if g is None:
        return None
    return g.to_local() if isinstance(g, DTensor) else g


def counts_in_norm(p: torch.Tensor, topo: Topology, replicated_over_dp: bool) -> bool:
    """True on exactly one holder of each parameter element (see the module docstring, step 4)."""
    if is_expert(p):
        return topo.coords["edp"] == 0 and bool(getattr(p, "_hybridplan_expert_primary", True))
    if isinstance(p, DTensor):
        placements, mesh = p.placements, p.device_mesh
    elif hasattr(p, TP_SPEC_ATTR):  # a TP shard localised for DDP
        spec = getattr(p, TP_SPEC_ATTR)
        placements, mesh = spec.placements, spec.mesh
    else:
        placements, mesh = (), None
    for dim, pl in enumerate(placements):
        if isinstance(pl, Replicate) and mesh.get_local_rank(mesh_dim=dim) != 0:
            return False
    tp_sharded = mesh is not None and any(name == "tp" for name in (mesh.mesh_dim_names or ()))
    if not tp_sharded and topo.tp_rank != 0:
        return False  # a plain parameter is replicated over the TP group
    if replicated_over_dp and topo.dp_rank != 0:
        return False
    return True


@torch.no_grad()
def sync_tied_embeddings(chunks: list[nn.Module], topo: Topology) -> None:
    models = [unwrap(c) for c in chunks]
    if not models[0].spec.tied_embeddings:
        return
    grads = []
    for m in models:
        if m.embed is not None and m.head is None:
            grads.append(registered(m.embed.tok_embeddings))
        if m.holds_tied_copy:
            grads.append(registered(m.head.output))
    if not grads:
        return
    if len(grads) == 2:  # both ends on this rank (zbv puts chunk 0 and the last chunk on pp rank 0)
        total = local_grad(grads[0]) + local_grad(grads[1])
        local_grad(grads[0]).copy_(total)
        local_grad(grads[1]).copy_(total)
        return
    if topo.tied_group is None:
        raise RuntimeError("tied embeddings split over pipeline stages but no tied-embedding group was created")
    dist.all_reduce(local_grad(grads[0]), group=topo.tied_group)


@torch.no_grad()
def finalize_grads(chunks: list[nn.Module], topo: Topology, *, replicated_over_dp: bool,
                   max_norm: float | None, loss_share: torch.Tensor | None = None,
                   replicated_everywhere: bool = False) -> tuple[float, float]:
    """Steps 1-4 of the module docstring on this rank's chunks. Returns (global gradient norm, sum of
    ``loss_share`` over all ranks): the loss rides on the norm's all-reduce, so logging the global
    loss costs no extra collective per step. ``replicated_everywhere``: every rank holds every full
    gradient (DP-only DDP), so the norm is local, no collective is issued, and the loss share is
    returned as is (plain DDP + ``clip_grad_norm_`` does the same)."""
    for c in chunks:
        reduce_partial_grads(c)
    models = [unwrap(c) for c in chunks]
    if models[0].spec.is_moe:
        from runtime.moe import reduce_expert_grads

        for m in models:
            reduce_expert_grads(m, topo.edp_group)
    sync_tied_embeddings(chunks, topo)
    counted: dict[torch.dtype, list[torch.Tensor]] = {}
    for c, m in zip(chunks, models):
        skip = {id(registered(m.head.output))} if m.holds_tied_copy else set()
        for p in c.parameters():
            g = local_grad(p)
            if g is None or id(p) in skip:
                continue
            if not replicated_everywhere and not counts_in_norm(p, topo, replicated_over_dp):
                continue
            counted.setdefault(g.dtype, []).append(g)
    both = torch.zeros(2, dtype=torch.float64, device=topo.device)  # [sum of squares, loss share]
    for grads in counted.values():  # per-tensor norms in one fused call, as clip_grad_norm_ does
        both[0] += torch.stack(torch._foreach_norm(grads, 2)).double().pow(2).sum()
    if loss_share is not None:
        both[1] = loss_share.detach().double()
    if not replicated_everywhere and dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(both)
    norm = math.sqrt(both[0].item())
    if max_norm is not None and max_norm > 0:
        coef = max_norm / (norm + 1e-6)  # torch.nn.utils.clip_grad_norm_'s formula
        if coef < 1.0:
            grads = [g for c in chunks for p in c.parameters() if (g := local_grad(p)) is not None]
            torch._foreach_mul_(grads, coef)
    return norm, both[1].item()
