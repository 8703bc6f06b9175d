"""DCP checkpoints: a resumed run continues bit-identically; a checkpoint reloads under another plan.

Bit-identical: CPU kernels are deterministic and the resumed engine holds exactly the saved
parameters, optimizer state (AdamW moments and step) and data position, so the next step's loss
must be equal with ``==``, not merely close.
Resharding: the other plan sums in another order (other TP / DP / PP degrees), so the next loss is
compared within the float64 equivalence tolerance (tests/runtime/test_equivalence.py).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from planner.errors import SpecError
from runtime import checkpoint
from runtime.engine import Engine, RunOptions
from runtime.local_launch import launch
from runtime.optim import OptimConfig
from runtime.state import full_params
from tests.runtime.helpers import make_plan

OPTS = RunOptions(dtype="fp64", optim=OptimConfig("adamw", lr=1e-2))
RESHARD_TOL = 1e-9  # float64, different summation order only (see test_equivalence.py)


def _continuous_then_resume(plan, root: str) -> dict:
    a = Engine(plan, OPTS)
    losses = [a.train_step().loss for _ in range(3)]
    checkpoint.save(a, root)
    losses.append(a.train_step().loss)
    full_a = full_params(a.chunks)
    b = Engine(plan, OPTS)
    resumed_at = checkpoint.load(b, checkpoint.latest(root))
    loss_b = b.train_step().loss
    full_b = full_params(b.chunks)
    same = all(torch.equal(full_a[k], full_b[k]) for k in full_a)
    return {"losses": losses, "resumed_at": resumed_at, "loss_b": loss_b, "params_equal": same,
            "position": b.loader.position}


@pytest.mark.slow
@pytest.mark.parametrize("model, config", [
    ("tiny-llama", dict(dp=2, tp=2, zero_stage=1)),          # TP shards localised for DDP, sharded AdamW state
    ("tiny-gpt", dict(dp=2, pp=2, zero_stage=3)),             # FSDP2 + pipeline + tied embedding copy
], ids=["dp2xtp2-zero1", "dp2xpp2-zero3-tied"])
def test_resume_is_bit_identical(tmp_path: Path, model: str, config: dict) -> None:
    plan = make_plan(model, **config)
    root = str(tmp_path / "ckpt")
    for r in launch(_continuous_then_resume, plan.config.world_size, plan, root, timeout_s=240):
        assert r["resumed_at"] == 3
        assert r["loss_b"] == r["losses"][3], (r["loss_b"], r["losses"][3])
        assert r["params_equal"]
        assert r["position"] == 4 * plan.config.global_batch_size  # data position restored, then advanced
    ck = checkpoint.latest(root)
    assert ck is not None and ck.name == "step_00000003"
    assert json.loads((ck / checkpoint.META_NAME).read_text())["data"] == {"position": 24}
    assert not [p for p in Path(root).iterdir() if p.name.endswith(".partial")]


def _save_after(plan, root: str, steps: int) -> list[float]:
    e = Engine(plan, OPTS)
    losses = [e.train_step().loss for _ in range(steps)]
    checkpoint.save(e, root)
    losses.append(e.train_step().loss)  # the continuous run's next step
    return losses


def _load_and_step(plan, path: str) -> float:
    e = Engine(plan, OPTS)
    checkpoint.load(e, path)
    return e.train_step().loss


@pytest.mark.slow
@pytest.mark.parametrize("src, dst", [
    (dict(dp=2, tp=2, zero_stage=3, sequence_parallel=True), dict(pp=2, stage_layers=(1, 3))),
    (dict(tp=2, pp=2, schedule="interleaved", virtual_stages=2), dict(dp=2, zero_stage=1)),
], ids=["fsdp2xtp2-to-pp2-uneven", "tp2xpp2-interleaved-to-zero1"])
def test_resume_under_a_different_plan(tmp_path: Path, src: dict, dst: dict) -> None:
    a, b = make_plan("tiny-llama", **src), make_plan("tiny-llama", **dst)
    root = tmp_path / "ckpt"
    continuous = launch(_save_after, a.config.world_size, a, str(root), 2, timeout_s=240)[0]
    resumed = launch(_load_and_step, b.config.world_size, b, str(checkpoint.latest(root)), timeout_s=240)
    for loss in resumed:
        assert abs(loss - continuous[2]) <= RESHARD_TOL, (loss, continuous[2])


def test_incomplete_checkpoints_are_ignored(tmp_path: Path) -> None:
    good = tmp_path / "step_00000002"
    good.mkdir()
    (good / ".metadata").write_bytes(b"x")
    (good / checkpoint.META_NAME).write_text("{}")
    torn = tmp_path / "step_00000004"  # killed before its metadata was complete
    torn.mkdir()
    (torn / ".metadata").write_bytes(b"x")
    (tmp_path / ".step_00000006.partial").mkdir()
    assert checkpoint.latest(tmp_path) == good
    assert checkpoint.latest(tmp_path / "missing") is None
    with pytest.raises(SpecError, match="not a complete hybridplan checkpoint"):
        checkpoint.read_meta(torn)
    with pytest.raises(SpecError, match="not hybridplan checkpoint metadata"):
        checkpoint.read_meta(good)
