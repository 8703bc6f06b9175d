"""CostModel: step time and memory of one ParallelConfig, assembled from per-block-type terms.

step time = pipeline makespan (simulated schedule over per-chunk forward / backward times, PP send/recv on
the dependency edges) + exposed DP gradient sync + exposed ZeRO-3 gathers + optimizer step.
The breakdown splits the makespan of the busiest pipeline rank into compute, recompute, TP, EP
communication, pipeline send/recv (makespan minus the makespan without p2p) and bubble (the rest).

Per-block-type results are cached (a model has 2-4 distinct blocks), so one estimate costs a few dict
look-ups, two cached pipeline simulations and a handful of formulas.
"""

from __future__ import annotations

import dataclasses
import logging
from dataclasses import dataclass
from functools import lru_cache
from typing import Any, Sequence

from planner.cluster_spec import ClusterSpec
from planner.collectives import Collectives, group_layout
from planner.cost import efficiency as eff
from planner.cost import rank_memory, shared_host
from planner.cost.compute import ZERO, BlockTime, Hardware, Shape, block_time, profiled_block_time
from planner.cost.durations import ChunkDurations, PipelineDurations, p2p_s
from planner.cost.pipeline import inflight_per_chunk
from planner.cost.replicas import ExpertReplicas, expert_replicas
from planner.cost.types import BREAKDOWN_WORDS, Estimate, MemoryEstimate, PartitionInputs
from planner.errors import ConfigError
from planner.layer_graph import Block, LayerGraph, layer_graph
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig
from planner.schedules import SPLIT_BACKWARD_SCHEDULES

log = logging.getLogger(__name__)


ZERO1_IMPLEMENTATIONS = ("zero_redundancy_optimizer", "distributed_optimizer")


@dataclass(frozen=True)
class CostOptions:
    """Framework features that change cost but are not parallel-config decisions."""

    flash_attention: bool = True
    """FlashAttention (no s x s activations; fused softmax). Megatron-LM before 2023 had none."""
    dropout: bool | None = None
    """Dropout layers present; None: models with learned positions (GPT-2 / Megatron GPT) have them."""
    tp_comm_overlap: bool = False
    """TP collectives overlapped with matmuls (Megatron-Core ``--tp-comm-overlap``, Transformer Engine)."""
    pp_comm_overlap: bool = True
    """Pipeline send/recv runs asynchronously beside compute (Megatron-Core default, torch pipelining's
    isend/irecv); False: each send blocks its rank (Megatron-LM 2021-22 ``_communicate`` waits on it)."""
    grad_bytes: int = 4
    """Bytes per gradient element in the accumulation / reduction buffer: 4 (fp32 ``main_grad``, Megatron-LM
    2021-22, Korthikanti Fig. 1's 18 bytes / parameter) or 2 (reduced in bf16, Megatron-Core default)."""
    pp_scatter_gather: bool = True
    """Send 1/t of each activation between stages and all-gather over NVLink (Narayanan et al. 2021 Sec 4.1)."""
    zero1: str = "zero_redundancy_optimizer"
    """How ZeRO-1 moves bytes. 'zero_redundancy_optimizer' (hybridplan's runtime: torch
    ``ZeroRedundancyOptimizer`` beside DDP, runtime/optim.py): gradients are all-reduced as without ZeRO,
    each rank updates the parameters it owns and broadcasts them inside ``optimizer.step()``, so the
    broadcast is never overlapped. 'distributed_optimizer' (Megatron ``--use-distributed-optimizer``,
    Rajbhandari et al. 2020 Sec 5): reduce-scatter of the gradients, all-gather of the updated parameters,
    which may overlap the next forward."""

    def __post_init__(self) -> None:
        if self.zero1 not in ZERO1_IMPLEMENTATIONS:
            raise ConfigError(f"cost option zero1 must be one of {', '.join(ZERO1_IMPLEMENTATIONS)}, "
                              f"got {self.zero1!r}")


CACHE_LIMIT = 50_000
"""Entries per CostModel cache before it is emptied: a long search must not grow memory without bound."""


def _memo(cache: dict, key: Any, make) -> Any:
    """``cache[key]``, made by ``make()`` on a miss; the cache is emptied when it reaches CACHE_LIMIT."""
    got = cache.get(key)
    if got is None:
        if len(cache) >= CACHE_LIMIT:
            cache.clear()
        got = cache[key] = make()
    return got


@lru_cache(maxsize=4096)
def _type_counts(graph: LayerGraph, first: int, last: int, n_full: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(layers per type, of which under full recompute) for [first, last); full recompute covers the
    chunk's first n_full layers (Megatron ``--recompute-num-layers`` with the uniform/block method)."""
    counts = [0] * len(graph.layer_types)
    full = [0] * len(graph.layer_types)
    for i in range(first, last):
        t = graph.type_of_layer(i)
        counts[t] += 1
        if i - first < n_full:
            full[t] += 1
    return tuple(counts), tuple(full)


@lru_cache(maxsize=4096)
def chunk_ranges(num_layers: int, num_chunks: int, stage_layers: tuple[int, ...]) -> tuple[tuple[int, int], ...]:
    """[first, last) layer range per chunk (ParallelConfig.chunk_layer_ranges, cached for the hot path)."""
    from planner.parallel_config import even_split

    out, start = [], 0
    for n in (stage_layers or even_split(num_layers, num_chunks)):
        out.append((start, start + n))
        start += n
    return tuple(out)


class CostModel:
    """Prices a ParallelConfig for ``model`` on ``cluster``.

    ``profile``: optional planner.profile.Profile; where it measured a block (``block_time_s``) or a
    collective (``collective_time_s``) it replaces the analytical number; uncovered queries fall back to the
    spec sheet with one warning each. ``estimate`` raises ConfigError for an invalid config and never for one
    that does not fit (``Estimate.fits`` says so). ``capacity_bytes`` is the device memory minus
    ``efficiency.MEMORY_SAFETY_MARGIN``.
    """

    def __init__(self, model: ModelSpec, cluster: ClusterSpec, profile: Any = None,
                 options: CostOptions | None = None, *, concurrency: float | None = None):
        self.model, self.cluster = model, cluster
        self.options = options or CostOptions()
        if profile is not None and hasattr(profile, "for_cluster"):
            profile = profile.for_cluster(cluster)
        if profile is not None and concurrency is not None:
            profile = profile.at_concurrency(concurrency)
        self.profile = profile
        self._shared_host = concurrency is None and shared_host.applies(cluster, profile)
        """Ranks share a host's cores: each estimate finds how many are busy (planner/cost/shared_host.py)."""
        self._at: dict[float, CostModel] = {}
        self._k_cache: dict[tuple, float] = {}
        self.graph = layer_graph(model, self.options.flash_attention, self.options.dropout)
        self.hw = Hardware(peak_flops=cluster.device.flops(model.dtype),
                           hbm_bytes_per_s=cluster.device.hbm_bandwidth_bytes_per_s,
                           family=eff.device_family(cluster.device.name))
        self.comm = Collectives(cluster, profile)
        rate = profile.device_rate("optimizer_adamw_s_per_param") if hasattr(profile, "device_rate") else None
        self.optimizer_s_per_param: float | None = rate
        """Measured AdamW seconds per parameter (the profiler times the runtime's optimizer step); None: the
        memory-bound estimate of planner/cost/sync.py."""
        self._optimizer_tp_rates: dict[int, float | None] = {}
        self.capacity_bytes = float(cluster.device.memory_bytes) * (1.0 - eff.MEMORY_SAFETY_MARGIN)
        self._block_cache: dict[tuple, BlockTime] = {}
        self._chunk_cache: dict[tuple, tuple[ChunkDurations, ...]] = {}
        self._durations_cache: dict[tuple, PipelineDurations] = {}
        self._params_cache: dict[tuple, tuple[tuple[float, float], ...]] = {}
        self._memory_cache: dict[tuple, MemoryEstimate] = {}
        self._warned: set[tuple] = set()

    # ------------------------------------------------------------------ block times
    def _axis_comm(self, config: ParallelConfig):
        dpn = self.cluster.devices_per_node
        degrees = config.degrees

        def comm(op: str, nbytes: float, axis: str) -> float:
            n, per_node = group_layout(degrees, axis, dpn)
            return self.comm.time_s(op, nbytes, n, per_node)
        return comm

    def block_time(self, block: Block, config: ParallelConfig) -> BlockTime:
        """One micro-batch of ``block`` under ``config`` (cached per block type and shape)."""
        ep_layout = group_layout(config.degrees, "ep", self.cluster.devices_per_node) if block.a2a_bytes else ()
        key = (id(block), config.micro_batch_size, config.seq_len, config.tp, config.sequence_parallel, config.ep,
               ep_layout)
        got = self._block_cache.get(key)
        if got is not None:
            return got
        m = self.model
        shape = Shape(config.micro_batch_size, config.seq_len, config.tp, config.sequence_parallel, config.ep,
                      m.dtype_bytes, m.hidden_size, m.num_experts)
        got = block_time(block, shape, self.hw, self._axis_comm(config),
                         flash_attention=self.options.flash_attention, tp_comm_overlap=self.options.tp_comm_overlap)
        if self.profile is not None:
            got = self._profiled(block, config, got)
        self._block_cache[key] = got
        return got

    def _profiled(self, block: Block, config: ParallelConfig, analytic: BlockTime) -> BlockTime:
        args = (block.kind, config.tp, config.micro_batch_size, config.seq_len, config.sequence_parallel)
        try:
            measured = self.profile.block_time_s(*args, model=self.model, dtype=self.model.dtype)
            rec = self.profile.recompute_time_s(*args, model=self.model, dtype=self.model.dtype) if measured else None
        except TypeError:  # a profile object with the bare documented signature
            measured = self.profile.block_time_s(*args)
            rec = None
        if measured is None:
            if args not in self._warned:
                self._warned.add(args)
                log.warning("profile does not cover %s at tp=%d mb=%d seq=%d sp=%s; using the analytical model",
                            *args)
            return analytic
        return profiled_block_time(analytic, measured, rec)

    def _scheduled_block_time(self, block: Block, config: ParallelConfig) -> BlockTime:
        """``block_time`` as the schedule runs it: a split backward (zbv) waits in B for the TP collectives the
        deferred weight-gradient matmul no longer hides (compute.block_time, ``tp_bwd_split_extra_s``)."""
        bt = self.block_time(block, config)
        if config.schedule in SPLIT_BACKWARD_SCHEDULES and bt.tp_bwd_split_extra_s:
            bt = dataclasses.replace(bt, tp_bwd_s=bt.tp_bwd_s + bt.tp_bwd_split_extra_s, tp_bwd_split_extra_s=0.0)
        return bt

    def _layer_times(self, config: ParallelConfig) -> list[BlockTime]:
        return [self._scheduled_block_time(lt.attention, config).plus(self._scheduled_block_time(lt.ffn, config))
                for lt in self.graph.layer_types]

    @staticmethod
    def _extra(bt: BlockTime, recompute: str) -> float:
        return bt.full_extra_s if recompute == "full" else bt.selective_extra_s if recompute == "selective" else 0.0

    # ------------------------------------------------------------------ per chunk
    def ranges(self, config: ParallelConfig) -> tuple[tuple[int, int], ...]:
        return chunk_ranges(self.model.num_layers, config.num_chunks, tuple(config.stage_layers))

    def pipeline_durations(self, config: ParallelConfig) -> PipelineDurations:
        """Per model chunk the F / B / W seconds of one micro-batch (by cause: compute, TP, EP, recompute,
        weight gradient) and the stage-to-stage transfer time: what the pipeline simulation runs on, for the
        step time here and the predicted timeline / trace in planner/report (planner/cost/durations.py)."""
        config.validate_for(self.model, self.cluster.world_size)
        if self._shared_host:
            return self.at_concurrency(self._concurrency_of(config)).pipeline_durations(config)
        return self._durations(config)

    def optimizer_rate(self, config: ParallelConfig) -> float | None:
        """Measured optimizer seconds per local parameter for ``config``: the runtime steps tensor-parallel
        DTensors where no DDP wraps them (dp 1) or FSDP shards them (ZeRO-2/3), and DTensor dispatch costs
        per tensor, so the profile's ``optimizer_adamw_s_per_param_tp<t>`` answers there when measured."""
        if config.tp > 1 and (config.dp == 1 or config.zero_stage >= 2) and hasattr(self.profile, "device_rate"):
            if config.tp not in self._optimizer_tp_rates:
                self._optimizer_tp_rates[config.tp] = self.profile.device_rate(
                    f"optimizer_adamw_s_per_param_tp{config.tp}")
            if self._optimizer_tp_rates[config.tp]:
                return self._optimizer_tp_rates[config.tp]
        return self.optimizer_s_per_param

    # ------------------------------------------------------------------ shared hosts
    def at_concurrency(self, k: float) -> "CostModel":
        """This model with the profile read at ``k`` busy ranks per host (planner/cost/shared_host.py)."""
        got = self._at.get(k)
        if got is None:
            got = self._at[k] = CostModel(self.model, self.cluster, self.profile, self.options, concurrency=k)
        return got

    def _concurrency_of(self, config: ParallelConfig, expert_placement: Any = None) -> float:
        key = (config, None if expert_placement is None else tuple(map(tuple, expert_placement)))
        return _memo(self._k_cache, key, lambda: shared_host.concurrency_for(
            self, config, lambda c: self._estimate_at(c, config, expert_placement))[0])

    def _estimate_at(self, k: float, config: ParallelConfig, expert_placement: Any = None) -> Estimate:
        """``config`` priced at concurrency ``k`` with nothing overlapped: on a shared host gloo's collectives
        copy and reduce on the cores the compute needs, so overlapping them only interleaves the same CPU
        work (measured: DDP's in-backward all-reduce lengthened the backward by the all-reduce's time)."""
        serial = config.replace(overlap_grad_reduce=False) if config.overlap_grad_reduce else config
        est = self.at_concurrency(k).estimate(serial, expert_placement=expert_placement)
        return est if serial is config else dataclasses.replace(est, config=config)

    def _chunk_key(self, config: ParallelConfig) -> tuple:
        """What the per-chunk durations depend on (not dp, ZeRO, grad sync: what the search varies most)."""
        return (config.micro_batch_size, config.seq_len, config.tp, config.sequence_parallel, config.ep,
                config.recompute, config.num_chunks, tuple(config.stage_layers), tuple(config.stage_recompute_layers),
                group_layout(config.degrees, "ep", self.cluster.devices_per_node) if self.model.is_moe else (),
                config.schedule in SPLIT_BACKWARD_SCHEDULES)

    def _durations(self, config: ParallelConfig) -> PipelineDurations:
        return _memo(self._durations_cache, (self._chunk_key(config), config.schedule, config.pp, config.dp),
                     lambda: PipelineDurations(schedule=config.schedule, pp=config.pp, chunks=self._chunks(config),
                                               p2p_s=p2p_s(self, config),
                                               p2p_blocking=not self.options.pp_comm_overlap and config.pp > 1))

    def _chunks(self, config: ParallelConfig) -> tuple[ChunkDurations, ...]:
        """Per chunk durations, cached on ``_chunk_key``."""
        return _memo(self._chunk_cache, self._chunk_key(config), lambda: self._chunks_uncached(config))

    def _chunks_uncached(self, config: ParallelConfig) -> tuple[ChunkDurations, ...]:
        lts = self._layer_times(config)
        emb = self._scheduled_block_time(self.graph.embedding, config)
        head = self._scheduled_block_time(self.graph.head, config)
        ranges = self.ranges(config)
        full_layers = config.stage_recompute_layers or (0,) * len(ranges)
        split = config.schedule in SPLIT_BACKWARD_SCHEDULES
        out = []
        last = len(ranges) - 1
        for c, (a, b) in enumerate(ranges):
            counts, full = _type_counts(self.graph, a, b, full_layers[c])
            total, extra = ZERO, 0.0
            for t, n in enumerate(counts):
                if n:
                    total = total.plus(lts[t].scaled(n))
                    extra += full[t] * lts[t].full_extra_s + (n - full[t]) * self._extra(lts[t], config.recompute)
            if c == 0:
                total = total.plus(emb)
            if c == last:
                total = total.plus(head)
            out.append(ChunkDurations(
                fwd_compute_s=total.fwd_compute_s, tp_fwd_s=total.tp_fwd_s, ep_fwd_s=total.ep_fwd_s,
                recompute_s=extra, bwd_compute_s=total.bwd_compute_s, tp_bwd_s=total.tp_bwd_s,
                ep_bwd_s=total.ep_bwd_s, weight_grad_s=total.bwd_weight_s if split else 0.0))
        return tuple(out)

    # ------------------------------------------------------------------ memory
    def memory(self, config: ParallelConfig, *,
               expert_placement: Sequence[Sequence[int]] | None = None) -> MemoryEstimate:
        """Peak memory per pipeline rank (the search prunes with this; no time terms computed).
        ``expert_placement``: as ``estimate``."""
        config.validate_for(self.model, self.cluster.world_size)
        return self._memory(config, expert_replicas(self.model, config.ep, expert_placement))

    def _memory(self, config: ParallelConfig, replicas: ExpertReplicas | None = None) -> MemoryEstimate:
        return _memo(self._memory_cache, (config, replicas),
                     lambda: rank_memory.memory_estimate(self, config, replicas.copies if replicas else 1.0))

    def _static(self, block: Block, config: ParallelConfig, expert_copies: float = 1.0) -> tuple[float, float, float]:
        """(weights, gradients, optimizer) bytes of ``block`` on one rank (planner/cost/rank_memory.py)."""
        return rank_memory.static_bytes(self, block, config, expert_copies)

    def _activation(self, block: Block, config: ParallelConfig, recompute: str, layer_block: bool = True) -> float:
        return rank_memory.activation_bytes(self, block, config, recompute, layer_block)

    # ------------------------------------------------------------------ FLOPs
    def model_flops_per_step(self, config: ParallelConfig) -> tuple[float, float]:
        """(model FLOPs, hardware FLOPs) of one step over all GPUs (Korthikanti eq. 7 / eq. 8 generalised)."""
        s = config.seq_len
        fwd_layers = 0.0
        core = 0.0
        for lt in self.graph.layer_types:
            n = len(lt.layers)
            for b in lt.blocks:
                fwd_layers += n * (b.gemm_flops + b.expert_gemm_flops + s * b.core_flops_per_seq)
                core += n * s * b.core_flops_per_seq
        fwd = fwd_layers + self.graph.head.gemm_flops
        tokens = config.global_batch_size * s
        model = 3 * fwd * tokens
        if config.recompute == "full" or any(config.stage_recompute_layers):
            share = 1.0 if config.recompute == "full" else sum(config.stage_recompute_layers) / self.model.num_layers
            extra = share * fwd_layers + (1 - share) * (core if config.recompute == "selective" else 0.0)
        elif config.recompute == "selective" and not self.options.flash_attention:
            extra = core
        else:
            extra = 0.0
        return model, model + extra * tokens

    # ------------------------------------------------------------------ estimate
    def estimate(self, config: ParallelConfig, *,
                 expert_placement: Sequence[Sequence[int]] | None = None) -> Estimate:
        """Step time, throughput, memory and breakdown of ``config`` (ConfigError if invalid).

        ``expert_placement``: per EP rank the routed experts it holds (``Plan.expert_placement``); when it
        gives some EP rank more than E / ep experts (replicated hot experts), the copies' memory and their
        gradient reduction are priced (planner/cost/replicas.py). None: the even split."""
        config.validate_for(self.model, self.cluster.world_size)
        if self._shared_host:
            k = self._concurrency_of(config, expert_placement)
            est = self._estimate_at(k, config, expert_placement)
            note = (f"shared host: on average {k:.1f} of the {self.cluster.devices_per_node} ranks per host compute "
                    f"at once; block times read from the profile at that concurrency")
            return dataclasses.replace(est, notes=est.notes + (note,))
        from planner.cost.assemble import assemble  # local: keeps this file to the per-chunk terms

        return assemble(self, config, expert_replicas(self.model, config.ep, expert_placement))

    def partition_inputs(self, config: ParallelConfig) -> PartitionInputs:
        """Per-layer time and memory vectors for the stage partitioner (see PartitionInputs). On a shared
        host: at the profile's lowest concurrency, the fastest a block can run, so the search's bounds built
        from these stay lower bounds (planner/search/bounds.py); the partitioner only needs their ratios."""
        config.validate_for(self.model, self.cluster.world_size)
        if self._shared_host:
            return self.at_concurrency(float(self.profile.concurrency_levels[0])).partition_inputs(config)
        lts = self._layer_times(config)
        layer_mem = rank_memory.layer_memory(self, config)
        L = self.model.num_layers
        types = [self.graph.type_of_layer(i) for i in range(L)]
        per_type_time = [bt.fwd_s + bt.bwd_s + self._extra(bt, config.recompute) for bt in lts]
        per_type_full = [bt.full_extra_s - self._extra(bt, config.recompute) for bt in lts]
        emb = self._scheduled_block_time(self.graph.embedding, config)
        head = self._scheduled_block_time(self.graph.head, config)
        mem_est = self._memory(config)
        emb_static = sum(self._static(self.graph.embedding, config))
        head_static = sum(self._static(self.graph.head, config))
        if self.model.tied_embeddings and config.pp > 1:
            head_static += sum(self._static(Block(kind="embedding", params=self.model.vocab_size
                                                  * self.model.hidden_size), config))
        return PartitionInputs(
            layer_time_s=tuple(per_type_time[t] for t in types),
            layer_full_recompute_extra_s=tuple(per_type_full[t] for t in types),
            layer_static_bytes=tuple(sum(layer_mem[t][0]) for t in types),
            layer_activation_bytes=tuple(layer_mem[t][1] for t in types),
            layer_activation_full_recompute_bytes=tuple(layer_mem[t][2] for t in types),
            embed_time_s=emb.fwd_s + emb.bwd_s, embed_static_bytes=emb_static,
            embed_activation_bytes=self._activation(self.graph.embedding, config, "none", False),
            head_time_s=head.fwd_s + head.bwd_s, head_static_bytes=head_static,
            head_activation_bytes=self._activation(self.graph.head, config, "none", False),
            inflight_microbatches=inflight_per_chunk(config.schedule, config.pp, config.virtual_stages,
                                                     config.num_micro_batches),
            rank_other_bytes=mem_est.memory_by_stage[0].other_bytes, capacity_bytes=self.capacity_bytes)


def bottleneck_words(breakdown: dict[str, float]) -> str:
    key = max(breakdown, key=lambda k: breakdown[k])
    return BREAKDOWN_WORDS.get(key, key)
