"""Block times against hand calculations of the efficiency model (planner/cost/efficiency.py)."""

from __future__ import annotations

import pytest

from planner.cost import efficiency as eff
from planner.cost.compute import Hardware, Shape, block_time, elementwise_time_s, gemm_time_s
from planner.layer_graph import Block

HW = Hardware(peak_flops=100e12, hbm_bytes_per_s=1e12, family="ampere")


def _no_comm(op, nbytes, axis):
    raise AssertionError("no collective expected")


def test_gemm_time_is_flops_over_peak_times_efficiency_curve():
    n = 4096.0
    e = eff.GEMM_EFF_MAX["ampere"] * n / (n + eff.GEMM_HALF_DIM)
    assert gemm_time_s(1e12, n, HW) == pytest.approx(1e12 / (100e12 * e))
    assert eff.gemm_efficiency("ampere", 10) < eff.gemm_efficiency("ampere", 10_000) < eff.GEMM_EFF_MAX["ampere"]


def test_elementwise_time_is_bytes_over_achieved_bandwidth():
    assert elementwise_time_s(1e9, HW) == pytest.approx(1e9 / (1e12 * eff.HBM_EFFICIENCY))


def test_mlp_block_hand_calculation_tp1():
    b = Block(kind="mlp", params=0, gemm_flops=1e6, ew_rep=100.0, ew_tp=50.0, gemm_width=512)
    sh = Shape(micro_batch=2, seq_len=1024, tp=1, sequence_parallel=False, ep=1, dtype_bytes=2, hidden=256)
    bt = block_time(b, sh, HW, _no_comm, flash_attention=True)
    T = 2048
    gemm = gemm_time_s(T * 1e6, (T * 512 * 256) ** (1 / 3), HW)
    ew = elementwise_time_s(T * 150.0, HW)
    launch = eff.KERNELS_PER_BLOCK_FWD * eff.KERNEL_LAUNCH_S
    assert bt.fwd_compute_s == pytest.approx(gemm + ew + launch)
    assert bt.bwd_compute_s == pytest.approx(2 * gemm + eff.BACKWARD_ELEMENTWISE_FACTOR * ew + 2 * launch)
    assert bt.full_extra_s == pytest.approx(bt.fwd_s) and bt.selective_extra_s == 0.0
    assert bt.bwd_weight_s == pytest.approx(gemm)


def test_tp_collectives_per_block_narayanan_sec_3_2():
    calls = []

    def comm(op, nbytes, axis):
        calls.append((op, nbytes, axis))
        return 1.0

    b = Block(kind="attention", params=0, gemm_flops=1e6, tp_collectives=1, gemm_width=768)
    sh = Shape(micro_batch=1, seq_len=128, tp=4, sequence_parallel=False, ep=1, dtype_bytes=2, hidden=256)
    bt = block_time(b, sh, HW, comm, flash_attention=True)
    assert calls == [("all_reduce", 128 * 256 * 2, "tp")]  # one all-reduce of b s h in forward
    assert bt.tp_fwd_s == 1.0 and bt.tp_bwd_s == pytest.approx(1.0 - eff.TP_COMM_OVERLAP_BWD)
    calls.clear()
    sp = Shape(micro_batch=1, seq_len=128, tp=4, sequence_parallel=True, ep=1, dtype_bytes=2, hidden=256)
    block_time(b, sp, HW, comm, flash_attention=True)
    assert sorted(c[0] for c in calls) == ["all_gather", "all_gather", "reduce_scatter"]


def test_split_backward_w_is_the_weight_gradient_matmuls_and_b_exposes_their_tp_overlap():
    # Qi et al. 2024 Table 1: W = the weight-gradient matmuls (as many FLOPs as the forward matmuls), B = the
    # input-gradient matmuls plus the rest; a matmul-heavy block splits about in half
    b = Block(kind="mlp", params=0, gemm_flops=2 * 3 * 8192 * 28672, ew_rep=100.0, ew_tp=50.0, tp_collectives=1,
              gemm_width=2 * 28672)
    sh = Shape(micro_batch=1, seq_len=4096, tp=8, sequence_parallel=False, ep=1, dtype_bytes=2, hidden=8192)
    bt = block_time(b, sh, HW, lambda op, nbytes, axis: 1e-3, flash_attention=True)
    w, b_input = bt.bwd_weight_s, bt.bwd_compute_s - bt.bwd_weight_s
    assert 0.45 < w / bt.bwd_compute_s <= 0.5 and b_input >= w
    # TP_COMM_OVERLAP_BWD of the backward all-reduce hides behind the weight-gradient matmul; split, B waits
    assert bt.tp_bwd_s == pytest.approx(1e-3 * (1 - eff.TP_COMM_OVERLAP_BWD))
    assert bt.tp_bwd_s + bt.tp_bwd_split_extra_s == pytest.approx(1e-3)


def test_ep_all_to_all_dispatch_and_combine():
    calls = []

    def comm(op, nbytes, axis):
        calls.append((op, nbytes, axis))
        return 0.5

    b = Block(kind="moe", params=0, expert_gemm_flops=1e6, a2a_bytes=2 * 256 * 2.0, top_k=2, gemm_width=512)
    sh = Shape(micro_batch=1, seq_len=128, tp=1, sequence_parallel=False, ep=4, dtype_bytes=2, hidden=256,
               num_experts=8)
    bt = block_time(b, sh, HW, comm, flash_attention=True)
    assert [c[0] for c in calls] == ["all_to_all"]
    assert calls[0][1] == pytest.approx(128 * 2 * 256 * 2 * eff.MOE_IMBALANCE)
    assert bt.ep_fwd_s == 1.0 and bt.ep_bwd_s == 1.0


def test_selective_recompute_reruns_only_the_attention_core():
    b = Block(kind="attention", params=0, gemm_flops=1e6, core_flops_per_seq=1000.0, ew_core_per_seq=8.0,
              gemm_width=768)
    sh = Shape(micro_batch=1, seq_len=512, tp=1, sequence_parallel=False, ep=1, dtype_bytes=2, hidden=256)
    bt = block_time(b, sh, HW, _no_comm, flash_attention=False)
    core = 512 * 512 * 1000.0 / (100e12 * eff.GEMM_EFF_MAX["ampere"] * eff.ATTENTION_CORE_EFF)
    assert bt.selective_extra_s == pytest.approx(core + elementwise_time_s(512 * 512 * 8.0, HW))
    assert 0 < bt.selective_extra_s < bt.full_extra_s
