"""The long-form records of a profile (planner/profile.py) and their validation, one field at a time.

Why a module of their own: the profile's lookups (interpolation, fits, concurrency) are one concept,
the file's row types and the checks that make a bad file fail on load (not later in a query) another.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from planner.errors import SpecError

SCHEMA_VERSION = 1
PROFILE_KIND = "hybridplan.profile"
BLOCK_KINDS = ("embedding", "attention", "mlp", "moe", "norm", "head")
"""As planner/layer_graph.py cuts the model: 'attention', 'mlp' and 'moe' include their input norm and
residual add; 'head' is the final norm, output projection and cross-entropy loss; 'norm' is one standalone
norm (optional). Times are one TP rank's, measured on a real TP group of ``tp`` ranks, so TP / SP
collectives are included (the cost model adds nothing for them when the profile covers a block)."""
COLLECTIVE_OPS = ("all_reduce", "all_gather", "reduce_scatter", "all_to_all", "send_recv")
LINK_LEVELS = ("intra_node", "inter_node")
EXTRAPOLATION_FACTOR = 2.0
"""How far outside the measured range (ratio of tokens or bytes) a query may reach before it is None."""


@dataclass(frozen=True)
class ProfileHeader:
    """The environment the measurements came from."""

    device: str
    """Device name (torch.cuda.get_device_name, or the CPU model string)."""
    backend: str
    """torch.distributed backend of the collective samples ('gloo' or 'nccl')."""
    torch_version: str = ""
    nccl_version: str | None = None
    world_size: int = 1
    """Ranks in the run that measured (the largest, after a merge)."""
    nodes: int = 1
    devices_per_node: int = 1
    date: str = ""
    """ISO-8601 UTC time of the measurement (the latest, after a merge)."""
    host: str = ""
    notes: str = ""


@dataclass(frozen=True)
class BlockRecord:
    """Median time of one block's forward, backward and recompute at one shape (one long-form row)."""

    model: str
    block_kind: str
    tp: int
    micro_batch: int
    seq_len: int
    sequence_parallel: bool
    forward_s: float
    backward_s: float
    """Backward (input and weight gradients) of the block, without recompute."""
    recompute_s: float | None = None
    """Extra time of backward under activation checkpointing (the forward re-run); None if not measured."""
    forward_spread_s: float = 0.0
    """Inter-quartile range of the forward repeats."""
    backward_spread_s: float = 0.0
    repeats: int = 1
    peak_memory_bytes: int | None = None
    """Peak device memory during forward + backward, where the device reports it (CUDA)."""
    dtype: str = "fp32"
    concurrency: int = 1

    @property
    def tokens(self) -> int:
        return self.micro_batch * self.seq_len


@dataclass(frozen=True)
class CollectiveSample:
    """One raw timing: the slowest rank's time of one collective call (ranks finish together)."""

    op: str
    group_size: int
    link_level: str
    nbytes: float
    """Bytes of the per-rank buffer (all_reduce / all_to_all / send_recv: the tensor; all_gather: the
    gathered output; reduce_scatter: the input), the ``nbytes`` the cost model asks about."""
    time_s: float
    concurrency: int = 1


@dataclass(frozen=True)
class DeviceRate:
    """A measured device throughput, e.g. ``matmul_fp32`` FLOP/s per rank under concurrency."""

    name: str
    value: float
    concurrency: int = 1


MAX_COUNT = 10**9
"""Upper bound of integer fields (degrees, shapes, repeats, ranks): far above any real run, and small
enough that products of them never overflow a float in a query."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and v <= MAX_COUNT


def _is_time(v: Any) -> bool:
    """A real, finite, non-negative number (a huge int that overflows float is not)."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    try:
        return math.isfinite(float(v)) and v >= 0
    except OverflowError:
        return False


def _check_record(rec: Any, i: int, source: str) -> None:
    """Every field of a record has the right type and range, so a query never meets a bad value."""
    where = f"{source}: {type(rec).__name__} #{i}"
    pos_int = (_is_int, f"a positive integer <= {MAX_COUNT}")
    for name, (ok, what) in _checks(rec).items():
        v = getattr(rec, name)
        if not ok(v) or (what == pos_int[1] and v <= 0):
            raise SpecError(f"{where}: {name} must be {what}, got {v!r}")
    if isinstance(rec, BlockRecord) and rec.block_kind not in BLOCK_KINDS:
        raise SpecError(f"{where}: block_kind {rec.block_kind!r} not one of {', '.join(BLOCK_KINDS)}")
    if isinstance(rec, CollectiveSample):
        if rec.op not in COLLECTIVE_OPS:
            raise SpecError(f"{where}: op {rec.op!r} not one of {', '.join(COLLECTIVE_OPS)}")
        if rec.link_level not in LINK_LEVELS:
            raise SpecError(f"{where}: link_level {rec.link_level!r} not one of {', '.join(LINK_LEVELS)}")
        if rec.group_size < 2:
            raise SpecError(f"{where}: group_size must be an integer >= 2, got {rec.group_size!r}")
        if rec.time_s <= 0:
            raise SpecError(f"{where}: needs nbytes >= 0 and time_s > 0, got time_s={rec.time_s!r}")


def _checks(rec: Any) -> dict[str, tuple[Any, str]]:
    string = (lambda v: isinstance(v, str), "a string")
    pos_int = (_is_int, f"a positive integer <= {MAX_COUNT}")
    time = (_is_time, "a finite number >= 0")
    opt_time = (lambda v: v is None or _is_time(v), "a finite number >= 0 or null")
    if isinstance(rec, BlockRecord):
        return {"model": string, "block_kind": string, "dtype": string, "tp": pos_int, "micro_batch": pos_int,
                "seq_len": pos_int, "repeats": pos_int, "concurrency": pos_int,
                "sequence_parallel": (lambda v: isinstance(v, bool), "true or false"),
                "forward_s": time, "backward_s": time, "recompute_s": opt_time, "forward_spread_s": time,
                "backward_spread_s": time,
                "peak_memory_bytes": (lambda v: v is None or (isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 2**63),
                                      "an integer >= 0 or null")}
    if isinstance(rec, CollectiveSample):
        return {"op": string, "link_level": string, "group_size": pos_int, "concurrency": pos_int,
                "nbytes": time, "time_s": time}
    if isinstance(rec, DeviceRate):
        return {"name": string, "concurrency": pos_int, "value": time}
    if isinstance(rec, ProfileHeader):
        return {"device": string, "backend": string, "torch_version": string, "date": string, "host": string,
                "notes": string, "world_size": pos_int, "nodes": pos_int, "devices_per_node": pos_int,
                "nccl_version": (lambda v: v is None or isinstance(v, str), "a string or null")}
    return {}


def _from_row(cls: type, row: Any, i: int, source: str) -> Any:
    if not isinstance(row, dict):
        raise SpecError(f"{source}: {cls.__name__} #{i} must be an object")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(row) - names)
    if unknown:
        raise SpecError(f"{source}: {cls.__name__} #{i}: unknown field {unknown[0]!r}")
    try:
        rec = cls(**row)
    except TypeError as exc:
        raise SpecError(f"{source}: {cls.__name__} #{i}: {exc}") from None
    _check_record(rec, i, source)
    return rec
