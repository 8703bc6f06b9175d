"""Time of one block for one micro-batch on one rank: matmuls, elementwise kernels, TP and EP collectives.

Forward matmul FLOPs come from the LayerGraph coefficients (2 x multiply-adds; Narayanan et al. 2021 eq. 3
terms); backward does twice the forward matmul work (input and weight gradients). Matmul time uses the
efficiency curve of planner/cost/efficiency.py; elementwise kernels are memory-bound (bytes / HBM
bandwidth). TP: Megatron's f / g operators, one all-reduce per attention and per MLP block in forward
and one in backward (Narayanan et al. 2021 Sec 3.2: 4 per layer per micro-batch); with sequence
parallelism each becomes an all-gather + reduce-scatter of the same total bytes (Korthikanti et al. 2022
Sec 4.2.2). EP: all-to-all dispatch and combine of the routed token copies, forward and backward
(Lepikhin et al. 2020, GShard), waiting for the most loaded rank (``MOE_IMBALANCE``).
"""

from __future__ import annotations

from dataclasses import dataclass

from planner.cost import efficiency as eff
from planner.layer_graph import Block


@dataclass(frozen=True)
class Hardware:
    """What the cost model needs of a device: peak matmul FLOP/s for the model dtype, HBM bandwidth."""

    peak_flops: float
    hbm_bytes_per_s: float
    family: str


@dataclass(frozen=True)
class Shape:
    """How one rank sees a micro-batch: b sequences of s tokens, tp / sp / ep as configured."""

    micro_batch: int
    seq_len: int
    tp: int
    sequence_parallel: bool
    ep: int
    dtype_bytes: int
    hidden: int
    num_experts: int = 0

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class BlockTime:
    """Seconds for one micro-batch of one block on one rank (forward / backward split by cause)."""

    fwd_compute_s: float
    bwd_compute_s: float
    tp_fwd_s: float = 0.0
    tp_bwd_s: float = 0.0
    """Exposed backward TP communication (after the overlap with weight-gradient matmuls)."""
    ep_fwd_s: float = 0.0
    ep_bwd_s: float = 0.0
    selective_extra_s: float = 0.0
    """Added backward time under selective recompute (attention core re-run)."""
    full_extra_s: float = 0.0
    """Added backward time under full recompute (the whole forward re-run, collectives included)."""
    bwd_weight_s: float = 0.0
    """Weight-gradient part of bwd_compute_s (the W action of split-backward schedules)."""
    tp_bwd_split_extra_s: float = 0.0
    """Backward TP communication that a split backward exposes in B: the share tp_bwd_s hides behind the
    weight-gradient matmul, which a zero-bubble schedule defers to W (see ``block_time``)."""

    @property
    def fwd_s(self) -> float:
        return self.fwd_compute_s + self.tp_fwd_s + self.ep_fwd_s

    @property
    def bwd_s(self) -> float:
        return self.bwd_compute_s + self.tp_bwd_s + self.ep_bwd_s

    def plus(self, o: "BlockTime") -> "BlockTime":
        return BlockTime(*(a + b for a, b in zip(self.astuple(), o.astuple())))

    def scaled(self, k: float) -> "BlockTime":
        return BlockTime(*(a * k for a in self.astuple()))

    def astuple(self) -> tuple[float, ...]:
        return (self.fwd_compute_s, self.bwd_compute_s, self.tp_fwd_s, self.tp_bwd_s, self.ep_fwd_s, self.ep_bwd_s,
                self.selective_extra_s, self.full_extra_s, self.bwd_weight_s, self.tp_bwd_split_extra_s)


ZERO = BlockTime(0.0, 0.0)


def gemm_time_s(flops: float, smallest_dim: float, hw: Hardware) -> float:
    if flops <= 0:
        return 0.0
    return flops / (hw.peak_flops * eff.gemm_efficiency(hw.family, smallest_dim))


def elementwise_time_s(nbytes: float, hw: Hardware) -> float:
    return nbytes / (hw.hbm_bytes_per_s * eff.HBM_EFFICIENCY) if nbytes > 0 else 0.0


def block_time(block: Block, sh: Shape, hw: Hardware, comm, *, flash_attention: bool,
               tp_comm_overlap: bool = False) -> BlockTime:
    """Analytical time of ``block``; ``comm(op, nbytes, axis) -> s`` prices a collective on that axis."""
    t, T, s = sh.tp, sh.tokens, sh.seq_len
    rep_div = t if sh.sequence_parallel else 1
    # --- matmuls (dense part split over TP; the tokens see the full sequence after the SP all-gather)
    gemm_dim = (T * block.gemm_width / t * sh.hidden) ** (1 / 3) if block.gemm_width else T
    gemm_f = gemm_time_s(T * block.gemm_flops / t, gemm_dim, hw)
    # --- attention core QK^T, AV (Korthikanti App. A: 4 s^2 h b per layer, over the full matrix)
    core_flops = T * s * block.core_flops_per_seq / t
    if core_flops and flash_attention:
        # causal FlashAttention computes half the score blocks; its backward re-computes the scores (2.5x)
        core_f = 0.5 * core_flops / (hw.peak_flops * eff.GEMM_EFF_MAX.get(hw.family, eff.GEMM_EFF_MAX["default"])
                                     * eff.FLASH_ATTENTION_EFF)
        core_b = 2.5 * core_f
    elif core_flops:
        core_f = core_flops / (hw.peak_flops * eff.GEMM_EFF_MAX.get(hw.family, eff.GEMM_EFF_MAX["default"])
                               * eff.ATTENTION_CORE_EFF)
        core_b = 2.0 * core_f
    else:
        core_f = core_b = 0.0
    # --- routed experts: each rank processes T/tp tokens' top-k copies (balanced, times the imbalance)
    expert_f = 0.0
    moe_tokens = T / t
    if block.expert_gemm_flops:
        # grouped GEMM: each local expert sees (T/tp) x top-k x ep / E tokens when balanced
        per_expert = moe_tokens * block.top_k * sh.ep / max(sh.num_experts, 1)
        dim = (per_expert * block.gemm_width * sh.hidden) ** (1 / 3)
        expert_f = gemm_time_s(moe_tokens * eff.MOE_IMBALANCE * block.expert_gemm_flops, dim, hw)
    # --- elementwise, memory-bound
    ew_bytes = (T * (block.ew_rep / rep_div + block.ew_tp / t) + T * s * block.ew_core_per_seq / t
                + moe_tokens * eff.MOE_IMBALANCE * block.ew_expert)
    ew_f = elementwise_time_s(ew_bytes, hw)
    core_ew_f = elementwise_time_s(T * s * block.ew_core_per_seq / t, hw)
    launch = eff.KERNELS_PER_BLOCK_FWD * eff.KERNEL_LAUNCH_S
    fwd = gemm_f + core_f + expert_f + ew_f + launch
    # split backward (Qi et al. 2024 Table 1): W = the weight-gradient matmuls, as many FLOPs as the forward
    # matmuls (24 b s h^2 per layer); B = the rest: input-gradient matmuls (as many again), the attention-core
    # backward (8 b s^2 h), elementwise backward and collectives. A matmul-heavy block splits about in half.
    bwd_weight = gemm_f + expert_f
    bwd = 2 * (gemm_f + expert_f) + core_b + eff.BACKWARD_ELEMENTWISE_FACTOR * ew_f + 2 * launch
    # --- TP collectives: each moves T x h x dtype bytes per rank
    tp_f = tp_b = tp_split_extra = 0.0
    if t > 1 and block.tp_collectives:
        msg = T * sh.hidden * sh.dtype_bytes
        if sh.sequence_parallel:
            one = comm("all_gather", msg, "tp") + comm("reduce_scatter", msg, "tp")
        else:
            one = comm("all_reduce", msg, "tp")
        tp_f = block.tp_collectives * one
        # backward: the conjugate collectives, plus with SP the re-all-gather of the sharded input the
        # weight-gradient matmul needs (Korthikanti et al. 2022 Sec 4.2.2), part hidden behind that matmul
        sp_extra = comm("all_gather", msg, "tp") * block.tp_collectives if sh.sequence_parallel else 0.0
        tp_b_all = tp_f + sp_extra
        tp_b = tp_b_all * (1.0 - eff.TP_COMM_OVERLAP_BWD)
        # split backward (zbv): B holds the input-gradient matmul only; the weight-gradient matmul that hides
        # TP_COMM_OVERLAP_BWD of the collectives runs later as W, so B waits for all of them
        tp_b_split = tp_b_all
        if tp_comm_overlap:  # userbuffers / TE comm-GEMM overlap: hidden behind the block's matmuls
            tp_f = max(0.0, tp_f - gemm_f)
            tp_b = max(0.0, tp_b - 2 * gemm_f)
            tp_b_split = max(0.0, tp_b_all - gemm_f)  # only the input-gradient matmul is in B
        tp_split_extra = max(0.0, tp_b_split - tp_b)
    # --- EP all-to-all: dispatch + combine in forward, their gradients in backward
    ep_f = ep_b = 0.0
    if block.a2a_bytes and sh.ep > 1:
        nbytes = moe_tokens * block.a2a_bytes * eff.MOE_IMBALANCE
        ep_f = 2 * comm("all_to_all", nbytes, "ep")
        ep_b = ep_f
    selective = (core_f + core_ew_f) if not flash_attention else 0.0
    full = fwd + tp_f + ep_f
    return BlockTime(fwd_compute_s=fwd, bwd_compute_s=bwd, tp_fwd_s=tp_f, tp_bwd_s=tp_b, ep_fwd_s=ep_f,
                     ep_bwd_s=ep_b, selective_extra_s=selective, full_extra_s=full, bwd_weight_s=bwd_weight,
                     tp_bwd_split_extra_s=tp_split_extra)


def profiled_block_time(analytic: BlockTime, measured: tuple[float, float], recompute_s: float | None) -> BlockTime:
    """A profile's measured (forward, backward) of the block, collectives included, replacing the analysis;
    the selective / full recompute extras scale with it."""
    f, b = measured
    ratio = f / analytic.fwd_s if analytic.fwd_s > 0 else 1.0
    return BlockTime(fwd_compute_s=f, bwd_compute_s=b, selective_extra_s=analytic.selective_extra_s * ratio,
                     full_extra_s=recompute_s if recompute_s is not None else f,
                     bwd_weight_s=min(b, analytic.bwd_weight_s * ratio),
                     tp_bwd_split_extra_s=analytic.tp_bwd_split_extra_s * ratio)
