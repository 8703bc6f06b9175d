"""Memory per rank: ZeRO bytes per parameter, Korthikanti activations, schedule in-flight counts."""

from __future__ import annotations

import pytest

from planner.cluster_spec import resolve_cluster
from planner.cost import CostModel, CostOptions
from planner.cost.memory import bytes_per_param
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig

GiB = 2**30
OLD = CostOptions(flash_attention=False, dropout=True)


def test_zero_stages_shard_as_rajbhandari_2020():
    assert sum(vars(bytes_per_param(2, 0, 8)).values()) == 18  # 2 weights + 4 fp32 grads + 12 Adam
    z1 = bytes_per_param(2, 1, 8)
    assert (z1.weights, z1.grads, z1.optimizer) == (2, 4, 1.5)
    z2 = bytes_per_param(2, 2, 8)
    assert (z2.weights, z2.grads, z2.optimizer) == (2, 0.5, 1.5)
    z3 = bytes_per_param(2, 3, 8)
    assert (z3.weights, z3.grads, z3.optimizer) == (0.25, 0.5, 1.5)
    assert sum(vars(bytes_per_param(2, 0, 1, grad_bytes=2)).values()) == 16  # ZeRO paper's 16 bytes
    assert bytes_per_param(4, 0, 1).optimizer == 8  # fp32 model: no separate master copy


def _cm(model="megatron-22b", gpus=8):
    return CostModel(PRESETS[model], resolve_cluster("dgx-a100-80gb", gpus=gpus), options=OLD)


def test_22b_first_stage_activations_match_korthikanti_table_2():
    cm = _cm()
    m = cm.model
    s, b, h, a, t, L = 2048, 4, m.hidden_size, m.num_heads, 8, m.num_layers
    cfg = ParallelConfig(dp=1, tp=8, pp=1, micro_batch_size=4, global_batch_size=4, seq_len=2048)
    layers = s * b * h * (10 + 24 / t + 5 * a * s / (h * t)) * L  # eq. 2
    act = cm.memory(cfg).memory_by_stage[0].activations_bytes
    assert act == pytest.approx(layers, rel=0.01)  # + embedding mask and fp32 logits of the head
    sel = cm.memory(cfg.replace(recompute="selective", sequence_parallel=True)).memory_by_stage[0].activations_bytes
    assert sel == pytest.approx(s * b * h * 34 / t * L, rel=0.03)  # TP + SP + selective


def test_175b_interleaved_first_stage_uses_the_interleaving_factor():
    cm = _cm("gpt3-175b", 64)
    m = cm.model
    s, h, a, t, p, v, L = 2048, m.hidden_size, m.num_heads, 8, 8, 3, m.num_layers
    cfg = ParallelConfig(dp=1, tp=8, pp=8, micro_batch_size=1, global_batch_size=64, seq_len=2048,
                         schedule="interleaved", virtual_stages=3)
    expected = s * h * (10 + 24 / t + 5 * a * s / (h * t)) * L * (1 + (p - 1) / (p * v))
    assert cm.memory(cfg).memory_by_stage[0].activations_bytes == pytest.approx(expected, rel=0.01)


def test_static_memory_of_the_layers_is_18_bytes_per_parameter_over_tp():
    cm = _cm()
    cfg = ParallelConfig(dp=1, tp=8, pp=1, micro_batch_size=4, global_batch_size=4, seq_len=2048)
    st = cm.memory(cfg).memory_by_stage[0]
    total = st.weights_bytes + st.gradients_bytes + st.optimizer_bytes
    m = cm.model
    expected = 18 * (12 * m.num_layers * m.hidden_size**2 + m.embedding_params()) / 8
    assert total == pytest.approx(expected, rel=0.02)
    assert st.weights_bytes == pytest.approx(total / 9, rel=1e-6)


def test_capacity_keeps_the_safety_margin_and_breakdown_totals():
    cm = _cm()
    assert cm.capacity_bytes < cm.cluster.device.memory_bytes
    cfg = ParallelConfig(dp=1, tp=8, pp=1, micro_batch_size=4, global_batch_size=4, seq_len=2048)
    mem = cm.memory(cfg)
    s = mem.memory_by_stage[0]
    assert s.total_bytes == pytest.approx(s.weights_bytes + s.gradients_bytes + s.optimizer_bytes
                                          + s.activations_bytes + s.other_bytes)
    assert mem.fits is (mem.peak_memory_bytes <= cm.capacity_bytes)


def test_moe_experts_split_over_ep():
    m = PRESETS["mixtral-8x7b"]
    cm = CostModel(m, resolve_cluster("dgx-h100", gpus=64))
    base = ParallelConfig(dp=16, tp=1, pp=4, ep=1, micro_batch_size=1, global_batch_size=256, seq_len=4096)
    w1 = cm.memory(base).memory_by_stage[1].weights_bytes
    w8 = cm.memory(base.replace(ep=8)).memory_by_stage[1].weights_bytes
    experts = 8 * m.num_moe_layers / 4 * m.expert_params() * 2  # bf16 weights of one stage's experts
    assert w1 - w8 == pytest.approx(experts * 7 / 8, rel=1e-6)


# --- replicated experts (planner/cost/replicas.py) ------------------------------------------------------
_MIXTRAL = ParallelConfig(dp=4, tp=2, pp=2, ep=4, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                          sequence_parallel=True)
_EVEN = [[0, 1], [2, 3], [4, 5], [6, 7]]
_HOT = [[0, 1, 2], [2, 3], [4, 5], [6, 7]]  # expert 2 copied to EP rank 0: 3 slots where the even split has 2


def test_replicated_experts_cost_their_memory_and_a_gradient_all_reduce():
    from planner.cost.memory import bytes_per_param

    model = PRESETS["mixtral-8x7b"]
    cm = CostModel(model, resolve_cluster("dgx-h100", gpus=16))
    base, even, hot = cm.estimate(_MIXTRAL), cm.estimate(_MIXTRAL, expert_placement=_EVEN), \
        cm.estimate(_MIXTRAL, expert_placement=_HOT)
    assert even.step_time_s == base.step_time_s and even.peak_memory_bytes == base.peak_memory_bytes
    # static bytes: the fullest EP rank's routed experts grow by 3 / 2 on every MoE layer (the runtime keeps whole
    # copies); expert-data-parallel group tp x dp / ep = 2 shards nothing at ZeRO 0
    per = bytes_per_param(model.dtype_bytes, 0, 2)
    moe_layers = model.num_layers // 2  # per pipeline rank
    extra = moe_layers * model.expert_params() * (3 - 2) * (per.weights + per.grads + per.optimizer)
    for b, h in zip(base.memory_by_stage, hot.memory_by_stage):
        static_b = b.weights_bytes + b.gradients_bytes + b.optimizer_bytes
        static_h = h.weights_bytes + h.gradients_bytes + h.optimizer_bytes
        assert static_h - static_b == pytest.approx(extra, rel=1e-9)
        assert h.activations_bytes == b.activations_bytes
    assert cm.memory(_MIXTRAL, expert_placement=_HOT).peak_memory_bytes == hot.peak_memory_bytes
    # time: one all-reduce per MoE layer over the EP group of the replicated expert's gradients, after backward,
    # plus the larger expert gradient reduction; the pipeline itself is unchanged (imbalance is not re-priced)
    assert hot.breakdown["dp_sync_exposed"] > base.breakdown["dp_sync_exposed"]
    assert hot.step_time_s > base.step_time_s
    assert hot.breakdown["pp_bubble"] == base.breakdown["pp_bubble"]
    assert any("replicated" in n for n in hot.notes)


def test_replica_gradient_all_reduce_hand_calculation():
    from planner.cost.replicas import expert_replicas, replica_grad_sync_s

    calls = []

    def comm(op, nbytes, axis):
        calls.append((op, nbytes, axis))
        return 0.25

    model = PRESETS["mixtral-8x7b"]
    rep = expert_replicas(model, 4, [[0, 1, 2, 5], [2, 3], [4, 5], [6, 7]])
    assert (rep.slots_per_rank, rep.replicated_experts, rep.copies) == (4, 2, 2.0)
    assert replica_grad_sync_s(comm, rep, 1000, moe_layers=3, grad_bytes=4) == 0.75
    assert calls == [("all_reduce", 2 * 1000 * 4, "ep")]
    assert expert_replicas(model, 4, [[1, 0], [2, 3], [5, 4], [6, 7]]) is None  # a permutation: no replica


@pytest.mark.parametrize("placement,match", [([[0, 1], [2, 3], [4, 5]], "3 EP ranks"),
                                             ([[0, 1], [2, 3], [4, 5], [6, 6]], "twice"),
                                             ([[0, 1], [2, 3], [4, 5], [6, 8]], "expert 8"),
                                             ([[0, 1], [2, 3], [4, 5], [6]], "expert 7 on no EP rank")])
def test_bad_expert_placement_is_a_config_error(placement, match):
    from planner.errors import ConfigError

    cm = CostModel(PRESETS["mixtral-8x7b"], resolve_cluster("dgx-h100", gpus=16))
    with pytest.raises(ConfigError, match=match):
        cm.estimate(_MIXTRAL, expert_placement=placement)
    with pytest.raises(ConfigError, match="dense model"):
        _cm().memory(ParallelConfig(dp=1, tp=8, pp=1, micro_batch_size=1, global_batch_size=8, seq_len=2048),
                     expert_placement=[[0]])
