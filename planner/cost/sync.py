"""Data-parallel gradient synchronisation and the optimizer step.

Gradients are reduced in fp32 buckets of ``config.bucket_size_bytes`` (torch DDP / Megatron DDP):
* zero_stage 0, grad_sync 'allreduce': ring all-reduce per bucket (Patarasuk & Yuan 2009);
  'hierarchical': reduce-scatter in the node, all-reduce across nodes, all-gather in the node;
  'ps': a central parameter server (push + pull through one link; Li et al. 2014), for comparison;
* zero_stage >= 1: reduce-scatter of the gradients, all-gather of the updated 16-bit parameters
  (Rajbhandari et al. 2020 Sec 5; Megatron distributed optimizer), i.e. a sharded parameter server;
  ZeRO-1 as torch's ZeroRedundancyOptimizer (``CostOptions.zero1``, hybridplan's runtime) all-reduces the
  gradients instead and broadcasts each owner's updated parameters (the all-gather's volume);
  ZeRO-2/3 as FSDP issue one collective per FSDP unit (a transformer block), not per bucket.
Compression (planner/compression.py, communication engineer) changes the bytes on the wire and adds
its encode / decode time on the compute stream (never hidden).

Overlap with backward (``overlap_grad_reduce``): buckets become ready evenly through the backward of the
last micro-batch (gradients accumulate locally before it); bucket i of n is ready at (i+1)/n x B and the
buckets are reduced one after the other, c seconds each. The last one ends at max_i ((i+1) B/n + (n-i) c)
= max(B/n + n c, B + c) (the max of a line is at an end), so the exposed time is
max(n c - B (1 - 1/n), c): only what the backward cannot cover, priced per bucket, no fixed coefficient.
"""

from __future__ import annotations

import math

from planner.cost import efficiency as eff
from planner.cost.rank_memory import memory_zero_stage

try:  # owned by the communication engineer; plain bytes until it lands
    from planner import compression as _compression
except ImportError:  # pragma: no cover
    _compression = None

_SYNC_OP = {"allreduce": "all_reduce", "hierarchical": "hierarchical_all_reduce", "ps": "parameter_server"}


def exposed_after_backward_s(total_comm_s: float, n_buckets: int, backward_s: float, overlap: bool) -> float:
    """Communication left over after the last backward (module docstring)."""
    if total_comm_s <= 0:
        return 0.0
    if not overlap or n_buckets <= 0:
        return total_comm_s
    c = total_comm_s / n_buckets
    return max(n_buckets * c - backward_s * (1 - 1 / n_buckets), c)


def grad_sync_s(comm, config, elements: float, axis: str, group_size: int, dtype_bytes: int,
                hidden: int, hbm_bytes_per_s: float, grad_bytes: int = 4,
                zero1_allreduce: bool = False, fsdp_units: int = 0,
                measured_s_per_element: float | None = None) -> tuple[float, int, float, float]:
    """(gradient-reduction seconds, buckets, parameter all-gather seconds, codec seconds) for ``elements``
    gradients of one rank over its ``axis`` group. ``comm(op, nbytes, axis) -> s``. ``zero1_allreduce``:
    ZeRO-1 reduces with a full all-reduce (ZeroRedundancyOptimizer beside DDP), not a reduce-scatter.
    ``fsdp_units``: ZeRO-2/3 run as FSDP (runtime/data_parallel.py: one ``fully_shard`` unit per transformer
    block plus the chunk), which issues one collective per unit, not per bucket; 0: buckets.
    ``measured_s_per_element``: the profile timed the runtime's sync of this compression method over this
    group size (profiler/grad_sync.py); it replaces the wire + codec model (both are in it)."""
    if group_size <= 1 or elements <= 0:
        return 0.0, 0, 0.0, 0.0
    GRAD_BYTES = grad_bytes  # noqa: N806 - the buffer's element size, fp32 or bf16
    total_bytes = elements * GRAD_BYTES
    n_b = max(1, math.ceil(total_bytes / config.bucket_size_bytes))
    if config.zero_stage >= 2 and fsdp_units > 0:
        n_b = fsdp_units
    per_elems = elements / n_b
    method = config.compression
    codec = 0.0
    if config.zero_stage >= 1:
        reduce_op = "all_reduce" if zero1_allreduce and config.zero_stage == 1 else "reduce_scatter"
        rs = n_b * comm(reduce_op, per_elems * GRAD_BYTES, axis)
        # ZeRO-3 re-gathers in every micro-batch (priced per micro-batch in assemble.py), except under
        # pipelining, which keeps the gathered parameters until the step (rank_memory.memory_zero_stage)
        ag = (n_b * comm("all_gather", per_elems * dtype_bytes, axis)
              if config.zero_stage < 3 or memory_zero_stage(config) < 3 else 0.0)
        return rs, n_b, ag, codec
    if method != "none" and measured_s_per_element:
        return elements * measured_s_per_element, n_b, 0.0, 0.0
    if method != "none" and _compression is not None:
        payload = _compression.payload_bytes(method, int(per_elems), config.compression_param, GRAD_BYTES,
                                             hidden=hidden)
        seq = _compression.sequential_collectives(method)
        if _compression.collective_kind(method) == "all_gather":
            one = comm("all_gather", payload * group_size, axis)
        else:
            one = seq * comm(_SYNC_OP[config.grad_sync] if seq == 1 else "all_reduce", payload / seq, axis)
        codec = n_b * _compression.codec_time_s(method, int(per_elems), config.compression_param, hbm_bytes_per_s,
                                                dtype_bytes=GRAD_BYTES, group_size=group_size, hidden=hidden)
        return n_b * one, n_b, 0.0, codec
    if method in ("fp16", "bf16"):  # without the compression module: a cast halves the fp32 bytes
        total_bytes /= 2
    return n_b * comm(_SYNC_OP[config.grad_sync], total_bytes / n_b, axis), n_b, 0.0, codec


def optimizer_s(params_on_rank: float, zero_stage: int, dp: int, hbm_bytes_per_s: float,
                s_per_param: float | None = None) -> float:
    """Adam step over the rank's (ZeRO-sharded) parameters: ``s_per_param`` x parameters when the profile
    measured the runtime's optimizer step (profiler ``optimizer_adamw_s_per_param``), else memory-bound
    (OPTIMIZER_BYTES_PER_PARAM streamed at the achievable HBM bandwidth)."""
    shard = dp if zero_stage >= 1 else 1
    if s_per_param:
        return params_on_rank / shard * s_per_param
    return params_on_rank / shard * eff.OPTIMIZER_BYTES_PER_PARAM / (hbm_bytes_per_s * eff.HBM_EFFICIENCY)
