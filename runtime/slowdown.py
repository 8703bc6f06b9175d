"""An artificially slow pipeline stage (``--slow-stage S:FACTOR``): a debugging option for load balancing.

Why: dynamic load balancing (``python -m planner rebalance``) must be testable on a machine whose ranks
are all equally fast. ``SlowStage(pp_rank=S, factor=F)`` makes every rank whose pipeline rank is S behave
like a device F times slower: each transformer block it holds sleeps ``(F - 1) x`` its own forward time
after its forward, and ``2 (F - 1) x`` that forward time when its backward starts (backward ~ 2 x forward:
input and weight gradients, the factor behind Narayanan et al. 2021 eq. 3). The slowdown follows the rank, not the
layers, as a real slow device would: moving layers off it makes the step faster.

Sleeping, not spinning: on a small CPU machine the slowed rank must not take cores from the other ranks
(that would slow them too and hide the imbalance). Embedding and head are not slowed (they are not
blocks); the measured speed of the rank is still ~F since blocks dominate. On CUDA the hooks synchronise
the device around each block so that the forward time they stretch is the kernels', not the launch's.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Iterable

from planner.errors import ConfigError

if TYPE_CHECKING:  # torch is imported where the hooks are installed: parsing the option stays cheap
    import torch.nn as nn

BACKWARD_OVER_FORWARD = 2.0
"""Backward of a block ~ 2 x its forward (input + weight gradients; Narayanan et al. 2021 eq. 3 counts 3 x forward
for forward + backward). The same ratio the old bench hook used, so its rebalance numbers stay comparable."""


@dataclass(frozen=True)
class SlowStage:
    """Slow every rank of one pipeline stage down by a factor (debugging; see module docstring)."""

    pp_rank: int
    """The pipeline rank (stage) to slow, 0-based (with interleaved schedules: all its model chunks)."""
    factor: float
    """How many times slower its transformer blocks run; > 1."""

    def __post_init__(self) -> None:
        if isinstance(self.pp_rank, bool) or not isinstance(self.pp_rank, int) or self.pp_rank < 0:
            raise ConfigError(f"--slow-stage: stage must be a non-negative integer, got {self.pp_rank!r}")
        if not (isinstance(self.factor, (int, float)) and math.isfinite(self.factor) and self.factor > 1):
            raise ConfigError(f"--slow-stage: factor must be a finite number > 1, got {self.factor!r}")

    @classmethod
    def parse(cls, text: str) -> "SlowStage":
        """``"S:FACTOR"`` (e.g. ``"0:3"``: pipeline stage 0 three times slower)."""
        stage, colon, factor = str(text).strip().partition(":")
        if not colon:
            raise ConfigError(f"--slow-stage {text}: expected STAGE:FACTOR, e.g. 0:3")
        try:
            pp_rank = int(stage)
        except ValueError:
            raise ConfigError(f"--slow-stage {text}: stage {stage!r} is not an integer") from None
        try:
            value = float(factor)
        except ValueError:
            raise ConfigError(f"--slow-stage {text}: factor {factor!r} is not a number") from None
        if pp_rank < 0:
            raise ConfigError(f"--slow-stage {text}: stage must be >= 0")
        if not (math.isfinite(value) and value > 1):
            raise ConfigError(f"--slow-stage {text}: factor must be a finite number > 1")
        return cls(pp_rank, value)

    def __str__(self) -> str:
        return f"{self.pp_rank}:{self.factor:g}"

    def check(self, pp: int) -> None:
        """The stage exists in a plan with ``pp`` pipeline stages."""
        if self.pp_rank >= pp:
            stages = "stage" if pp == 1 else "stages"
            raise ConfigError(f"--slow-stage {self.pp_rank}: plan has {pp} pipeline {stages} (0..{pp - 1})")

    def install(self, engine: Any) -> list:
        """Hook the local transformer blocks when this rank is on the slowed stage (a no-op elsewhere).

        ``engine``: a runtime.engine.Engine (its plan, topology and local model chunks). Returns the hook
        handles (empty on other stages), so that a caller may remove them."""
        self.check(engine.plan.config.pp)
        if engine.topo.pp_rank != self.pp_rank:
            return []
        return slow_down_blocks(engine.local_models(), self.factor)


def slow_down_blocks(models: Iterable["nn.Module"], factor: float) -> list:
    """Make every block in ``model.layers`` of each model chunk run ``factor`` times slower (sleeps)."""
    import torch

    extra = float(factor) - 1.0
    started: dict[int, float] = {}

    def sync(x: Any) -> None:
        if isinstance(x, torch.Tensor) and x.is_cuda:
            torch.cuda.synchronize(x.device)

    def pre(module: "nn.Module", inputs: tuple) -> None:
        if inputs:
            sync(inputs[0])
        started[id(module)] = time.perf_counter()

    def post(module: "nn.Module", inputs: tuple, output: Any) -> None:
        sync(output)
        forward_s = time.perf_counter() - started.pop(id(module), time.perf_counter())
        time.sleep(extra * forward_s)
        if isinstance(output, torch.Tensor) and output.requires_grad:
            backward_sleep_s = BACKWARD_OVER_FORWARD * extra * forward_s
            output.register_hook(lambda grad: time.sleep(backward_sleep_s))

    handles = []
    for chunk in models:
        for block in chunk.layers.values():
            handles.append(block.register_forward_pre_hook(pre))
            handles.append(block.register_forward_hook(post))
    return handles
