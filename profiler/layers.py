"""`python -m profiler layers`: time each distinct block of a model per TP degree and micro-batch shape.

The blocks are the runtime's own (runtime/model.py), sharded by the runtime's own tensor-parallel plan
(runtime/tensor_parallel.py) on a real TP group, so a block time here is exactly what one TP rank spends
in training, TP / SP collectives included. Block kinds follow planner/layer_graph.py:

* ``embedding``: token (+ position) lookup, vocab-parallel under TP;
* ``attention``: ``x + attention(attention_norm(x))`` of one transformer block;
* ``mlp`` / ``moe``: ``h + feed_forward(ffn_norm(h))`` (dense MLP, or the MoE FFN of the first MoE layer);
* ``head``: final norm, output projection and the (vocab-parallel) cross-entropy loss.

Concurrency: every rank of the launched world measures at once (``--concurrency N`` local processes, or the
torchrun world), cut into world / tp groups of ``tp`` consecutive ranks (the planner's rank order puts TP
fastest), so shared cores or a shared device are measured under the load training puts on them. The
record keeps the median over ranks of each rank's median over repeats. Repeats are taken in rounds (one
sample of every shape per round, profiler/block_timer.py BlockSampler), so load drift on a shared machine
spreads over all shapes; peak memory is read during each shape's warm-up.
"""

from __future__ import annotations

import statistics
from typing import Any

import torch
import torch.distributed as dist

from planner.model_spec import ModelSpec
from profiler.block_timer import BlockSampler
from profiler.timing import peak_memory_bytes, peak_memory_reset

RECOMPUTED_KINDS = ("attention", "mlp", "moe")
"""Blocks that activation recomputation re-runs (the embedding and head are never recomputed)."""


def block_kinds(spec: ModelSpec) -> list[str]:
    kinds = ["embedding", "attention"]
    if any(not spec.is_moe_layer(i) for i in range(spec.num_layers)):
        kinds.append("mlp")
    if spec.is_moe:
        kinds.append("moe")
    return kinds + ["head"]


class BlockBench:
    """One layer of each kind, built and TP-sharded once per (tp, sp); closures time them at any shape."""

    def __init__(self, spec: ModelSpec, tp_mesh: Any, sequence_parallel: bool, device: torch.device):
        from runtime.model import ChunkSpec, build_chunk, torch_dtype

        self.spec, self.sp, self.device = spec, sequence_parallel, device
        self.dtype = torch_dtype(spec.dtype)
        self.tp_group = tp_mesh.get_group() if tp_mesh is not None else None
        self.tp = tp_mesh.size() if tp_mesh is not None else 1
        dense = next((i for i in range(spec.num_layers) if not spec.is_moe_layer(i)), None)
        moe = next((i for i in range(spec.num_layers) if spec.is_moe_layer(i)), None)
        self.chunks = {}
        for name, layer in (("dense", dense), ("moe", moe)):
            if layer is None:
                continue
            # one layer; the dense chunk also carries the embedding and the head
            chunk = build_chunk(spec, ChunkSpec(layer, layer + 1, name == "dense", name == "dense"), dtype=self.dtype,
                                device=device, tp_group=self.tp_group)
            if tp_mesh is not None:
                from runtime.tensor_parallel import parallelize_chunk

                parallelize_chunk(chunk, tp_mesh, sequence_parallel)
            self.chunks[name] = chunk

    def _local_seq(self, seq: int) -> int:
        return seq // self.tp if self.sp else seq

    def closures(self, kind: str, micro_batch: int, seq: int):
        """(forward(x) -> y, make_input() -> x, parameters) of one block kind at one shape."""
        h = self.spec.hidden_size
        chunk = self.chunks["moe" if kind == "moe" else "dense"]
        block = next(iter(chunk.layers.values())) if kind != "embedding" and kind != "head" else None
        params = [p for p in chunk.parameters()]

        def hidden() -> torch.Tensor:
            return torch.randn(micro_batch, self._local_seq(seq), h, dtype=self.dtype, device=self.device,
                               requires_grad=True)

        if kind == "embedding":
            def ids() -> torch.Tensor:
                return torch.randint(0, self.spec.vocab_size, (micro_batch, seq), device=self.device)
            return chunk.embed, ids, params
        if kind == "attention":
            return (lambda x: x + block.attention(block.attention_norm(x))), hidden, params
        if kind in ("mlp", "moe"):
            return (lambda x: x + block.feed_forward(block.ffn_norm(x))), hidden, params
        if kind == "head":
            from runtime.tensor_parallel import vocab_parallel_cross_entropy

            target = torch.randint(0, self.spec.vocab_size, (micro_batch, seq), device=self.device)
            return (lambda x: vocab_parallel_cross_entropy(chunk.head(x), target, self.tp_group)), hidden, params
        raise ValueError(f"unknown block kind {kind!r}")


def _tp_mesh(world: int, tp: int, device: torch.device):
    if tp == 1:
        return None
    from torch.distributed.device_mesh import DeviceMesh

    mesh = DeviceMesh(device.type, torch.arange(world).reshape(world // tp, tp), mesh_dim_names=("rep", "tp"))
    return mesh["tp"]


def matmul_rate(device: torch.device, dtype: torch.dtype, n: int = 512, repeats: int = 9) -> float:
    """FLOP/s of an n x n x n matmul on this rank, while every rank runs one (under concurrency)."""
    from profiler.timing import time_call_s

    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    for _ in range(2):
        a @ b
    t = statistics.median(time_call_s(lambda: a @ b, device, inner=4) for _ in range(repeats))
    return 2.0 * n**3 / t


def memory_bandwidth(device: torch.device, dtype: torch.dtype, numel: int = 8 * 2**20, repeats: int = 9) -> float:
    """Bytes/s of a streaming ``a += b`` (read a, read b, write a) on this rank while every rank runs one:
    the memory-bound rate of optimizer steps and elementwise kernels (ClusterSpec hbm_bandwidth)."""
    from profiler.timing import time_call_s

    a = torch.zeros(numel, dtype=dtype, device=device)
    b = torch.ones(numel, dtype=dtype, device=device)
    a.add_(b)
    t = statistics.median(time_call_s(lambda: a.add_(b), device, inner=2) for _ in range(repeats))
    return 3.0 * a.nbytes / t


OPTIMIZER_STATE_BYTES = 256 * 2**20
"""The optimizer step is timed over enough layers that parameters, gradients and Adam moments exceed this
(far beyond a CPU's caches): over one small layer they stay cache-resident and the step measured 1.8x
faster per parameter than the runtime's whole-model step (bench-llama on the 2-core CPU host)."""


def optimizer_layers(spec: ModelSpec) -> int:
    """Consecutive layers the optimizer step is timed over (OPTIMIZER_STATE_BYTES; at least one)."""
    per_layer = 4 * spec.dtype_bytes * max(1, spec.layer_params(0))  # parameter, gradient, two moments
    return max(1, min(spec.num_layers, -(-OPTIMIZER_STATE_BYTES // per_layer)))


def optimizer_step_s_per_param(spec: ModelSpec, device: torch.device, repeats: int = 7, tp_mesh: Any = None) -> float:
    """Seconds per parameter of the runtime's own optimizer step (runtime/optim.py: AdamW, per-parameter
    loop, after the gradient-norm clipping it always does) over ``optimizer_layers`` transformer layers, while every rank runs one; a memory-bandwidth model
    misses the per-tensor dispatch that dominates small models on CPU. With ``tp_mesh`` the layers are
    tensor-parallel DTensors, as the runtime's optimizer sees them without DDP (measured: DTensor dispatch
    made a tp4 step 2.5x slower per local parameter than plain tensors); per local parameter."""
    from runtime.model import ChunkSpec, build_chunk, torch_dtype
    from runtime.optim import OptimConfig, build_optimizer
    from profiler.timing import time_call_s

    chunk = build_chunk(spec, ChunkSpec(0, optimizer_layers(spec), False, False), dtype=torch_dtype(spec.dtype),
                        device=device, tp_group=tp_mesh.get_group() if tp_mesh is not None else None)
    if tp_mesh is not None:
        from runtime.tensor_parallel import parallelize_chunk

        parallelize_chunk(chunk, tp_mesh, False)
    opt = build_optimizer([chunk], OptimConfig())
    params = [p for p in chunk.parameters() if p.requires_grad]
    for p in params:
        p.grad = torch.randn_like(p) * 1e-3
    local = [p.to_local() if hasattr(p, "to_local") else p for p in params]
    grads = [p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params]

    def clip_and_step() -> None:
        # what the runtime does after backward on every rank (runtime/grads.py finalize_grads, default
        # max_grad_norm 1.0): per-tensor norms in one fused call, the clip multiply, then the step
        norm = torch.stack(torch._foreach_norm(grads, 2)).double().pow(2).sum().sqrt().item()
        torch._foreach_mul_(grads, min(1.0, 1.0 / (norm + 1e-6)))
        opt.step()

    clip_and_step()  # state allocation happens on the first step
    t = statistics.median(time_call_s(clip_and_step, device) for _ in range(repeats))
    return t / sum(p.numel() for p in local)


def layers_worker(opts: dict) -> dict:
    """Runs on every rank: time every (tp, sp, seq, micro-batch, kind); returns this rank's rows."""
    from profiler.env import local_device

    spec = ModelSpec.from_dict(opts["model"], "profiled model")
    device = local_device()
    world = dist.get_world_size()
    rows: list[dict] = []
    optimizer_tp: dict[int, float] = {}
    for tp in opts["tp"]:
        mesh = _tp_mesh(world, tp, device)
        if mesh is not None:
            dist.barrier()
            optimizer_tp[tp] = optimizer_step_s_per_param(spec, device, tp_mesh=mesh)
        for sp in ([False, True] if opts["sequence_parallel"] and tp > 1 else [False]):
            bench = BlockBench(spec, mesh, sp, device)
            samplers = []
            for seq in opts["seq"]:
                for mb in opts["micro_batch"]:
                    for kind in block_kinds(spec):
                        fwd, make, params = bench.closures(kind, mb, seq)
                        s = BlockSampler(fwd, make, params, device, recompute=kind in RECOMPUTED_KINDS)
                        peak_memory_reset(device)
                        for _ in range(opts["warmup"]):
                            s.sample(keep=False)
                        samplers.append((kind, mb, seq, s, peak_memory_bytes(device)))
            for _ in range(opts["repeats"]):  # rounds: one sample of every shape, so load drift spreads evenly
                dist.barrier()  # every rank samples the same block together: real concurrency
                for _kind, _mb, _seq, s, _mem in samplers:
                    s.sample()
            for kind, mb, seq, s, mem in samplers:
                t = s.result(mem)
                rows.append(dict(block_kind=kind, tp=tp, micro_batch=mb, seq_len=seq, sequence_parallel=sp,
                                 forward_s=t.forward_s, backward_s=t.backward_s, recompute_s=t.recompute_s,
                                 forward_spread_s=t.forward_spread_s, backward_spread_s=t.backward_spread_s,
                                 repeats=t.repeats, peak_memory_bytes=t.peak_memory_bytes))
    dist.barrier()
    rate = matmul_rate(device, bench.dtype)
    dist.barrier()
    bw = memory_bandwidth(device, bench.dtype)
    dist.barrier()
    opt = optimizer_step_s_per_param(spec, device)
    return {"rows": rows, "matmul_flops_per_s": rate, "memory_bytes_per_s": bw, "optimizer_s_per_param": opt,
            "optimizer_tp": [[tp, v] for tp, v in sorted(optimizer_tp.items())], "threads": torch.get_num_threads()}


def combine_ranks(per_rank: list[dict]) -> tuple[list[dict], dict[str, float]]:
    """Median over ranks of every timing (ranks are symmetric; the median drops one rank's hiccup)."""
    out = []
    for rows in zip(*(r["rows"] for r in per_rank)):
        row = dict(rows[0])
        for k in ("forward_s", "backward_s", "forward_spread_s", "backward_spread_s"):
            row[k] = statistics.median(r[k] for r in rows)
        if row["recompute_s"] is not None:
            row["recompute_s"] = statistics.median(r["recompute_s"] for r in rows)
        mems = [r["peak_memory_bytes"] for r in rows if r["peak_memory_bytes"] is not None]
        row["peak_memory_bytes"] = max(mems) if mems else None
        out.append(row)
    rates = {k: statistics.median(r[k] for r in per_rank)
             for k in ("matmul_flops_per_s", "memory_bytes_per_s", "optimizer_s_per_param")}
    by_tp = [dict((int(tp), v) for tp, v in r.get("optimizer_tp") or []) for r in per_rank]
    rates["optimizer_tp"] = {tp: statistics.median(d[tp] for d in by_tp) for tp in by_tp[0]} if by_tp else {}
    return out, rates
