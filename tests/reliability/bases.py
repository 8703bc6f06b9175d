"""Valid base documents the fuzz suite mutates: presets, the published HF configs, valid configs and plans.

Built once per session (cheap), so each generated input costs only its mutation and its parse.
"""

from __future__ import annotations

import functools
import itertools
import json
from typing import Any

from planner.cluster_spec import CLUSTER_PRESETS, ClusterSpec, resolve_cluster
from planner.errors import PlannerError
from planner.model_presets import PRESETS
from planner.model_spec import ModelSpec
from planner.parallel_config import SCHEDULES, ParallelConfig
from planner.plan import Plan
from tests.conftest import HF_CONFIGS


@functools.lru_cache(maxsize=None)
def model_dicts() -> tuple[dict[str, Any], ...]:
    return tuple(m.to_dict() for _, m in sorted(PRESETS.items()))


@functools.lru_cache(maxsize=None)
def hf_configs() -> tuple[tuple[str, dict[str, Any]], ...]:
    """(file name, parsed config) of every published HF config in the shared data."""
    files = sorted(HF_CONFIGS.glob("*.json"))
    if not files:
        raise RuntimeError(f"no HF configs found under {HF_CONFIGS}: the shared data must be present")
    return tuple((f.name, json.loads(f.read_text())) for f in files)


@functools.lru_cache(maxsize=None)
def cluster_dicts() -> tuple[dict[str, Any], ...]:
    out = [c.to_dict() for _, c in sorted(CLUSTER_PRESETS.items())]
    out.append(resolve_cluster("dgx-h100", gpus=64).to_dict())
    out.append(resolve_cluster("a100-25gbe", nodes=3).to_dict())
    return tuple(out)


SMALL_MODELS = ("tiny-gpt", "tiny-llama", "tiny-moe", "gpt2", "llama3.1-8b", "mixtral-8x7b", "gpt3-175b",
                "deepseek-v3", "qwen3-30b-a3b")


def _divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@functools.lru_cache(maxsize=None)
def valid_configs() -> tuple[tuple[str, int, dict[str, Any]], ...]:
    """(model preset, world size, ParallelConfig dict) triples that validate: bases for config and plan fuzzing."""
    out = []
    for name, world in itertools.product(SMALL_MODELS, (1, 2, 4, 8, 16)):
        model = PRESETS[name]
        for tp, pp in itertools.product(_divisors(world), _divisors(world)):
            if world % (tp * pp):
                continue
            dp = world // (tp * pp)
            for schedule, v in (("1f1b", 1), ("gpipe", 1), ("interleaved", 2), ("zbv", 2)):
                if pp == 1 and v != 1:
                    continue
                ep = 2 if model.is_moe and (tp * dp) % 2 == 0 and model.num_experts % 2 == 0 else 1
                d = dict(dp=dp, tp=tp, pp=pp, micro_batch_size=1, global_batch_size=dp * pp * 2,
                         seq_len=model.seq_len, ep=ep, schedule=schedule, virtual_stages=v,
                         recompute="selective" if pp > 1 else "none", zero_stage=1 if dp > 1 else 0)
                try:
                    ParallelConfig.from_dict(d).validate_for(model, world)
                except PlannerError:
                    continue
                out.append((name, world, d))
    assert len(out) > 50, "too few valid base configurations"
    return tuple(out)


def cluster_for(model_name: str, world: int) -> ClusterSpec:
    return resolve_cluster("cpu" if PRESETS[model_name].num_layers <= 4 else "dgx-h100", gpus=world)


@functools.lru_cache(maxsize=None)
def valid_plans() -> tuple[dict[str, Any], ...]:
    """Plan documents exactly as the planner writes them (to_dict), across models, degrees and schedules."""
    plans = []
    for i, (name, world, d) in enumerate(valid_configs()):
        if i % 3:
            continue  # a third of the configurations give plenty of variety
        model = PRESETS[name]
        plan = Plan.build(model, cluster_for(name, world), ParallelConfig.from_dict(d),
                          predicted={"step_time_s": 1.5, "peak_memory_bytes": 123},
                          provenance={"command": "fuzz base"})
        plans.append(json.loads(json.dumps(plan.to_dict())))
    return tuple(plans)


def spec_round_trips(model: ModelSpec) -> bool:
    return ModelSpec.from_dict(json.loads(json.dumps(model.to_dict()))) == model


@functools.lru_cache(maxsize=None)
def profile_docs() -> tuple[dict[str, Any], ...]:
    """Profile documents as the profiler writes them (Profile.to_dict), built from synthetic measurements."""
    from planner.profile import BlockRecord, CollectiveSample, DeviceRate, Profile, ProfileHeader

    docs = []
    for conc, sp in ((2, False), (4, True)):
        header = ProfileHeader(device="fuzz-cpu", backend="gloo", torch_version="2.13.0", world_size=conc,
                               devices_per_node=conc, date="2025-01-01T00:00:00Z", host="h")
        blocks = tuple(BlockRecord(model="tiny-llama", block_kind=k, tp=tp, micro_batch=mb, seq_len=32,
                                   sequence_parallel=sp, forward_s=1e-3 * mb * (i + 1), backward_s=2e-3 * mb * (i + 1),
                                   recompute_s=1.1e-3 * mb, repeats=3, concurrency=conc)
                       for i, k in enumerate(("embedding", "attention", "mlp", "head")) for tp in (1, 2)
                       for mb in (1, 4))
        samples = tuple(CollectiveSample(op=op, group_size=g, link_level="intra_node", nbytes=n,
                                         time_s=5e-5 + 1e-9 * n * g, concurrency=conc)
                        for op in ("all_reduce", "send_recv") for g in (2,) for n in (1e3, 1e5, 1e6))
        rates = (DeviceRate("matmul_fp32", 3e10, conc),)
        p = Profile(header=header, blocks=blocks, collectives=samples, device_rates=rates,
                    models={"tiny-llama": PRESETS["tiny-llama"].to_dict()})
        docs.append(json.loads(json.dumps(p.to_dict())))
    return tuple(docs)


@functools.lru_cache(maxsize=None)
def trace_cases() -> tuple[tuple[dict[str, Any], dict[str, Any]], ...]:
    """(plan document, its predicted trace) pairs: the trace stands in for a measured one (same schema)."""
    from planner.commands.compare import predicted_trace_for

    out = []
    for doc in valid_plans():
        if doc["model"]["num_layers"] > 4 or len(out) >= 6 or doc["world_size"] > 8:
            continue
        plan = Plan.from_dict(doc)
        out.append((doc, json.loads(json.dumps(predicted_trace_for(plan)))))
    assert out, "no small plan to build traces from"
    return tuple(out)
