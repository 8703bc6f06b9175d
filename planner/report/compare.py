"""Measured beside predicted: the report's compare section, from two traces in the shared schema.

Both traces come through planner.trace_schema (validated), so the comparison is per track (compute,
tp, pp, dp, ep) and per pipeline stage, never by guessing at names. A measured trace may hold several
steps: busy time is divided by the number of optimizer steps (kind ``O``) it records on each rank
(at least one), so both sides are per step.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from planner.rank_order import Degrees, coords_of
from planner.report import html as h
from planner.report import plots
from planner.trace_schema import TRACKS, TraceEvent, events


@dataclass(frozen=True)
class TraceSummary:
    """Per-step busy seconds per track (mean over ranks), span per step, and Gantt rows per pipeline rank."""

    busy_s: dict[str, float]
    step_s: float
    steps: int
    gantt: list[list[tuple[str, int, int, float, float]]]


def summarize(data: dict[str, Any], degrees: Degrees, source: str) -> TraceSummary:
    evs = events(data, source)
    by_rank: dict[int, list[TraceEvent]] = defaultdict(list)
    for e in evs:
        by_rank[e.rank].append(e)
    busy: dict[str, list[float]] = {t: [] for t in TRACKS}
    spans = []
    steps_seen = 1
    for r, lst in by_rank.items():
        steps = max(1, sum(1 for e in lst if e.kind == "O"))
        steps_seen = max(steps_seen, steps)
        for t in TRACKS:
            busy[t].append(sum(e.dur_us for e in lst if e.track == t) / 1e6 / steps)
        spans.append((max(e.end_us for e in lst) - min(e.ts_us for e in lst)) / 1e6 / steps)
    first_of_stage: dict[int, int] = {}
    for r in sorted(by_rank):
        if r < degrees.world_size:
            first_of_stage.setdefault(coords_of(degrees, r)["pp"], r)
    gantt = []
    for p in range(degrees.pp):
        r = first_of_stage.get(p)
        lst = by_rank.get(r, []) if r is not None else []
        t0 = min((e.ts_us for e in lst), default=0.0)
        gantt.append([(e.kind, e.chunk or 0, e.microbatch or 0, (e.ts_us - t0) / 1e6, (e.end_us - t0) / 1e6)
                      for e in lst if e.track == "compute" and e.kind in ("F", "B", "W")])
    mean = {t: (sum(v) / len(v) if v else 0.0) for t, v in busy.items()}
    return TraceSummary(mean, max(spans, default=0.0), steps_seen, gantt)


def compare_section(predicted: dict[str, Any], measured: dict[str, Any], degrees: Degrees,
                    measured_name: str) -> h.Raw:
    """Section 7: a table per track, the busy-time bars and both timelines of the first step."""
    p = summarize(predicted, degrees, "predicted trace")
    m = summarize(measured, degrees, measured_name)
    rows = [(t, h.seconds(p.busy_s[t]), h.seconds(m.busy_s[t]),
             f"{m.busy_s[t] / p.busy_s[t]:.2f}" if p.busy_s[t] > 0 else "-") for t in TRACKS]
    rows.append(("step span", h.seconds(p.step_s), h.seconds(m.step_s),
                 f"{m.step_s / p.step_s:.2f}" if p.step_s > 0 else "-"))
    bars = plots.compare_figure(list(TRACKS), [p.busy_s[t] for t in TRACKS], [m.busy_s[t] for t in TRACKS])
    span = max((e for row in m.gantt for *_, e in row), default=0.0)
    parts = [h.para(f"Measured trace: {measured_name} ({m.steps} step(s); per-step numbers)."),
             h.table(["track", "predicted / step", "measured / step", "measured / predicted"], rows),
             h.figure(bars, "busy time per track, predicted and measured",
                      "Busy seconds per step on each track, mean over ranks: predicted beside measured."),
             h.figure(plots.gantt_figure(_first_step(p.gantt), p.step_s, None, "predicted"),
                      "predicted pipeline timeline", "Predicted compute timeline."),
             h.figure(plots.gantt_figure(_first_step(m.gantt), span / max(m.steps, 1), None, "measured"),
                      "measured pipeline timeline", "Measured compute timeline (first step).")]
    return h.section("compare", "7. Measured against predicted", parts)


def _first_step(rows: list[list[tuple[str, int, int, float, float]]]):
    """Keep each rank's actions up to its first repeat of (kind, chunk, micro-batch): one step."""
    out = []
    for row in rows:
        seen, keep = set(), []
        for a in sorted(row, key=lambda x: x[3]):
            key = a[:3]
            if key in seen:
                break
            seen.add(key)
            keep.append(a)
        out.append(keep)
    return out
