"""Lower bounds never exceed what the cost model predicts, so pruning never drops the optimum."""

from __future__ import annotations

import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planner.cluster_spec import resolve_cluster
from planner.cost import CostModel
from planner.model_presets import PRESETS
from planner.search import bounds
from planner.search.constraints import parse_fixes
from planner.search.bounds import rows_bound
from planner.search.solver import SearchOptions, search
from planner.search.space import ComputeGroup, SearchSpace, SyncOption, enumerate_configs, make_config, sync_options

SPACES = {
    "gpt-1.7b/a100-40gb/16": (PRESETS["gpt-1.7b"], "dgx-a100-40gb", 16, 32),
    "llama3.1-8b/a100-40gb/8": (PRESETS["llama3.1-8b"].replace(seq_len=4096), "dgx-a100-40gb", 8, 16),
    "mixtral/h100/16": (PRESETS["mixtral-8x7b"].replace(seq_len=1024), "dgx-h100", 16, 32),
    "gpt-1.7b/25gbe/32": (PRESETS["gpt-1.7b"], "a100-25gbe", 32, 64),
}
_CACHE: dict[str, tuple] = {}


def _space(key: str):
    if key not in _CACHE:
        model, cluster, gpus, gb = SPACES[key]
        c = resolve_cluster(cluster, gpus=gpus)
        s = SearchSpace(model, c, gb)
        _CACHE[key] = (s, CostModel(model, c), list(enumerate_configs(s)))
    return _CACHE[key]


def _group(c) -> ComputeGroup:
    return ComputeGroup(c.tp, c.pp, c.dp, c.ep, c.micro_batch_size, c.sequence_parallel, c.recompute)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(sorted(SPACES)), pick=st.integers(0, 10**9), seed=st.integers(0, 10**6))
def test_bounds_never_exceed_the_estimate_of_any_split(key: str, pick: int, seed: int) -> None:
    space, cm, configs = _space(key)
    config = configs[pick % len(configs)]
    rng = random.Random(seed)
    L, C = space.model.num_layers, config.num_chunks
    cuts = sorted(rng.sample(range(1, L), C - 1))
    layers = tuple(b - a for a, b in zip((0, *cuts), (*cuts, L)))
    rec = tuple(rng.randint(0, n) if config.recompute != "full" and rng.random() < 0.5 else 0 for n in layers)
    split = config.replace(stage_layers=layers, stage_recompute_layers=rec)
    g = _group(config)
    zeros = sorted({s.zero for s in sync_options(space, g)})
    rep = make_config(space, g, config.schedule, config.virtual_stages, SyncOption())
    pins = {z: cm.partition_inputs(rep.replace(zero_stage=z)) for z in zeros}
    member = float(rows_bound(space, cm.capacity_bytes, g, pins, [(config.schedule, config.virtual_stages,
                                                                   config.zero_stage)], collapse=False)[0])
    group = float(rows_bound(space, cm.capacity_bytes, g, pins, [(config.schedule, config.virtual_stages, z)
                                                                 for z in zeros], collapse=True).min())
    assert group <= member * (1 + 1e-9)
    for candidate in (config, split):
        est = cm.estimate(candidate)
        if est.fits:  # the bounds price the recomputation a configuration needs to fit
            assert member <= est.step_time_s * (1 + 1e-9), (candidate.name, member, est.step_time_s)
    assert bounds.compute_lower_bound_s(pins[zeros[0]], config.num_micro_batches, config.pp) <= \
        cm.estimate(split).step_time_s * (1 + 1e-9)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(["gpt-1.7b/25gbe/32", "gpt-1.7b/a100-40gb/16"]), pick=st.integers(0, 10**9))
def test_sync_variants_save_at_most_the_exposed_dp_sync(key: str, pick: int) -> None:
    space, cm, configs = _space(key)
    config = configs[pick % len(configs)]
    base = cm.estimate(config.replace(grad_sync="allreduce", compression="none"))
    lb = bounds.sync_variant_lower_bound_s(base.step_time_s, base.breakdown)
    assert cm.estimate(config).step_time_s >= lb * (1 - 1e-9)


@pytest.mark.parametrize("name,vs", [("gpipe", (1,)), ("1f1b", (1,)), ("interleaved", (2, 3)), ("zbv", (2,))])
def test_last_backward_on_each_rank_is_its_first_chunk(name: str, vs: tuple[int, ...]) -> None:
    """The fill/drain bound rests on this: rank r's last backward is B(chunk r, last micro-batch)."""
    from planner.schedules import build_schedule

    for pp in (2, 3, 4, 8):
        for v in vs:
            for m in (pp, 2 * pp, 3 * pp + (0 if name == "interleaved" else 1)):
                sched = build_schedule(name, pp, m, v)
                for r in range(pp):
                    last_b = [a for a in sched.actions[r] if a.kind == "B"][-1]
                    assert (last_b.chunk, last_b.microbatch) == (r, m - 1)
                    if name != "zbv":
                        assert sched.actions[r][-1] == last_b, "nothing after it on the rank (zbv: only W)"
                    else:
                        assert all(a.kind == "W" for a in sched.actions[r][sched.actions[r].index(last_b) + 1:])


@pytest.mark.parametrize("key,fixes", [
    ("gpt-1.7b/a100-40gb/16", ["tp=2"]),
    ("llama3.1-8b/a100-40gb/8", ["sp=false"]),
    ("mixtral/h100/16", ["ep=8", "micro_batch=1"]),
    ("gpt-1.7b/25gbe/32", ["tp=1", "pp=1"]),
])
def test_pruning_keeps_the_exhaustive_top_k(key: str, fixes: list[str]) -> None:
    model, cluster, gpus, gb = SPACES[key]
    c = resolve_cluster(cluster, gpus=gpus)
    space = SearchSpace(model, c, gb, parse_fixes(fixes))
    options = SearchOptions(top_k=3, max_refine=3, time_limit_s=600)
    pruned = search(space, CostModel(model, c), options)
    full = search(space, CostModel(model, c), SearchOptions(top_k=3, max_refine=3, time_limit_s=600, prune=False))
    assert not pruned.stats.timed_out and not full.stats.timed_out
    assert pruned.stats.pruned > 0, "the bounds must prune something on these spaces"
    assert [(r.base_name, round(r.key, 9)) for r in pruned.ranked[:3]] == \
        [(r.base_name, round(r.key, 9)) for r in full.ranked[:3]]
    assert pruned.stats.enumerated == full.stats.enumerated
