"""Step-time assembly: simulate the pipeline, add the exposed DP sync, ZeRO-3 gathers and the optimizer,
and split the result into the breakdown terms (which add up to the step time)."""

from __future__ import annotations

from planner.collectives import group_layout
from planner.cost import memory as mem
from planner.cost.pipeline import makespan
from planner.cost.rank_memory import memory_zero_stage
from planner.cost.replicas import ExpertReplicas, replica_grad_sync_s
from planner.cost.step import _type_counts
from planner.cost.sync import exposed_after_backward_s, grad_sync_s, optimizer_s
from planner.cost.types import Estimate
from planner.errors import ConfigError
from planner.parallel_config import ParallelConfig

try:
    from planner import compression as _compression
except ImportError:  # pragma: no cover
    _compression = None


def _rank_params(cm, config: ParallelConfig, expert_copies: float = 1.0) -> tuple[tuple[float, float, int], ...]:
    """(dense elements, routed-expert elements, MoE layers) on one rank of each pipeline rank (cached)."""
    key = (config.tp, config.ep, config.pp, config.schedule, config.num_chunks, tuple(config.stage_layers),
           expert_copies)
    got = cm._params_cache.get(key)
    if got is None:
        got = cm._params_cache[key] = _rank_params_uncached(cm, config, expert_copies)
    return got


def _rank_params_uncached(cm, config: ParallelConfig, expert_copies: float) -> tuple[tuple[float, float, int], ...]:
    g = cm.graph
    per_type = []
    for lt in g.layer_types:
        d = e = 0.0
        for b in lt.blocks:
            x, y = mem.block_params_on_rank(b, config.tp, config.ep)
            d, e = d + x, e + y * expert_copies
        per_type.append((d, e, int(lt.ffn.kind == "moe")))
    out = [[0.0, 0.0, 0] for _ in range(config.pp)]
    ranges = cm.ranges(config)
    for c, (lo, hi) in enumerate(ranges):
        r = ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule)
        counts, _ = _type_counts(g, lo, hi, 0)
        for t, n in enumerate(counts):
            out[r][0] += n * per_type[t][0]
            out[r][1] += n * per_type[t][1]
            out[r][2] += n * per_type[t][2]
    emb = mem.block_params_on_rank(g.embedding, config.tp, config.ep)[0]
    head = mem.block_params_on_rank(g.head, config.tp, config.ep)[0]
    if cm.model.tied_embeddings and config.pp > 1:
        head += cm.model.vocab_size * cm.model.hidden_size / config.tp
    out[0][0] += emb
    out[ParallelConfig.chunk_to_pp_rank(len(ranges) - 1, config.pp, config.schedule)][0] += head
    return tuple((x[0], x[1], x[2]) for x in out)


def _fsdp_units(cm, config: ParallelConfig) -> tuple[int, ...]:
    """FSDP units per pipeline rank: one per transformer block plus one per model chunk (the chunk's root unit
    holds embedding, final norm and head), as runtime/data_parallel.py shards them."""
    out = [0] * config.pp
    for c, (lo, hi) in enumerate(cm.ranges(config)):
        out[ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule)] += hi - lo + 1
    return tuple(out)


def assemble(cm, config: ParallelConfig, replicas: ExpertReplicas | None = None) -> Estimate:
    if config.compression != "none" and _compression is not None:
        _compression.check_combination(config.grad_sync, config.compression)
    elif config.compression != "none" and config.grad_sync != "allreduce" and config.compression not in ("fp16", "bf16"):
        raise ConfigError(f"compression {config.compression} needs grad_sync allreduce")
    dur = cm._durations(config)
    chunks = dur.chunks
    rank_of = dur.chunk_rank
    sums = dur.rank_sums
    pp, v, m = config.pp, config.virtual_stages, config.num_micro_batches
    res = makespan(config.schedule, pp, v, m, *dur.simulation_inputs())
    busy = [m * x.work_s for x in sums]
    last_bwd = [x.bwd_s for x in sums]
    first_fwd = [x.fwd_s for x in sums]
    crit = max(range(pp), key=busy.__getitem__)

    # --- DP gradient sync, per pipeline rank, from its finish time
    comm = cm._axis_comm(config)
    dpn = cm.cluster.devices_per_node
    mdl = cm.model
    copies = replicas.copies if replicas else 1.0
    params = _rank_params(cm, config, copies)
    replica_sync = [replica_grad_sync_s(comm, replicas, mdl.expert_params(), moe, cm.options.grad_bytes)
                    for _, _, moe in params] if replicas else [0.0] * pp
    edp = max(config.tp * config.dp // config.ep, 1)
    end_all = res.makespan_s
    opt_s = 0.0
    zero3 = 0.0
    codec_total = 0.0
    sync_memo: dict[tuple[float, float, int], tuple[float, int, float, float]] = {}

    zro = cm.options.zero1 == "zero_redundancy_optimizer" and config.zero_stage == 1
    units = _fsdp_units(cm, config)
    # FSDP gathers and reduce-scatters every micro-batch at pp = 1 (runtime/data_parallel.py set_grad_sync);
    # under pipelining it gathers once and reduce-scatters once (rank_memory.memory_zero_stage)
    every_mb = config.zero_stage >= 2 and memory_zero_stage(config) >= 2
    opt_rate = cm.optimizer_rate(config)

    measured = (cm.profile.grad_sync_s_per_element(config.compression, config.dp)
                if config.compression != "none" and config.zero_stage == 0 and config.grad_sync == "allreduce"
                and hasattr(cm.profile, "grad_sync_s_per_element") else None)

    def _sync(dense: float, expert: float, n_units: int) -> tuple[float, int, float, float]:
        out = grad_sync_s(comm, config, dense, "dp", config.dp, mdl.dtype_bytes, mdl.hidden_size,
                          cm.hw.hbm_bytes_per_s, cm.options.grad_bytes, zro, n_units, measured)
        if expert:
            e = grad_sync_s(comm, config, expert, "edp", edp, mdl.dtype_bytes, mdl.hidden_size,
                            cm.hw.hbm_bytes_per_s, cm.options.grad_bytes, zro, n_units)
            out = (out[0] + e[0], out[1] + e[1], out[2] + e[2], out[3] + e[3])
        return out

    for r in range(pp):
        dense, expert, _ = params[r]
        memo = sync_memo.get((dense, expert, units[r]))
        if memo is None:
            memo = sync_memo[(dense, expert, units[r])] = _sync(dense, expert, units[r])
        rs, nb, ag, codec = memo
        exposed = exposed_after_backward_s(rs, nb, last_bwd[r], config.overlap_grad_reduce) + codec
        exposed += replica_sync[r]  # replica gradients are summed after the backward, before the DP reduction
        if ag:  # updated parameters: gathered after the step, overlapped with the next forward when enabled;
            # ZeroRedundancyOptimizer broadcasts them inside optimizer.step(), never overlapped. ZeRO-2 as
            # FSDP (reshard_after_forward=False) gathers again in every micro-batch's forward: FSDP2 reshards
            # after each backward (its post-backward), so m gathers per step, each beside one forward
            gathers = m if config.zero_stage == 2 and every_mb else 1
            ag *= gathers
            exposed += max(0.0, ag - gathers * first_fwd[r]) if config.overlap_grad_reduce and not zro else ag
        end_all = max(end_all, res.finish_s[r] + exposed)
        codec_total = max(codec_total, codec)
        opt_s = max(opt_s, optimizer_s(dense + expert, config.zero_stage, config.dp if not expert else
                                       min(config.dp, edp), cm.hw.hbm_bytes_per_s, opt_rate))
        if every_mb and config.dp > 1:
            n, per_node = group_layout(config.degrees, "dp", dpn)
            # FSDP's per-micro-batch traffic (breakdown "zero3_gather", ZeRO-2's scatters included), one
            # collective per FSDP unit (a transformer block; runtime/data_parallel.py). ZeRO-3 re-gathers the
            # parameters in the forward and again in the backward of every micro-batch (Rajbhandari et al.
            # 2020 Sec 7.2.2); ZeRO-2 keeps them from forward to backward, its forward gathers are the m x ag
            # above. Both reduce-scatter every micro-batch's gradients; the last one is the step's DP sync
            # priced above, so (m - 1) / m of them land here. They run beside the compute on their own
            # stream; only what exceeds the compute is exposed.
            u = max(1, units[r])
            gather = (2 * u * cm.comm.time_s("all_gather", dense * mdl.dtype_bytes / u, n, per_node)
                      if config.zero_stage >= 3 else 0.0)
            scatter = u * cm.comm.time_s("reduce_scatter", dense * cm.options.grad_bytes / u, n, per_node) * (m - 1) / m
            per_mb = busy[r] / m
            zero3 = max(zero3, m * max(0.0, gather + scatter - per_mb))
    dp_exposed = end_all - res.makespan_s

    # --- breakdown on the busiest rank
    top = sums[crit]
    comp, rec, tp, ep = top.compute_s * m, top.recompute_s * m, top.tp_s * m, top.ep_s * m
    send_f, send_b = dur.sends()
    if dur.p2p_blocking:  # the busiest rank's own sends, every micro-batch
        pp_comm = m * dur.p2p_s * sum(send_f[c] + send_b[c] for c in range(len(chunks)) if rank_of[c] == crit)
    else:  # asynchronous sends: only the fill and drain hops of the pipeline wait for the network
        pp_comm = 2 * sum(send_f) * dur.p2p_s
    pp_comm = min(pp_comm, max(0.0, res.makespan_s - busy[crit]))
    bubble = max(0.0, res.makespan_s - busy[crit] - pp_comm)
    breakdown = {"compute": comp, "recompute": rec, "tp_comm": tp, "ep_comm": ep, "pp_comm": pp_comm,
                 "pp_bubble": bubble, "dp_sync_exposed": dp_exposed, "zero3_gather": zero3, "optimizer": opt_s}
    step = sum(breakdown.values())

    from planner.cost.step import bottleneck_words

    memory = cm._memory(config, replicas)
    model_flops, hw_flops = cm.model_flops_per_step(config)
    world = config.world_size
    peak = cm.hw.peak_flops
    tflops = model_flops / step / world / 1e12
    hfu_tflops = hw_flops / step / world / 1e12
    notes = []
    if not memory.fits:
        notes.append(f"does not fit: the fullest rank needs {memory.peak_memory_bytes / 2**30:.2f} GiB, "
                     f"{memory.excess_bytes / 2**30:.2f} GiB over the {memory.capacity_bytes / 2**30:.2f} GiB capacity")
    if codec_total:
        notes.append(f"compression codec adds {codec_total * 1e3:.1f} ms per step on the compute stream")
    if replicas:
        notes.append(f"expert placement holds up to {replicas.slots_per_rank} experts per EP rank (even split "
                     f"{replicas.even_slots:g}), {replicas.replicated_experts} replicated: their memory is priced "
                     f"and their gradient all-reduce adds {max(replica_sync) * 1e3:.1f} ms after the backward")
    return Estimate(
        config=config, step_time_s=step, tflops_per_gpu=tflops, hfu_tflops_per_gpu=hfu_tflops,
        mfu=tflops * 1e12 / peak, hfu=hfu_tflops * 1e12 / peak,
        tokens_per_s_per_gpu=config.global_batch_size * config.seq_len / step / world,
        peak_memory_bytes=memory.peak_memory_bytes, capacity_bytes=memory.capacity_bytes, fits=memory.fits,
        memory_by_stage=memory.memory_by_stage, breakdown=breakdown,
        chunk_times_s=tuple(ch.total_s for ch in chunks), bottleneck=bottleneck_words(breakdown),
        notes=tuple(notes))
