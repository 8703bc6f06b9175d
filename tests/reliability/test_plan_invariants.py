"""Every plan the planner emits satisfies its invariants, over random models, clusters and batches.

For each request the search either refuses in one line (nothing fits, nothing divides) or returns ranked
candidates; for the chosen one and every alternative:
- degrees multiply to the world size; TP divides heads, KV heads and the FFN width; EP divides the experts;
- the stage layer ranges cover the model exactly once;
- predicted memory per rank is under capacity minus the safety margin, and an independent re-estimate of
  the same configuration agrees (the search never reports a cheaper memory than the cost model);
- the schedule's preconditions hold (batch divisible, micro-batches >= stages, interleaved multiple of pp);
- the plan it writes round-trips through plan.json with its digest, and passes the plan-reader invariants.
"""

from __future__ import annotations

import json
import math

from hypothesis import given
from hypothesis import strategies as st

from planner.cost import CostModel
from planner.cost import efficiency as eff
from planner.plan import Plan
from planner.search.bounds import rank_key
from planner.search.constraints import parse_fixes
from planner.search.outputs import RunInfo, build_plan
from planner.search.solver import SearchOptions, search
from planner.search.space import SearchSpace
from tests.reliability import fuzzlib
from tests.reliability.fuzzlib import feed, fuzz_settings
from tests.reliability.strategies import clusters, models
from tests.reliability.test_fuzz_plans import check_plan_invariants
from tests.reliability.test_fuzz_specs import check_config

TARGETS = {"search": 30}


def check_candidate(model, cluster, cm: CostModel, rec) -> None:
    c, e = rec.config, rec.estimate
    check_config(model, c, cluster.world_size)  # degrees, divisibility, coverage, schedule preconditions
    assert model.ffn_hidden_size % c.tp == 0
    assert c.global_batch_size % (c.dp * c.micro_batch_size) == 0
    capacity = cluster.device.memory_bytes * (1 - eff.MEMORY_SAFETY_MARGIN)
    assert math.isclose(e.capacity_bytes, capacity, rel_tol=1e-12)
    assert e.peak_memory_bytes <= capacity, (rec.name, e.peak_memory_bytes, capacity)
    again = cm.estimate(c)
    assert math.isclose(again.peak_memory_bytes, e.peak_memory_bytes, rel_tol=1e-9), (rec.name, again.peak_memory_bytes,
                                                                                      e.peak_memory_bytes)
    assert again.fits


def search_and_check(model, cluster, global_batch: int) -> Plan:
    cm = CostModel(model, cluster)
    result = search(SearchSpace(model, cluster, global_batch, parse_fixes([])), cm, SearchOptions(time_limit_s=10))
    assert result.ranked and result.best is result.ranked[0]
    for rec in result.ranked[:5]:
        check_candidate(model, cluster, cm, rec)
    keys = [rank_key(r.estimate.step_time_s, r.config.compression) for r in result.ranked[:5]]
    assert keys == sorted(keys), "ranked best first (step time, with the lossy-compression hurdle)"
    plan = build_plan(model, cluster, result, RunInfo(command="property test", steps=1, tokens=0.0, profile=""))
    again = Plan.from_dict(json.loads(json.dumps(plan.to_dict(), allow_nan=False)))
    assert (again.model, again.cluster, again.config, again.stages, again.digest) == \
        (plan.model, plan.cluster, plan.config, plan.stages, plan.digest)
    check_plan_invariants(again)
    assert again.predicted["peak_memory_bytes"] <= again.predicted["capacity_bytes"]
    return plan


@fuzz_settings(max_examples=TARGETS["search"])
@given(models(max_layers=24), clusters(), st.sampled_from([8, 16, 64, 256]))
def test_every_emitted_plan_satisfies_its_invariants(model, cluster, global_batch) -> None:
    feed("search", search_and_check, model, cluster, global_batch, input_repr=(model, cluster.name,
                                                                               cluster.world_size, global_batch))


def test_search_count() -> None:
    c = fuzzlib.COUNTS["search"]
    assert fuzzlib.total("search") >= TARGETS["search"], dict(c)
    assert c["accepted"] >= TARGETS["search"] // 3, ("too few requests produced a plan to check", dict(c))
