"""ZeRO-2/3 under pipeline parallelism hold ZeRO-1's bytes (torch pipelining keeps FSDP parameters and
gradients unsharded across micro-batches), so the search leaves them out unless pinned."""

from __future__ import annotations

from planner.cluster_spec import resolve_cluster
from planner.cost import CostModel
from planner.cost.rank_memory import memory_zero_stage
from planner.model_presets import resolve_model
from planner.parallel_config import ParallelConfig

MODEL = resolve_model("gpt3-175b").replace(name="gpt3-24l", num_layers=24)


def _cfg(**kw) -> ParallelConfig:
    base = dict(dp=8, tp=8, pp=2, micro_batch_size=1, global_batch_size=64, seq_len=2048)
    base.update(kw)
    return ParallelConfig(**base)


def test_memory_zero_stage():
    assert memory_zero_stage(_cfg(zero_stage=3)) == 1          # pp 2, 8 micro-batches
    assert memory_zero_stage(_cfg(zero_stage=2)) == 1
    assert memory_zero_stage(_cfg(zero_stage=3, pp=1)) == 3
    assert memory_zero_stage(_cfg(zero_stage=3, global_batch_size=8, schedule="gpipe")) == 3  # one micro-batch
    assert memory_zero_stage(_cfg(zero_stage=1)) == 1


def test_pipelined_zero3_is_priced_with_unsharded_weights_and_gradients():
    cm = CostModel(MODEL, resolve_cluster("dgx-a100-80gb", gpus=128))
    z1 = cm.memory(_cfg(zero_stage=1)).memory_by_stage[0]
    z3 = cm.memory(_cfg(zero_stage=3)).memory_by_stage[0]
    assert z3.weights_bytes == z1.weights_bytes and z3.gradients_bytes == z1.gradients_bytes
    flat = cm.memory(_cfg(zero_stage=3, pp=1, dp=16)).memory_by_stage[0]
    assert flat.weights_bytes < z1.weights_bytes / 4
