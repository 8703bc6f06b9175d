"""The MoE FFN on one process: against a per-token loop, router variants, capacity, aux loss, counts."""

from __future__ import annotations

import math

import pytest
import torch

from planner.errors import ConfigError
from planner.model_presets import PRESETS
from runtime.moe import MoEFFN, build_moe_ffn, keyed_normal_
from runtime.moe_dispatch import validate_placement
from runtime.moe_router import TopKRouter, switch_aux_loss

SPEC = PRESETS["tiny-moe"]


def _x(n_b=2, n_s=16, seed=0) -> torch.Tensor:
    return torch.randn(n_b, n_s, SPEC.hidden_size, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def _per_token(m: MoEFFN, x: torch.Tensor, keep=None) -> torch.Tensor:
    """The textbook definition, one token at a time: sum_k w_k * expert_k(x) (+ gated shared expert)."""
    xf = x.reshape(-1, x.shape[-1])
    routing = m.router(xf)
    out = torch.zeros_like(xf)
    for t in range(xf.shape[0]):
        for j in range(m.top_k):
            if keep is None or keep[t * m.top_k + j]:
                e = int(routing.experts_NK[t, j])
                out[t] += routing.weights_NK[t, j] * m.experts[str(e)](xf[t:t + 1])[0]
        if m.shared_expert is not None:
            s = m.shared_expert(xf[t:t + 1])[0]
            if m.shared_expert_gate is not None:
                s = torch.sigmoid(m.shared_expert_gate(xf[t:t + 1])[0]) * s
            out[t] += s
    return out.view_as(x)


@pytest.mark.parametrize("variant", ["softmax", "sigmoid-bias-shared-gate"])
def test_layer_matches_per_token_definition_and_param_count(variant: str) -> None:
    spec = SPEC if variant == "softmax" else SPEC.replace(
        router_scoring="sigmoid", router_bias=True, num_shared_experts=1, shared_expert_gate=True)
    m = build_moe_ffn(spec, 1).double()
    assert sum(p.numel() for p in m.parameters()) == spec.moe_params()
    if spec.router_bias:
        with torch.no_grad():
            m.router.score_bias.copy_(torch.tensor([0.3, 0.0, -0.1, 0.05]))
    x = _x()
    y = m(x)
    assert (y - _per_token(m, x)).abs().max() < 1e-12
    w = m.router(x.reshape(-1, 64)).weights_NK
    assert torch.allclose(w.sum(-1), torch.ones(w.shape[0], dtype=w.dtype))  # renormalised top-k
    assert int(m.tokens_per_expert.sum()) == x.shape[0] * x.shape[1] * spec.moe_top_k
    assert m.received_tokens == x.shape[0] * x.shape[1] * spec.moe_top_k


def test_sigmoid_bias_changes_selection_not_weights() -> None:
    r = TopKRouter(8, 4, 1, "sigmoid", use_score_bias=True).double()
    keyed_normal_(r.weight, 1.0, "t")
    x = torch.randn(64, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        r.score_bias.copy_(torch.tensor([10.0, 0, 0, 0]))
    assert bool((r(x).experts_NK == 0).all())  # the bias forces the choice ...
    r.update_score_bias(torch.tensor([64, 0, 0, 0]), rate=0.5)  # ... and the sign rule lowers it
    assert r.score_bias.tolist() == [9.5, 0.5, 0.5, 0.5]


def test_capacity_drops_pairs_beyond_capacity_first_come_first_served() -> None:
    m = build_moe_ffn(SPEC, 1, capacity_factor=0.5).double()
    x = _x()
    y = m(x)
    n, k, num_experts = 32, 2, 4
    capacity = math.ceil(0.5 * n * k / num_experts)
    experts = m.router(x.reshape(-1, 64)).experts_NK.reshape(-1)
    seen = [0] * num_experts
    keep = []
    for e in experts.tolist():
        keep.append(seen[e] < capacity)
        seen[e] += 1
    assert m.dropped_pairs == keep.count(False) > 0
    assert (y - _per_token(m, x, keep)).abs().max() < 1e-12
    m.capacity_factor = 100.0  # capacity above every count: dropless
    m2 = build_moe_ffn(SPEC, 1).double()
    assert (m(x) - m2(x)).abs().max() == 0 and m.dropped_pairs == 0


def test_switch_aux_loss_formula_and_attached_gradient() -> None:
    # Fedus et al. 2021 eq. 4 by hand: 2 tokens, 2 experts, top-1
    probs = torch.tensor([[0.75, 0.25], [0.5, 0.5]], dtype=torch.float64)
    experts = torch.tensor([[0], [0]])
    # f = (1, 0), P = (0.625, 0.375): E * sum f P = 2 * 0.625
    assert float(switch_aux_loss(probs, experts, 2)) == pytest.approx(1.25)
    uniform = torch.full((4, 4), 0.25, dtype=torch.float64)
    assert float(switch_aux_loss(uniform, torch.tensor([[0, 1], [2, 3], [0, 1], [2, 3]]), 4)) == pytest.approx(1.0)
    # the attached gradient equals adding the aux loss to the training loss by hand
    x = _x()
    attached = build_moe_ffn(SPEC, 1).double()
    manual = build_moe_ffn(SPEC, 1).double()
    manual.attach_aux_grad = False
    attached(x).sum().backward()
    (manual(x).sum() + manual.aux_loss).backward()
    assert attached.aux_loss.grad_fn is None and manual.aux_loss.requires_grad
    assert float(attached.aux_loss) == pytest.approx(float(manual.aux_loss.detach()), abs=0)
    diff = (attached.router.weight.grad - manual.router.weight.grad).abs().max()
    assert diff < 1e-15
    no_aux = build_moe_ffn(SPEC, 1, aux_loss_coef=0.0).double()
    no_aux(x).sum().backward()
    assert (no_aux.router.weight.grad - manual.router.weight.grad).abs().max() > 1e-6  # aux really trains


def test_keyed_init_depends_on_key_only() -> None:
    a = build_moe_ffn(SPEC, 1)
    b = build_moe_ffn(SPEC, 1)
    c = build_moe_ffn(SPEC, 2)
    assert torch.equal(a.experts["2"].gate_proj.weight, b.experts["2"].gate_proj.weight)
    assert not torch.equal(a.experts["2"].gate_proj.weight, a.experts["3"].gate_proj.weight)
    assert not torch.equal(a.experts["2"].gate_proj.weight, c.experts["2"].gate_proj.weight)
    std = float(torch.cat([p.detach().reshape(-1) for n, p in a.named_parameters() if "down" not in n]).std())
    assert 0.018 < std < 0.022
    down = float(torch.cat([p.detach().reshape(-1) for n, p in a.named_parameters() if "down" in n]).std())
    assert 0.9 < down / (0.02 / math.sqrt(2 * SPEC.num_layers)) < 1.1  # scaled output init
    assert all(getattr(p, "_hybridplan_expert", False) for p in a.experts.parameters())
    assert not getattr(a.router.weight, "_hybridplan_expert", False)


def test_bad_inputs_raise_typed_errors() -> None:
    with pytest.raises(ConfigError, match="not an MoE layer"):
        build_moe_ffn(SPEC, 0)  # tiny-moe's first layer is dense
    with pytest.raises(ConfigError, match="capacity factor"):
        build_moe_ffn(SPEC, 1, capacity_factor=0.0)
    with pytest.raises(ConfigError, match="holds no copy of expert 3"):
        validate_placement([[0, 1], [2]], 4, 2)
    with pytest.raises(ConfigError, match="lists 1 EP ranks"):
        validate_placement([[0, 1, 2, 3]], 4, 2)
    with pytest.raises(ConfigError, match="twice"):
        validate_placement([[0, 0], [1, 2, 3]], 4, 2)
