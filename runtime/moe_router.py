"""Top-k token router of an MoE layer and its load-balancing terms.

Scoring (``ModelSpec.router_scoring``):

- ``softmax`` (Mixtral, Qwen-MoE): p = softmax(x W^T); the top-k experts by p; their weights are
  p renormalised over the k chosen (Mixtral; Qwen3-MoE ``norm_topk_prob``). With k = 1 the raw
  probability is kept (Switch Transformer), else the router would receive no gradient.
- ``sigmoid`` (DeepSeek-V3, Liu et al. 2024 eqs. 13-16): s = sigmoid(x W^T); the top-k by s + b,
  where b is the aux-loss-free correction bias (``ModelSpec.router_bias``, selection only); the
  weights are s renormalised over the k chosen. DeepSeek-V3's group-limited routing and its
  routed scaling factor (2.5) are not in ModelSpec and are not modelled.

Load balancing:

- the Switch Transformer auxiliary loss (Fedus et al. 2021, eq. 4), ``alpha * E * sum_i f_i P_i``;
- DeepSeek-V3's bias update (Liu et al. 2024, Sec. 2.1.2): b_i += gamma * sign(mean load - load_i).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from planner.errors import ConfigError


@dataclass
class Routing:
    """The router's decision for N tokens."""

    experts_NK: torch.Tensor
    """Chosen expert ids, int64."""
    weights_NK: torch.Tensor
    """Combine weights of the chosen experts (differentiable)."""
    probs_NE: torch.Tensor
    """Per-token expert probabilities used by the auxiliary loss (softmax, or normalised sigmoid scores)."""


class TopKRouter(nn.Module):
    """Linear gate (no bias, as in every family we model) plus top-k selection."""

    def __init__(self, hidden_size: int, num_experts: int, top_k: int, scoring: str = "softmax",
                 use_score_bias: bool = False, normalize_top_k: bool = True):
        super().__init__()
        if scoring not in ("softmax", "sigmoid"):
            raise ConfigError(f"router scoring must be softmax or sigmoid, got {scoring!r}")
        if not 1 <= top_k <= num_experts:
            raise ConfigError(f"router top-k {top_k} must be between 1 and {num_experts} experts")
        self.num_experts, self.top_k, self.scoring = num_experts, top_k, scoring
        self.normalize_top_k = normalize_top_k
        """Renormalise the k chosen weights (Mixtral, Qwen3-MoE, DeepSeek-V3); False for Qwen2-MoE."""
        self.weight = nn.Parameter(torch.empty(num_experts, hidden_size))
        # A parameter (so ModelSpec.moe_params counts it and checkpoints carry it) that no gradient
        # trains: DeepSeek-V3 moves it by the sign rule in ``update_score_bias``.
        self.score_bias = nn.Parameter(torch.zeros(num_experts), requires_grad=False) if use_score_bias else None

    def forward(self, x_ND: torch.Tensor) -> Routing:
        logits = F.linear(x_ND, self.weight)
        if logits.dtype in (torch.float16, torch.bfloat16):
            logits = logits.float()  # softmax / sigmoid in fp32, as Mixtral and Megatron do
        scores = logits.softmax(-1) if self.scoring == "softmax" else logits.sigmoid()
        select = scores if self.score_bias is None else scores + self.score_bias.to(scores.dtype)
        experts = torch.topk(select.detach(), self.top_k, dim=-1).indices
        weights = scores.gather(-1, experts)
        if self.scoring == "sigmoid" or (self.normalize_top_k and self.top_k > 1):
            weights = weights / weights.sum(-1, keepdim=True)
        probs = scores if self.scoring == "softmax" else scores / scores.sum(-1, keepdim=True)
        return Routing(experts_NK=experts, weights_NK=weights.to(x_ND.dtype), probs_NE=probs)

    @torch.no_grad()
    def update_score_bias(self, tokens_per_expert: torch.Tensor, rate: float = 1e-3) -> None:
        """DeepSeek-V3 aux-loss-free balancing (Sec. 2.1.2): raise the bias of under-loaded experts,
        lower it for over-loaded ones, by ``rate`` (their gamma, 0.001). Give it counts reduced over
        every rank that routes with this router, so the bias stays identical everywhere."""
        if self.score_bias is None:
            raise ConfigError("update_score_bias needs a router built with router_bias")
        load = tokens_per_expert.to(self.score_bias.dtype)
        self.score_bias.add_(rate * torch.sign(load.mean() - load))


def switch_aux_loss(probs_NE: torch.Tensor, experts_NK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """Switch Transformer load-balancing loss without its coefficient (Fedus et al. 2021, eq. 4):
    ``E * sum_i f_i * P_i``, f_i the fraction of routing assignments that chose expert i (for top-k,
    counts / (N k), the Megatron-LM generalisation), P_i the mean probability of expert i. Equals 1
    for perfectly uniform routing; only P carries a gradient."""
    n = probs_NE.shape[0]
    if n == 0:
        return probs_NE.sum() * 0.0
    counts = torch.bincount(experts_NK.reshape(-1), minlength=num_experts).to(probs_NE.dtype)
    f = counts / (n * experts_NK.shape[-1])
    p = probs_NE.mean(0)
    return num_experts * torch.sum(f * p)


class _AttachAuxLoss(torch.autograd.Function):
    """Identity on the activations whose backward also seeds the aux loss with d(loss)/d(aux) = scale.

    Why: under pipeline parallelism the aux loss of a middle stage never reaches the loss function
    of the last stage; attaching its gradient to the layer output (Megatron-LM MoEAuxLossAutoScaler)
    trains the router on every stage with no change to the schedule or the loss function."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, aux: torch.Tensor, scale: float) -> torch.Tensor:
        ctx.save_for_backward(aux)
        ctx.scale = scale
        return y.view_as(y)

    @staticmethod
    def backward(ctx, grad_y: torch.Tensor):
        (aux,) = ctx.saved_tensors
        return grad_y, torch.full_like(aux, ctx.scale), None


def attach_aux_loss(y: torch.Tensor, aux: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    if not aux.requires_grad:
        return y
    return _AttachAuxLoss.apply(y, aux, scale)
