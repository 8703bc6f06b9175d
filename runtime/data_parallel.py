"""Data parallelism per the plan: DDP for ZeRO 0 / 1, FSDP2 ``fully_shard`` for ZeRO 2 / 3.

Every variant averages gradients over the 'dp' group, so one optimizer step is
theta <- theta - lr * mean_i grad L_i over the data-parallel replicas (with L_i the mean loss of
replica i's micro-batches), the same step the single-process model takes on the whole batch.

* ZeRO 0: ``DistributedDataParallel`` with the plan's bucket size; its buckets are all-reduced
  during backward (overlap). Gradient compression and the other sync topologies
  (``config.compression`` / ``config.grad_sync``) are DDP communication hooks registered by
  ``runtime.compression.register(ddp, config, dp_group)`` (issue 7).
* ZeRO 1: the same DDP, with the optimizer state sharded by ``ZeroRedundancyOptimizer``
  (``runtime.optim``): each rank updates the parameters it owns and broadcasts them.
* ZeRO 2 / 3: FSDP2 over the 'dp' mesh dimension, one FSDP unit per transformer block plus the
  chunk (embedding, head); ZeRO-2 keeps the gathered parameters from forward to backward
  (``reshard_after_forward=False``), ZeRO-3 frees them after forward and gathers them again
  for backward. Gradients are reduce-scattered (averaged), optimizer state follows the shards.

With tensor parallelism DDP sees the local TP shards as plain parameters
(``runtime.tensor_parallel.localize_for_ddp``); FSDP2 composes with the TP
DTensors natively (2-D parameters). Expert parameters (``_hybridplan_expert``) are left out of both:
they are averaged over 'edp' in ``runtime.grads``.
"""

from __future__ import annotations

import logging
import warnings

import torch
import torch.nn as nn
from torch.distributed.fsdp import fully_shard
from torch.distributed.tensor import DTensor
from torch.nn.parallel import DistributedDataParallel as DDP

from planner.errors import ConfigError
from planner.parallel_config import ParallelConfig
from runtime.grads import is_expert
from runtime.mesh import Topology
from runtime.model import ModelChunk
from runtime.tensor_parallel import localize_for_ddp

log = logging.getLogger(__name__)


def uses_fsdp(config: ParallelConfig) -> bool:
    return config.dp > 1 and config.zero_stage >= 2


def uses_manual_sync(config: ParallelConfig) -> bool:
    """zbv with ZeRO 0/1: the pipeline gets the bare chunk and gradients are all-reduced after the step.

    Why: zbv splits backward into input (B) and weight (W) passes; torch 2.13 arms DDP's reducer on the
    last B, but the weight gradients arrive in W, so DDP reduces incomplete gradients (measured: loss
    off by 6e-2 after 3 steps). ``allreduce_grads`` after the schedule is exact (no overlap)."""
    return config.dp > 1 and config.zero_stage < 2 and config.schedule == "zbv"


def check_supported(config: ParallelConfig, is_moe: bool) -> None:
    """Refuse, up front and in one line, what this runtime does not execute."""
    if config.dp > 1 and config.zero_stage >= 1 and is_moe:
        raise ConfigError("ZeRO (zero_stage >= 1) with MoE layers is not supported by the runtime yet: expert "
                          "parameters must be averaged over 'edp', which ZeroRedundancyOptimizer / FSDP over 'dp' "
                          "would break; use zero_stage 0")
    needs_hook = config.compression != "none" or config.grad_sync != "allreduce"
    if config.dp > 1 and config.schedule == "zbv" and config.zero_stage == 3:
        raise ConfigError("schedule zbv with ZeRO-3 gives wrong weight gradients in torch 2.13 (parameters are "
                          "resharded before the split weight-gradient pass); use ZeRO-2 or another schedule")
    if needs_hook and config.dp > 1 and config.schedule == "zbv":
        raise ConfigError(f"grad_sync={config.grad_sync} / compression={config.compression} need DDP hooks, which "
                          "zbv's split backward cannot drive (runtime.data_parallel.uses_manual_sync)")
    if needs_hook and config.dp > 1:
        if config.zero_stage >= 2:
            raise ConfigError(f"grad_sync={config.grad_sync} / compression={config.compression} need DDP "
                              "communication hooks; ZeRO-2/3 (FSDP) has none")
        try:
            import runtime.compression  # noqa: F401
        except ImportError as exc:
            raise ConfigError(f"plan asks for grad_sync={config.grad_sync}, compression={config.compression} but "
                              f"runtime.compression is not available ({exc})") from None


def wrap_chunk(chunk: ModelChunk, topo: Topology, config: ParallelConfig) -> nn.Module:
    """Apply the plan's data parallelism to one model chunk (after TP). Collective over the dp group."""
    check_supported(config, chunk.spec.is_moe)
    if config.dp == 1:
        return chunk
    if uses_fsdp(config):
        return _fsdp(chunk, topo, reshard_after_forward=config.zero_stage == 3)
    if uses_manual_sync(config):
        return chunk
    return _ddp(chunk, topo, config)


def _ddp(chunk: ModelChunk, topo: Topology, config: ParallelConfig) -> DDP:
    if any(isinstance(p, DTensor) for p in chunk.parameters()):
        localize_for_ddp(chunk)
    ignore = [n for n, p in chunk.named_parameters() if is_expert(p)]
    if ignore:
        DDP._set_params_and_buffers_to_ignore_for_model(chunk, ignore)
    device_ids = [topo.device.index] if topo.device.type == "cuda" else None
    with warnings.catch_warnings():
        # broadcast_buffers=False on purpose: MoE routing counters are rank-local buffers; torch 2.13's
        # suggested replacement (forward_sync_buffers) would still sync them once at construction.
        warnings.simplefilter("ignore", FutureWarning)
        ddp = DDP(chunk, device_ids=device_ids, process_group=topo.dp_group,
                  bucket_cap_mb=config.bucket_size_bytes / 2**20, broadcast_buffers=False)
    if not config.overlap_grad_reduce:
        log.info("overlap_grad_reduce=False: DDP always overlaps bucket all-reduce with backward; "
                 "the plan's setting only changes the cost model")
    if config.compression != "none" or config.grad_sync != "allreduce":
        from runtime.compression import register

        register(ddp, config, topo.dp_group)
    return ddp


def _fsdp(chunk: ModelChunk, topo: Topology, reshard_after_forward: bool) -> nn.Module:
    mesh = topo.world_mesh["dp"]
    for block in chunk.layers.values():
        fully_shard(block, mesh=mesh, reshard_after_forward=reshard_after_forward)
    fully_shard(chunk, mesh=mesh, reshard_after_forward=reshard_after_forward)
    return chunk


@torch.no_grad()
def allreduce_grads(modules: list[nn.Module], group, bucket_size_bytes: int) -> None:
    """Average the (local shards of the) dense gradients over ``group`` in flat buckets of about
    ``bucket_size_bytes``; expert parameters are left to runtime.grads (edp)."""
    size = torch.distributed.get_world_size(group)
    grads = []
    for m in modules:
        for p in m.parameters():
            if p.grad is not None and not is_expert(p):
                grads.append(p.grad.to_local() if isinstance(p.grad, DTensor) else p.grad)
    bucket: list[torch.Tensor] = []
    nbytes = 0

    def flush() -> None:
        if not bucket:
            return
        flat = torch.cat([g.reshape(-1) for g in bucket])
        torch.distributed.all_reduce(flat, group=group)
        flat.div_(size)
        offset = 0
        for g in bucket:
            g.copy_(flat[offset:offset + g.numel()].view_as(g))
            offset += g.numel()
        bucket.clear()

    for g in grads:
        if bucket and (g.dtype != bucket[0].dtype or nbytes + g.numel() * g.element_size() > bucket_size_bytes):
            flush()
            nbytes = 0
        bucket.append(g)
        nbytes += g.numel() * g.element_size()
    flush()


def set_grad_sync(module: nn.Module, enabled: bool):
    """Context for gradient accumulation over micro-batches: DDP reduces only on the last backward.

    FSDP (ZeRO-2/3) reduce-scatters every micro-batch instead: its gradients are sharded by definition
    (Rajbhandari et al. 2020 Sec 5.2), and the planner's memory model counts them sharded. Skipping the
    sync would accumulate full gradients of the whole chunk on every rank: for the default plan
    (Llama-3.1 70B, tp4, ZeRO-3, 32 micro-batches) 70 GB per GPU that the plan does not have."""
    import contextlib

    if isinstance(module, DDP):
        return contextlib.nullcontext() if enabled else module.no_sync()
    return contextlib.nullcontext()


def replicated_over_dp(config: ParallelConfig) -> bool:
    """After the sync, does every dp rank hold the full gradient (DDP, manual) rather than a shard (FSDP)?"""
    return config.dp > 1 and not uses_fsdp(config)
