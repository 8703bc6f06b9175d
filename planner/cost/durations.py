"""What the pipeline simulation runs on: per model chunk, the F / B / W seconds of one micro-batch, and the
stage-to-stage transfer time. One source for the step-time assembly (planner/cost/assemble.py) and the
predicted timeline and trace (planner/report/timeline.py), so the report draws exactly what was priced.

Public entry point: ``CostModel.pipeline_durations(config) -> PipelineDurations``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property

from planner.parallel_config import ParallelConfig


@dataclass(frozen=True)
class ChunkDurations:
    """One micro-batch on one model chunk, seconds, by cause (sums of the chunk's BlockTimes,
    planner/cost/compute.py; the embedding on the first chunk, the head on the last)."""

    fwd_compute_s: float
    """Forward matmuls, attention core, elementwise kernels and launches."""
    tp_fwd_s: float
    """Exposed forward TP / SP collectives."""
    ep_fwd_s: float
    """Forward EP all-to-all (dispatch + combine)."""
    recompute_s: float
    """Forward re-run at the start of the backward (selective or full recomputation)."""
    bwd_compute_s: float
    """Backward matmuls and kernels, weight gradients included (W is carved out of it for split backward)."""
    tp_bwd_s: float
    """Exposed backward TP collectives (for a split backward, all of them: the deferred W hides none)."""
    ep_bwd_s: float
    weight_grad_s: float
    """The W action of split-backward schedules (the weight-gradient matmuls); 0 for the others."""

    @property
    def f_s(self) -> float:
        """The F action."""
        return self.fwd_compute_s + self.tp_fwd_s + self.ep_fwd_s

    @property
    def b_s(self) -> float:
        """The B action: the whole backward, or its input-gradient part when the schedule splits it."""
        return self.recompute_s + self.bwd_compute_s + self.tp_bwd_s + self.ep_bwd_s - self.weight_grad_s

    @property
    def w_s(self) -> float:
        """The W action (0 unless the schedule splits the backward)."""
        return self.weight_grad_s

    @property
    def total_s(self) -> float:
        """Forward + backward (recompute included) of one micro-batch: what ``Estimate.chunk_times_s`` lists."""
        return self.f_s + self.b_s + self.w_s


@dataclass(frozen=True)
class PipelineDurations:
    """Inputs of ``planner.schedules.simulate`` for one configuration.

    ``chunks[c]``: chunk c's action times. ``p2p_s``: one activation (or gradient) transfer between
    neighbouring pipeline ranks. ``p2p_blocking``: sends block the sender (``CostOptions.pp_comm_overlap``
    False); the transfer is then the tail of the producing action instead of a delay on the edge.
    """

    schedule: str
    pp: int
    chunks: tuple[ChunkDurations, ...]
    p2p_s: float
    p2p_blocking: bool

    @cached_property
    def chunk_rank(self) -> tuple[int, ...]:
        """Pipeline rank of each chunk (ParallelConfig.chunk_to_pp_rank)."""
        return tuple(ParallelConfig.chunk_to_pp_rank(c, self.pp, self.schedule) for c in range(len(self.chunks)))

    @cached_property
    def _sends(self) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        rank = self.chunk_rank
        n = len(rank)
        fwd = tuple(c < n - 1 and rank[c + 1] != rank[c] for c in range(n))
        bwd = tuple(c > 0 and rank[c - 1] != rank[c] for c in range(n))
        return fwd, bwd

    def sends(self) -> tuple[tuple[bool, ...], tuple[bool, ...]]:
        """(chunk c's forward output crosses to another rank, chunk c's input gradient does), per chunk."""
        return self._sends

    @cached_property
    def _simulation_inputs(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], float]:
        f = tuple(ch.f_s for ch in self.chunks)
        b = tuple(ch.b_s for ch in self.chunks)
        w = tuple(ch.w_s for ch in self.chunks)
        if not self.p2p_blocking:
            return f, b, w, self.p2p_s
        send_f, send_b = self._sends
        f = tuple(x + (self.p2p_s if s else 0.0) for x, s in zip(f, send_f))
        b = tuple(x + (self.p2p_s if s else 0.0) for x, s in zip(b, send_b))
        return f, b, w, 0.0

    def simulation_inputs(self) -> tuple[tuple[float, ...], tuple[float, ...], tuple[float, ...], float]:
        """(f_s, b_s, w_s, p2p_s) as ``simulate`` takes them: with blocking sends each transfer is folded into
        the action that produces the tensor and the edges carry no delay."""
        return self._simulation_inputs

    @cached_property
    def rank_sums(self) -> tuple[RankSums, ...]:
        """Per pipeline rank, the sums over its chunks of one micro-batch's durations."""
        acc = [[0.0] * 7 for _ in range(self.pp)]
        for r, ch in zip(self.chunk_rank, self.chunks):
            a = acc[r]
            a[0] += ch.total_s
            a[1] += ch.f_s
            a[2] += ch.b_s + ch.w_s
            a[3] += ch.fwd_compute_s + ch.bwd_compute_s
            a[4] += ch.recompute_s
            a[5] += ch.tp_fwd_s + ch.tp_bwd_s
            a[6] += ch.ep_fwd_s + ch.ep_bwd_s
        return tuple(RankSums(*a) for a in acc)


@dataclass(frozen=True)
class RankSums:
    """One micro-batch on one pipeline rank (all its chunks), seconds."""

    work_s: float
    """Forward + backward of all its chunks."""
    fwd_s: float
    bwd_s: float
    """Backward including recompute and W."""
    compute_s: float
    """Forward and backward compute (ChunkDurations.fwd_compute_s + bwd_compute_s)."""
    recompute_s: float
    tp_s: float
    ep_s: float


def p2p_s(cm, config: ParallelConfig) -> float:
    """One stage-to-stage activation transfer (Narayanan et al. 2021 Sec 3.2: b s h per micro-batch);
    with the scatter/gather optimisation each TP rank sends 1/t over the network and the receivers
    all-gather it over NVLink (Sec 4.1). ``cm``: the CostModel (model, cluster, options, collectives)."""
    if config.pp <= 1:
        return 0.0
    m = cm.model
    nbytes = config.micro_batch_size * config.seq_len * m.hidden_size * m.dtype_bytes
    t = config.tp
    if t > 1 and (config.sequence_parallel or cm.options.pp_scatter_gather):
        gather = 0.0 if config.sequence_parallel else cm.comm.time_s("all_gather", nbytes, t,
                                                                      min(t, cm.cluster.devices_per_node))
        nbytes /= t
    else:
        gather = 0.0
    return cm.comm.p2p_s(nbytes, config.degrees) + gather
