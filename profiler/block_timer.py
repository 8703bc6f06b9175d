"""Time one block's forward, backward and recompute: warm-up, repeats, median and spread, peak memory.

What each number means (planner.profile.BlockRecord):
* forward_s: the block's forward with autograd recording (as in training);
* backward_s: ``y.backward(dy)`` right after a plain forward (input and weight gradients);
* recompute_s: extra backward time when the block runs under ``torch.utils.checkpoint`` (the forward it
  re-runs plus the bookkeeping): the median over repeats of (checkpointed backward - plain backward) of
  the same repeat (paired, so a slow moment of a shared machine cancels), floored at 0.

The block is given as a closure ``forward(x) -> y`` over its parameters, so the timer does not care how
the runtime builds it (a TP shard, a norm, the head with its loss).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch.utils.checkpoint import checkpoint

from profiler.timing import iqr, median, peak_memory_bytes, peak_memory_reset, synchronize, time_call_s


@dataclass(frozen=True)
class BlockTiming:
    forward_s: float
    backward_s: float
    recompute_s: float | None
    forward_spread_s: float
    backward_spread_s: float
    repeats: int
    peak_memory_bytes: int | None


def _grad_like(y: torch.Tensor) -> torch.Tensor | None:
    return None if y.dim() == 0 else torch.ones_like(y)


class BlockSampler:
    """Samples one block at one shape: each ``sample()`` is one forward, backward and checkpointed backward.

    Why samples and not a loop per block: on a shared machine the load drifts over seconds; the layer
    profiler takes one sample of every block per round, round after round, so a slow minute spreads over
    all shapes instead of inflating one of them (the ranking between shapes is what the planner needs most).
    """

    def __init__(self, forward: Callable[[torch.Tensor], torch.Tensor], make_input: Callable[[], torch.Tensor],
                 params: list[torch.Tensor], device: torch.device, recompute: bool = True):
        self.forward, self.make_input, self.params, self.device = forward, make_input, params, device
        self.recompute = recompute
        self.fwd: list[float] = []
        self.bwd: list[float] = []
        self.ckpt: list[float] = []

    def sample(self, keep: bool = True) -> None:
        x = self.make_input()
        out: dict[str, torch.Tensor] = {}

        def run_forward() -> None:
            out["y"] = self.forward(x)
        t_f = time_call_s(run_forward, self.device)
        y = out["y"]
        dy = _grad_like(y)
        t_b = time_call_s(lambda: y.backward(dy), self.device)
        _zero(self.params, x)
        t_c = None
        if self.recompute:
            x2 = self.make_input()
            y2 = checkpoint(self.forward, x2, use_reentrant=False)
            dy2 = _grad_like(y2)
            t_c = time_call_s(lambda: y2.backward(dy2), self.device)
            _zero(self.params, x2)
        if keep:
            self.fwd.append(t_f)
            self.bwd.append(t_b)
            if t_c is not None:
                self.ckpt.append(t_c)

    def result(self, peak_memory: int | None = None) -> BlockTiming:
        synchronize(self.device)
        rec = max(0.0, median([c - b for c, b in zip(self.ckpt, self.bwd)])) if self.ckpt else None
        return BlockTiming(forward_s=median(self.fwd), backward_s=median(self.bwd), recompute_s=rec,
                           forward_spread_s=iqr(self.fwd), backward_spread_s=iqr(self.bwd), repeats=len(self.fwd),
                           peak_memory_bytes=peak_memory)


def time_block(forward: Callable[[torch.Tensor], torch.Tensor], make_input: Callable[[], torch.Tensor],
               params: list[torch.Tensor], device: torch.device, *, warmup: int = 2, repeats: int = 7,
               recompute: bool = True) -> BlockTiming:
    """Median forward / backward / recompute seconds of ``forward`` on fresh inputs from ``make_input``."""
    s = BlockSampler(forward, make_input, params, device, recompute)
    peak_memory_reset(device)
    for i in range(warmup + repeats):
        s.sample(keep=i >= warmup)
    return s.result(peak_memory_bytes(device))


def _zero(params: list[torch.Tensor], x: torch.Tensor) -> None:
    for p in params:
        p.grad = None
    if x.is_leaf and x.requires_grad:
        x.grad = None
