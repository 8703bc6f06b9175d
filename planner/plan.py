"""Plan: the decision, fully, as a versioned JSON file the runtime executes and a person can read.

The source of truth for every decision is ``config`` (a ParallelConfig); ``stages`` and
``expert_placement`` are written out explicitly so a reader (or the runtime) never re-derives
them, and they are checked against ``config`` on load. ``inputs_digest`` is a SHA-256 over the
model, cluster and config: a hand-edited plan whose decisions no longer match its digest is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planner.cluster_spec import ClusterSpec
from planner.errors import SpecError, PlannerError
from planner.model_spec import ModelSpec
from planner.parallel_config import ParallelConfig
from planner.rank_order import RANK_ORDER_NAME

SCHEMA_VERSION = 1
PLAN_KIND = "hybridplan.plan"


@dataclass(frozen=True)
class StagePlan:
    """One model chunk: which layers, where it runs, how it recomputes, what it is predicted to cost."""

    chunk: int
    pp_rank: int
    first_layer: int
    last_layer: int
    """Exclusive."""
    has_embedding: bool
    has_head: bool
    recompute: str
    full_recompute_layers: int = 0
    predicted_time_s: float = 0.0
    """Forward + backward compute of one micro-batch on this chunk."""
    predicted_memory_bytes: int = 0
    """Peak memory of the pipeline rank holding this chunk (all its chunks together)."""

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def default_expert_placement(model: ModelSpec, ep: int) -> list[list[int]]:
    """Contiguous blocks: EP rank i holds experts [i*E/ep, (i+1)*E/ep) (Megatron / torchtitan default)."""
    if not model.is_moe:
        return []
    per = model.num_experts // ep
    return [list(range(i * per, (i + 1) * per)) for i in range(ep)]


def stages_for(model: ModelSpec, config: ParallelConfig, chunk_times_s: list[float] | None = None,
               rank_memory_bytes: list[int] | None = None) -> list[StagePlan]:
    ranges = config.chunk_layer_ranges(model)
    recompute_layers = config.stage_recompute_layers or (0,) * config.num_chunks
    out = []
    for c, (a, b) in enumerate(ranges):
        pp_rank = ParallelConfig.chunk_to_pp_rank(c, config.pp, config.schedule)
        out.append(StagePlan(
            chunk=c, pp_rank=pp_rank, first_layer=a, last_layer=b, has_embedding=c == 0,
            has_head=c == config.num_chunks - 1, recompute=config.recompute,
            full_recompute_layers=recompute_layers[c],
            predicted_time_s=chunk_times_s[c] if chunk_times_s else 0.0,
            predicted_memory_bytes=int(rank_memory_bytes[pp_rank]) if rank_memory_bytes else 0))
    return out


def inputs_digest(model: ModelSpec, cluster: ClusterSpec, config: ParallelConfig,
                  expert_placement: list[list[int]] | None = None) -> str:
    payload = {"model": model.to_dict(), "cluster": cluster.to_dict(), "config": config.to_dict(),
               "expert_placement": expert_placement or []}
    blob = json.dumps(payload, sort_keys=True, separators=(",", ":")).encode()
    return "sha256:" + hashlib.sha256(blob).hexdigest()


@dataclass(frozen=True)
class Plan:
    model: ModelSpec
    cluster: ClusterSpec
    config: ParallelConfig
    stages: tuple[StagePlan, ...]
    expert_placement: tuple[tuple[int, ...], ...] = ()
    """Per EP rank (within one EP group), the routed experts it holds; replicated across EP groups."""
    predicted: dict[str, Any] = field(default_factory=dict)
    """Cost-model outputs: step_time_s, tflops_per_gpu, mfu, peak_memory_bytes, memory_by_stage, breakdown."""
    provenance: dict[str, Any] = field(default_factory=dict)
    """How it was made: command line, tool version, profile used, solver status and gap."""

    @classmethod
    def build(cls, model: ModelSpec, cluster: ClusterSpec, config: ParallelConfig, *,
              predicted: dict[str, Any] | None = None, provenance: dict[str, Any] | None = None,
              chunk_times_s: list[float] | None = None, rank_memory_bytes: list[int] | None = None,
              expert_placement: list[list[int]] | None = None) -> "Plan":
        config.validate_for(model, cluster.world_size)
        placement = expert_placement if expert_placement is not None else default_expert_placement(model, config.ep)
        return cls(model=model, cluster=cluster, config=config,
                   stages=tuple(stages_for(model, config, chunk_times_s, rank_memory_bytes)),
                   expert_placement=tuple(tuple(p) for p in placement),
                   predicted=dict(predicted or {}), provenance=dict(provenance or {}))

    @property
    def digest(self) -> str:
        return inputs_digest(self.model, self.cluster, self.config, [list(p) for p in self.expert_placement])

    def to_dict(self) -> dict[str, Any]:
        c = self.config
        return {
            "kind": PLAN_KIND,
            "schema_version": SCHEMA_VERSION,
            "name": c.name,
            "inputs_digest": self.digest,
            "world_size": c.world_size,
            "rank_order": RANK_ORDER_NAME,
            "degrees": {"dp": c.dp, "tp": c.tp, "pp": c.pp, "ep": c.ep},
            "model": self.model.to_dict(),
            "cluster": self.cluster.to_dict(),
            "config": c.to_dict(),
            "stages": [s.to_dict() for s in self.stages],
            "expert_placement": [list(p) for p in self.expert_placement],
            "predicted": self.predicted,
            "provenance": self.provenance,
        }

    def save(self, path: str | Path) -> Path:
        from planner.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "plan", *, check_digest: bool = True) -> "Plan":
        if not isinstance(data, dict):
            raise SpecError(f"{source}: a plan must be a JSON object")
        if data.get("kind") != PLAN_KIND:
            raise SpecError(f"{source}: not a hybridplan plan (kind={data.get('kind')!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"{source}: plan schema version {version!r} is not supported (this tool reads "
                            f"version {SCHEMA_VERSION}); re-run `python -m planner search`")
        for key in ("model", "cluster", "config", "stages", "inputs_digest"):
            if key not in data:
                raise SpecError(f"{source}: missing required field {key!r}")
        for key in ("predicted", "provenance"):
            if data.get(key) is not None and not isinstance(data[key], dict):
                raise SpecError(f"{source}: {key} must be an object, got {type(data[key]).__name__}")
        try:
            model = ModelSpec.from_dict(data["model"], f"{source}: model")
            cluster = ClusterSpec.from_dict(data["cluster"], f"{source}: cluster")
            config = ParallelConfig.from_dict(data["config"], f"{source}: config")
            placement = data.get("expert_placement") or []
            if not isinstance(placement, list) or not all(
                    isinstance(p, list) and all(isinstance(e, int) and not isinstance(e, bool) for e in p)
                    for p in placement):
                raise SpecError(f"{source}: expert_placement must be a list of lists of expert ids")
            chunk_times_s, rank_memory_bytes = _stage_predictions(data["stages"], config, source)
            plan = cls.build(model, cluster, config, predicted=data.get("predicted") or {},
                             provenance=data.get("provenance") or {}, expert_placement=placement,
                             chunk_times_s=chunk_times_s, rank_memory_bytes=rank_memory_bytes)
        except TypeError as exc:
            raise SpecError(f"{source}: malformed plan ({exc})") from None
        except PlannerError as exc:
            raise SpecError(f"{source}: {exc}") from None
        _check_stages(plan, data["stages"], source)
        _check_placement(plan, source)
        if check_digest and data["inputs_digest"] != plan.digest:
            raise SpecError(f"{source}: inputs_digest does not match the plan's model, cluster and config "
                            "(edited by hand?); re-run `python -m planner search`")
        _check_summary(plan, data, source)
        return plan

    @classmethod
    def load(cls, path: str | Path, *, check_digest: bool = True) -> "Plan":
        from planner.io import read_json

        return cls.from_dict(read_json(path, "plan file"), str(path), check_digest=check_digest)


def _stage_predictions(stages: Any, config: ParallelConfig, source: str) -> tuple[list[float] | None, list[int] | None]:
    """The per-stage predictions written in ``stages`` (not decisions, so not in the digest), kept on load so a
    loaded plan says what the saved one said. Malformed tables are left to _check_stages to refuse."""
    if not isinstance(stages, list) or len(stages) != config.num_chunks or not all(isinstance(s, dict) for s in stages):
        return None, None
    times, memory = [], [0] * config.pp
    for i, s in enumerate(stages):
        t, m, r = s.get("predicted_time_s", 0.0), s.get("predicted_memory_bytes", 0), s.get("pp_rank")
        for name, v in (("predicted_time_s", t), ("predicted_memory_bytes", m)):
            if not _finite_non_negative(v):
                raise SpecError(f"{source}: stage {i} {name} must be a finite number >= 0, got {v!r}")
        times.append(float(t))
        if isinstance(r, int) and not isinstance(r, bool) and 0 <= r < config.pp:
            memory[r] = int(m)
    return times, memory


def _finite_non_negative(v: Any) -> bool:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and v >= 0
    except OverflowError:  # an integer beyond float range
        return False


def _check_stages(plan: Plan, stages: Any, source: str) -> None:
    """The written stage table must say exactly what the config says (covers every layer once)."""
    if not isinstance(stages, list) or len(stages) != len(plan.stages):
        raise SpecError(f"{source}: stages must list {len(plan.stages)} model chunks")
    for want, got in zip(plan.stages, stages):
        if not isinstance(got, dict):
            raise SpecError(f"{source}: stage {want.chunk} must be an object")
        for k in ("first_layer", "last_layer", "pp_rank"):
            if got.get(k) != getattr(want, k):
                raise SpecError(f"{source}: stage {want.chunk} {k}={got.get(k)!r} disagrees with config "
                                f"({getattr(want, k)})")


def _check_summary(plan: Plan, data: dict, source: str) -> None:
    """The readable summary keys (name, world_size, rank_order, degrees) are written for people and other
    tools; a hand edit there would be silently ignored, so it must agree with ``config`` or be refused."""
    want = plan.to_dict()
    for key in ("name", "world_size", "rank_order", "degrees"):
        if key in data and data[key] != want[key]:
            raise SpecError(f"{source}: {key}={data[key]!r} disagrees with the plan's config ({want[key]!r}); "
                            "edit config (and re-run `python -m planner search`), not the summary")


def _check_placement(plan: Plan, source: str) -> None:
    if not plan.model.is_moe:
        if plan.expert_placement:
            raise SpecError(f"{source}: expert_placement given for a dense model")
        return
    flat = sorted(e for p in plan.expert_placement for e in p)
    if len(plan.expert_placement) != plan.config.ep:
        raise SpecError(f"{source}: expert_placement has {len(plan.expert_placement)} ranks, ep is {plan.config.ep}")
    if flat != list(range(plan.model.num_experts)) and not set(flat) >= set(range(plan.model.num_experts)):
        raise SpecError(f"{source}: expert_placement must place every expert 0..{plan.model.num_experts - 1}")
    if any(not isinstance(e, int) or not 0 <= e < plan.model.num_experts for e in flat):
        raise SpecError(f"{source}: expert_placement names an expert outside 0..{plan.model.num_experts - 1}")
