"""The timeline trace schema shared by the runtime's measured trace and the planner's predicted one.

Why one schema: ``python -m planner compare`` lays a measured run beside its prediction, so both
sides must write the same events. The format is the Chrome Trace Event format ("JSON Object
Format", complete events ``ph='X'``), which chrome://tracing and https://ui.perfetto.dev open as is.

Layout:

* one process per rank: ``pid = rank`` (a ``process_name`` metadata event names it ``rank N``);
* one thread per track: ``tid = TRACKS.index(track)``, named by a ``thread_name`` metadata event
  (integer tids because Perfetto's JSON importer wants numbers; the track name is the thread name
  and is also kept in ``args.track``);
* tracks: ``compute`` (forward F, backward B, weight-gradient W of one micro-batch on one model
  chunk, plus optimizer steps), ``tp`` / ``pp`` / ``dp`` / ``ep`` (communication on that axis);
* ``ts`` and ``dur`` in microseconds (the format's unit), ``ts`` from the start of the step or run;
* ``args``: ``chunk`` (model chunk index, plan.stages order), ``microbatch`` (index inside the step),
  ``kind`` (``F`` | ``B`` | ``W``, or ``O`` for the optimizer step / ``S`` for a sync that belongs to
  no micro-batch), ``track``; compute events must give all three; communication events may give
  ``None`` where a field does not apply (a DP all-reduce has no micro-batch);
* slices on one (pid, tid) track never overlap (a track is one sequential resource).

Top level: ``{"traceEvents": [...], "displayTimeUnit": "ms", "otherData": {"schema": SCHEMA,
"version": VERSION, "source": "measured" | "predicted", ...}}``.

Pure Python: no torch here (planner/ never imports it).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from planner.errors import SpecError

SCHEMA = "hybridplan.trace"
VERSION = 1
TRACKS = ("compute", "tp", "pp", "dp", "ep")
KINDS = ("F", "B", "W", "O", "S")
"""F forward, B backward (input grad, or full backward), W weight grad (zero-bubble split), O optimizer
step, S a synchronisation that belongs to no micro-batch (gradient all-reduce, clipping)."""
SOURCES = ("measured", "predicted")
OVERLAP_TOLERANCE_US = 1e-3
"""Rounding slack when checking that slices on a track do not overlap (timestamps are floats in us)."""


@dataclass(frozen=True)
class TraceEvent:
    """One slice on one track of one rank."""

    rank: int
    track: str
    name: str
    ts_us: float
    """Start, microseconds from the trace origin."""
    dur_us: float
    chunk: int | None = None
    microbatch: int | None = None
    kind: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    """Further args (bytes moved, group size, ...)."""

    @property
    def end_us(self) -> float:
        return self.ts_us + self.dur_us

    def to_chrome(self) -> dict[str, Any]:
        args = {"chunk": self.chunk, "microbatch": self.microbatch, "kind": self.kind, "track": self.track}
        args.update(self.extra)
        return {"name": self.name, "ph": "X", "ts": self.ts_us, "dur": self.dur_us, "pid": self.rank,
                "tid": TRACKS.index(self.track), "args": args}


class TraceBuilder:
    """Collects events and writes the schema's JSON object (metadata events added for every rank)."""

    def __init__(self, source: str, **other: Any):
        if source not in SOURCES:
            raise SpecError(f"trace source must be one of {', '.join(SOURCES)}, got {source!r}")
        self.source = source
        self.other = dict(other)
        self.events: list[TraceEvent] = []

    def add(self, rank: int, track: str, name: str, ts_us: float, dur_us: float, *, chunk: int | None = None,
            microbatch: int | None = None, kind: str | None = None, **extra: Any) -> TraceEvent:
        ev = TraceEvent(rank, track, name, float(ts_us), float(dur_us), chunk, microbatch, kind, dict(extra))
        _check_event(ev, f"event {name!r}")
        self.events.append(ev)
        return ev

    def extend(self, events: Iterable[TraceEvent]) -> None:
        for ev in events:
            _check_event(ev, f"event {ev.name!r}")
            self.events.append(ev)

    def to_dict(self) -> dict[str, Any]:
        ranks = sorted({e.rank for e in self.events})
        meta: list[dict[str, Any]] = []
        for r in ranks:
            meta.append({"name": "process_name", "ph": "M", "pid": r, "tid": 0, "args": {"name": f"rank {r}"}})
            meta.append({"name": "process_sort_index", "ph": "M", "pid": r, "tid": 0, "args": {"sort_index": r}})
            for i, t in enumerate(TRACKS):
                meta.append({"name": "thread_name", "ph": "M", "pid": r, "tid": i, "args": {"name": t}})
        body = [e.to_chrome() for e in sorted(self.events, key=lambda e: (e.rank, TRACKS.index(e.track), e.ts_us))]
        return {"traceEvents": meta + body, "displayTimeUnit": "ms",
                "otherData": {"schema": SCHEMA, "version": VERSION, "source": self.source, **self.other}}


def _check_event(ev: TraceEvent, where: str) -> None:
    if isinstance(ev.rank, bool) or not isinstance(ev.rank, int) or ev.rank < 0:
        raise SpecError(f"{where}: rank (pid) must be a non-negative integer, got {ev.rank!r}")
    if ev.track not in TRACKS:
        raise SpecError(f"{where}: track must be one of {', '.join(TRACKS)}, got {ev.track!r}")
    if not isinstance(ev.name, str) or not ev.name:
        raise SpecError(f"{where}: name must be a non-empty string")
    for n in ("ts_us", "dur_us"):
        v = getattr(ev, n)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not _finite(v) or v < 0:
            raise SpecError(f"{where}: {n} must be a finite non-negative number of microseconds, got {v!r}")
    for n in ("chunk", "microbatch"):
        v = getattr(ev, n)
        if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v < 0):
            raise SpecError(f"{where}: {n} must be a non-negative integer or null, got {v!r}")
    if ev.kind is not None and ev.kind not in KINDS:
        raise SpecError(f"{where}: kind must be one of {', '.join(KINDS)}, got {ev.kind!r}")
    if ev.track == "compute" and ev.kind in ("F", "B", "W") and (ev.chunk is None or ev.microbatch is None):
        raise SpecError(f"{where}: a compute {ev.kind} slice needs args.chunk and args.microbatch")
    if ev.track == "compute" and ev.kind is None:
        raise SpecError(f"{where}: a compute slice needs args.kind")


def events(data: Any, source: str = "trace") -> list[TraceEvent]:
    """Validate a trace object and return its complete events (metadata events dropped).

    Checks: top-level shape and schema/version, every 'X' event's fields, and that slices on each
    (rank, track) do not overlap. Raises SpecError with a one-line message naming the first problem.
    """
    if not isinstance(data, dict) or not isinstance(data.get("traceEvents"), list):
        raise SpecError(f"{source}: a trace must be an object with a 'traceEvents' list")
    other = data.get("otherData")
    if not isinstance(other, dict) or other.get("schema") != SCHEMA:
        raise SpecError(f"{source}: otherData.schema must be {SCHEMA!r}")
    if other.get("version") != VERSION:
        raise SpecError(f"{source}: trace schema version {other.get('version')!r} is not supported (expected {VERSION})")
    if other.get("source") not in SOURCES:
        raise SpecError(f"{source}: otherData.source must be one of {', '.join(SOURCES)}")
    out: list[TraceEvent] = []
    for i, raw in enumerate(data["traceEvents"]):
        where = f"{source}: traceEvents[{i}]"
        if not isinstance(raw, dict):
            raise SpecError(f"{where} must be an object")
        ph = raw.get("ph")
        if ph == "M":
            continue
        if ph != "X":
            raise SpecError(f"{where}: only complete events (ph='X') and metadata (ph='M') are allowed, got {ph!r}")
        for k in ("name", "ts", "dur", "pid", "tid", "args"):
            if k not in raw:
                raise SpecError(f"{where}: missing required field {k!r}")
        tid = raw["tid"]
        if isinstance(tid, bool) or not isinstance(tid, int) or not 0 <= tid < len(TRACKS):
            raise SpecError(f"{where}: tid must be a track index 0..{len(TRACKS) - 1}, got {tid!r}")
        args = raw["args"]
        if not isinstance(args, dict):
            raise SpecError(f"{where}: args must be an object")
        for k in ("chunk", "microbatch", "kind"):
            if k not in args:
                raise SpecError(f"{where}: args is missing {k!r}")
        extra = {k: v for k, v in args.items() if k not in ("chunk", "microbatch", "kind", "track")}
        ev = TraceEvent(raw["pid"], TRACKS[tid], raw["name"], raw["ts"], raw["dur"], args["chunk"],
                        args["microbatch"], args["kind"], extra)
        _check_event(ev, where)
        out.append(ev)
    check_no_overlap(out, source)
    return out


def check_no_overlap(evs: Iterable[TraceEvent], source: str = "trace") -> None:
    by_track: dict[tuple[int, str], list[TraceEvent]] = {}
    for e in evs:
        by_track.setdefault((e.rank, e.track), []).append(e)
    for (rank, track), lst in by_track.items():
        lst.sort(key=lambda e: e.ts_us)
        for a, b in zip(lst, lst[1:]):
            if a.end_us > b.ts_us + OVERLAP_TOLERANCE_US:
                raise SpecError(f"{source}: rank {rank} track {track}: {a.name!r} [{a.ts_us:.3f}, {a.end_us:.3f}] us "
                                f"overlaps {b.name!r} starting at {b.ts_us:.3f} us")


def validate(data: Any, source: str = "trace") -> None:
    events(data, source)


def save(path: str | Path, data: dict[str, Any]) -> Path:
    """Validate, then write atomically (planner.io)."""
    from planner.io import atomic_write_json

    validate(data, str(path))
    return atomic_write_json(path, data)


def load(path: str | Path) -> dict[str, Any]:
    """Read and validate a trace file; returns the JSON object (use ``events`` for typed slices)."""
    from planner.io import read_json

    data = read_json(path, "trace file")
    validate(data, str(path))
    return data


def _finite(v: int | float) -> bool:
    """math.isfinite overflows on integers beyond float range (e.g. 10**400 in a hand-edited trace)."""
    try:
        return math.isfinite(v)
    except OverflowError:
        return False
