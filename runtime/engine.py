"""The parallel training step of a plan: model chunks + TP + DP + PP + optimizer, assembled once.

``Engine(plan, options)`` must be created on every rank of an initialised process group whose size
is the plan's world size (torchrun or ``runtime.local_launch``); ``train_step()`` runs one optimizer
step and returns the global loss (the same number on every rank). Nothing here re-derives a decision:
degrees, rank order, stage split, schedule, recomputation, ZeRO stage and bucket size come from the
plan.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
import torch.nn as nn

from planner.plan import Plan
from runtime.data import BatchLoader, make_source
from runtime.data_parallel import allreduce_grads, replicated_over_dp, set_grad_sync, uses_manual_sync, wrap_chunk
from runtime.grads import finalize_grads, unwrap
from runtime.mesh import Topology, build_topology
from runtime.model import ChunkSpec, ModelChunk, build_chunk, torch_dtype
from runtime.optim import OptimConfig, build_optimizer
from runtime.pipeline import Pipeline, StageTimer, check_preconditions, local_chunks
from runtime.tensor_parallel import parallelize_chunk, vocab_parallel_cross_entropy


@dataclass(frozen=True)
class RunOptions:
    """How to run a plan (what the plan does not decide)."""

    seed: int = 0
    """Master seed: keyed initialisation and data."""
    dtype: str = "fp32"
    """Parameter and compute dtype ('fp32', 'fp64' for tight numerical checks, 'bf16')."""
    optim: OptimConfig = field(default_factory=OptimConfig)
    data: str = "synthetic"
    """'synthetic' or 'bytes:PATH' (runtime.data)."""
    record_timeline: bool = True
    """Keep per-micro-batch F / B / W timings for the trace and the per-stage log."""
    device: str | None = None
    """'cpu', 'cuda' or None: cuda:LOCAL_RANK when CUDA is available (runtime.mesh.default_device)."""


@dataclass(frozen=True)
class StepResult:
    step: int
    loss: float
    grad_norm: float
    step_time_s: float
    tokens: int
    stage_times_s: dict[str, float]
    """Per local chunk: 'chunkC.F' / 'chunkC.B' / 'chunkC.W' summed over micro-batches."""


class Engine:
    def __init__(self, plan: Plan, options: RunOptions | None = None, device: torch.device | None = None):
        self.plan, self.options = plan, options or RunOptions()
        cfg, spec = plan.config, plan.model
        if device is None and self.options.device == "cpu":
            device = torch.device("cpu")
        self.topo: Topology = build_topology(plan, device)
        topo = self.topo
        dtype = torch_dtype(self.options.dtype)
        self.chunk_ids = local_chunks(plan, topo.pp_rank)
        self.timer = StageTimer(sync=torch.cuda.synchronize if topo.device.type == "cuda" else None) \
            if self.options.record_timeline else None
        self.modules: dict[int, nn.Module] = {}
        placement = [list(p) for p in plan.expert_placement]
        for c in self.chunk_ids:
            st = plan.stages[c]
            chunk = build_chunk(spec, ChunkSpec(st.first_layer, st.last_layer, st.has_embedding, st.has_head),
                                seed=self.options.seed, dtype=dtype, device=topo.device, ep_group=topo.ep_group,
                                expert_placement=placement, tp_group=topo.tp_group,
                                full_recompute_layers=st.full_recompute_layers, recompute=st.recompute)
            if topo.tp_mesh is not None:
                parallelize_chunk(chunk, topo.tp_mesh, cfg.sequence_parallel)
            self.modules[c] = wrap_chunk(chunk, topo, cfg)
        self.chunks = [self.modules[c] for c in self.chunk_ids]
        self.optimizer = build_optimizer(self.chunks, self.options.optim, topo,
                                         zero1=cfg.zero_stage == 1 and cfg.dp > 1)
        tp_group = topo.tp_group
        self.loss_fn = lambda out, tgt: vocab_parallel_cross_entropy(out, tgt, tp_group)
        self.pipeline = (Pipeline(plan, topo, self.modules, self.loss_fn, self.timer) if cfg.pp > 1 else None)
        source = make_source(self.options.data, spec.vocab_size, cfg.seq_len, self.options.seed)
        self.loader = BatchLoader(source, cfg.global_batch_size, cfg.dp, topo.dp_rank)
        self.step_count = 0
        self.grads_replicated = (cfg.tp == 1 and cfg.pp == 1 and not spec.is_moe
                                 and not (cfg.dp > 1 and cfg.zero_stage >= 2)
                                 and cfg.compression == "none" and cfg.grad_sync == "allreduce")
        """DP-only with plain DDP: every rank ends backward with the same full averaged gradient, so the
        clipping norm is local (runtime.grads). Hooks are excluded: they need not be bitwise identical
        across ranks, and a per-rank clip coefficient would let replicas drift apart."""
        self._loss_work: tuple[torch.Tensor, object] | None = None
        self.origin_s = time.perf_counter()

    # --- one optimizer step -------------------------------------------------------------------
    def _forward_backward_local(self, inputs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """pp = 1: gradient accumulation over micro-batches (sync on the last), grads scaled by 1/m
        after accumulation exactly like pipelining's ``scale_grads``."""
        cfg = self.plan.config
        m, b = cfg.num_micro_batches, cfg.micro_batch_size
        model = self.chunks[0]
        losses = []
        for j in range(m):
            x, y = inputs[j * b:(j + 1) * b], labels[j * b:(j + 1) * b]
            with set_grad_sync(model, j == m - 1):
                t0 = time.perf_counter()
                out = model(x)
                loss = self.loss_fn(out, y)
                t1 = time.perf_counter()
                losses.append(loss.detach())
                if j == m - 1 and self.grads_replicated and self.topo.dp_group is not None:
                    # the global loss is only logged: reduce it in the background of the last backward
                    total = torch.stack(losses).double().mean()
                    self._loss_work = (total, dist.all_reduce(total, group=self.topo.dp_group, async_op=True))
                loss.backward()
                t2 = time.perf_counter()
            if self.timer is not None:
                self.timer.records.append(("F", self.chunk_ids[0], j, t0, t1))
                self.timer.records.append(("B", self.chunk_ids[0], j, t1, t2))
        if m > 1:
            for p in model.parameters():
                if p.grad is not None:
                    p.grad.div_(m)
        return torch.stack(losses).mean()

    def train_step(self) -> StepResult:
        cfg = self.plan.config
        if self.timer is not None:
            self.timer.records.clear()
        t0 = time.perf_counter()
        inputs, labels = self.loader.next_batch()
        inputs, labels = inputs.to(self.topo.device), labels.to(self.topo.device)
        check_preconditions(cfg, labels.shape[0])
        self.optimizer.zero_grad(set_to_none=True)
        if self.pipeline is not None:
            local = self.pipeline.step(inputs, labels)
            if uses_manual_sync(cfg):
                allreduce_grads(self.chunks, self.topo.dp_group, cfg.bucket_size_bytes)
        else:
            local = self._forward_backward_local(inputs, labels)
        t_sync = time.perf_counter()
        # Every rank holding the last chunk has its replica's mean loss (tp copies of each): the world
        # sum over them, divided by tp x dp, is the mean over data-parallel replicas.
        work, self._loss_work = self._loss_work, None
        norm, loss_sum = finalize_grads(self.chunks, self.topo, replicated_over_dp=replicated_over_dp(cfg),
                                        max_norm=self.options.optim.max_grad_norm,
                                        loss_share=None if work else local, replicated_everywhere=self.grads_replicated)
        t_opt = time.perf_counter()
        self.optimizer.step()
        t_end = time.perf_counter()
        if work is not None:
            work[1].wait()
            loss_sum = work[0].item()
        elif self.grads_replicated:
            loss_sum = float(local) * cfg.dp  # dp = 1 here: the local loss is the loss
        loss = loss_sum / (cfg.tp * cfg.dp)
        self.step_count += 1
        stage_times: dict[str, float] = {}
        if self.timer is not None:
            for kind, c, _mb, a, b in self.timer.records:
                key = f"chunk{c}.{kind}"
                stage_times[key] = stage_times.get(key, 0.0) + (b - a)
            self.last_sync_span = (t_sync, t_opt)
            self.last_opt_span = (t_opt, t_end)
        return StepResult(self.step_count, loss, norm, t_end - t0, cfg.tokens_per_step, stage_times)

    # --- inspection ---------------------------------------------------------------------------
    def local_models(self) -> list[ModelChunk]:
        return [unwrap(c) for c in self.chunks]
