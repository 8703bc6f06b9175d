"""Checkpoints with torch.distributed.checkpoint (DCP): save every N steps, resume, reshard.

Layout of one checkpoint: ``DIR/step_00000012/`` holding DCP's shard files and ``.metadata`` plus
``hybridplan.json`` (step, data-loader position, the plan it was written under, format version).

Atomic: every rank writes into ``DIR/.step_00000012.partial``; only after DCP has written its
``.metadata`` (which it does last, after all ranks finished) and rank 0 has written
``hybridplan.json`` (planner.io atomic write) is the directory renamed to its final name. A kill at
any moment leaves either no ``step_*`` directory or a complete one; ``latest`` ignores anything
else, so a restarted job resumes from the last complete checkpoint.

Safe loading: DCP's own ``.metadata`` is a pickle; the runtime never reads it. ``hybridplan.json``
carries the same metadata as JSON and ``runtime.dcp_safe`` feeds DCP from it, so a crafted
checkpoint cannot run code when loaded.

Resharding: parameters and optimizer state are saved under their global names as DTensors with
their TP / FSDP placements (runtime.state), so a checkpoint loads under any plan of the same model:
other degrees, another stage split, another ZeRO stage (DCP moves the slices). The optimizer type
must match (AdamW state does not become SGD state).
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException

from planner.errors import SpecError
from planner.io import atomic_write_json, read_json
from runtime.dcp_safe import JsonMetadataReader, TensorOnlyLoadPlanner, metadata_from_json, metadata_to_json
from runtime.optim import ensure_state
from runtime.state import model_state, optimizer_state, tied_copies

META_NAME = "hybridplan.json"
META_KIND = "hybridplan.checkpoint"
META_VERSION = 1
_STEP_DIR = re.compile(r"^step_(\d{8})$")


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def step_dir(root: str | Path, step: int) -> Path:
    return Path(root) / f"step_{step:08d}"


def is_complete(path: Path) -> bool:
    return (path / ".metadata").is_file() and (path / META_NAME).is_file()


def latest(root: str | Path) -> Path | None:
    """The newest complete checkpoint under ``root`` (None when there is none)."""
    root = Path(root)
    if not root.is_dir():
        return None
    found = sorted((int(m.group(1)), p) for p in root.iterdir()
                   if (m := _STEP_DIR.match(p.name)) and p.is_dir() and is_complete(p))
    return found[-1][1] if found else None


def save(engine, root: str | Path, before_commit: Callable[[], None] | None = None) -> Path:
    """Collective: every rank of the job calls it after the same optimizer step.

    ``before_commit`` runs on every rank after the data is written and before the checkpoint is
    committed (the fault-injection point ``checkpoint`` of runtime.faults); the commit waits for
    every rank to come back from it, so a rank lost there leaves no committed checkpoint."""
    step = engine.step_count
    final = step_dir(root, step)
    tmp = Path(root) / f".{final.name}.partial"
    if _rank() == 0:
        Path(root).mkdir(parents=True, exist_ok=True)
        shutil.rmtree(tmp, ignore_errors=True)  # a torn earlier attempt of the same step
    _barrier()
    state = {**model_state(engine.chunks), **optimizer_state(engine.chunks, engine.optimizer)}
    metadata = dcp.save(state, checkpoint_id=str(tmp))
    _barrier()
    if before_commit is not None:
        before_commit()
        _barrier()
    if _rank() == 0:
        atomic_write_json(tmp / META_NAME, {
            "kind": META_KIND, "version": META_VERSION, "step": step, "data": engine.loader.state_dict(),
            "plan_name": engine.plan.config.name, "plan_digest": engine.plan.digest,
            "world_size": engine.plan.config.world_size, "model": engine.plan.model.to_dict(),
            "optimizer": engine.options.optim.name, "dcp": metadata_to_json(metadata),
        })
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    _barrier()
    return final


def read_meta(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not is_complete(path):
        raise SpecError(f"{path} is not a complete hybridplan checkpoint (missing .metadata or {META_NAME})")
    meta = read_json(path / META_NAME, "checkpoint metadata")
    if not isinstance(meta, dict) or meta.get("kind") != META_KIND:
        raise SpecError(f"{path / META_NAME}: not hybridplan checkpoint metadata")
    if meta.get("version") != META_VERSION:
        raise SpecError(f"{path}: checkpoint format version {meta.get('version')!r} is not supported "
                        f"(expected {META_VERSION})")
    if not isinstance(meta.get("dcp"), dict):
        raise SpecError(f"{path / META_NAME}: the DCP metadata (JSON copy) is missing")
    if not isinstance(meta.get("data"), dict):
        raise SpecError(f"{path / META_NAME}: the data loader state ('data') is missing or not an object")
    step = meta.get("step")
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SpecError(f"{path}: checkpoint step must be a non-negative integer, got {step!r}")
    return meta


@torch.no_grad()
def load(engine, path: str | Path) -> int:
    """Load ``path`` into ``engine`` (any plan of the same model); returns the step it resumes after."""
    path = Path(path)
    meta = read_meta(path)
    if meta.get("model") != engine.plan.model.to_dict():
        raise SpecError(f"{path}: checkpoint was written for model {meta.get('model', {}).get('name')!r}, "
                        f"this plan trains {engine.plan.model.name!r} (or its numbers differ)")
    if meta.get("optimizer") != engine.options.optim.name:
        raise SpecError(f"{path}: checkpoint holds {meta.get('optimizer')} state, this run uses "
                        f"{engine.options.optim.name}")
    ensure_state(engine.optimizer)
    state = {**model_state(engine.chunks, for_load=True), **optimizer_state(engine.chunks, engine.optimizer)}
    metadata_from_json(meta["dcp"])  # a malformed JSON copy is a one-line SpecError before DCP starts
    try:
        dcp.load(state, storage_reader=JsonMetadataReader(str(path), meta["dcp"]), planner=TensorOnlyLoadPlanner())
    except CheckpointException as exc:  # a BaseException: would escape `except Exception` as a traceback
        last = next((line for line in reversed(str(exc).splitlines()) if line.strip()), type(exc).__name__)
        raise SpecError(f"{path}: cannot load checkpoint: {last.strip()[:300]}") from None
    for copy, source in tied_copies(engine.chunks):
        if source is not None:
            copy.data.copy_(source.data)
    engine.loader.load_state_dict(meta["data"])
    engine.step_count = meta["step"]
    _barrier()
    return meta["step"]
