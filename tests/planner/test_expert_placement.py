"""Expert placement optimiser: load arithmetic, replicas, CP-SAT vs brute force, the rebalanced plan."""

from __future__ import annotations

import itertools
import json
import random

import pytest

from planner.cluster_spec import resolve_cluster
from planner.errors import InfeasibleError, SpecError
from planner.expert_placement import (ExpertLoad, greedy_placement, imbalance, rank_loads, rebalance_plan,
                                      replica_counts, slots_from_memory, solve_placement, step_proxy)
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan


def test_rank_loads_split_replicas_evenly() -> None:
    load = [60, 20, 10, 10]
    assert rank_loads([[0, 1], [2, 3]], load) == [80, 20]
    assert imbalance([[0, 1], [2, 3]], load) == pytest.approx(80 / 50)
    # expert 0 on both ranks: 30 each
    assert rank_loads([[0, 1], [0, 2, 3]], load) == [50, 50]
    assert step_proxy([[0, 1], [2, 3]], [load, [0, 0, 50, 50]]) == 80 + 100
    with pytest.raises(SpecError, match="without a holder"):
        rank_loads([[0], [1]], load)


def test_replicas_only_for_experts_heavier_than_a_rank() -> None:
    # mean rank load 25: expert 0 (97) is copied until one copy (24.25) is below it
    assert replica_counts([97, 1, 1, 1], ep=4, slots_per_rank=2) == [4, 1, 1, 1]
    assert replica_counts([97, 1, 1, 1], ep=4, slots_per_rank=1) == [1, 1, 1, 1]  # no spare slot
    assert replica_counts([25, 25, 25, 25], ep=2, slots_per_rank=4) == [1, 1, 1, 1]  # balanced: no copy
    with pytest.raises(InfeasibleError, match="do not fit"):
        replica_counts([1] * 8, ep=2, slots_per_rank=3)


def _brute_force(per_layer, ep, slots, replicas):
    """Every way to put each expert's copies on distinct ranks, within slots, no rank empty."""
    num_experts = len(replicas)
    options = [list(itertools.combinations(range(ep), replicas[e])) for e in range(num_experts)]
    best = float("inf")
    for choice in itertools.product(*options):
        placement = [[e for e in range(num_experts) if r in choice[e]] for r in range(ep)]
        if any(len(p) > slots or not p for p in placement):
            continue
        best = min(best, step_proxy(placement, per_layer))
    return best


@pytest.mark.parametrize("seed", range(12))
def test_cp_sat_equals_brute_force_on_small_instances(seed: int) -> None:
    rng = random.Random(seed)
    num_experts, ep = rng.choice([(4, 2), (5, 2), (6, 3), (4, 3), (6, 2)])
    slots = -(-num_experts // ep) + rng.choice([0, 1])
    per_layer = [[rng.choice([1, 3, 10, 40, 100]) * rng.randint(1, 9) for _ in range(num_experts)]
                 for _ in range(rng.choice([1, 2, 3]))]
    result = solve_placement(per_layer, ep, slots, time_limit_s=10)
    assert result.status == "optimal"
    assert result.proxy_after == pytest.approx(_brute_force(per_layer, ep, slots, result.replicas), rel=1e-4)
    greedy = greedy_placement([sum(c) for c in zip(*per_layer)], ep, slots, result.replicas)
    assert result.proxy_after <= step_proxy(greedy, per_layer) + 1e-9
    assert all(len(p) <= slots and p for p in result.placement)
    assert sorted({e for p in result.placement for e in p}) == list(range(num_experts))


def test_skewed_load_is_balanced_and_never_made_worse() -> None:
    contiguous = [[0, 1], [2, 3]]
    load = [400, 400, 100, 100]
    r = solve_placement([load], ep=2, slots_per_rank=2, current=contiguous)
    assert imbalance(contiguous, load) == pytest.approx(1.6)
    assert imbalance(r.placement, load) == pytest.approx(1.0)
    # already optimal: the current placement is kept
    r2 = solve_placement([load], ep=2, slots_per_rank=2, current=r.placement)
    assert r2.placement == r.placement and "kept current" in r2.status
    # one dominant expert with spare memory: replicated over every rank
    hot = [970, 10, 10, 10]
    r3 = solve_placement([hot], ep=4, slots_per_rank=2, current=[[0], [1], [2], [3]])
    assert r3.replicas[0] == 4
    assert imbalance(r3.placement, hot) < 1.1 < imbalance([[0], [1], [2], [3]], hot)


def _tiny_moe_plan(peak_bytes: int = 0) -> Plan:
    model = PRESETS["tiny-moe"]
    config = ParallelConfig(dp=2, tp=1, pp=2, ep=2, micro_batch_size=1, global_batch_size=4, seq_len=32)
    predicted = {"peak_memory_bytes": peak_bytes} if peak_bytes else {}
    return Plan.build(model, resolve_cluster("cpu", gpus=4), config, predicted=predicted)


def test_rebalance_plan_writes_a_loadable_plan(tmp_path) -> None:
    plan = _tiny_moe_plan()
    assert [list(p) for p in plan.expert_placement] == [[0, 1], [2, 3]]
    load = ExpertLoad(model="tiny-moe", num_experts=4, steps=3,
                      per_layer={1: (300, 280, 20, 40), 2: (310, 290, 30, 10), 3: (250, 250, 50, 50)})
    new, result = rebalance_plan(plan, load, time_limit_s=5)
    assert result.proxy_after < result.proxy_before
    rb = new.provenance["expert_rebalance"]
    print(f"tiny-moe ep2 placement {rb['previous_placement']} -> {result.placement}: max/mean "
          f"{rb['imbalance_before']:.3f} -> {rb['imbalance_after']:.3f}")
    assert rb["imbalance_after"] < rb["imbalance_before"]
    path = new.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert [list(p) for p in again.expert_placement] == result.placement
    assert again.config == plan.config and again.digest != plan.digest
    load.save(tmp_path / "load.json")
    assert ExpertLoad.load(tmp_path / "load.json") == load
    with pytest.raises(SpecError, match="tiny-moe with 4"):
        rebalance_plan(plan, ExpertLoad(model="other", num_experts=4, steps=1, per_layer={1: (1, 1, 1, 1)}))


def test_expert_load_rejects_malformed_records(tmp_path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"kind": "hybridplan.expert_load", "schema_version": 1, "model": "m",
                               "num_experts": 2, "steps": 1, "per_layer": {"0": [1, 2, 3]}}))
    with pytest.raises(SpecError, match="needs 2 non-negative counts"):
        ExpertLoad.load(bad)
    bad.write_text("{}")
    with pytest.raises(SpecError, match="not a hybridplan expert-load record"):
        ExpertLoad.load(bad)


def test_slots_from_memory_counts_headroom_per_expert_copy() -> None:
    plan = _tiny_moe_plan()
    assert slots_from_memory(plan) == 2  # no prediction: no extra copy
    model = plan.model
    # pp rank 0 holds layers 0-1 (one MoE layer), rank 1 layers 2-3 (two): the worst rank has 2
    per_copy = 2 * model.expert_params() * 16
    memory = plan.cluster.device.memory_bytes
    assert slots_from_memory(_tiny_moe_plan(peak_bytes=memory - per_copy)) == 3
    assert slots_from_memory(_tiny_moe_plan(peak_bytes=memory - per_copy + 1)) == 2
    assert slots_from_memory(_tiny_moe_plan(peak_bytes=1)) == 4  # capped at every expert
