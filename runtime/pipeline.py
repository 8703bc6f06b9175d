"""Pipeline parallelism with ``torch.distributed.pipelining``: the plan's chunks, uneven split and schedule.

Each model chunk of ``plan.stages`` that lives on this pipeline rank becomes one ``PipelineStage``
(stage index = chunk index; the plan already says which rank holds which chunk: round-robin for
interleaved, V shape for zbv, and torch's schedules use the same mappings). Schedules:

    gpipe -> ScheduleGPipe            1f1b -> Schedule1F1B        (one chunk per rank)
    interleaved -> ScheduleInterleaved1F1B (v chunks per rank; Narayanan et al. 2021)
    zbv -> ScheduleZBVZeroBubble      (2 chunks per rank in a V, split backward B / W; Qi et al. 2024)

Gradients are summed over micro-batches and divided by their number (``scale_grads=True``), so a
step uses the mean micro-batch loss, as the single-process model does on the whole batch.

Preconditions are checked here, before any communication, because on gloo a violation hangs
instead of failing: the local batch must split into equal micro-batches, and 1F1B-family schedules
need at least as many micro-batches as pipeline ranks (interleaved: a multiple of pp).
"""

from __future__ import annotations

import contextlib
import time
from typing import Callable

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.distributed.pipelining import (PipelineStage, Schedule1F1B, ScheduleGPipe, ScheduleInterleaved1F1B,
                                          ScheduleZBVZeroBubble)

from planner.errors import ConfigError
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from runtime.mesh import Topology

SCHEDULE_CLASSES = {"gpipe": ScheduleGPipe, "1f1b": Schedule1F1B, "interleaved": ScheduleInterleaved1F1B,
                    "zbv": ScheduleZBVZeroBubble}


def check_preconditions(config: ParallelConfig, local_batch: int) -> None:
    """One-line errors for what would otherwise hang on gloo (STYLE.md point 15)."""
    m = config.num_micro_batches
    if local_batch != m * config.micro_batch_size:
        raise ConfigError(f"local batch {local_batch} is not micro-batches x micro-batch size = {m} x "
                          f"{config.micro_batch_size}")
    if config.pp > 1 and config.schedule in ("1f1b", "interleaved", "zbv") and m < config.pp:
        raise ConfigError(f"schedule {config.schedule} needs at least as many micro-batches ({m}) as pipeline "
                          f"ranks ({config.pp}); raise the global batch or lower the micro-batch size")
    if config.schedule == "interleaved" and m % config.pp:
        raise ConfigError(f"interleaved schedule needs micro-batches ({m}) to be a multiple of pp ({config.pp})")
    if config.schedule == "zbv" and config.virtual_stages != 2:
        raise ConfigError("zbv needs exactly 2 chunks per pipeline rank")


def local_chunks(plan: Plan, pp_rank: int) -> list[int]:
    """Indices of the model chunks this pipeline rank runs, in chunk order."""
    return [s.chunk for s in plan.stages if s.pp_rank == pp_rank]


class _Stage(PipelineStage):
    """PipelineStage whose metadata (shape) inference leaves a DDP-wrapped chunk's reducer alone.

    torch 2.13 infers stage shapes by running the submodule once before the first step; on a DDP
    module that forward arms the reducer (``prepare_for_backward``) without a matching reduction,
    so the first real step records every parameter twice and the next forward fails an internal
    assert in ``_rebuild_buckets`` (or, with ``static_graph``, all-reduces partial gradients).
    Running the inference under ``no_sync()`` keeps DDP out of it.
    """

    def _dp_quiet(self):
        return self.submod.no_sync() if isinstance(self.submod, DDP) else contextlib.nullcontext()

    def _forward_metadata_inference(self, *args, **kwargs):
        with self._dp_quiet():
            return super()._forward_metadata_inference(*args, **kwargs)

    def _backward_metadata_inference(self, *args, **kwargs):
        with self._dp_quiet():
            return super()._backward_metadata_inference(*args, **kwargs)


class StageTimer:
    """Wraps a stage's forward / backward entry points to record (kind, chunk, microbatch, t0, t1)."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter, sync: Callable[[], None] | None = None):
        self.clock, self.sync = clock, sync
        self.records: list[tuple[str, int, int, float, float]] = []

    def _timed(self, kind: str, chunk: int, fn: Callable, mb_of: Callable):
        def wrapper(*args, **kwargs):
            if self.sync:
                self.sync()
            t0 = self.clock()
            out = fn(*args, **kwargs)
            if self.sync:
                self.sync()
            self.records.append((kind, chunk, int(mb_of(args, kwargs)), t0, self.clock()))
            return out
        return wrapper

    def instrument(self, stage: PipelineStage) -> None:
        c = stage.stage_index
        first = lambda a, k: a[0] if a else next(iter(k.values()))  # noqa: E731 - the chunk id argument
        stage.forward_one_chunk = self._timed("F", c, stage.forward_one_chunk, first)
        stage.backward_one_chunk = self._timed("B", c, stage.backward_one_chunk, first)
        stage.backward_weight_one_chunk = self._timed("W", c, stage.backward_weight_one_chunk, first)


class Pipeline:
    """This rank's stages and the schedule that runs one optimizer step's micro-batches."""

    def __init__(self, plan: Plan, topo: Topology, modules: dict[int, nn.Module],
                 loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor], timer: StageTimer | None = None):
        cfg = plan.config
        self.plan, self.topo = plan, topo
        self.stages = [_Stage(modules[c], c, cfg.num_chunks, topo.device, group=topo.pp_group)
                       for c in sorted(modules)]
        if timer is not None:
            for st in self.stages:
                timer.instrument(st)
        cls = SCHEDULE_CLASSES[cfg.schedule]
        m = cfg.num_micro_batches
        if cls in (ScheduleGPipe, Schedule1F1B):
            self.schedule = cls(self.stages[0], n_microbatches=m, loss_fn=loss_fn, scale_grads=True)
        else:
            self.schedule = cls(self.stages, n_microbatches=m, loss_fn=loss_fn, scale_grads=True)
        self.has_first = any(s.is_first for s in self.stages)
        self.has_last = any(s.is_last for s in self.stages)

    def step(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Forward + backward of every micro-batch; returns the mean micro-batch loss on the rank that
        holds the last chunk, None elsewhere."""
        check_preconditions(self.plan.config, labels.shape[0])
        losses: list[torch.Tensor] = []
        args = (inputs,) if self.has_first else ()
        target = labels if self.has_last else None
        self.schedule.step(*args, target=target, losses=losses if self.has_last else None)
        if self.has_last:
            return torch.stack([l.detach() for l in losses]).mean()
        return None
