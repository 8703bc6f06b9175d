"""LayerGraph: parameters add up, FLOPs and activations match hand calculations, repeated blocks are shared."""

from __future__ import annotations

import pytest

from planner.layer_graph import LayerGraph, layer_graph
from planner.model_presets import PRESETS


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_graph_keeps_every_parameter(name):
    m = PRESETS[name]
    assert layer_graph(m).total_params() == m.total_params()


def test_repeated_layers_share_one_block_type():
    g = layer_graph(PRESETS["gpt3-175b"])
    assert len(g.layer_types) == 1 and len(g.layer_types[0].layers) == 96
    ds = layer_graph(PRESETS["deepseek-v3"])
    assert len(ds.layer_types) == 2  # 3 dense layers, 58 MoE layers
    assert sorted(len(t.layers) for t in ds.layer_types) == [3, 58]
    nx_graph = g.graph()
    assert nx_graph.number_of_nodes() == 2 + 2 * 96
    assert g.distinct_blocks()[("attention", True, True)] == 96


def test_gpt_layer_flops_match_korthikanti_appendix_a():
    # forward per layer: 24 B s h^2 + 4 B s^2 h  (matmuls 24 h^2 per token, attention core 4 s h per token)
    m = PRESETS["gpt3-175b"]
    h, s = m.hidden_size, m.seq_len
    lt = LayerGraph(m).layer_types[0]
    per_token = sum(b.gemm_flops + s * b.core_flops_per_seq for b in lt.blocks)
    assert per_token == pytest.approx(24 * h * h + 4 * s * h)
    assert LayerGraph(m).head.gemm_flops == 2 * h * m.vocab_size


def test_gpt_layer_activations_are_korthikanti_34_sbh_plus_5as2b():
    m = PRESETS["megatron-22b"]
    h, a, s = m.hidden_size, m.num_heads, m.seq_len
    lt = LayerGraph(m, flash_attention=False, dropout=True).layer_types[0]
    rep = sum(b.act_rep for b in lt.blocks)
    tp = sum(b.act_tp for b in lt.blocks)
    core = sum(b.act_core_per_seq for b in lt.blocks)
    assert rep == 10 * h and tp == 24 * h  # Table 2: sbh (10 + 24/t + 5as/(ht))
    assert core == 5 * a


def test_flash_attention_stores_no_score_matrix_and_no_dropout_masks_without_dropout():
    m = PRESETS["llama3.1-8b"]
    g = LayerGraph(m)  # rope model: dropout off by default
    att = g.layer_types[0].attention
    assert att.act_core_per_seq == 0 and att.ew_core_per_seq == 0
    assert g.dropout is False and layer_graph(PRESETS["gpt2"]).dropout is True


def test_moe_block_counts_topk_experts_and_splits_experts_from_dense():
    m = PRESETS["mixtral-8x7b"]
    moe = LayerGraph(m).layer_types[0].ffn
    assert moe.kind == "moe" and moe.top_k == 2
    assert moe.expert_params == 8 * m.expert_params()
    assert moe.expert_gemm_flops == 2 * 2 * 3 * m.hidden_size * m.moe_ffn_hidden_size
    assert moe.a2a_bytes == 2 * m.hidden_size * m.dtype_bytes


def test_mla_attention_flops_follow_its_projections():
    m = PRESETS["deepseek-v3"]
    att = LayerGraph(m).layer_types[0].attention
    assert att.gemm_flops == 2 * (m.attention_params() - m.q_lora_rank - m.kv_lora_rank)
    assert att.core_flops_per_seq == 2 * m.num_heads * (m.qk_nope_head_dim + m.qk_rope_head_dim + m.v_head_dim)
