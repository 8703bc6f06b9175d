"""The search space: only valid configurations, every constraint honoured, experts' configurations included."""

from __future__ import annotations

import pytest

from planner.cluster_spec import resolve_cluster
from planner.errors import ConfigError, InfeasibleError
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.search.constraints import Constraints, parse_fixes
from planner.search.space import (SearchSpace, compute_groups, enumerate_configs, explain_empty, schedule_options,
                                  sync_options)


def space(model: str, cluster: str, gpus: int, gb: int, *fixes: str, seq: int | None = None) -> SearchSpace:
    m = PRESETS[model] if seq is None else PRESETS[model].replace(seq_len=seq)
    return SearchSpace(m, resolve_cluster(cluster, gpus=gpus), gb, parse_fixes(list(fixes)))


@pytest.mark.parametrize("args", [("gpt3-175b", "dgx-a100-80gb", 64, 64), ("llama3.1-70b", "dgx-h100", 64, 512),
                                  ("mixtral-8x7b", "dgx-h100", 32, 256), ("tiny-moe", "cpu", 8, 32),
                                  ("deepseek-v3", "hgx-h800", 64, 128)])
def test_every_enumerated_configuration_is_valid_and_unique(args) -> None:
    s = space(*args)
    names = set()
    n = 0
    for c in enumerate_configs(s):
        n += 1
        c.validate_for(s.model, s.world_size)  # raises if the generator let an invalid one through
        assert c.world_size == s.world_size and c.global_batch_size == s.global_batch
        assert c.tp <= s.cluster.devices_per_node, "TP stays inside a node unless fixed"
        if s.model.is_moe:
            assert c.zero_stage == 0, "the runtime runs no ZeRO with MoE layers yet"
        if c.compression != "none":
            assert c.dp > 1 and c.zero_stage == 0
        if c.dp == 1:
            assert (c.zero_stage, c.grad_sync, c.compression) == (0, "allreduce", "none")
        names.add(c.name)
    assert n > 0 and len(names) == n


def test_gloo_cluster_keeps_to_runtime_schedules() -> None:
    s = space("tiny-llama", "cpu", 8, 32)
    assert {c.schedule for c in enumerate_configs(s)} <= {"gpipe", "1f1b"}
    pinned = space("tiny-llama", "cpu", 8, 32, "schedule=interleaved", "pp=2")
    assert {(c.schedule, c.virtual_stages) for c in enumerate_configs(pinned)} == {("interleaved", 2)}


def test_fixes_are_honoured_and_lift_default_pruning() -> None:
    s = space("llama3.1-70b", "dgx-h100", 64, 512, "tp=8", "pp=4", "zero=1", "schedule=interleaved:5",
              "recompute=sel", "sp=true")
    configs = list(enumerate_configs(s))
    assert configs and all((c.tp, c.pp, c.dp, c.zero_stage, c.schedule, c.virtual_stages, c.recompute,
                            c.sequence_parallel) == (8, 4, 2, 1, "interleaved", 5, "selective", True)
                           for c in configs)
    wide = space("gpt3-175b", "dgx-a100-80gb", 64, 64, "tp=16")
    assert {c.tp for c in enumerate_configs(wide)} == {16}, "a fixed tp may cross nodes"
    ps = space("gpt-1.7b", "dgx-a100-80gb", 32, 512, "grad_sync=ps", "pp=1", "tp=1")
    assert {c.grad_sync for c in enumerate_configs(ps)} == {"ps"}
    assert "ps" not in {c.grad_sync for c in enumerate_configs(space("gpt-1.7b", "dgx-a100-80gb", 32, 512))}


def test_grad_sync_and_compression_are_searched_where_they_matter() -> None:
    s = space("gpt-1.7b", "a100-25gbe", 32, 512, "tp=1", "pp=1")
    combos = {(c.zero_stage, c.grad_sync, c.compression) for c in enumerate_configs(s)}
    assert (0, "hierarchical", "none") in combos and (0, "allreduce", "powersgd") in combos
    assert (0, "hierarchical", "bf16") in combos and (0, "allreduce", "int8") in combos
    assert (1, "allreduce", "none") in combos and not any(z >= 1 and comp != "none" for z, _, comp in combos)
    assert not any(z >= 2 and comp != "none" for z, _, comp in combos)
    assert not any(gs == "hierarchical" and comp in ("int8", "topk", "powersgd") for _, gs, comp in combos)
    one_node = space("gpt-1.7b", "dgx-a100-80gb", 8, 64, "tp=1", "pp=1")
    assert "hierarchical" not in {c.grad_sync for c in enumerate_configs(one_node)}, "no node boundary to exploit"


def test_published_configurations_are_in_the_space() -> None:
    """What experts ran (Korthikanti et al. 2022 Table 3; Megatron-LM README GPT-3 on 1024 A100)."""
    kor = space("gpt3-175b", "dgx-a100-80gb", 64, 64)
    want = ParallelConfig(dp=1, tp=8, pp=8, micro_batch_size=1, global_batch_size=64, seq_len=2048,
                          schedule="interleaved", virtual_stages=3, recompute="selective", sequence_parallel=True)
    assert want in set(enumerate_configs(kor))
    readme = space("gpt3-175b", "dgx-a100-80gb", 1024, 1536)
    want = ParallelConfig(dp=8, tp=8, pp=16, micro_batch_size=1, global_batch_size=1536, seq_len=2048,
                          schedule="1f1b", recompute="full")
    assert want in set(enumerate_configs(readme))


def test_schedule_rules() -> None:
    s = space("gpt3-175b", "dgx-a100-80gb", 64, 64, "tp=8", "pp=8", "micro_batch=1", "sp=true", "recompute=none")
    g = next(compute_groups(s))
    scheds = set(schedule_options(s, g))
    assert ("gpipe", 1) in scheds and ("1f1b", 1) in scheds and ("zbv", 2) in scheds
    assert {v for n, v in scheds if n == "interleaved"} == {2, 3, 4, 6, 12}, "v = 2 or pp x v dividing 96 layers"
    few = space("gpt3-175b", "dgx-a100-80gb", 64, 32, "tp=8", "pp=8", "micro_batch=8")  # 4 micro-batches < pp
    assert {n for n, _ in schedule_options(few, next(compute_groups(few)))} == {"gpipe"}
    assert list(sync_options(s, g)) == [sync for sync in sync_options(s, g)][:1], "dp = 1: nothing to sync"


@pytest.mark.parametrize("fixes,message", [
    (["tp=3"], "no tp x pp x dp layout"),
    (["dp=3"], "no tp x pp x dp layout"),
])
def test_explain_empty_names_the_reason(fixes, message) -> None:
    s = space("llama3.1-8b", "dgx-h100", 64, 512, *fixes)
    assert not list(enumerate_configs(s))
    err = explain_empty(s)
    assert isinstance(err, InfeasibleError) and message in str(err) and "\n" not in str(err)


def test_explain_empty_world_and_batch() -> None:
    prime = SearchSpace(PRESETS["llama3.1-8b"], resolve_cluster("cpu", gpus=37), 64)  # 37 divides neither
    msg = str(explain_empty(prime))
    assert not list(enumerate_configs(prime)) and "world size 37" in msg and "global batch 64" in msg
    odd = space("llama3.1-8b", "dgx-h100", 64, 37, "pp=1")
    assert not list(enumerate_configs(odd)) and "global batch 37" in str(explain_empty(odd))


@pytest.mark.parametrize("bad", ["tp", "tp=", "tp=0", "tp=x", "foo=1", "zero=4", "sp=maybe", "schedule=1f1b:2",
                                 "schedule=interleaved:1", "recompute=all", "compression=gzip"])
def test_bad_fixes_are_one_line_errors(bad: str) -> None:
    with pytest.raises(ConfigError) as e:
        parse_fixes([bad])
    assert "\n" not in str(e.value)


def test_fix_aliases_and_conflicts() -> None:
    c = parse_fixes(["mbs=2", "ac=sel", "sequence_parallel=yes", "schedule=zbv", "Zero_Stage=2"])
    assert c == Constraints(micro_batch=2, recompute="selective", sp=True, schedule="zbv", zero=2)
    with pytest.raises(ConfigError):
        parse_fixes(["tp=2", "tp=4"])
    with pytest.raises(ConfigError):
        parse_fixes(["schedule=1f1b", "vp=3"])
    assert parse_fixes(["tp=2", "tp=2"]).tp == 2
