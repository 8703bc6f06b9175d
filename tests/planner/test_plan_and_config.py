"""ParallelConfig validation, Plan JSON round trip, digest and hand-edit detection, cluster specs."""

from __future__ import annotations

import json

import pytest

from planner.cluster_spec import CLUSTER_PRESETS, ClusterSpec, resolve_cluster
from planner.errors import ConfigError, SpecError
from planner.io import atomic_write_text, staged_directory
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig, even_split
from planner.plan import Plan


def cfg(**kw) -> ParallelConfig:
    base = dict(dp=2, tp=2, pp=2, micro_batch_size=1, global_batch_size=8, seq_len=32)
    base.update(kw)
    return ParallelConfig(**base)


def test_config_derived_numbers_and_name() -> None:
    c = cfg(schedule="interleaved", virtual_stages=2, recompute="selective", sequence_parallel=True)
    assert c.world_size == 8 and c.num_micro_batches == 4 and c.num_chunks == 4
    assert c.name == "tp2_pp2_dp2_mbs1_vp2_ac-sel_sp"
    assert [ParallelConfig.chunk_to_pp_rank(i, 2, "interleaved") for i in range(4)] == [0, 1, 0, 1]
    assert [ParallelConfig.chunk_to_pp_rank(i, 2, "zbv") for i in range(4)] == [0, 1, 1, 0]


@pytest.mark.parametrize("kw, needle", [
    (dict(global_batch_size=7), "not divisible"),
    (dict(schedule="interleaved", virtual_stages=2, global_batch_size=6, micro_batch_size=1), "multiple of pp"),
    (dict(global_batch_size=2), "at least as many micro-batches"),
    (dict(schedule="1f1b", virtual_stages=2), "interleaved"),
    (dict(zero_stage=4), "zero stage"),
    (dict(ep=3), "expert parallel degree 3"),
    (dict(schedule="bogus"), "schedule must be one of"),
    (dict(stage_layers=(1, 2, 3)), "expected pp x virtual_stages"),
])
def test_invalid_configs_raise_one_line(kw, needle) -> None:
    with pytest.raises(ConfigError, match=needle):
        cfg(**kw)


def test_validate_for_model() -> None:
    m = PRESETS["tiny-llama"]  # 4 heads, 2 kv heads, 4 layers
    cfg().validate_for(m, 8)
    with pytest.raises(ConfigError, match="does not divide 2 key/value heads"):
        cfg(tp=4, dp=1).validate_for(m, 8)
    with pytest.raises(ConfigError, match="world size 4"):
        cfg().validate_for(m, 4)
    with pytest.raises(ConfigError, match="sum to 5"):
        cfg(stage_layers=(2, 3)).validate_for(m, 8)


def test_even_split_covers_all_layers_and_favours_middle() -> None:
    assert even_split(10, 4) == (2, 3, 3, 2)
    assert even_split(8, 4) == (2, 2, 2, 2)
    for n in range(1, 40):
        for k in range(1, n + 1):
            s = even_split(n, k)
            assert sum(s) == n and max(s) - min(s) <= 1


def test_plan_round_trip_and_digest(tmp_path) -> None:
    model, cluster = PRESETS["tiny-moe"], resolve_cluster("cpu", gpus=8)
    plan = Plan.build(model, cluster, cfg(ep=2, stage_layers=(1, 3)), predicted={"step_time_s": 1.0})
    assert plan.expert_placement == ((0, 1), (2, 3))
    assert [(s.first_layer, s.last_layer) for s in plan.stages] == [(0, 1), (1, 4)]
    path = plan.save(tmp_path / "plan.json")
    again = Plan.load(path)
    assert again == plan and again.digest == plan.digest
    data = json.loads(path.read_text())
    data["config"]["tp"] = 1
    data["config"]["dp"] = 4
    path.write_text(json.dumps(data))
    with pytest.raises(SpecError, match="inputs_digest does not match"):
        Plan.load(path)


@pytest.mark.parametrize("mutate, needle", [
    (lambda d: d.update(schema_version=99), "schema version 99"),
    (lambda d: d.pop("config"), "missing required field 'config'"),
    (lambda d: d.update(kind="other"), "not a hybridplan plan"),
    (lambda d: d["stages"][0].update(last_layer=3), "disagrees with config"),
    (lambda d: d.update(expert_placement=[[0], [1]]), "expert_placement"),
])
def test_bad_plans_are_refused(tmp_path, mutate, needle) -> None:
    plan = Plan.build(PRESETS["tiny-moe"], resolve_cluster("cpu", gpus=8), cfg(ep=2))
    d = plan.to_dict()
    mutate(d)
    p = tmp_path / "plan.json"
    p.write_text(json.dumps(d))
    with pytest.raises(SpecError, match=needle):
        Plan.load(p)


def test_truncated_plan_file(tmp_path) -> None:
    p = tmp_path / "plan.json"
    text = json.dumps(Plan.build(PRESETS["tiny-gpt"], resolve_cluster("cpu", gpus=8), cfg()).to_dict())
    p.write_text(text[: len(text) // 2])
    with pytest.raises(SpecError, match="not valid JSON"):
        Plan.load(p)


def test_cluster_presets_and_file_round_trip(tmp_path) -> None:
    c = resolve_cluster("dgx-a100-80gb", gpus=1024)
    assert c.num_nodes == 128 and c.world_size == 1024
    assert resolve_cluster("dgx-h100", gpus=4).world_size == 4
    assert resolve_cluster("cpu", gpus=6).devices_per_node == 6
    with pytest.raises(SpecError, match="not a whole number"):
        resolve_cluster("dgx-h100", gpus=12)
    p = tmp_path / "c.json"
    p.write_text(json.dumps(CLUSTER_PRESETS["hgx-h800"].to_dict()))
    assert resolve_cluster(str(p)) == CLUSTER_PRESETS["hgx-h800"]
    y = tmp_path / "c.yaml"
    y.write_text("name: x\ndevices_per_node: 4\ndevice: {name: d, peak_flops: {bf16: 1e14}, memory_bytes: 1e10}\n"
                 "links:\n  - {name: intra_node, bandwidth_bytes_per_s: 1e11, latency_s: 1e-6}\n")
    assert resolve_cluster(str(y)).world_size == 4


@pytest.mark.parametrize("data, needle", [
    ({"devices_per_node": 8, "device": {"peak_flops": {"bf16": 1}, "memory_bytes": 1}}, "links"),
    ({"devices_per_node": 0, "device": {"peak_flops": {"bf16": 1}, "memory_bytes": 1},
      "links": [{"bandwidth_bytes_per_s": 1}]}, "devices_per_node"),
    ({"devices_per_node": 2, "num_nodes": 2, "device": {"peak_flops": {"bf16": 1}, "memory_bytes": 1},
      "links": [{"bandwidth_bytes_per_s": 1}]}, "inter-node"),
    ({"devices_per_node": 2, "device": {"peak_flops": {"bf16": -1}, "memory_bytes": 1},
      "links": [{"bandwidth_bytes_per_s": 1}]}, "peak_flops"),
    ([1, 2], "expected a mapping"),
])
def test_bad_cluster_files(data, needle) -> None:
    with pytest.raises(SpecError, match=needle):
        ClusterSpec.from_dict(data, "c.json")


def test_atomic_write_keeps_old_file_on_failure(tmp_path, monkeypatch) -> None:
    p = tmp_path / "f.txt"
    atomic_write_text(p, "old")
    import os

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(p, "new")
    monkeypatch.undo()
    assert p.read_text() == "old"
    assert [x.name for x in tmp_path.iterdir()] == ["f.txt"]


def test_staged_directory_all_or_nothing(tmp_path) -> None:
    out = tmp_path / "run"
    with staged_directory(out) as d:
        (d / "a.txt").write_text("1")
    assert (out / "a.txt").read_text() == "1"
    with pytest.raises(RuntimeError):
        with staged_directory(out) as d:
            (d / "b.txt").write_text("2")
            raise RuntimeError("fail mid-way")
    assert sorted(x.name for x in out.iterdir()) == ["a.txt"]
    assert [x.name for x in tmp_path.iterdir()] == ["run"]
