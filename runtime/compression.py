"""Gradient compression as DDP communication hooks, and ``register``, the one entry the DP setup calls.

Methods (ParallelConfig.compression; bytes and codec cost modelled in planner/compression.py):

- ``fp16`` / ``bf16``: divide by the group size, cast, sum over the chosen topology (ring, hierarchical or
  parameter server: runtime/aggregation.py), cast back. Written here for both: torch's
  ``bf16_compress_hook`` refuses gloo in torch 2.13.
- ``int8``: per-chunk-scaled int8 (scale = max|x| / 127 of the chunk, sent inside the same int8 message).
  int8 cannot be summed in flight (p contributions overflow), so, as ZeRO++'s quantised gradient reduction
  (Wang et al. 2023 Sec 4.3): all-to-all of int8 chunks (each rank receives the p contributions to its 1/p
  share), dequantise + sum in fp32, re-quantise the share, all-gather the int8 shares.
- ``topk``: keep the ceil(f n) largest |entries| of (gradient + residual) per bucket, all-gather the
  (value, int32 index) pairs, scatter-add; error feedback keeps what was not sent in a per-bucket residual
  and adds it next step (Lin et al. 2018 DGC; Stich et al. 2018 memory SGD).
- ``powersgd``: torch's ``powerSGD_hook`` (not the batched variant, broken on gloo in torch 2.13) with
  rank = compression_param, error feedback, warm start, and ``warmup_steps`` uncompressed steps.

Every hook averages (DDP does not divide when a hook is registered) and returns a future at once: the
bucket's sync runs on the comm thread (runtime/aggregation.py CommThread) while backward goes on, so DDP's
bucketed reduction (bucket_cap_mb from plan.config.bucket_size_bytes) overlaps with backward. With
``overlap_grad_reduce=False`` the sync runs inline in the hook instead (no overlap, as the cost model
prices that setting). TP communication overlap: torch has none on CPU/gloo (DTensor TP collectives block);
the cost model prices none.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.algorithms.ddp_comm_hooks.powerSGD_hook import PowerSGDState, powerSGD_hook

from planner import compression as model
from planner.parallel_config import ParallelConfig
from runtime.aggregation import CommThread, DpGroups, SumFn, make_sum, register_aggregation

POWERSGD_WARMUP_STEPS = 10
"""Uncompressed steps before PowerSGD starts (torch requires > 1 with error feedback: DDP rebuilds its
buckets after step 1; Vogels et al. 2019 also start from plain SGD)."""


@dataclass
class CompressionState:
    """Everything a compression hook keeps between steps (one per DDP model)."""

    method: str
    param: float
    """Effective compression_param: kept fraction (topk) or rank (powersgd)."""
    groups: DpGroups
    sum_fn: SumFn
    comm: CommThread | None
    """None: run each bucket's sync inline in the hook (overlap_grad_reduce off)."""
    residuals: dict[tuple[int, int], torch.Tensor] = field(default_factory=dict)
    """topk error feedback: what was not sent, per (bucket index, numel)."""
    powersgd: PowerSGDState | None = None
    sampler: torch.Generator = field(default_factory=lambda: torch.Generator().manual_seed(0))
    """topk threshold sampling; its own generator so training's RNG stream is untouched."""

    @property
    def size(self) -> int:
        return self.groups.size


class FlatBucket:
    """The part of ``dist.GradBucket``'s interface the syncs use, over a flat tensor: lets benchmarks and
    tests run a sync without DDP. ``shapes`` are the gradients' shapes, packed in order (PowerSGD's
    matrices)."""

    def __init__(self, buffer: torch.Tensor, shapes: list[tuple[int, ...]] | None = None, index: int = 0):
        self._buffer, self._index = buffer, index
        self._shapes = shapes or [tuple(buffer.shape)]
        if sum(math.prod(s) for s in self._shapes) != buffer.numel():
            raise ValueError("FlatBucket shapes do not cover the buffer")

    def buffer(self) -> torch.Tensor:
        return self._buffer

    def index(self) -> int:
        return self._index

    def is_last(self) -> bool:
        return True

    def gradients(self) -> list[torch.Tensor]:
        out, i = [], 0
        for s in self._shapes:
            n = math.prod(s)
            out.append(self._buffer[i:i + n].view(s))
            i += n
        return out


# --- the syncs: each averages one bucket over the DP group, blocking, and returns the result ---------

def cast_sync(state: CompressionState, bucket: Any) -> torch.Tensor:
    buf = bucket.buffer()
    dtype = torch.float16 if state.method == "fp16" else torch.bfloat16
    low = torch.empty(buf.shape, dtype=dtype, device=buf.device)
    torch.div(buf, state.size, out=low)  # divide first: the fp16 sum must not overflow (torch fp16 hook)
    state.sum_fn(low)
    return buf.copy_(low)


def _quantise_rows(x_RC: torch.Tensor) -> torch.Tensor:
    """int8 rows with their fp32 scale in the first 4 bytes: (R, 4 + C). Scale = max|row| / 127."""
    lo_R, hi_R = torch.aminmax(x_RC, dim=1)
    scale_R = (torch.maximum(hi_R, -lo_R) / 127).clamp_min(torch.finfo(torch.float32).tiny)
    packed = torch.empty((x_RC.shape[0], 4 + x_RC.shape[1]), dtype=torch.int8, device=x_RC.device)
    packed[:, :4] = scale_R.view(torch.int8).view(-1, 4)
    packed[:, 4:] = torch.mul(x_RC, scale_R.reciprocal()[:, None]).round_().clamp_(-127, 127)
    return packed


def _row_scales(packed_RC: torch.Tensor) -> torch.Tensor:
    return packed_RC[:, :4].flatten().clone().view(torch.float32)


def _dequantise_rows(packed_RC: torch.Tensor, out_RC: torch.Tensor | None = None) -> torch.Tensor:
    return torch.mul(packed_RC[:, 4:], _row_scales(packed_RC)[:, None], out=out_RC)


def int8_sync(state: CompressionState, bucket: Any) -> torch.Tensor:
    buf = bucket.buffer()
    p, n = state.size, buf.numel()
    share = -(-n // p)
    if n == p * share and buf.dtype == torch.float32:
        rows = buf.view(p, share)  # no padding copy; the result is written back into buf
    else:
        rows = torch.zeros(p * share, dtype=torch.float32, device=buf.device)
        rows[:n] = buf.reshape(-1)
        rows = rows.view(p, share)
    packed = _quantise_rows(rows)
    recv = torch.empty_like(packed)
    dist.all_to_all_single(recv, packed, group=state.groups.clone)  # row i: rank i's part of my share
    mine = torch.zeros(share, dtype=torch.float32, device=buf.device)
    for i, scale in enumerate(_row_scales(recv).tolist()):
        mine.add_(recv[i, 4:], alpha=scale / p)  # dequantise + average, one pass per contribution
    gathered = torch.empty((p, 4 + share), dtype=torch.int8, device=buf.device)
    dist.all_gather_single(gathered, _quantise_rows(mine[None, :]), group=state.groups.clone)
    _dequantise_rows(gathered, out_RC=rows)
    if rows.data_ptr() != buf.data_ptr():
        buf.copy_(rows.view(-1)[:n].view_as(buf))
    return buf


TOPK_SAMPLE = 200_000
"""Entries sampled to estimate the top-k threshold on large buckets (Lin et al. 2018 DGC Sec 3.3 sample
0.1-1 %): torch.topk on 10^8 CPU floats takes ~30 s; threshold + compaction ~0.5 s."""


def _topk_indices(abs_x: torch.Tensor, k: int, gen: torch.Generator) -> torch.Tensor:
    """Exactly the indices of the k largest entries (ties aside), found fast: estimate a threshold a bit
    below the k-th largest from a random sample, keep the candidates above it, top-k among those. If at
    least k candidates pass, the true top k are all among them; otherwise fall back to a full top-k."""
    n = abs_x.numel()
    if n <= 4 * TOPK_SAMPLE or 4 * k > n:
        return abs_x.topk(k, sorted=False).indices
    sample = abs_x[torch.randint(n, (TOPK_SAMPLE,), generator=gen).to(abs_x.device)]  # CPU generator
    rank_in_sample = max(1, int((1 - 1.25 * k / n) * TOPK_SAMPLE))  # 25 % more candidates than k
    threshold = sample.kthvalue(rank_in_sample).values
    cand = (abs_x >= threshold).nonzero().squeeze(1)
    if cand.numel() < k:
        return abs_x.topk(k, sorted=False).indices
    return cand[abs_x[cand].topk(k, sorted=False).indices]


def topk_sync(state: CompressionState, bucket: Any) -> torch.Tensor:
    buf = bucket.buffer()
    p, n = state.size, buf.numel()
    key = (bucket.index(), n)  # DDP rebuilds buckets after step 1: a stale residual is dropped, not misused
    acc = buf.reshape(-1).to(torch.float32, copy=True)  # a copy: it becomes the residual, buf the output
    if key in state.residuals:
        acc.add_(state.residuals[key])
    k = model.topk_count(n, state.param)
    idx = _topk_indices(acc.abs(), k, state.sampler)
    packed = torch.cat([acc[idx].view(torch.int32), idx.to(torch.int32)])
    acc[idx] = 0.0
    state.residuals = {kk: v for kk, v in state.residuals.items() if kk[0] != key[0]}
    state.residuals[key] = acc  # error feedback: everything not sent this step
    gathered = torch.empty(p * 2 * k, dtype=torch.int32, device=buf.device)
    dist.all_gather_single(gathered, packed, group=state.groups.clone)
    pairs = gathered.view(p, 2, k)
    out = torch.zeros(n, dtype=torch.float32, device=buf.device)
    out.index_add_(0, pairs[:, 1].reshape(-1).long(), pairs[:, 0].contiguous().view(torch.float32).reshape(-1))
    return buf.copy_(out.div_(p).view_as(buf))


def powersgd_sync(state: CompressionState, bucket: Any) -> torch.Tensor:
    # torch's hook chains its all-reduces with waits inside future callbacks; on the comm thread only one
    # bucket's chain is in flight, so gloo's worker threads never all block (see aggregation.py).
    return powerSGD_hook(state.powersgd, bucket).wait()


_SYNCS = {"fp16": cast_sync, "bf16": cast_sync, "int8": int8_sync, "topk": topk_sync,
          "powersgd": powersgd_sync}


def sync(state: CompressionState, bucket: Any) -> torch.Tensor:
    """Average one bucket over the DP group with ``state.method`` (blocking)."""
    return _SYNCS[state.method](state, bucket)


# Unannotated on purpose: DDP compares a hook's annotations with dist.GradBucket / Future objects, and
# ``from __future__ import annotations`` turns ours into strings it rejects.
def compression_hook(state: CompressionState, bucket):
    """DDP comm hook: returns at once (comm thread) so the reduction overlaps with backward."""
    if state.comm is None:
        fut: torch.futures.Future = torch.futures.Future()
        fut.set_result(sync(state, bucket))
        return fut
    return state.comm.submit(lambda: sync(state, bucket))


def make_state(method: str, param: float, grad_sync: str, groups: DpGroups, *, overlap: bool = True,
               warmup_steps: int = POWERSGD_WARMUP_STEPS) -> CompressionState:
    model.check_combination(grad_sync, method)
    param = model.effective_param(method, param)
    state = CompressionState(method, param, groups, make_sum(grad_sync, groups), CommThread() if overlap else None)
    if method == "powersgd":
        state.powersgd = PowerSGDState(process_group=groups.clone, matrix_approximation_rank=int(param),
                                       start_powerSGD_iter=max(2, warmup_steps), min_compression_rate=
                                       model.POWERSGD_MIN_COMPRESSION_RATE, use_error_feedback=True,
                                       warm_start=True, random_seed=0)
    return state


def register(ddp_model, config: ParallelConfig, process_group: dist.ProcessGroup | None, *,
             devices_per_node: int | None = None, warmup_steps: int = POWERSGD_WARMUP_STEPS):
    """Register the hook that ``config.grad_sync`` and ``config.compression`` call for on ``ddp_model``
    and return its state (also kept as ``ddp_model.grad_sync_state``). Collective: every rank of the
    default group calls it at the same point (it creates process groups). ``devices_per_node`` defines
    the nodes for hierarchical sync (default: torchrun's LOCAL_WORLD_SIZE). Returns None, registering
    nothing, for plain all-reduce without compression (DDP's built-in path)."""
    if config.compression == "none":
        if config.grad_sync == "allreduce":
            return None
        state = register_aggregation(ddp_model, config.grad_sync, process_group, devices_per_node,
                                     overlap=config.overlap_grad_reduce)
    else:
        model.check_combination(config.grad_sync, config.compression)
        groups = DpGroups(process_group, devices_per_node)
        state = make_state(config.compression, config.compression_param, config.grad_sync, groups,
                           overlap=config.overlap_grad_reduce, warmup_steps=warmup_steps)
        ddp_model.register_comm_hook(state, compression_hook)
    ddp_model.grad_sync_state = state
    return state
