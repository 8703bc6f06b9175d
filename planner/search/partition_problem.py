"""The inner problem: split the layers into model chunks and choose full-recompute layers per chunk.

Given one outer configuration (degrees, schedule, micro-batch, ZeRO stage...), the cost model's
``PartitionInputs`` give, per transformer layer, the forward+backward time of one micro-batch, the extra
time when the layer is fully recomputed, its static bytes (weights, gradients, optimizer states) and its
activation bytes per in-flight micro-batch (with and without full recomputation); plus the embedding and
head, which sit on the first and last chunk, and the micro-batches each chunk holds in flight (1F1B: the
first stage holds pp, the last one; Korthikanti et al. 2022 Sec 4.2.3).

Decision per chunk c: ``n_c >= 1`` contiguous layers and ``r_c in [0, n_c]`` of them (the first ``r_c``)
fully recomputed. Constraint per pipeline rank: static + in-flight activations + other <= capacity.
Objective, the pipeline makespan, with W_r the sum of the chunk times on pipeline rank r:

* one chunk per rank (gpipe, 1f1b): ``T = sum_c t_c + (m - 1) * max_r W_r`` (Alpa, Zheng et al. 2022,
  eq. 2; DAPPLE): one micro-batch's pass through every stage (fill and drain) plus the bottleneck stage
  pacing the other m - 1;
* v > 1 chunks per rank (interleaved, zbv): ``T = m * max_r W_r + (pp - 1) * max_c t_c`` (Narayanan et al.
  2021 Sec 2.2.2: the interleaved bubble is (pp - 1) chunk times); the chunk term keeps the chunks of a
  rank balanced, which the rank term alone would not.

Per-rank speed (``rank_speed``, optional): pipeline rank r runs everything it holds (layers, recomputation,
embedding, head) ``rank_speed[r]`` times slower than the layer times say, so ``t_c`` above is
``rank_speed[rank(c)] x`` the chunk's summed times. Dynamic load balancing (planner/rebalance.py) uses it:
a measured slow device keeps its slowness when layers move. The speeds are quantised to integer weights
(``speed_weights``: the fastest rank weighs ``SPEED_RESOLUTION``, the others in proportion), chunk times
are multiplied by them exactly, and the objective's unit becomes ``time_unit_s`` (``tick_s`` x fastest
speed / ``SPEED_RESOLUTION``). ``None`` (the search) leaves every number as it was.

Ties (many splits share the bottleneck) break towards the even split with the fewest recomputed layers:
the secondary term ``sum_c |n_c - even_c| + sum_c r_c`` is added with a weight below one tick of the
primary (``secondary_weight``), so it never trades makespan for neatness.

Times are integer ticks so that CP-SAT and the brute-force reference see exactly the same numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Any, Sequence

from planner.errors import ConfigError
from planner.parallel_config import even_split

TICKS_PER_STEP = 1_000_000
"""Resolution of the integer time scale: one micro-batch through the whole model is about this many ticks."""
SPEED_RESOLUTION = 10_000
"""Integer weight of the fastest rank when ``rank_speed`` is set: speeds are kept to 5e-5 relative, far below
the noise of the measurements they come from."""
MAX_SPEED_RATIO = 1e4
"""Slowest / fastest rank speed at most: keeps weights x ticks x micro-batches far inside int64 for CP-SAT."""


@dataclass(frozen=True)
class PartitionProblem:
    """Integer form of the inner problem (times in ticks of ``tick_s`` seconds, memory in bytes)."""

    layer_time: tuple[int, ...]
    layer_extra: tuple[int, ...]
    """Added time when the layer is fully recomputed (0 when the configuration already recomputes fully)."""
    layer_static: tuple[int, ...]
    layer_act: tuple[int, ...]
    layer_act_full: tuple[int, ...]
    embed_time: int
    head_time: int
    embed_static: int
    head_static: int
    embed_act: int
    head_act: int
    inflight: tuple[int, ...]
    """Micro-batches each chunk holds in flight (chunk order)."""
    chunk_rank: tuple[int, ...]
    """Pipeline rank of each chunk (ParallelConfig.chunk_to_pp_rank)."""
    num_ranks: int
    micro_batches: int
    rank_other_bytes: tuple[int, ...]
    """Per pipeline rank: buffers, workspace, framework overhead (not split-dependent)."""
    capacity_bytes: int
    tick_s: float = 1.0
    allow_recompute: bool = True
    rank_speed: tuple[float, ...] | None = None
    """Per pipeline rank: multiplier of the time of every layer, recomputation, embedding and head it holds
    (a measured slow device, planner/rebalance.py). None: every rank at 1.0, at no extra cost."""

    def __post_init__(self) -> None:
        n = len(self.layer_time)
        for name in ("layer_extra", "layer_static", "layer_act", "layer_act_full"):
            if len(getattr(self, name)) != n:
                raise ConfigError(f"partition problem: {name} has {len(getattr(self, name))} entries, expected {n}")
        if len(self.inflight) != len(self.chunk_rank):
            raise ConfigError("partition problem: inflight and chunk_rank need one entry per chunk")
        if not 1 <= self.num_chunks <= n:
            raise ConfigError(f"partition problem: {self.num_chunks} chunks for {n} layers")
        if sorted(set(self.chunk_rank)) != list(range(self.num_ranks)):
            raise ConfigError("partition problem: every pipeline rank must hold at least one chunk")
        if len(self.rank_other_bytes) != self.num_ranks:
            raise ConfigError("partition problem: rank_other_bytes needs one entry per pipeline rank")
        if self.rank_speed is not None:
            speeds = self.rank_speed
            if len(speeds) != self.num_ranks:
                raise ConfigError(f"partition problem: rank_speed has {len(speeds)} entries, expected "
                                  f"{self.num_ranks} (one per pipeline rank)")
            if not all(math.isfinite(x) and x > 0 for x in speeds):
                raise ConfigError(f"partition problem: rank_speed must be finite and > 0, got {list(speeds)}")
            if max(speeds) > MAX_SPEED_RATIO * min(speeds):
                raise ConfigError(f"partition problem: rank speeds differ by more than {MAX_SPEED_RATIO:g}x "
                                  f"({min(speeds):g} .. {max(speeds):g})")

    @property
    def num_layers(self) -> int:
        return len(self.layer_time)

    @property
    def num_chunks(self) -> int:
        return len(self.inflight)

    @property
    def chunks_per_rank(self) -> int:
        return self.num_chunks // self.num_ranks

    @cached_property
    def homogeneous(self) -> bool:
        """All layers identical (dense models): the model is counts, not boundaries (repeated blocks)."""
        return all(len(set(a)) == 1 for a in (self.layer_time, self.layer_extra, self.layer_static,
                                              self.layer_act, self.layer_act_full))

    @cached_property
    def even_layers(self) -> tuple[int, ...]:
        return even_split(self.num_layers, self.num_chunks)

    @cached_property
    def speed_weights(self) -> tuple[int, ...] | None:
        """Integer per-rank time multipliers (``rank_speed`` quantised; None when it is None)."""
        if self.rank_speed is None:
            return None
        fastest = min(self.rank_speed)
        return tuple(max(1, int(round(x / fastest * SPEED_RESOLUTION))) for x in self.rank_speed)

    @property
    def time_unit_s(self) -> float:
        """Seconds per unit of chunk time and objective: ``tick_s``, or less when ``rank_speed`` weights them."""
        if self.rank_speed is None:
            return self.tick_s
        return self.tick_s * min(self.rank_speed) / SPEED_RESOLUTION

    @property
    def secondary_weight(self) -> int:
        """Weight of one primary tick in the combined objective: larger than any secondary value."""
        return 2 * self.num_layers + 1

    def prefix(self, name: str) -> list[int]:
        out = [0]
        for x in getattr(self, name):
            out.append(out[-1] + x)
        return out

    @cached_property
    def _ranks_chunks(self) -> tuple[tuple[int, ...], ...]:
        out: list[list[int]] = [[] for _ in range(self.num_ranks)]
        for c, r in enumerate(self.chunk_rank):
            out[r].append(c)
        return tuple(tuple(x) for x in out)

    def ranks_chunks(self) -> tuple[tuple[int, ...], ...]:
        return self._ranks_chunks


@dataclass(frozen=True)
class Evaluation:
    """A split priced under a problem."""

    chunk_ticks: tuple[int, ...]
    """Per chunk, in the problem's ``time_unit_s`` (ticks, weighted by the rank's speed when it has one)."""
    rank_ticks: tuple[int, ...]
    rank_bytes: tuple[int, ...]
    objective: int
    """Primary (makespan proxy, in the problem's ``time_unit_s``)."""
    feasible: bool
    secondary: int = 0
    """Tie-break: distance from the even split plus recomputed layers."""

    @property
    def key(self) -> tuple[int, int]:
        return self.objective, self.secondary


def evaluate(p: PartitionProblem, layers: Sequence[int], recompute: Sequence[int],
             prefixes: dict[str, list[int]] | None = None) -> Evaluation:
    """Chunk times, rank loads, rank memory and the objective of one split (the reference semantics)."""
    pre = prefixes or {k: p.prefix(k) for k in ("layer_time", "layer_extra", "layer_static", "layer_act",
                                                "layer_act_full")}
    T, X, S, A, AF = (pre[k] for k in ("layer_time", "layer_extra", "layer_static", "layer_act", "layer_act_full"))
    C = p.num_chunks
    weights = p.speed_weights
    chunk_t, rank_t, rank_b = [], [0] * p.num_ranks, list(p.rank_other_bytes)
    ok = len(layers) == C and len(recompute) == C and sum(layers) == p.num_layers
    start = 0
    for c in range(C):
        n, rc = layers[c], recompute[c]
        ok = ok and n >= 1 and 0 <= rc <= n and (p.allow_recompute or rc == 0)
        b, e = start, start + n
        mid = start + max(0, min(rc, n))
        t = T[e] - T[b] + X[mid] - X[b]
        act = A[e] - A[mid] + AF[mid] - AF[b]
        mem = S[e] - S[b] + p.inflight[c] * act
        if c == 0:
            t += p.embed_time
            mem += p.embed_static + p.inflight[c] * p.embed_act
        if c == C - 1:
            t += p.head_time
            mem += p.head_static + p.inflight[c] * p.head_act
        r = p.chunk_rank[c]
        if weights is not None:
            t *= weights[r]
        chunk_t.append(t)
        rank_t[r] += t
        rank_b[r] += mem
        start = e
    if p.chunks_per_rank == 1:
        objective = sum(chunk_t) + (p.micro_batches - 1) * max(rank_t)
    else:
        objective = p.micro_batches * max(rank_t) + (p.num_ranks - 1) * max(chunk_t)
    feasible = ok and max(rank_b) <= p.capacity_bytes
    even = p.even_layers
    secondary = sum(abs(n - e) for n, e in zip(layers, even)) + sum(recompute)
    return Evaluation(tuple(chunk_t), tuple(rank_t), tuple(rank_b), objective, feasible, secondary)


def objective_seconds(p: PartitionProblem, objective: int) -> float:
    return objective * p.time_unit_s


def _get(obj: Any, name: str) -> Any:
    return obj[name] if isinstance(obj, dict) else getattr(obj, name)


def problem_from_inputs(pin: Any, *, chunk_rank: Sequence[int], micro_batches: int,
                        allow_recompute: bool = True, rank_speed: Sequence[float] | None = None) -> PartitionProblem:
    """Quantise the cost model's PartitionInputs (seconds, bytes) into an integer problem.

    Times round to the nearest tick (one tick = 1e-6 of a micro-batch's pass through the model, far below
    the cost model's own error); bytes round up, so a split feasible here is feasible for the cost model
    up to its float rounding. ``rank_speed``: see PartitionProblem (None for the search).
    """
    times = [float(x) for x in _get(pin, "layer_time_s")]
    total = sum(times) + float(_get(pin, "embed_time_s")) + float(_get(pin, "head_time_s"))
    tick_s = total / TICKS_PER_STEP if total > 0 else 1e-12

    def ticks(xs: Sequence[float]) -> tuple[int, ...]:
        return tuple(int(round(float(x) / tick_s)) for x in xs)

    def up(xs: Sequence[float]) -> tuple[int, ...]:
        return tuple(int(math.ceil(float(x))) for x in xs)

    extra = _get(pin, "layer_full_recompute_extra_s")
    ranks = max(chunk_rank) + 1
    other = _get(pin, "rank_other_bytes")
    other_t = tuple(int(math.ceil(float(x))) for x in other) if isinstance(other, (list, tuple)) \
        else (int(math.ceil(float(other))),) * ranks
    return PartitionProblem(
        layer_time=ticks(times), layer_extra=ticks(extra) if allow_recompute else (0,) * len(times),
        layer_static=up(_get(pin, "layer_static_bytes")), layer_act=up(_get(pin, "layer_activation_bytes")),
        layer_act_full=up(_get(pin, "layer_activation_full_recompute_bytes")),
        embed_time=ticks([_get(pin, "embed_time_s")])[0], head_time=ticks([_get(pin, "head_time_s")])[0],
        embed_static=up([_get(pin, "embed_static_bytes")])[0], head_static=up([_get(pin, "head_static_bytes")])[0],
        embed_act=up([_get(pin, "embed_activation_bytes")])[0], head_act=up([_get(pin, "head_activation_bytes")])[0],
        inflight=tuple(int(x) for x in _get(pin, "inflight_microbatches")), chunk_rank=tuple(chunk_rank),
        num_ranks=ranks, micro_batches=micro_batches, rank_other_bytes=other_t,
        capacity_bytes=int(_get(pin, "capacity_bytes")), tick_s=tick_s, allow_recompute=allow_recompute,
        rank_speed=None if rank_speed is None else tuple(float(x) for x in rank_speed))
