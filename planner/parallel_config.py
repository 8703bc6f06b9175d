"""ParallelConfig: one fully specified way to train a model; what the cost model prices and a plan holds.

A configuration is checked against the model and the world here, once, so the cost model,
the search and the runtime can assume it is consistent.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from planner.cluster_spec import _finite as _finite_number
from planner.errors import ConfigError
from planner.model_spec import ModelSpec
from planner.rank_order import Degrees

SCHEDULES = ("gpipe", "1f1b", "interleaved", "zbv")
"""gpipe / 1f1b: one model chunk per pipeline rank; interleaved: Narayanan et al. 2021 interleaved 1F1B
with ``virtual_stages`` chunks per rank; zbv: zero-bubble V schedule (Qi et al. 2024, torch
``ScheduleZBVZeroBubble``), exactly 2 chunks per rank in a V shape with split backward (B / W)."""
RECOMPUTE = ("none", "selective", "full")
"""Korthikanti et al. 2022: selective recomputes the attention core (softmax, dropout, QK^T, AV)."""
GRAD_SYNC = ("allreduce", "hierarchical", "ps")
"""allreduce: ring all-reduce over the DP group (DDP); hierarchical: reduce inside node, all-reduce across
nodes, broadcast inside; ps: a central parameter server (modelled for comparison, the seed's baseline).
With zero_stage >= 1 the sync is always reduce-scatter (+ all-gather of parameters): a sharded PS."""
COMPRESSION = ("none", "fp16", "bf16", "int8", "topk", "powersgd")


@dataclass(frozen=True)
class ParallelConfig:
    dp: int
    tp: int
    pp: int
    micro_batch_size: int
    """Sequences per micro-batch per data-parallel replica (b)."""
    global_batch_size: int
    """Sequences per optimizer step over all replicas (B)."""
    seq_len: int
    ep: int = 1
    schedule: str = "1f1b"
    virtual_stages: int = 1
    """Model chunks per pipeline rank (v): > 1 only for 'interleaved', exactly 2 for 'zbv'."""
    recompute: str = "none"
    sequence_parallel: bool = False
    zero_stage: int = 0
    grad_sync: str = "allreduce"
    compression: str = "none"
    compression_param: float = 0.0
    """Rank for powersgd, kept fraction for topk; ignored otherwise."""
    overlap_grad_reduce: bool = True
    """Reduce gradient buckets asynchronously while backward continues (DDP / Megatron --overlap-grad-reduce)."""
    bucket_size_bytes: int = 25 * 2**20
    """DDP bucket size (torch default 25 MiB)."""
    stage_layers: tuple[int, ...] = ()
    """Transformer layers in each model chunk, chunk order (len pp * virtual_stages); () means even split."""
    stage_recompute_layers: tuple[int, ...] = ()
    """Per chunk, how many of its layers use full recomputation (the rest use ``recompute``); () means none."""

    def __post_init__(self) -> None:
        for n in ("dp", "tp", "pp", "ep", "micro_batch_size", "global_batch_size", "seq_len", "virtual_stages",
                  "bucket_size_bytes"):
            v = getattr(self, n)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ConfigError(f"{n} must be a positive integer, got {v!r}")
        Degrees(tp=self.tp, dp=self.dp, pp=self.pp, ep=self.ep)  # validates ep | tp*dp
        for n, allowed in (("schedule", SCHEDULES), ("recompute", RECOMPUTE), ("grad_sync", GRAD_SYNC),
                           ("compression", COMPRESSION)):
            if getattr(self, n) not in allowed:
                raise ConfigError(f"{n} must be one of {', '.join(allowed)}, got {getattr(self, n)!r}")
        if isinstance(self.zero_stage, bool) or self.zero_stage not in (0, 1, 2, 3):
            raise ConfigError(f"zero stage must be 0, 1, 2 or 3, got {self.zero_stage!r}")
        for n in ("sequence_parallel", "overlap_grad_reduce"):
            if not isinstance(getattr(self, n), bool):
                raise ConfigError(f"{n} must be true or false, got {getattr(self, n)!r}")
        p = self.compression_param
        if not _finite_number(p) or p < 0:
            raise ConfigError(f"compression_param must be a finite number >= 0 (0: the method's default), got {p!r}")
        if self.schedule in ("gpipe", "1f1b") and self.virtual_stages != 1:
            raise ConfigError(f"schedule {self.schedule} runs one model chunk per rank; got virtual_stages="
                              f"{self.virtual_stages} (use interleaved)")
        if self.schedule == "zbv" and self.virtual_stages != 2:
            raise ConfigError("schedule zbv runs exactly 2 model chunks per rank (virtual_stages=2)")
        if self.pp == 1 and self.virtual_stages != 1:
            raise ConfigError("virtual pipeline stages need pp > 1")
        if self.global_batch_size % (self.dp * self.micro_batch_size):
            raise ConfigError(
                f"global batch {self.global_batch_size} is not divisible by dp x micro-batch = "
                f"{self.dp} x {self.micro_batch_size}")
        m = self.num_micro_batches
        if self.schedule == "interleaved" and m % self.pp:
            raise ConfigError(f"interleaved schedule needs micro-batches ({m}) to be a multiple of pp ({self.pp}) "
                              "(Narayanan et al. 2021 Sec 2.2)")
        if self.pp > 1 and self.schedule in ("1f1b", "interleaved", "zbv") and m < self.pp:
            raise ConfigError(f"{self.schedule} needs at least as many micro-batches ({m}) as pipeline stages "
                              f"({self.pp})")
        if self.compression != "none" and self.zero_stage >= 2:
            raise ConfigError("gradient compression applies to all-reduce / ZeRO-1 sync, not ZeRO-2/3 sharded grads")
        if self.stage_layers and len(self.stage_layers) != self.num_chunks:
            raise ConfigError(f"stage_layers has {len(self.stage_layers)} entries, expected pp x virtual_stages = "
                              f"{self.num_chunks}")
        if any((isinstance(x, bool) or not isinstance(x, int) or x < 0) for x in self.stage_layers):
            raise ConfigError("stage_layers must be non-negative integers")
        if self.stage_recompute_layers:
            if len(self.stage_recompute_layers) != self.num_chunks:
                raise ConfigError("stage_recompute_layers needs one entry per model chunk")
            if any((isinstance(x, bool) or not isinstance(x, int) or x < 0) for x in self.stage_recompute_layers):
                raise ConfigError("stage_recompute_layers must be non-negative integers")
            if self.stage_layers and any(r < 0 or r > n for r, n in zip(self.stage_recompute_layers,
                                                                       self.stage_layers)):
                raise ConfigError("stage_recompute_layers must be between 0 and the chunk's layer count")

    # --- derived ---------------------------------------------------------------------------
    @property
    def world_size(self) -> int:
        return self.dp * self.tp * self.pp

    @property
    def degrees(self) -> Degrees:
        return Degrees(tp=self.tp, dp=self.dp, pp=self.pp, ep=self.ep)

    @property
    def num_micro_batches(self) -> int:
        return self.global_batch_size // (self.dp * self.micro_batch_size)

    @property
    def num_chunks(self) -> int:
        return self.pp * self.virtual_stages

    @property
    def tokens_per_step(self) -> int:
        return self.global_batch_size * self.seq_len

    def layers_per_chunk(self, model: ModelSpec) -> tuple[int, ...]:
        """The split in force: the explicit one, or as even as possible (extra layers to the middle chunks,
        whose neighbours carry the embedding and the head)."""
        if self.stage_layers:
            return self.stage_layers
        return even_split(model.num_layers, self.num_chunks)

    def chunk_layer_ranges(self, model: ModelSpec) -> list[tuple[int, int]]:
        """[first, last) transformer-layer range of each model chunk, chunk order."""
        out, start = [], 0
        for n in self.layers_per_chunk(model):
            out.append((start, start + n))
            start += n
        return out

    @staticmethod
    def chunk_to_pp_rank(chunk: int, pp: int, schedule: str) -> int:
        """Which pipeline rank holds model chunk ``chunk``: round-robin for interleaved (Megatron),
        V shape for zbv (rank r holds chunks r and 2pp-1-r)."""
        if schedule == "zbv":
            return chunk if chunk < pp else 2 * pp - 1 - chunk
        return chunk % pp

    def validate_for(self, model: ModelSpec, world_size: int | None = None) -> None:
        """Checks that need the model (and the launched world): heads divisible, layers covered exactly once."""
        if world_size is not None and self.world_size != world_size:
            raise ConfigError(f"dp x tp x pp = {self.dp} x {self.tp} x {self.pp} = {self.world_size} does not equal "
                              f"the world size {world_size}")
        if model.num_heads % self.tp:
            raise ConfigError(f"tensor parallel degree {self.tp} does not divide {model.num_heads} attention heads")
        if model.kv_heads % self.tp and not model.is_mla:
            raise ConfigError(f"tensor parallel degree {self.tp} does not divide {model.kv_heads} key/value heads")
        if model.ffn_hidden_size % self.tp:
            raise ConfigError(f"tensor parallel degree {self.tp} does not divide FFN width {model.ffn_hidden_size}")
        if self.sequence_parallel and self.seq_len % self.tp:
            raise ConfigError(f"sequence parallelism needs tp ({self.tp}) to divide the sequence ({self.seq_len})")
        if self.ep > 1 and not model.is_moe:
            raise ConfigError(f"expert parallel degree {self.ep} given for dense model {model.name}")
        if model.is_moe and model.num_experts % self.ep:
            raise ConfigError(f"expert parallel degree {self.ep} does not divide {model.num_experts} experts")
        if self.num_chunks > model.num_layers:
            raise ConfigError(f"{self.num_chunks} model chunks for {model.num_layers} layers: at most one chunk per layer")
        if self.stage_layers and sum(self.stage_layers) != model.num_layers:
            raise ConfigError(f"stage_layers sum to {sum(self.stage_layers)}, the model has {model.num_layers} layers")
        if self.stage_recompute_layers and any(
                r > n for r, n in zip(self.stage_recompute_layers, self.layers_per_chunk(model))):
            raise ConfigError(f"stage_recompute_layers {list(self.stage_recompute_layers)} exceed the layers per chunk "
                              f"{list(self.layers_per_chunk(model))}")

    # --- naming and serialisation -------------------------------------------------------------
    @property
    def name(self) -> str:
        """NeMo-style candidate name, e.g. tp8_pp8_dp16_mbs1_vp3_ac-sel."""
        parts = [f"tp{self.tp}", f"pp{self.pp}", f"dp{self.dp}"]
        if self.ep > 1:
            parts.append(f"ep{self.ep}")
        parts.append(f"mbs{self.micro_batch_size}")
        if self.schedule == "interleaved":
            parts.append(f"vp{self.virtual_stages}")
        elif self.schedule in ("gpipe", "zbv"):
            parts.append(self.schedule)
        if self.recompute != "none":
            parts.append("ac-" + {"selective": "sel", "full": "full"}[self.recompute])
        if any(self.stage_recompute_layers):
            parts.append("acl" + "-".join(map(str, self.stage_recompute_layers)))
        if self.sequence_parallel:
            parts.append("sp")
        if self.zero_stage:
            parts.append(f"z{self.zero_stage}")
        if self.grad_sync != "allreduce":
            parts.append(self.grad_sync)
        if self.compression != "none":
            parts.append(self.compression)
        if self.stage_layers and tuple(self.stage_layers) != even_split(sum(self.stage_layers), self.num_chunks):
            parts.append("L" + "-".join(map(str, self.stage_layers)))
        return "_".join(parts)

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["stage_layers"] = list(self.stage_layers)
        d["stage_recompute_layers"] = list(self.stage_recompute_layers)
        return d

    @classmethod
    def from_dict(cls, data: Any, source: str = "config") -> "ParallelConfig":
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: expected an object, got {type(data).__name__}")
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - names, key=str)  # YAML keys may be ints
        if unknown:
            raise ConfigError(f"{source}: unknown field {unknown[0]!r}")
        for f in dataclasses.fields(cls):
            if f.default is dataclasses.MISSING and f.name not in data:
                raise ConfigError(f"{source}: missing required field {f.name!r}")
        data = dict(data)
        for k in ("stage_layers", "stage_recompute_layers"):
            if k in data:
                if not isinstance(data[k], (list, tuple)):
                    raise ConfigError(f"{source}: {k} must be a list of integers")
                data[k] = tuple(data[k])
        return cls(**data)

    def replace(self, **changes: Any) -> "ParallelConfig":
        return dataclasses.replace(self, **changes)


def even_split(num_layers: int, num_chunks: int) -> tuple[int, ...]:
    """Split as evenly as possible; remainder layers go to the middle chunks (first and last also hold the
    embedding and the output head, Narayanan et al. 2021 keep layers equal, we keep totals closer)."""
    if num_chunks <= 0:
        raise ConfigError("number of chunks must be positive")
    base, extra = divmod(num_layers, num_chunks)
    counts = [base] * num_chunks
    order = sorted(range(num_chunks), key=lambda i: (i in (0, num_chunks - 1), abs(i - (num_chunks - 1) / 2)))
    for i in order[:extra]:
        counts[i] += 1
    return tuple(counts)
