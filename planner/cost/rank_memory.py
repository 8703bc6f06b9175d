"""Peak memory per pipeline rank: the formulas of planner/cost/memory.py summed over the chunks a rank holds.

weights + gradients + optimizer states of its layers (ZeRO sharding over dp, routed experts over the
expert-data-parallel group) + activations of every chunk times the micro-batches it holds at the rank's
peak (simulated from the schedule, planner/cost/pipeline.py) + buffers and framework overhead.
``expert_copies`` scales the routed-expert parameters for a placement with replicated experts
(planner/cost/replicas.py). ``cm`` is the CostModel (model, graph, options, hardware, capacity).
"""

from __future__ import annotations

from planner.cost import memory as mem
from planner.cost.pipeline import inflight_per_chunk
from planner.cost.types import MemoryEstimate, StageMemory
from planner.layer_graph import Block
from planner.parallel_config import ParallelConfig


def static_bytes(cm, block: Block, config: ParallelConfig, expert_copies: float = 1.0) -> tuple[float, float, float]:
    """(weights, gradients, optimizer) bytes of ``block`` on one rank."""
    dense, expert = mem.block_params_on_rank(block, config.tp, config.ep)
    expert *= expert_copies
    gb = cm.options.grad_bytes
    zero = memory_zero_stage(config)
    d = mem.bytes_per_param(cm.model.dtype_bytes, zero, config.dp, gb)
    edp = max(config.tp * config.dp // config.ep, 1)
    e = mem.bytes_per_param(cm.model.dtype_bytes, zero, edp, gb)
    return (dense * d.weights + expert * e.weights, dense * d.grads + expert * e.grads,
            dense * d.optimizer + expert * e.optimizer)


def memory_zero_stage(config: ParallelConfig) -> int:
    """The ZeRO stage whose sharding the rank's parameters and gradients really get. Under pipeline parallelism
    with several micro-batches, ZeRO-2/3 keep only the optimizer state sharded: torch pipelining keeps FSDP
    parameters and gradients unsharded from the first backward to the last (torch/distributed/pipelining/
    stage.py: ``set_reshard_after_backward(False)``, ``set_requires_gradient_sync(False)``), and DeepSpeed
    allows only ZeRO-1 with its pipeline engine. So they hold ZeRO-1's bytes."""
    if config.zero_stage >= 2 and config.pp > 1 and config.num_micro_batches > 1:
        return 1
    return config.zero_stage


def activation_bytes(cm, block: Block, config: ParallelConfig, recompute: str, layer_block: bool = True) -> float:
    return mem.activation_bytes(block, tokens=config.micro_batch_size * config.seq_len, seq_len=config.seq_len,
                                tp=config.tp, sequence_parallel=config.sequence_parallel, recompute=recompute,
                                dtype_bytes=cm.model.dtype_bytes, hidden=cm.model.hidden_size,
                                is_layer_block=layer_block)


def layer_memory(cm, config: ParallelConfig, expert_copies: float = 1.0):
    """Per layer type: (static w/g/o triple, activation bytes under config.recompute, under full)."""
    out = []
    for lt in cm.graph.layer_types:
        sa, sf = static_bytes(cm, lt.attention, config, expert_copies), static_bytes(cm, lt.ffn, config, expert_copies)
        static = tuple(x + y for x, y in zip(sa, sf))
        act = (activation_bytes(cm, lt.attention, config, config.recompute)
               + activation_bytes(cm, lt.ffn, config, config.recompute))
        act_full = activation_bytes(cm, lt.attention, config, "full") + activation_bytes(cm, lt.ffn, config, "full")
        out.append((static, act, act_full))
    return out


def memory_estimate(cm, config: ParallelConfig, expert_copies: float = 1.0) -> MemoryEstimate:
    from planner.cost.step import _type_counts  # the cached layer-type counts of a layer range

    m, pp = cm.model, config.pp
    layer_mem = layer_memory(cm, config, expert_copies)
    ranges = cm.ranges(config)
    full_layers = config.stage_recompute_layers or (0,) * len(ranges)
    inflight = inflight_per_chunk(config.schedule, pp, config.virtual_stages, config.num_micro_batches)
    emb_static = static_bytes(cm, cm.graph.embedding, config)
    head_static = static_bytes(cm, cm.graph.head, config)
    if m.tied_embeddings and pp > 1:  # the last stage keeps its own copy of the word embedding
        word = Block(kind="embedding", params=m.vocab_size * m.hidden_size)
        head_static = tuple(x + y for x, y in zip(head_static, static_bytes(cm, word, config)))
    emb_act = activation_bytes(cm, cm.graph.embedding, config, "none", False)
    head_act = activation_bytes(cm, cm.graph.head, config, "none", False)
    w = [0.0] * pp
    g = [0.0] * pp
    o = [0.0] * pp
    a = [0.0] * pp
    last = len(ranges) - 1
    for c, (lo, hi) in enumerate(ranges):
        r = ParallelConfig.chunk_to_pp_rank(c, pp, config.schedule)
        counts, full = _type_counts(cm.graph, lo, hi, full_layers[c])
        act = 0.0
        for t, n in enumerate(counts):
            if n:
                static, act_t, act_full = layer_mem[t]
                w[r] += n * static[0]
                g[r] += n * static[1]
                o[r] += n * static[2]
                act += (n - full[t]) * act_t + full[t] * act_full
        if c == 0:
            w[r] += emb_static[0]
            g[r] += emb_static[1]
            o[r] += emb_static[2]
            act += emb_act
        if c == last:
            w[r] += head_static[0]
            g[r] += head_static[1]
            o[r] += head_static[2]
            act += head_act
        a[r] += act * inflight[c]
    other = other_bytes(cm, config)
    stages = tuple(StageMemory(r, w[r], g[r], o[r], a[r], other) for r in range(pp))
    return MemoryEstimate(stages, cm.capacity_bytes)


def other_bytes(cm, config: ParallelConfig) -> float:
    m = cm.model
    gather = 0.0
    if memory_zero_stage(config) >= 3:  # two layers' full weights gathered at once (current + prefetch)
        lt = cm.graph.layer_types[-1]
        dense = sum(mem.block_params_on_rank(b, config.tp, config.ep)[0] for b in lt.blocks)
        gather = 2 * dense * m.dtype_bytes
    return mem.other_bytes(tokens=config.micro_batch_size * config.seq_len, hidden=m.hidden_size,
                           dtype_bytes=m.dtype_bytes, tp=config.tp, sequence_parallel=config.sequence_parallel,
                           bucket_size_bytes=config.bucket_size_bytes, dp=config.dp, pp=config.pp,
                           zero3_gather_bytes=gather, family=cm.hw.family)
