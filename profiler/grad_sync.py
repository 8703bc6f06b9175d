"""Measured gradient sync per compression method: the runtime's own compressed all-reduce, end to end.

Why: the cost model prices a compressed sync as wire bytes plus an encode / decode pass over memory
(planner/compression.py ``codec_time_s``). On a CPU the codecs are not memory-bound: top-k selection,
int8 row scaling and PowerSGD's orthogonalisation cost far more than a pass over the bytes (measured on
the 2-core host: top-k 1 % over 4 ranks 5.8x a plain ring all-reduce of the same gradients, where the
bytes model predicts it faster), and the planner picked top-k for a plan it made 2x slower. So the
profiler times what the runtime runs (``runtime.compression.sync`` over a flat bucket, the hook DDP
calls) for each method over the whole world, every rank at once, and stores seconds per gradient
element as the device rate ``grad_sync_<method>_g<group>_s_per_element``; the planner uses it in place
of the wire + codec model for that method and DP group size (planner/cost/sync.py).
"""

from __future__ import annotations

import math
import statistics
import time

import torch
import torch.distributed as dist

METHODS = ("fp16", "bf16", "int8", "topk", "powersgd")
ELEMENTS = 2**22
"""Gradient elements per timed bucket (16 MiB of fp32, a DDP bucket and a half)."""


def rate_name(method: str, group_size: int) -> str:
    return f"grad_sync_{method}_g{group_size}_s_per_element"


def compressed_sync_rates(per_node: int, device: torch.device, repeats: int = 5,
                          elements: int = ELEMENTS) -> dict[str, float]:
    """Seconds per element of each method's sync over the world group (slowest rank, median of repeats)."""
    from runtime.aggregation import DpGroups
    from runtime.compression import FlatBucket, make_state, sync

    groups = DpGroups(None, devices_per_node=per_node)
    x = torch.randn(elements, generator=torch.Generator().manual_seed(dist.get_rank())).to(device)
    side = math.isqrt(elements)
    shapes = [(side, elements // side)] + ([(elements - side * (elements // side),)] if elements % side else [])
    out = {}
    for method in METHODS:
        state = make_state(method, 0.0, "allreduce", groups, overlap=False, warmup_steps=2)
        times = []
        for i in range(repeats + 3):  # PowerSGD compresses from its third call on
            grad = x.clone()
            dist.barrier()
            t0 = time.perf_counter()
            sync(state, FlatBucket(grad, shapes))
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            dt = torch.tensor([time.perf_counter() - t0], device=device)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            if i >= 3:
                times.append(dt.item())
        out[method] = statistics.median(times) / elements
    return out
