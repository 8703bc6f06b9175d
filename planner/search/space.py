"""The search space: generators that yield only valid configurations, in three nested levels.

Why three levels: configurations that share a *compute group* (tp, pp, dp, ep, micro-batch,
sequence parallelism, recomputation) do the same per-layer work, so one lower bound serves all of
them (``planner.search.bounds``); inside a group the *schedule* decides the activations in flight
and the bubble, and the *sync option* (ZeRO stage, gradient-sync mode, compression) decides the
data-parallel traffic, the optimizer-state memory and nothing else. The solver prunes whole groups
before it enumerates their members.

Default pruning rules (each lifted for its dimension by ``--fix``, see ``constraints.py``):

* tensor parallelism stays inside a node (tp <= devices per node; Narayanan et al. 2021 Sec 3.3:
  TP all-reduces on every layer need NVLink) and divides heads, key/value heads and the FFN width;
* pipeline stages hold at least one layer (pp x chunks <= layers); 1F1B-family schedules need at
  least as many micro-batches as stages, interleaving a micro-batch count divisible by pp;
* micro-batch sizes up to ``max_micro_batch`` (default 16) that divide the per-replica batch;
* interleaved chunks per rank v >= 2 with pp x v dividing the layers (what Megatron-LM runs, down to one
  layer per chunk: Megatron-Core's weak-scaling runs use up to 21 chunks per rank), and v = 2 always (uneven
  splits make it runnable for any layer count); other v only when fixed; ``max_vp`` caps v when set;
* sequence parallelism only with tp > 1; ZeRO, grad-sync modes and compression only with dp > 1;
* grad_sync 'hierarchical' only when the DP group spans nodes with >= 2 members per node (otherwise it
  is the ring); 'ps' (the parameter-server baseline, modelled for comparison) only when fixed;
  with ZeRO >= 1 the sync is reduce-scatter whatever the mode, so only 'allreduce' is enumerated;
* compression only with ZeRO 0 (a compressed all-reduce: the cost model prices ZeRO >= 1 as a reduce-scatter of
  uncompressed gradients, so a compressed ZeRO-1 would be a duplicate at the same cost), 'fp16' only
  when fixed (same bytes and cost as 'bf16'), int8 / topk / powersgd only with the flat all-reduce
  (planner.compression.check_combination);
* ZeRO-2/3 only with pp = 1 (or pinned): under pipelining they keep parameters and gradients unsharded
  across micro-batches (planner/cost/rank_memory.py ``memory_zero_stage``), so ZeRO-1 holds the same
  bytes with less traffic;
* what the runtime cannot run yet is left out: ZeRO >= 1 with MoE layers (runtime/data_parallel.py), and on
  a gloo cluster (the ``cpu`` preset) schedules other than ``GLOO_SCHEDULES`` and ZeRO stages other than
  ``GLOO_ZERO_STAGES`` (both can still be pinned with --fix).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import lru_cache
from typing import Iterator

from planner.cluster_spec import ClusterSpec
from planner.compression import check_combination
from planner.errors import ConfigError, InfeasibleError
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig
from planner.rank_order import Degrees, crosses_nodes, ranks_per_node_in_group
from planner.search.constraints import Constraints

GLOO_SCHEDULES = ("gpipe", "1f1b")
"""Schedules enumerated on a gloo (CPU) cluster: torch.distributed.pipelining's ScheduleGPipe and Schedule1F1B
are what runtime verify exercises on CPU; the others can still be pinned with --fix schedule=..."""
GLOO_ZERO_STAGES = (0, 1)
"""ZeRO stages enumerated on a gloo cluster. ZeRO-2/3 run as FSDP2 (runtime/data_parallel.py), whose per-block
hooks, DTensor parameters and copies cost far more on CPU than its collectives: measured on the 2-core host
(bench/measured_loop.py), ZeRO-3 steps took 0.40-0.45 s where the cost model, pricing the collectives from
the profile, predicted 0.25-0.28 s and plain DDP measured 0.27 s. A profile does not measure FSDP itself, so
the planner cannot price it there and does not propose it; --fix zero=2 or 3 still plans it."""
DEFAULT_COMPRESSIONS = ("none", "bf16", "int8", "topk", "powersgd")


@dataclass(frozen=True)
class SearchSpace:
    """What is searched: the model on the cluster at a global batch, under the user's constraints."""

    model: ModelSpec
    cluster: ClusterSpec
    global_batch: int
    """Sequences per optimizer step."""
    constraints: Constraints = field(default_factory=Constraints)
    max_micro_batch: int = 16
    max_vp: int | None = None

    @property
    def world_size(self) -> int:
        return self.cluster.world_size

    @property
    def seq_len(self) -> int:
        return self.model.seq_len


@dataclass(frozen=True)
class ComputeGroup:
    """Configurations that share per-layer compute: one lower bound prices them all."""

    tp: int
    pp: int
    dp: int
    ep: int
    micro_batch: int
    sequence_parallel: bool
    recompute: str

    def micro_batches(self, global_batch: int) -> int:
        return global_batch // (self.dp * self.micro_batch)


@dataclass(frozen=True)
class SyncOption:
    """The data-parallel side of a configuration: ZeRO stage, sync mode, compression."""

    zero: int = 0
    grad_sync: str = "allreduce"
    compression: str = "none"


def divisors(n: int) -> list[int]:
    small = [d for d in range(1, int(n ** 0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def _tp_ok(model: ModelSpec, tp: int) -> bool:
    if model.num_heads % tp or model.ffn_hidden_size % tp:
        return False
    return model.is_mla or model.kv_heads % tp == 0


def degree_options(space: SearchSpace) -> Iterator[tuple[int, int, int]]:
    """(tp, pp, dp) with tp x pp x dp = world, dp dividing the global batch."""
    c, m, world = space.constraints, space.model, space.world_size
    for tp in divisors(world):
        if not c.allows("tp", tp) or not _tp_ok(m, tp):
            continue
        if not c.is_fixed("tp") and tp > space.cluster.devices_per_node:
            continue
        for pp in divisors(world // tp):
            dp = world // (tp * pp)
            if not (c.allows("pp", pp) and c.allows("dp", dp)) or pp > m.num_layers:
                continue
            if space.global_batch % dp:
                continue
            yield tp, pp, dp


def ep_options(space: SearchSpace, tp: int, dp: int) -> list[int]:
    m = space.model
    if not m.is_moe:
        return [1] if space.constraints.allows("ep", 1) else []
    return [e for e in divisors(tp * dp) if m.num_experts % e == 0 and space.constraints.allows("ep", e)]


def compute_groups(space: SearchSpace) -> Iterator[ComputeGroup]:
    c, m = space.constraints, space.model
    for tp, pp, dp in degree_options(space):
        per_replica = space.global_batch // dp
        for ep in ep_options(space, tp, dp):
            for mbs in divisors(per_replica):
                if not c.allows("micro_batch", mbs):
                    continue
                if not c.is_fixed("micro_batch") and mbs > space.max_micro_batch:
                    continue
                for sp in ((False, True) if tp > 1 and m.seq_len % tp == 0 else (False,)):
                    if not c.allows("sp", sp):
                        continue
                    for rc in ("none", "selective", "full"):
                        if c.allows("recompute", rc):
                            yield ComputeGroup(tp, pp, dp, ep, mbs, sp, rc)


def schedule_options(space: SearchSpace, g: ComputeGroup) -> Iterator[tuple[str, int]]:
    """(schedule, chunks per rank) valid for the group's pipeline degree and micro-batch count."""
    c, L = space.constraints, space.model.num_layers
    m = g.micro_batches(space.global_batch)
    if g.pp == 1:
        # No pipeline: the schedule is moot; '1f1b' with one chunk is the canonical name.
        if c.allows("schedule", "1f1b") or c.allows("schedule", "gpipe"):
            sched = c.schedule if c.schedule in ("1f1b", "gpipe") else "1f1b"
            if c.allows("vp", 1):
                yield sched, 1
        return
    gloo = space.cluster.backend == "gloo"

    def allowed(name: str) -> bool:
        if c.is_fixed("schedule"):
            return c.schedule == name
        return not gloo or name in GLOO_SCHEDULES

    if allowed("gpipe") and c.allows("vp", 1):
        yield "gpipe", 1
    if allowed("1f1b") and c.allows("vp", 1) and m >= g.pp:
        yield "1f1b", 1
    if allowed("interleaved") and m >= g.pp and m % g.pp == 0:
        top = L // g.pp if c.is_fixed("vp") or space.max_vp is None else min(space.max_vp, L // g.pp)
        for v in range(2, top + 1):
            if c.allows("vp", v) and (c.is_fixed("vp") or v == 2 or L % (g.pp * v) == 0):
                yield "interleaved", v
    if allowed("zbv") and c.allows("vp", 2) and m >= g.pp and 2 * g.pp <= L:
        yield "zbv", 2


def sync_options(space: SearchSpace, g: ComputeGroup) -> Iterator[SyncOption]:
    c = space.constraints
    if g.dp == 1 and not any(c.is_fixed(k) for k in ("zero", "grad_sync", "compression")):
        yield SyncOption()
        return
    hier = _hierarchical_helps(g.tp, g.dp, space.cluster.devices_per_node)
    modes = [s for s in ("allreduce", "hierarchical", "ps") if c.allows("grad_sync", s)
             and (c.is_fixed("grad_sync") or s == "allreduce" or (s == "hierarchical" and hier))]
    gloo = space.cluster.backend == "gloo"
    zeros = [z for z in (0, 1, 2, 3) if c.allows("zero", z) and (c.is_fixed("zero") or z == 0 or (
        g.dp > 1 and not space.model.is_moe and (not gloo or z in GLOO_ZERO_STAGES) and (z < 2 or g.pp == 1)))]
    comps = [x for x in ("none", "fp16", "bf16", "int8", "topk", "powersgd") if c.allows("compression", x)
             and (c.is_fixed("compression") or x in DEFAULT_COMPRESSIONS)]
    for z in zeros:
        for mode in modes:
            if z >= 1 and mode != "allreduce" and not c.is_fixed("grad_sync"):
                continue
            for comp in comps:
                if comp != "none" and not c.is_fixed("compression") and (z >= 1 or g.dp == 1):
                    continue
                if comp != "none" and z >= 2:
                    continue
                try:
                    check_combination(mode, comp)
                except ConfigError:
                    continue
                yield SyncOption(z, mode, comp)


@lru_cache(maxsize=4096)
def _hierarchical_helps(tp: int, dp: int, devices_per_node: int) -> bool:
    """A DP group that spans nodes with >= 2 members per node (rank order tp-dp-pp: pp does not matter)."""
    if dp == 1:
        return False
    degrees = Degrees(tp=tp, dp=dp, pp=1)
    return crosses_nodes(degrees, "dp", devices_per_node) and ranks_per_node_in_group(degrees, "dp",
                                                                                       devices_per_node) >= 2


def make_config(space: SearchSpace, g: ComputeGroup, schedule: str, v: int, s: SyncOption) -> ParallelConfig:
    return ParallelConfig(dp=g.dp, tp=g.tp, pp=g.pp, ep=g.ep, micro_batch_size=g.micro_batch,
                          global_batch_size=space.global_batch, seq_len=space.seq_len, schedule=schedule,
                          virtual_stages=v, recompute=g.recompute, sequence_parallel=g.sequence_parallel,
                          zero_stage=s.zero, grad_sync=s.grad_sync, compression=s.compression)


def enumerate_configs(space: SearchSpace) -> Iterator[ParallelConfig]:
    """Every configuration of the space (even layer split; the partitioner refines splits later)."""
    for g in compute_groups(space):
        syncs = list(sync_options(space, g))
        for sched, v in schedule_options(space, g):
            for s in syncs:
                yield make_config(space, g, sched, v, s)


def explain_empty(space: SearchSpace) -> InfeasibleError:
    """Why the space has no configuration: a one-line reason naming the numbers."""
    m, world, c = space.model, space.world_size, space.constraints
    fixed = c.as_dict()
    suffix = f" under --fix {', '.join(f'{k}={v}' for k, v in fixed.items())}" if fixed else ""
    tps = [t for t in divisors(world) if _tp_ok(m, t) and c.allows("tp", t)
           and (c.is_fixed("tp") or t <= space.cluster.devices_per_node)]
    layouts = [(t, p) for t in tps for p in divisors(world // t) if p <= m.num_layers and c.allows("pp", p)
               and c.allows("dp", world // (t * p))]
    if not layouts:
        return InfeasibleError(
            f"world size {world}: no tp x pp x dp layout divides it for {m.name} (tp must divide {m.num_heads} heads, "
            f"{m.kv_heads} kv heads and FFN {m.ffn_hidden_size} and stay within a {space.cluster.devices_per_node}-"
            f"device node; pp at most {m.num_layers} layers){suffix}")
    dps = sorted({world // (t * p) for t, p in layouts})
    if not any(space.global_batch % d == 0 for d in dps):
        return InfeasibleError(
            f"world size {world} and global batch {space.global_batch}: no tp x pp x dp divides the world with dp "
            f"dividing the batch (the world allows dp in {', '.join(map(str, dps[:12]))}; tp must divide "
            f"{m.num_heads} heads within a node, pp at most {m.num_layers} layers){suffix}")
    if m.is_moe and c.is_fixed("ep"):
        return InfeasibleError(f"expert parallel degree {c.ep} must divide {m.num_experts} experts and tp x dp"
                               f"{suffix}")
    return InfeasibleError(f"no configuration satisfies the request (global batch {space.global_batch}, "
                           f"world {world}, micro-batch <= {space.max_micro_batch}){suffix}")
