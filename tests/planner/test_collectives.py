"""Alpha-beta collectives against hand calculations, link levels from the rank order, profile override."""

from __future__ import annotations

import pytest

from planner.cluster_spec import LinkLevel, resolve_cluster
from planner.collectives import (BUS_EFFICIENCY, Collectives, all_gather_s, group_layout, hierarchical_all_reduce_s,
                                 parameter_server_s, ring_all_reduce_s, send_recv_s)
from planner.rank_order import Degrees

LINK = LinkLevel("intra_node", 100e9, 1e-5)
BW = 100e9 * BUS_EFFICIENCY["intra_node"]


def test_ring_all_reduce_hand_calculation():
    # 2 (n-1) alpha + 2 (n-1)/n N / B
    assert ring_all_reduce_s(1e9, 4, LINK) == pytest.approx(6 * 1e-5 + 1.5 * 1e9 / BW)
    assert ring_all_reduce_s(1e9, 1, LINK) == 0.0


def test_all_gather_send_recv_and_ps_hand_calculations():
    assert all_gather_s(8e8, 8, LINK) == pytest.approx(7e-5 + 7 / 8 * 8e8 / BW)
    assert send_recv_s(1e6, LINK) == pytest.approx(1e-5 + 1e6 / BW)
    assert parameter_server_s(1e8, 5, LINK) == pytest.approx(2e-5 + 2 * 4 * 1e8 / BW)


def test_hierarchical_beats_flat_ring_across_slow_nodes():
    c = resolve_cluster("a100-25gbe", gpus=32)
    flat = ring_all_reduce_s(1e9, 32, c.inter_node)
    hier = hierarchical_all_reduce_s(1e9, 8, 4, c.intra_node, c.inter_node)
    assert hier < flat / 4


def test_group_levels_follow_the_rank_order():
    c = resolve_cluster("dgx-a100-80gb", gpus=64)
    d = Degrees(tp=8, dp=8, pp=1)
    assert group_layout(d, "tp", 8) == (8, 8)  # a TP group fills one node
    assert group_layout(d, "dp", 8) == (8, 1)  # each DP member on its own node
    coll = Collectives(c)
    intra = coll.time_s("all_reduce", 1e8, 8, 8)
    inter = coll.time_s("all_reduce", 1e8, 8, 1)
    assert inter > 5 * intra


def test_ring_over_nodes_uses_every_nic_of_the_node():
    c = resolve_cluster("dgx-a100-80gb", gpus=32)
    coll = Collectives(c)
    one_per_node = coll.time_s("all_reduce", 1e9, 4, 1)
    eight_per_node = coll.time_s("all_reduce", 1e9, 32, 8)
    assert eight_per_node < one_per_node


class _Profile:
    def __init__(self):
        self.calls = []

    def collective_time_s(self, op, group_size, link_level, nbytes):
        self.calls.append((op, group_size, link_level))
        return 0.123 if op == "all_reduce" else None


def test_profile_replaces_the_spec_sheet_where_it_covers(caplog):
    c = resolve_cluster("dgx-a100-80gb", gpus=8)
    prof = _Profile()
    coll = Collectives(c, prof)
    assert coll.time_s("all_reduce", 1e6, 8, 8) == 0.123
    with caplog.at_level("WARNING"):
        t1 = coll.time_s("all_gather", 1e6, 8, 8)
        coll.time_s("all_gather", 2e6, 8, 8)
    assert t1 == pytest.approx(all_gather_s(1e6, 8, c.intra_node))
    assert sum("profile has no all_gather" in r.message for r in caplog.records) == 1
