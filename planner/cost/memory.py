"""Memory per rank: weights, gradients, optimizer states (per ZeRO stage), activations in flight, other.

Static bytes per parameter (mixed-precision Adam; Rajbhandari et al. 2020, ZeRO, Sec 3.1, K = 12):
16-bit weights (2), fp32 gradient accumulation buffer (4: Megatron-LM keeps ``main_grad`` in fp32 and
reduces it in fp32, which is why Korthikanti et al. 2022 Fig. 1 shows exactly 18 bytes x 12 L h^2 / t), fp32
master weights + Adam m and v (12). An fp32 model has no separate master copy (optimizer 8). ZeRO stage 1
shards the optimizer states over the data-parallel group, stage 2 also the gradients, stage 3 also the
weights (ZeRO Sec 5). Routed-expert parameters are split over EP and sharded over the expert-data-parallel
group (tp x dp / ep ranks).

Activations: Korthikanti et al. 2022 Table 2 per layer and micro-batch, from the LayerGraph coefficients:
replicated tensors split over TP only with sequence parallelism, the rest over TP; selective recompute drops
the attention-core tensors (eq. 6), full recompute keeps only the layer input (2 s b h, split with SP). The
micro-batches in flight come from the schedule (planner/cost/pipeline.py), which reproduces eq. 5 (first
1F1B stage holds p) and the interleaved factor 1 + (p-1)/(p m).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost import efficiency as eff
from planner.layer_graph import Block

WEIGHT_BYTES_MIXED = 2
GRAD_BYTES = 4
"""fp32 gradient accumulation / reduction buffer (Megatron-LM ``main_grad``)."""
OPTIMIZER_BYTES_MIXED = 12
"""fp32 master weights + Adam first and second moments (ZeRO K = 12)."""


@dataclass(frozen=True)
class StaticBytesPerParam:
    weights: float
    grads: float
    optimizer: float


def bytes_per_param(dtype_bytes: int, zero_stage: int, shard: int, grad_bytes: int = GRAD_BYTES) -> StaticBytesPerParam:
    """Bytes per parameter on one rank after ZeRO sharding over ``shard`` ranks (ZeRO Sec 5, Fig. 1)."""
    w = float(dtype_bytes)
    g = float(grad_bytes)
    o = float(OPTIMIZER_BYTES_MIXED if dtype_bytes < 4 else 8)
    shard = max(shard, 1)
    if zero_stage >= 1:
        o /= shard
    if zero_stage >= 2:
        g /= shard
    if zero_stage >= 3:
        w /= shard
    return StaticBytesPerParam(w, g, o)


def block_params_on_rank(block: Block, tp: int, ep: int) -> tuple[float, float]:
    """(dense elements, routed-expert elements) of ``block`` one rank holds: matrices split over TP, norms
    and routers replicated, routed experts split over EP (Megatron-Core MoE with expert TP = 1)."""
    dense = (block.params - block.replicated_params - block.expert_params) / tp + block.replicated_params
    return dense, block.expert_params / ep


def activation_bytes(block: Block, *, tokens: int, seq_len: int, tp: int, sequence_parallel: bool,
                     recompute: str, dtype_bytes: int, hidden: int, is_layer_block: bool = True) -> float:
    """Activation bytes one micro-batch leaves on one rank for ``block`` (Korthikanti et al. 2022 Table 2)."""
    rep_div = tp if sequence_parallel else 1
    if recompute == "full" and is_layer_block:
        # only the block input is checkpointed: half of the layer's 2 s b h lands on each of its two blocks
        return tokens * hidden * dtype_bytes / 2 / rep_div
    core = 0.0 if recompute == "selective" else tokens * seq_len * block.act_core_per_seq / tp
    moe = tokens / tp * eff.MOE_IMBALANCE * block.act_expert
    return tokens * (block.act_rep / rep_div + block.act_tp / tp) + core + moe


def other_bytes(*, tokens: int, hidden: int, dtype_bytes: int, tp: int, sequence_parallel: bool,
                bucket_size_bytes: int, dp: int, pp: int, zero3_gather_bytes: float,
                family: str = "default") -> float:
    """Framework overhead, communication buffers: DDP/distributed-optimizer bucket (x2, one reducing while
    one fills), pipeline send/recv buffers (2 in, 2 out), the SP all-gather output, ZeRO-3 gathered weights."""
    act = tokens * hidden * dtype_bytes
    buckets = 2 * bucket_size_bytes if dp > 1 else 0
    p2p = 4 * act / (tp if sequence_parallel else 1) if pp > 1 else 0
    sp = act if (sequence_parallel and tp > 1) else 0
    return eff.FRAMEWORK_OVERHEAD_BYTES.get(family, eff.FRAMEWORK_OVERHEAD_BYTES["default"]) + buckets + p2p + sp + zero3_gather_bytes
