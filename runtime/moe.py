"""The mixture-of-experts FFN: router, routed SwiGLU experts (expert-parallel), shared experts.

Entry point for the model: ``build_moe_ffn(spec, layer_index, ep_group, expert_placement, tp_group)``
returns a module mapping ``x_BSD -> y_BSD`` for every layer with ``spec.is_moe_layer(i)``.

Parallelism (world = DP x TP x PP; EP divides the TP x DP ranks of a stage, planner/rank_order.py):

- EP: each rank of the EP group holds the experts ``expert_placement[ep_rank]``; tokens travel to
  them and back with ``runtime.moe_dispatch``. One process (no group, or a group of one) holds
  every expert and communicates nothing, whatever placement it is given.
- TP: the routed experts are replicated over TP, not sharded (documented choice): each TP rank
  routes the same tokens, so results and gradients are identical across TP; the cost is redundant
  expert compute and all-to-all traffic by a factor ``tp`` when the EP group spans TP ranks. The
  shared expert is replicated too. Sequence parallelism: give the module the norm's DTensor output
  (sharded on the sequence, torch's ``SequenceParallel`` style); it gathers the sequence and returns
  the local slice as a plain tensor.
- Gradients: expert weights must be averaged over the expert-data-parallel group ('edp' in
  planner/rank_order.py), never over 'dp'; call ``reduce_expert_grads`` after backward. Because an
  expert sees the tokens of all ``ep`` ranks of its group, its weight gradient is scaled by 1 / ep
  inside autograd, so that the edp average equals the data-parallel mean of the reference
  (Megatron-LM does the same with a 1/dp factor and a sum over its expert-data-parallel group).
  Expert parameters carry ``_hybridplan_expert = True`` (and ``_hybridplan_expert_primary``: count
  this copy in a gradient norm, False on extra replicas) so a DP wrapper can exclude them.

Initialisation: every weight comes from a generator keyed by (seed, layer, expert id, matrix), so an
expert's weights do not depend on the EP degree or on which rank holds it. Expert FQNs carry the
global expert id (``experts.<id>.gate_proj.weight``), so a DCP checkpoint reloads under any placement.
"""

from __future__ import annotations

import hashlib
import math

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F
from torch.distributed.tensor import DTensor, Replicate

from planner.errors import ConfigError
from planner.model_spec import ModelSpec
from runtime.moe_dispatch import ExpertDispatcher
from runtime.moe_router import TopKRouter, attach_aux_loss, switch_aux_loss

DEFAULT_AUX_LOSS_COEF = 0.01
"""Switch Transformer's alpha (Fedus et al. 2021, Sec. 2.2: 1e-2); ModelSpec has no field for it."""
DEFAULT_INIT_STD = 0.02
"""Normal(0, 0.02) for the router and input matrices (GPT-2 / Megatron-LM init_method_std); the output
(down) projections use std / sqrt(2 L), as runtime/model.py does for the dense MLP (GPT-2, Radford et al.
2019 Sec. 2.3; Megatron-LM output_layer_init_method)."""


def keyed_normal_(t: torch.Tensor, std: float, *key: object) -> torch.Tensor:
    """Fill ``t`` from N(0, std^2) with a generator seeded by a stable hash of ``key``."""
    seed = int.from_bytes(hashlib.sha256(repr(key).encode()).digest()[:8], "little") & (2**63 - 1)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        t.copy_(torch.randn(t.shape, generator=g, dtype=torch.float64).mul_(std).to(t.dtype))
    return t


class _ScaleGrad(torch.autograd.Function):
    """Identity forward; multiplies the gradient by ``scale`` (the 1/ep expert-gradient factor)."""

    @staticmethod
    def forward(ctx, w: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.scale = scale
        return w.view_as(w)

    @staticmethod
    def backward(ctx, g: torch.Tensor):
        return g * ctx.scale, None


class SwiGLU(nn.Module):
    """down(silu(gate(x)) * up(x)): a routed or shared expert (Shazeer 2020)."""

    def __init__(self, hidden_size: int, ffn_hidden_size: int, bias: bool = False):
        super().__init__()
        self.gate_proj = nn.Linear(hidden_size, ffn_hidden_size, bias=bias)
        self.up_proj = nn.Linear(hidden_size, ffn_hidden_size, bias=bias)
        self.down_proj = nn.Linear(ffn_hidden_size, hidden_size, bias=bias)

    def forward(self, x: torch.Tensor, grad_scale: float = 1.0) -> torch.Tensor:
        def p(t: torch.Tensor | None) -> torch.Tensor | None:
            return t if t is None or grad_scale == 1.0 else _ScaleGrad.apply(t, grad_scale)

        gate = F.linear(x, p(self.gate_proj.weight), p(self.gate_proj.bias))
        up = F.linear(x, p(self.up_proj.weight), p(self.up_proj.bias))
        return F.linear(F.silu(gate) * up, p(self.down_proj.weight), p(self.down_proj.bias))

    def init_keyed(self, std: float, out_std: float, *key: object) -> None:
        for name, param in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(param)
            else:
                keyed_normal_(param, out_std if name.startswith("down_proj") else std, *key, name)


class MoEFFN(nn.Module):
    """Routed experts (top-k, EP) plus optional shared experts; after forward it exposes
    ``aux_loss`` (coefficient included; its gradient is already attached, do not add it to the loss
    unless ``attach_aux_grad`` is False) and ``tokens_per_expert`` (local routing demand, int64 [E])."""

    def __init__(self, spec: ModelSpec, layer_index: int, ep_group=None,
                 expert_placement: list[list[int]] | None = None, tp_group=None, *, seed: int = 0,
                 init_std: float = DEFAULT_INIT_STD, capacity_factor: float | None = None,
                 aux_loss_coef: float = DEFAULT_AUX_LOSS_COEF):
        super().__init__()
        if not spec.is_moe_layer(layer_index):
            raise ConfigError(f"layer {layer_index} of {spec.name} is not an MoE layer")
        if capacity_factor is not None and not capacity_factor > 0:
            raise ConfigError(f"capacity factor must be positive (or None for dropless), got {capacity_factor!r}")
        if ep_group is not None and dist.get_world_size(ep_group) == 1:
            ep_group = None
        E = spec.num_experts
        placement = expert_placement or [list(range(E))]
        if ep_group is None:
            placement = [list(range(E))]  # one process holds every expert
        if any(not experts for experts in placement):
            raise ConfigError("every EP rank must hold at least one expert (an empty rank would skip the "
                              "backward all-to-all and hang its group)")
        self.layer_index, self.num_experts, self.top_k = layer_index, E, spec.moe_top_k
        self.capacity_factor = capacity_factor
        """None: dropless (default). Else each source rank keeps at most ceil(cf * N * k / E) pairs per
        expert, first come first served (Switch Transformer, Fedus et al. 2021 Sec. 2.2)."""
        self.aux_loss_coef = aux_loss_coef
        self.attach_aux_grad = True
        self.aux_loss_backward_scale = 1.0
        """d(training loss)/d(aux loss): set it to the main loss's micro-batch scaling (e.g. 1/m) when
        the schedule divides each micro-batch loss rather than the gradients."""
        self.tp_group = tp_group
        self.dispatcher = ExpertDispatcher(placement, E, ep_group)
        self.ep = self.dispatcher.ep
        self.router = TopKRouter(spec.hidden_size, E, spec.moe_top_k, spec.router_scoring, spec.router_bias)
        local = self.dispatcher.local_experts
        self.experts = nn.ModuleDict({str(e): SwiGLU(spec.hidden_size, spec.moe_ffn_hidden_size, spec.linear_bias)
                                      for e in local})
        self.shared_expert = (SwiGLU(spec.hidden_size, spec.shared_ffn_width, spec.linear_bias)
                              if spec.shared_ffn_width else None)
        self.shared_expert_gate = nn.Linear(spec.hidden_size, 1, bias=False) if spec.shared_expert_gate else None
        out_std = init_std / math.sqrt(2 * spec.num_layers)
        keyed_normal_(self.router.weight, init_std, "hybridplan.moe", seed, layer_index, "router")
        for e in local:
            self.experts[str(e)].init_keyed(init_std, out_std, "hybridplan.moe", seed, layer_index, "expert", e)
        if self.shared_expert is not None:
            self.shared_expert.init_keyed(init_std, out_std, "hybridplan.moe", seed, layer_index, "shared")
        if self.shared_expert_gate is not None:
            keyed_normal_(self.shared_expert_gate.weight, init_std, "hybridplan.moe", seed, layer_index, "shared_gate")
        ep_rank = self.dispatcher.ep_rank
        for e in local:
            primary = self.dispatcher.holders[e][0] == ep_rank
            for param in self.experts[str(e)].parameters():
                param._hybridplan_expert = True
                param._hybridplan_expert_primary = primary
        self.aux_loss = torch.zeros(())
        self.register_buffer("tokens_per_expert", torch.zeros(E, dtype=torch.long), persistent=False)
        self.register_buffer("tokens_per_expert_accum", torch.zeros(E, dtype=torch.long), persistent=False)
        self.received_tokens = 0
        """Rows this rank's experts processed in the last forward (the measured per-rank load)."""
        self.received_tokens_accum = 0
        self.dropped_pairs = 0

    @property
    def local_experts(self) -> list[int]:
        return self.dispatcher.local_experts

    def reset_load_counts(self) -> None:
        self.tokens_per_expert_accum.zero_()
        self.received_tokens_accum = 0

    def _keep_mask(self, experts_P: torch.Tensor, num_tokens: int) -> torch.Tensor | None:
        """Capacity drop: the first ``capacity`` pairs of each expert survive (token order)."""
        if self.capacity_factor is None:
            return None
        capacity = math.ceil(self.capacity_factor * num_tokens * self.top_k / self.num_experts)
        sorted_e, perm = torch.sort(experts_P, stable=True)
        counts = torch.bincount(experts_P, minlength=self.num_experts)
        starts = torch.cumsum(counts, 0) - counts
        pos = torch.empty_like(experts_P)
        pos[perm] = torch.arange(experts_P.numel(), device=experts_P.device) - starts[sorted_e]
        return pos < capacity

    def forward(self, x_BSD: torch.Tensor) -> torch.Tensor:
        if isinstance(x_BSD, DTensor):
            return self._forward_sequence_parallel(x_BSD)
        shape = x_BSD.shape
        x_ND = x_BSD.reshape(-1, shape[-1])
        n, k = x_ND.shape[0], self.top_k
        routing = self.router(x_ND)
        experts_P = routing.experts_NK.reshape(-1)
        with torch.no_grad():
            counts = torch.bincount(experts_P, minlength=self.num_experts)
            self.tokens_per_expert.copy_(counts)
            self.tokens_per_expert_accum.add_(counts)
        token_P = torch.arange(n, device=x_ND.device).repeat_interleave(k)
        keep = self._keep_mask(experts_P, n)
        kept = None if keep is None else keep.nonzero().squeeze(1)
        if kept is not None:
            token_P, experts_kept = token_P[kept], experts_P[kept]
            self.dropped_pairs = int(experts_P.numel() - kept.numel())
        else:
            experts_kept = experts_P
            self.dropped_pairs = 0
        rows, per_slot, state = self.dispatcher.dispatch(x_ND, token_P, experts_kept)
        self.received_tokens = int(rows.shape[0])
        self.received_tokens_accum += self.received_tokens
        scale = 1.0 / self.ep
        outs = [self.experts[str(e)](chunk, scale)
                for e, chunk in zip(self.local_experts, torch.split(rows, per_slot))]
        y_pairs = self.dispatcher.combine(torch.cat(outs), state)
        if kept is not None:
            y_pairs = y_pairs.new_zeros((n * k, shape[-1])).index_copy(0, kept, y_pairs)
        y_ND = (routing.weights_NK.unsqueeze(-1) * y_pairs.view(n, k, -1)).sum(1)
        if self.shared_expert is not None:
            shared = self.shared_expert(x_ND)
            if self.shared_expert_gate is not None:
                shared = torch.sigmoid(self.shared_expert_gate(x_ND)) * shared  # Qwen2-MoE
            y_ND = y_ND + shared
        aux = self.aux_loss_coef * switch_aux_loss(routing.probs_NE, routing.experts_NK, self.num_experts)
        if self.attach_aux_grad and self.training and self.aux_loss_coef:
            y_ND = attach_aux_loss(y_ND, aux, self.aux_loss_backward_scale)
            self.aux_loss = aux.detach()
        else:
            self.aux_loss = aux
        return y_ND.view(shape)

    def _forward_sequence_parallel(self, x: DTensor) -> torch.Tensor:
        """Sequence parallelism (the norm before us hands over a DTensor sharded on the sequence): gather the
        sequence, run replicated over TP as without SP, return this rank's slice as a plain tensor (the
        residual stream's layout), like the dense MLP's gather / reduce-scatter (Korthikanti et al. 2022).
        Backward: the slice's gradient is all-gathered, the input gradient sliced (it is identical on
        every TP rank), so no parameter of this module needs a TP reduction."""
        mesh, placements = x.device_mesh, x.placements
        full = x.redistribute(mesh, [Replicate()] * mesh.ndim).to_local()
        y = self.forward(full)
        return DTensor.from_local(y, mesh, [Replicate()] * mesh.ndim, run_check=False).redistribute(
            mesh, placements).to_local()

    # --- gradient reduction --------------------------------------------------------------------
    @torch.no_grad()
    def sync_replica_grads(self) -> None:
        """Sum the gradients of replicated experts over the EP ranks that hold them (each replica saw
        part of the expert's tokens). All ranks of the EP group must call this together."""
        d = self.dispatcher
        replicated = [e for e in range(self.num_experts) if len(d.holders[e]) > 1]
        if d.group is None or not replicated:
            return
        ref = next(iter(self.experts.values()))
        sizes = [p.numel() for p in ref.parameters()]
        per_expert = sum(sizes)
        w = ref.gate_proj.weight
        buf = torch.zeros(len(replicated) * per_expert, dtype=w.dtype, device=w.device)
        for i, e in enumerate(replicated):
            if str(e) in self.experts:
                grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in self.experts[str(e)].parameters()]
                buf[i * per_expert:(i + 1) * per_expert] = torch.cat([g.reshape(-1) for g in grads])
        dist.all_reduce(buf, group=d.group)
        for i, e in enumerate(replicated):
            if str(e) in self.experts:
                chunk = buf[i * per_expert:(i + 1) * per_expert]
                for p, piece in zip(self.experts[str(e)].parameters(), torch.split(chunk, sizes)):
                    p.grad = piece.view_as(p).clone()


def expert_parameters(model: nn.Module) -> list[nn.Parameter]:
    """Parameters a DP wrapper must leave out of its dp reduction (they reduce over 'edp')."""
    return [p for p in model.parameters() if getattr(p, "_hybridplan_expert", False)]


@torch.no_grad()
def reduce_expert_grads(model: nn.Module, edp_group=None) -> None:
    """After backward, before the optimizer step: sum replica gradients inside each EP group, then
    average expert gradients over the expert-data-parallel group (no-op for a group of one)."""
    for m in model.modules():
        if isinstance(m, MoEFFN):
            m.sync_replica_grads()
    params = expert_parameters(model)
    if edp_group is None or dist.get_world_size(edp_group) == 1 or not params:
        return
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1) for g in grads])
    dist.all_reduce(flat, group=edp_group)
    flat /= dist.get_world_size(edp_group)
    for p, piece in zip(params, torch.split(flat, [p.numel() for p in params])):
        p.grad = piece.view_as(p).clone()


def build_moe_ffn(spec: ModelSpec, layer_index: int, ep_group=None, expert_placement: list[list[int]] | None = None,
                  tp_group=None, **options) -> MoEFFN:
    """The seam the runtime's model calls for every layer with ``spec.is_moe_layer(layer_index)``.
    ``options``: seed, init_std, capacity_factor, aux_loss_coef (see MoEFFN)."""
    return MoEFFN(spec, layer_index, ep_group, expert_placement, tp_group, **options)
