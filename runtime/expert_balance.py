"""Dynamic expert balancing, runtime side: count tokens per expert, propose a placement, apply it.

The loop (ARCHITECTURE.md "Feedback loop"):

1. every MoEFFN counts the routing pairs per expert of each forward (``tokens_per_expert_accum``)
   and the rows its own experts processed (``received_tokens_accum``: the measured per-rank load);
2. ``collect_expert_load`` sums the counts over all ranks into a ``planner.expert_placement.ExpertLoad``
   (JSON, written by rank 0 beside the checkpoints);
3. the planner (``planner.expert_placement.rebalance_plan``) chooses a placement and writes a new plan;
4. at a checkpoint boundary the new placement takes effect, either by resuming the DCP checkpoint
   under the new plan (expert FQNs carry global expert ids, so DCP reshards them like any tensor), or
   in memory with ``apply_placement``, which moves expert weights and optimizer state over the EP group.

Moving experts changes where the arithmetic happens, not the arithmetic: the training loss after a
move equals the loss without it (tests/runtime/test_moe_balance.py).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn as nn

import json
from pathlib import Path

from planner.errors import PlannerError
from planner.expert_placement import ExpertLoad, rebalance_plan
from planner.plan import Plan
from runtime.moe import MoEFFN, SwiGLU
from runtime.moe_dispatch import ExpertDispatcher


def moe_modules(model: nn.Module) -> list[MoEFFN]:
    return [m for m in model.modules() if isinstance(m, MoEFFN)]


def reset_load_counts(model: nn.Module) -> None:
    for m in moe_modules(model):
        m.reset_load_counts()


def collect_expert_load(model: nn.Module, model_name: str, num_layers: int, num_experts: int, steps: int,
                        group=None) -> ExpertLoad:
    """Sum every rank's counts since the last reset (collective over ``group``, default: the world).

    Ranks of one TP group route the same tokens (experts are replicated over TP), so only TP rank 0
    contributes. Layers held by other pipeline stages arrive through the same sum."""
    counts = torch.zeros(num_layers, num_experts, dtype=torch.long, device=_device(model))
    for m in moe_modules(model):
        if m.tp_group is None or dist.get_rank(m.tp_group) == 0:
            counts[m.layer_index] += m.tokens_per_expert_accum
    if dist.is_initialized():
        dist.all_reduce(counts, group=group)
    per_layer = {i: tuple(int(c) for c in counts[i].tolist()) for i in range(num_layers) if int(counts[i].sum())}
    return ExpertLoad(model=model_name, num_experts=num_experts, steps=steps, per_layer=per_layer)


def measured_rank_loads(model: nn.Module) -> dict[int, list[int]]:
    """Per MoE layer of this stage, the rows each EP rank's experts processed since the last reset
    (all-gathered over the EP group; one entry for a single process)."""
    out = {}
    for m in moe_modules(model):
        t = torch.tensor([m.received_tokens_accum], dtype=torch.long, device=_device(model))
        group = m.dispatcher.group
        if group is None:
            out[m.layer_index] = [int(t)]
            continue
        parts = [torch.zeros_like(t) for _ in range(m.ep)]
        dist.all_gather(parts, t, group=group)
        out[m.layer_index] = [int(p) for p in parts]
    return out


def max_over_mean(loads_per_layer: dict[int, list[int]]) -> float:
    """Busiest rank over the mean rank, summed over layers (1.0 is perfect balance)."""
    busiest = sum(max(v) for v in loads_per_layer.values())
    mean = sum(sum(v) / len(v) for v in loads_per_layer.values())
    return busiest / mean if mean else 1.0


def _device(model: nn.Module) -> torch.device:
    """Where collectives' tensors live: the model's device (cuda under NCCL, cpu under gloo)."""
    return next(model.parameters()).device


def _broadcast_json(obj, device: torch.device, src: int = 0):
    """Rank ``src``'s JSON-able object on every rank (as bytes in a tensor: no pickles)."""
    if not dist.is_initialized():
        return obj
    data = torch.tensor(list(json.dumps(obj).encode()) if dist.get_rank() == src else [], dtype=torch.uint8,
                        device=device)
    size = torch.tensor([data.numel()], dtype=torch.long, device=device)
    dist.broadcast(size, src)
    if dist.get_rank() != src:
        data = torch.empty(int(size), dtype=torch.uint8, device=device)
    dist.broadcast(data, src)
    return json.loads(bytes(data.tolist()).decode())


def rebalance_experts(model: nn.Module, optimizer: torch.optim.Optimizer | None, plan: Plan, steps: int,
                      out_dir: str | Path | None = None, *, slots_per_rank: int | None = None,
                      time_limit_s: float = 5.0) -> Plan:
    """The whole loop at a checkpoint boundary, on every rank: sum the counts, let rank 0 choose the
    placement (a time-limited solver could answer differently on different ranks) and write
    ``expert_load.json`` and ``plan.json`` under ``out_dir``, broadcast the placement, move the experts
    in memory, reset the counters. Returns the new plan (same on every rank)."""
    m = plan.model
    load = collect_expert_load(model, m.name, m.num_layers, m.num_experts, steps)
    payload: dict = {}
    if not dist.is_initialized() or dist.get_rank() == 0:
        try:
            new_plan, _ = rebalance_plan(plan, load, slots_per_rank=slots_per_rank, time_limit_s=time_limit_s)
            if out_dir is not None:
                load.save(Path(out_dir) / "expert_load.json")
                new_plan.save(Path(out_dir) / "plan.json")
            payload = {"plan": new_plan.to_dict()}
        except PlannerError as exc:  # every rank must hear it, or the others wait in the broadcast
            payload = {"error": str(exc), "type": type(exc).__name__}
    payload = _broadcast_json(payload, _device(model))
    if "error" in payload:
        raise PlannerError(f"expert rebalancing failed on rank 0: {payload['error']}")
    new_plan = Plan.from_dict(payload["plan"], "rebalanced plan")
    apply_placement(model, optimizer, [list(p) for p in new_plan.expert_placement])
    reset_load_counts(model)
    return new_plan


@torch.no_grad()
def apply_placement(model: nn.Module, optimizer: torch.optim.Optimizer | None,
                    new_placement: list[list[int]]) -> None:
    """Re-place the experts of every MoE layer in memory: weights and optimizer state travel from a
    current holder to each new holder over the EP group (broadcasts, one per moved expert, in expert
    order on every rank), then the optimizer's parameter lists are updated in place.

    Call it between optimizer steps on every rank of the stage (a checkpoint boundary). Works with
    plain modules and torch.optim optimizers; under FSDP or other wrappers resume a DCP checkpoint
    under the new plan instead."""
    for m in moe_modules(model):
        _move_layer(m, optimizer, new_placement)


def _param_group_of(optimizer: torch.optim.Optimizer, p: nn.Parameter) -> dict | None:
    for g in optimizer.param_groups:
        if any(q is p for q in g["params"]):
            return g
    return None


def _move_layer(m: MoEFFN, optimizer: torch.optim.Optimizer | None, new_placement: list[list[int]]) -> None:
    old = m.dispatcher
    new = ExpertDispatcher(new_placement, m.num_experts, old.group)
    me = old.ep_rank
    template = next(iter(m.experts.values()))
    names = [n for n, _ in template.named_parameters()]
    state_keys: list[str] = []
    if optimizer is not None:
        st = optimizer.state.get(template.gate_proj.weight, {})
        state_keys = sorted(k for k, v in st.items() if isinstance(v, torch.Tensor))
    groups_by_name = {n: _param_group_of(optimizer, p) if optimizer is not None else None
                      for n, p in template.named_parameters()}
    spec_shapes = {n: p.shape for n, p in template.named_parameters()}
    hidden, ffn = template.gate_proj.in_features, template.gate_proj.out_features
    bias = template.gate_proj.bias is not None

    modules: dict[str, SwiGLU] = {}
    for e in range(m.num_experts):
        wanted = me in new.holders[e]
        have = str(e) in m.experts
        needs_transfer = any(r not in old.holders[e] for r in new.holders[e])
        if wanted and have:
            modules[str(e)] = m.experts[str(e)]
        if not needs_transfer:
            continue
        src = old.holders[e][0]
        src_global = me if old.group is None else dist.get_global_rank(old.group, src)
        mod = m.experts[str(e)] if have else SwiGLU(hidden, ffn, bias).to(template.gate_proj.weight)
        for n, p in mod.named_parameters():
            buf = p.data if me == src else torch.empty(spec_shapes[n], dtype=p.dtype, device=p.device)
            if old.group is not None:
                dist.broadcast(buf, src_global, group=old.group)
            if not have:
                p.data.copy_(buf)
            for k in state_keys:
                ref = optimizer.state[template.get_parameter(n)][k]
                s = optimizer.state[p][k] if have else torch.empty_like(ref)
                wire = s.to(p.device)  # Adam keeps 'step' on the CPU; NCCL sends device tensors only
                if old.group is not None:
                    dist.broadcast(wire, src_global, group=old.group)
                if wanted and not have:
                    optimizer.state[p][k] = wire.to(ref.device).clone()
        if wanted and not have:
            if optimizer is not None:
                for n, p in mod.named_parameters():
                    for k, v in optimizer.state[template.get_parameter(n)].items():
                        if not isinstance(v, torch.Tensor):
                            optimizer.state[p][k] = v  # non-tensor state (none in torch.optim today)
            modules[str(e)] = mod
    # drop experts this rank no longer holds, from the module and the optimizer
    for e, mod in list(m.experts.items()):
        if e not in modules and optimizer is not None:
            for p in mod.parameters():
                g = _param_group_of(optimizer, p)
                if g is not None:
                    g["params"] = [q for q in g["params"] if q is not p]
                optimizer.state.pop(p, None)
    if optimizer is not None:
        for e, mod in modules.items():
            if e in m.experts and m.experts[e] is mod:
                continue
            for n, p in mod.named_parameters():
                g = groups_by_name[n]
                if g is not None:
                    g["params"].append(p)
    ordered = {str(e): modules[str(e)] for e in new.local_experts}
    m.experts = nn.ModuleDict(ordered)
    m.dispatcher = new
    for e in new.local_experts:
        primary = new.holders[e][0] == me
        for p in m.experts[str(e)].parameters():
            p._hybridplan_expert = True
            p._hybridplan_expert_primary = primary
