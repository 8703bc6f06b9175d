"""planner.compression: payload bytes, collective kind and codec time against hand calculations."""

from __future__ import annotations

import math

import pytest
from hypothesis import given, strategies as st

from planner import compression as c
from planner.errors import ConfigError
from planner.parallel_config import COMPRESSION


def test_methods_match_parallel_config():
    assert c.METHODS == COMPRESSION


def test_payload_hand_values():
    n = 1_000_000
    assert c.payload_bytes("none", n, 0, 4) == 4e6
    assert c.payload_bytes("fp16", n, 0, 4) == 2e6
    assert c.payload_bytes("bf16", n, 0, 4) == 2e6
    assert c.payload_bytes("bf16", n, 0, 2) == 2e6  # already 2-byte grads: no saving
    assert c.payload_bytes("int8", n, 0, 4) == 1e6 + 4
    # 1 % kept, fp32 value + int32 index
    assert c.payload_bytes("topk", n, 0.01, 4) == 10_000 * 8
    assert c.payload_bytes("topk", n, 0, 4) == 10_000 * 8  # default fraction is 1 %
    # one square 1000 x 1000 matrix at rank 4: P and Q hold 4 * 2000 elements
    assert c.payload_bytes("powersgd", n, 4, 4) == 4 * 2000 * 4


def test_powersgd_gpt_shape_model():
    h, r = 1024, 4
    n = 12 * h * h * 10  # ten layers
    # rows + cols per layer = 16 h -> n * 16 r / (12 h)
    assert c.payload_bytes("powersgd", n, r, 4, hidden=h) == pytest.approx(n * 4 * r / (3 * h) * 4)


def test_powersgd_small_matrix_sent_uncompressed():
    # 8 x 8 at rank 4: compressed 64 elements, not < 64 / 2 -> torch sends it raw
    assert c.payload_bytes("powersgd", 64, 4, 4) == 64 * 4


def test_collective_kinds_and_ring_bytes():
    assert c.all_reducible("int8") and c.all_reducible("powersgd") and c.all_reducible("none")
    assert not c.all_reducible("topk")
    assert c.collective_kind("topk") == "all_gather"
    assert c.sequential_collectives("powersgd") == 2 and c.sequential_collectives("fp16") == 1
    n = 1000
    assert c.sync_bytes_per_rank("none", n, 0, 4, 4) == pytest.approx(2 * 3 / 4 * 4000)
    assert c.sync_bytes_per_rank("topk", n, 0.1, 4, 4) == pytest.approx(3 * 100 * 8)
    assert c.sync_bytes_per_rank("none", n, 0, 4, 1) == 0.0


def test_topk_crossover_with_dp_size():
    """top-k's all-gather grows with p; at 1 % of fp32 it loses to plain all-reduce past p = 100."""
    n = 10**8
    for p, wins in ((8, True), (64, True), (99, True), (101, False)):
        tk = c.sync_bytes_per_rank("topk", n, 0.01, 4, p)
        ar = c.sync_bytes_per_rank("none", n, 0, 4, p)
        assert (tk < ar) == wins


def test_codec_time_hand_values():
    hbm = 1e12
    n = 10**9
    assert c.codec_time_s("none", n, 0, hbm) == 0.0
    assert c.codec_time_s("fp16", n, 0, hbm) == pytest.approx(12 * n / hbm)
    assert c.codec_time_s("int8", n, 0, hbm) == pytest.approx(24 * n / hbm)
    k = math.ceil(0.01 * n)
    assert c.codec_time_s("topk", n, 0.01, hbm, group_size=4) == pytest.approx((36 * n + 4 * k * 16) / hbm)
    # rank 64 matmuls on a slow device become compute-bound: 6 r flops per element
    t = c.codec_time_s("powersgd", n, 64, hbm, peak_flops=1e12)
    assert t == pytest.approx(6 * 64 * n / 1e12)


@pytest.mark.parametrize("bad", [("zip", 0), ("topk", 1.5), ("powersgd", 2.5), ("powersgd", -1)])
def test_bad_input_is_typed(bad):
    method, param = bad
    with pytest.raises(ConfigError):
        c.payload_bytes(method, 100, param, 4)


def test_combination_rules():
    c.check_combination("hierarchical", "bf16")
    c.check_combination("ps", "fp16")
    c.check_combination("allreduce", "topk")
    with pytest.raises(ConfigError):
        c.check_combination("ps", "int8")


@given(n=st.integers(1, 10**10), p=st.integers(2, 1024))
def test_compression_never_sends_more_than_uncompressed_allreduce_except_topk(n, p):
    ar = c.sync_bytes_per_rank("none", n, 0, 4, p)
    for m in ("fp16", "bf16", "int8", "powersgd"):
        assert c.sync_bytes_per_rank(m, n, 0, 4, p) <= ar + 2 * c.SCALE_BYTES


@given(n=st.integers(100, 10**9))
def test_payload_monotone_in_param(n):
    assert c.payload_bytes("topk", n, 0.01, 4) <= c.payload_bytes("topk", n, 0.1, 4)
    assert c.payload_bytes("powersgd", n, 1, 4) <= c.payload_bytes("powersgd", n, 8, 4)
