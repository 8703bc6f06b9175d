"""The rank order against an independent oracle (numpy reshape), as Megatron's rank-generator test does."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from planner.errors import ConfigError
from planner.rank_order import Degrees, coords_of, crosses_nodes, groups, rank_of

SHAPES = [(t, d, p, e) for t, d, p in itertools.product((1, 2, 4, 8), (1, 2, 3, 4), (1, 2, 4))
          for e in (1, 2, 4, 8) if (t * d) % e == 0]


@pytest.mark.parametrize("tp, dp, pp, ep", SHAPES)
def test_groups_match_numpy_oracle(tp, dp, pp, ep) -> None:
    deg = Degrees(tp=tp, dp=dp, pp=pp, ep=ep)
    grid = np.arange(deg.world_size).reshape(pp, dp, tp)
    want_tp = sorted(sorted(grid[k, j, :].tolist()) for k in range(pp) for j in range(dp))
    want_dp = sorted(sorted(grid[k, :, i].tolist()) for k in range(pp) for i in range(tp))
    want_pp = sorted(sorted(grid[:, j, i].tolist()) for j in range(dp) for i in range(tp))
    assert sorted(groups(deg, "tp")) == want_tp
    assert sorted(groups(deg, "dp")) == want_dp
    assert sorted(groups(deg, "pp")) == want_pp
    inner = grid.reshape(pp, dp * tp // ep, ep)  # consecutive blocks of ep inside each stage
    want_ep = sorted(sorted(inner[k, b, :].tolist()) for k in range(pp) for b in range(dp * tp // ep))
    want_edp = sorted(sorted(inner[k, :, i].tolist()) for k in range(pp) for i in range(ep))
    assert sorted(groups(deg, "ep")) == want_ep
    assert sorted(groups(deg, "edp")) == want_edp
    for axis in ("tp", "dp", "pp", "ep", "edp"):  # every rank in exactly one group per axis
        assert sorted(r for g in groups(deg, axis) for r in g) == list(range(deg.world_size))
    for r in range(deg.world_size):
        c = coords_of(deg, r)
        assert rank_of(deg, tp=c["tp"], dp=c["dp"], pp=c["pp"]) == r
        assert grid[c["pp"], c["dp"], c["tp"]] == r


def test_worked_table_of_the_docstring() -> None:
    deg = Degrees(tp=2, dp=2, pp=2)
    assert groups(deg, "tp") == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert groups(deg, "dp") == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert groups(deg, "pp") == [[0, 4], [1, 5], [2, 6], [3, 7]]


def test_tp_inside_a_node_dp_across() -> None:
    deg = Degrees(tp=8, dp=4, pp=2)
    assert not crosses_nodes(deg, "tp", 8)
    assert crosses_nodes(deg, "dp", 8) and crosses_nodes(deg, "pp", 8)


def test_ep_must_divide_tp_dp() -> None:
    with pytest.raises(ConfigError, match="expert parallel degree 3"):
        Degrees(tp=2, dp=2, ep=3)
