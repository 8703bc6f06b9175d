"""What the cost model returns: Estimate (time + memory), MemoryEstimate, StageMemory, PartitionInputs."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from planner.parallel_config import ParallelConfig

BREAKDOWN_TERMS = ("compute", "recompute", "tp_comm", "ep_comm", "pp_comm", "pp_bubble", "dp_sync_exposed",
                   "zero3_gather", "optimizer")
"""Seconds per step; they add up to ``Estimate.step_time_s``."""

BREAKDOWN_WORDS = {
    "compute": "compute (forward + backward matmuls and elementwise kernels)",
    "recompute": "activation recomputation",
    "tp_comm": "tensor-parallel communication",
    "ep_comm": "expert-parallel all-to-all",
    "pp_comm": "pipeline send/recv",
    "pp_bubble": "pipeline bubble",
    "dp_sync_exposed": "data-parallel gradient sync (not hidden by backward)",
    "zero3_gather": "ZeRO-3 parameter gathers (not hidden)",
    "optimizer": "optimizer step",
}


@dataclass(frozen=True)
class StageMemory:
    """Peak memory of one pipeline rank (all its model chunks), bytes."""

    pp_rank: int
    weights_bytes: float
    gradients_bytes: float
    optimizer_bytes: float
    activations_bytes: float
    other_bytes: float
    """Framework overhead and communication buffers."""

    @property
    def total_bytes(self) -> float:
        return (self.weights_bytes + self.gradients_bytes + self.optimizer_bytes + self.activations_bytes
                + self.other_bytes)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["total_bytes"] = self.total_bytes
        return d


@dataclass(frozen=True)
class MemoryEstimate:
    """The memory half of an estimate (cheap; the search prunes with it)."""

    memory_by_stage: tuple[StageMemory, ...]
    capacity_bytes: float

    @property
    def peak_memory_bytes(self) -> float:
        return max(s.total_bytes for s in self.memory_by_stage)

    @property
    def fits(self) -> bool:
        return self.peak_memory_bytes <= self.capacity_bytes

    @property
    def excess_bytes(self) -> float:
        """By how much the fullest rank exceeds the capacity (0 when it fits)."""
        return max(0.0, self.peak_memory_bytes - self.capacity_bytes)


@dataclass(frozen=True)
class Estimate:
    """Predicted step time, throughput and memory of one configuration."""

    config: ParallelConfig
    step_time_s: float
    tflops_per_gpu: float
    """Model FLOPs per second per GPU (Korthikanti et al. 2022 eq. 7 generalised: 3 x forward matmul and
    attention-core FLOPs of every token, no recompute); MoE counts the top-k experts a token uses."""
    hfu_tflops_per_gpu: float
    """Hardware FLOPs per second per GPU: model FLOPs plus recomputation (Korthikanti eq. 8)."""
    mfu: float
    hfu: float
    tokens_per_s_per_gpu: float
    peak_memory_bytes: float
    capacity_bytes: float
    fits: bool
    memory_by_stage: tuple[StageMemory, ...]
    breakdown: dict[str, float]
    chunk_times_s: tuple[float, ...]
    """Forward + backward (with recompute) of one micro-batch on each model chunk, chunk order."""
    bottleneck: str
    notes: tuple[str, ...] = ()

    @property
    def excess_bytes(self) -> float:
        return max(0.0, self.peak_memory_bytes - self.capacity_bytes)

    def to_dict(self) -> dict[str, Any]:
        return {
            "config": self.config.to_dict(),
            "name": self.config.name,
            "step_time_s": self.step_time_s,
            "tflops_per_gpu": self.tflops_per_gpu,
            "hfu_tflops_per_gpu": self.hfu_tflops_per_gpu,
            "mfu": self.mfu,
            "hfu": self.hfu,
            "tokens_per_s_per_gpu": self.tokens_per_s_per_gpu,
            "peak_memory_bytes": self.peak_memory_bytes,
            "capacity_bytes": self.capacity_bytes,
            "fits": self.fits,
            "excess_bytes": self.excess_bytes,
            "memory_by_stage": [s.to_dict() for s in self.memory_by_stage],
            "breakdown": dict(self.breakdown),
            "chunk_times_s": list(self.chunk_times_s),
            "bottleneck": self.bottleneck,
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class PartitionInputs:
    """Per-layer numbers for the stage partitioner (CP-SAT), all for one micro-batch on one rank."""

    layer_time_s: tuple[float, ...]
    """Forward + backward of layer i, its TP/SP (and EP) collectives included, under config.recompute."""
    layer_full_recompute_extra_s: tuple[float, ...]
    """Time added if layer i switches to full recomputation (from config.recompute)."""
    layer_static_bytes: tuple[float, ...]
    """Weights + gradients + optimizer states of layer i on one rank (tp / ep / ZeRO applied)."""
    layer_activation_bytes: tuple[float, ...]
    """Activations layer i stores per micro-batch in flight under config.recompute."""
    layer_activation_full_recompute_bytes: tuple[float, ...]
    embed_time_s: float
    embed_static_bytes: float
    embed_activation_bytes: float
    head_time_s: float
    """Final norm, output projection, loss (fp32 logits)."""
    head_static_bytes: float
    head_activation_bytes: float
    inflight_microbatches: tuple[int, ...]
    """Per model chunk: micro-batches of activations it holds at its rank's peak under the schedule."""
    rank_other_bytes: float
    """Buffers and framework overhead per rank."""
    capacity_bytes: float
