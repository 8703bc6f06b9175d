"""Exports for torchtitan and Megatron-LM: the flags say what the plan says, including uneven splits."""

from __future__ import annotations

import re
import subprocess
import tomllib

import pytest

from planner.cluster_spec import CLUSTER_PRESETS
from planner.model_presets import PRESETS
from planner.parallel_config import ParallelConfig
from planner.plan import Plan
from planner.report.exports import (TORCHTITAN_SCHEDULES, export_files, megatron_export, megatron_layout,
                                    module_fqns_per_model_part, torchtitan_export)

LLAMA70 = PRESETS["llama3.1-70b"]
H100_64 = CLUSTER_PRESETS["dgx-h100"].with_world(gpus=64)


def plan(**kw) -> Plan:
    base = dict(dp=2, tp=8, pp=4, micro_batch_size=1, global_batch_size=64, seq_len=8192)
    base.update(kw)
    return Plan.build(LLAMA70, H100_64, ParallelConfig(**base))


def parse_layout(layout: str) -> list[tuple[bool, int, bool]]:
    """Independent reading of Megatron's grammar: per chunk (has E, number of t, has L)."""
    s = re.sub(r"\(([^()]*)\)\*(\d+)", lambda mo: mo.group(1) * int(mo.group(2)), layout)
    s = re.sub(r"([EtL])\*(\d+)", lambda mo: mo.group(1) * int(mo.group(2)), s)
    return [("E" in c, c.count("t"), "L" in c) for c in s.split("|")]


def arg_value(args: tuple[str, ...], flag: str) -> str | None:
    for a in args:
        if a == flag:
            return ""
        if a.startswith(flag + " "):
            return a[len(flag) + 1:]
    return None


def test_uneven_split_goes_into_megatron_layout_and_torchtitan_fqns() -> None:
    p = plan(stage_layers=(18, 21, 21, 20))
    layout = megatron_layout(p.model, p.config)
    assert parse_layout(layout) == [(True, 18, False), (False, 21, False), (False, 21, False), (False, 20, True)]
    args = megatron_export(p).args
    assert arg_value(args, "--pipeline-model-parallel-layout") == f"'{layout}'"
    assert arg_value(args, "--tensor-model-parallel-size") == "8"
    assert arg_value(args, "--pipeline-model-parallel-size") == "4"
    parts = module_fqns_per_model_part(p.model, p.config)
    assert [len([n for n in part if n.startswith("layers.")]) for part in parts] == [18, 21, 21, 20]
    flat = [n for part in parts for n in part]
    assert flat == ["tok_embeddings", *[f"layers.{i}" for i in range(80)], "norm", "output"]
    tt = torchtitan_export(p)
    toml = tomllib.loads(tt.config_text)
    assert toml["parallelism"]["module_fqns_per_model_part"] == parts
    assert toml["parallelism"]["pipeline_parallel_degree"] == 4
    assert toml["parallelism"]["tensor_parallel_degree"] == 8
    assert toml["parallelism"]["data_parallel_replicate_degree"] == 2  # ZeRO-0: DDP replicas
    assert toml["parallelism"]["data_parallel_shard_degree"] == 1
    # 64 sequences over dp 2 -> 32 per replica = 32 micro-batches of 1
    assert toml["training"]["local_batch_size"] == 32
    assert toml["parallelism"]["pipeline_parallel_microbatch_size"] == 1


def test_even_interleaved_uses_layers_per_virtual_stage() -> None:
    p = plan(schedule="interleaved", virtual_stages=2, global_batch_size=64)  # 80 layers / 8 chunks = 10
    args = megatron_export(p).args
    assert arg_value(args, "--num-layers-per-virtual-pipeline-stage") == "10"
    assert arg_value(args, "--pipeline-model-parallel-layout") is None
    assert arg_value(torchtitan_export(p).args, "--parallelism.pipeline_parallel_schedule") == "Interleaved1F1B"


def test_knobs_map_to_flags() -> None:
    p = plan(recompute="selective", sequence_parallel=True, zero_stage=1)
    mg = megatron_export(p).args
    for flag in ("--sequence-parallel", "--use-distributed-optimizer", "--swiglu", "--group-query-attention",
                 "--untie-embeddings-and-output-weights", "--disable-bias-linear", "--bf16"):
        assert arg_value(mg, flag) == "", flag
    assert arg_value(mg, "--recompute-granularity") == "selective"
    assert arg_value(mg, "--num-query-groups") == "8"
    assert arg_value(mg, "--micro-batch-size") == "1" and arg_value(mg, "--global-batch-size") == "64"
    tt = torchtitan_export(p)
    assert arg_value(tt.args, "--activation_checkpoint.mode") == "selective"
    assert arg_value(tt.args, "--parallelism.data_parallel_shard_degree") == "2"
    assert arg_value(tt.args, "--model.flavor") == "70B"
    assert any("ZeRO-1" in n for n in tt.notes)  # inexact mapping is said, not hidden
    z3 = megatron_export(plan(zero_stage=3)).args
    assert arg_value(z3, "--data-parallel-sharding-strategy") == "optim_grads_params"
    full = megatron_export(plan(stage_recompute_layers=(2, 2, 1, 0))).args
    assert arg_value(full, "--recompute-method") == "block" and arg_value(full, "--recompute-num-layers") == "2"


def test_moe_expert_parallel_flags() -> None:
    moe = PRESETS["mixtral-8x7b"]
    cfg = ParallelConfig(dp=8, tp=1, pp=1, ep=8, micro_batch_size=1, global_batch_size=64, seq_len=4096,
                         zero_stage=3)
    p = Plan.build(moe, CLUSTER_PRESETS["dgx-h100"], cfg)
    assert arg_value(megatron_export(p).args, "--expert-model-parallel-size") == "8"
    assert arg_value(megatron_export(p).args, "--num-experts") == "8"
    assert arg_value(torchtitan_export(p).args, "--parallelism.expert_parallel_degree") == "8"


@pytest.mark.parametrize("ours", sorted(TORCHTITAN_SCHEDULES))
def test_schedule_names_are_torch_schedule_classes(ours: str) -> None:
    from torch.distributed.pipelining.schedules import get_schedule_class

    assert get_schedule_class(TORCHTITAN_SCHEDULES[ours]) is not None


def test_shell_files_source_cleanly(tmp_path) -> None:
    files = export_files(plan(stage_layers=(18, 21, 21, 20), recompute="full"))
    assert set(files) == {"torchtitan_args.sh", "megatron_args.sh", "torchtitan.toml"}
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    out = subprocess.run(["bash", "-c", 'source megatron_args.sh && printf "%s\\n" "${MEGATRON_ARGS[@]}"'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    i = out.index("--pipeline-model-parallel-layout")
    assert out[i + 1] == "Et*18|t*21|t*21|t*20L"  # one word, quoting survives the shell
    assert "--recompute-granularity" in out and out[out.index("--recompute-granularity") + 1] == "full"
    out = subprocess.run(["bash", "-c", 'source torchtitan_args.sh && printf "%s\\n" "${TORCHTITAN_ARGS[@]}"'],
                         cwd=tmp_path, capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[out.index("--parallelism.pipeline_parallel_degree") + 1] == "4"
