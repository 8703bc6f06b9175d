"""Replicated experts: what a plan's expert placement adds over the even split of E / ep experts per EP rank.

planner/expert_placement.py may give hot experts extra copies on other EP ranks (DeepSeek-V3's redundant
experts, Liu et al. 2024 Sec 3.4) when memory leaves spare slots. Each copy costs

* memory: the expert's weights, gradients and optimizer states on every MoE layer of the rank (the runtime
  keeps whole copies, runtime/moe.py), so the routed-expert static bytes of a rank scale with the slots its
  fullest EP rank holds over E / ep;
* time: after the backward, the copies of each replicated expert sum their gradients (each saw part of the
  expert's tokens): one all-reduce per MoE layer over the EP group of a buffer holding every replicated
  expert (``runtime.moe.MoEFFN.sync_replica_grads``), not overlapped with compute; and the larger expert
  gradient reduction over the expert-data-parallel group.

What the copies buy, a smaller all-to-all and expert-matmul wait on the busiest EP rank, is not priced
here: the cost model's token imbalance is the fixed ``efficiency.MOE_IMBALANCE``, which already assumes a
balanced placement. Pricing only the costs keeps the estimate conservative for a rebalanced plan.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

from planner.errors import ConfigError
from planner.model_spec import ModelSpec


@dataclass(frozen=True)
class ExpertReplicas:
    """The replica load of one expert placement."""

    slots_per_rank: int
    """Expert copies on the fullest EP rank."""
    replicated_experts: int
    """Experts held by more than one EP rank (their gradients are summed across the copies)."""
    even_slots: float
    """E / ep: what every EP rank holds without replicas."""

    @property
    def copies(self) -> float:
        """Routed-expert parameters on the fullest EP rank relative to the even split (>= 1)."""
        return self.slots_per_rank / self.even_slots


def expert_replicas(model: ModelSpec, ep: int, placement: Sequence[Sequence[int]] | None) -> ExpertReplicas | None:
    """The replica load of ``placement`` (per EP rank, the expert ids it holds), or None when there is nothing
    beyond the even split (no placement, a dense model, or one copy of each expert per rank group).
    ConfigError for a placement that does not match the model and ep."""
    if placement is None or len(placement) == 0 or not model.is_moe:
        if placement and not model.is_moe:
            raise ConfigError(f"expert placement given for dense model {model.name}")
        return None
    E = model.num_experts
    if len(placement) != ep:
        raise ConfigError(f"expert placement has {len(placement)} EP ranks, ep is {ep}")
    holders = [0] * E
    for r, experts in enumerate(placement):
        if len(set(experts)) != len(experts):
            raise ConfigError(f"expert placement: EP rank {r} holds an expert twice")
        for e in experts:
            if isinstance(e, bool) or not isinstance(e, int) or not 0 <= e < E:
                raise ConfigError(f"expert placement: EP rank {r} names expert {e!r}, expected 0..{E - 1}")
            holders[e] += 1
    if min(holders) == 0:
        raise ConfigError(f"expert placement leaves expert {holders.index(0)} on no EP rank")
    slots = max(len(p) for p in placement)
    replicated = sum(1 for h in holders if h > 1)
    if not replicated and slots * ep <= E:
        return None
    return ExpertReplicas(slots_per_rank=slots, replicated_experts=replicated, even_slots=E / ep)


def replica_grad_sync_s(comm, replicas: ExpertReplicas | None, expert_elements: int, moe_layers: int,
                        grad_bytes: int) -> float:
    """Seconds one pipeline rank spends summing replica gradients: ``moe_layers`` all-reduces over the EP group
    of ``replicated_experts x expert_elements`` gradients (module docstring). ``comm(op, nbytes, axis) -> s``."""
    if replicas is None or not replicas.replicated_experts or not moe_layers:
        return 0.0
    nbytes = replicas.replicated_experts * expert_elements * grad_bytes
    return moe_layers * comm("all_reduce", nbytes, "ep")
