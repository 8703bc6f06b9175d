"""The report's figures, each a function from plain numbers to PNG bytes (matplotlib, Agg canvas).

Why ``Figure`` + ``FigureCanvasAgg`` instead of pyplot: no global figure state, nothing to close,
and no GUI backend is ever touched (a report is written on headless machines and inside other
programs). Modest DPI keeps a report of six figures well under a second of drawing. matplotlib is
imported on first use (about a second), so importing planner.report costs nothing until it draws.
"""

from __future__ import annotations

import io
import math
from typing import Mapping, Sequence

from functools import lru_cache

DPI = 80
GiB = 1024**3

TERM_ORDER = ("compute", "recompute", "tp_comm", "ep_comm", "pp_comm", "pp_bubble", "dp_sync_exposed", "optimizer")
"""Step-time terms in the order they stack; other terms the cost model reports follow, alphabetically."""
TERM_COLORS = {"compute": "#4c78a8", "recompute": "#9ecae9", "tp_comm": "#f58518", "ep_comm": "#e45756",
               "pp_comm": "#72b7b2", "pp_bubble": "#bab0ac", "dp_sync_exposed": "#54a24b", "optimizer": "#b279a2"}
_EXTRA_COLORS = ("#eeca3b", "#ff9da6", "#9d755d", "#79706e", "#d67195", "#8cd17d")
MEMORY_PARTS = (("weights_bytes", "weights", "#4c78a8"), ("gradients_bytes", "gradients", "#f58518"),
                ("optimizer_bytes", "optimizer states", "#54a24b"), ("activations_bytes", "activations", "#e45756"),
                ("other_bytes", "buffers + overhead", "#bab0ac"))
KIND_COLORS = {"F": "#4c78a8", "B": "#f58518", "W": "#54a24b"}
LATER_CHUNK_COLORS = {"F": "#9ecae9", "B": "#ffbf79", "W": "#a6dba0"}
"""Lighter shades for a rank's later model chunks (interleaved / V schedules)."""


@lru_cache(maxsize=1)
def _mpl():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    return Figure, FigureCanvasAgg, Patch


def _new(width_in: float, height_in: float, nrows: int = 1, ncols: int = 1, *, left_in: float = 0.8,
         right_in: float = 0.2, top_in: float = 0.45, bottom_in: float = 0.55, wspace: float = 0.25,
         hspace: float = 0.2, height_ratios: Sequence[float] | None = None):
    """A figure with margins in inches: fixed margins instead of ``bbox_inches='tight'``, which draws every
    figure twice (half of the report's drawing time)."""
    figure_cls, canvas_cls, _ = _mpl()
    fig = figure_cls(figsize=(width_in, height_in), dpi=DPI)
    canvas_cls(fig)
    axes = fig.subplots(nrows, ncols, squeeze=False, gridspec_kw={"height_ratios": height_ratios} if height_ratios
                        else None)
    fig.subplots_adjust(left=left_in / width_in, right=1 - right_in / width_in, top=1 - top_in / height_in,
                        bottom=bottom_in / height_in, wspace=wspace, hspace=hspace)
    return fig, axes


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI)
    return buf.getvalue()


def _label_width_in(labels: Sequence[str], fontsize: float) -> float:
    """Rough width of the longest tick label (0.6 em per character) to size a left margin."""
    return 0.6 * fontsize / 72 * max((len(x) for x in labels), default=0) + 0.2


def term_order(terms: set[str]) -> list[str]:
    return [t for t in TERM_ORDER if t in terms] + sorted(terms - set(TERM_ORDER))


def _term_color(term: str, extra: list[str]) -> str:
    if term in TERM_COLORS:
        return TERM_COLORS[term]
    if term not in extra:
        extra.append(term)
    return _EXTRA_COLORS[extra.index(term) % len(_EXTRA_COLORS)]


def breakdown_figure(rows: Sequence[tuple[str, Mapping[str, float]]]) -> bytes:
    """Stacked horizontal bars: where each candidate's step time goes (best candidate on top)."""
    terms = term_order({k for _, b in rows for k, v in b.items() if v > 0})
    names = [n for n, _ in rows][::-1]
    left_in = _label_width_in(names, 8)
    fig, ax = _new(left_in + 7.5, 1.4 + 0.32 * len(rows), left_in=left_in, top_in=0.75)
    ax = ax[0][0]
    left = [0.0] * len(rows)
    extra: list[str] = []
    for term in terms:
        widths = [max(0.0, float(b.get(term, 0.0))) for _, b in rows][::-1]
        ax.barh(names, widths, left=left, color=_term_color(term, extra), label=term, height=0.7)
        left = [l + w for l, w in zip(left, widths)]
    ax.set_xlabel("predicted seconds per training step")
    fig.legend(ncol=min(len(terms), 5), fontsize=8, loc="upper center", frameon=False)
    ax.tick_params(axis="y", labelsize=8)
    ax.grid(axis="x", alpha=0.3)
    ax.margins(y=0.01)
    return _png(fig)


def _few_bars(ax, n: int) -> None:
    """Keep bars slim when there are only a few (one pipeline rank would otherwise fill the axes)."""
    pad = max(0.0, (5 - n) / 2)
    ax.set_xlim(-0.5 - pad, n - 0.5 + pad)


def memory_figure(stages: Sequence[Mapping[str, float]], capacity_bytes: float) -> bytes:
    """Per pipeline rank: memory by kind, stacked, against the device capacity."""
    fig, ax = _new(10, 3.8, top_in=0.7, bottom_in=0.9 if len(stages) > 12 else 0.5)
    ax = ax[0][0]
    xs = list(range(len(stages)))
    bottom = [0.0] * len(stages)
    for key, label, color in MEMORY_PARTS:
        vals = [float(s.get(key, 0.0)) / GiB for s in stages]
        ax.bar(xs, vals, bottom=bottom, color=color, label=label, width=0.7)
        bottom = [b + v for b, v in zip(bottom, vals)]
    ax.axhline(capacity_bytes / GiB, color="#a33", linestyle="--", linewidth=1.5,
               label=f"device capacity {capacity_bytes / GiB:.0f} GiB")
    ax.set_xticks(xs, [f"pp rank {i}" for i in xs], fontsize=8, rotation=0 if len(xs) <= 12 else 90)
    _few_bars(ax, len(xs))
    ax.set_ylabel("GiB per device")
    ax.set_ylim(0, max(max(bottom, default=0.0), capacity_bytes / GiB) * 1.12)
    ax.legend(fontsize=8, ncol=3, loc="lower center", bbox_to_anchor=(0.5, 1.0), frameon=False)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)


ZOOM_BOXES = 24
"""The zoom panel shows about this many actions per rank: wide enough to read every micro-batch number."""


def gantt_figure(ranks: Sequence[Sequence[tuple[str, int, int, float, float]]], makespan_s: float,
                 bubble_fraction: float | None, title: str) -> bytes:
    """One row per pipeline rank; boxes are (kind, chunk, micro-batch, start_s, end_s) from the simulation.

    Forward, backward and weight-gradient boxes have their own colour; later model chunks of a rank are
    lighter; boxes wide enough to read carry their micro-batch number. When the whole step is too dense
    for numbers, a second panel zooms on the start of the step (warm-up), where they fit.
    """
    p = len(ranks)
    span = makespan_s if makespan_s > 0 else 1.0
    durs = sorted(e - s for acts in ranks for _, _, _, s, e in acts)
    typical = durs[len(durs) // 2] if durs else span
    zoom = min(span, ZOOM_BOXES * typical) if typical * 60 < span else None
    row_h = 0.3
    heights = [p * row_h + 0.3] + ([p * row_h + 0.3] if zoom else [])
    fig, axes = _new(11, sum(heights) + 1.3 + (0.5 if zoom else 0), len(heights), 1, top_in=0.7, bottom_in=0.6,
                     hspace=0.55, height_ratios=heights)
    windows = [(0.0, span)] + ([(0.0, zoom)] if zoom else [])
    first_chunk = [min((a[1] for a in acts), default=0) for acts in ranks]
    for ax, (t0, t1) in zip(axes[:, 0], windows):
        min_label = (t1 - t0) / 90.0
        edge = 0.5 if typical >= (t1 - t0) / 150 else 0.0
        for r, acts in enumerate(ranks):
            for kind in ("F", "B", "W"):
                for later in (False, True):
                    boxes = [(s, e - s) for k, c, _, s, e in acts
                             if k == kind and (c != first_chunk[r]) == later and s < t1]
                    if boxes:
                        ax.broken_barh(boxes, (r - 0.4, 0.8), edgecolor="white", linewidth=edge,
                                       facecolors=(LATER_CHUNK_COLORS if later else KIND_COLORS)[kind])
            for k, c, mb, s, e in acts:
                if e - s >= min_label and s < t1:
                    ax.text((s + min(e, t1)) / 2, r, str(mb), ha="center", va="center", fontsize=6.5, clip_on=True,
                            color="#1d232b" if c != first_chunk[r] else "white")
        ax.set_yticks(range(p), [f"pp {r}" for r in range(p)], fontsize=8)
        ax.set_ylim(p - 0.5, -0.5)
        ax.set_xlim(t0, t1)
    bubble = "" if bubble_fraction is None else f": bubble {100 * bubble_fraction:.1f}% of the makespan {span:.3g} s"
    axes[0][0].set_title(title + bubble, fontsize=10)
    axes[-1][0].set_xlabel("seconds from the start of the step")
    if zoom:
        axes[1][0].set_title(f"zoom: the first {zoom:.3g} s (numbers are micro-batches)", fontsize=9)
    kinds = [(k, lbl) for k, lbl in (("F", "forward"), ("B", "backward"), ("W", "weight grad"))
             if any(a[0] == k for acts in ranks for a in acts)]
    patch = _mpl()[2]
    handles = [patch(facecolor=KIND_COLORS[k], label=lbl) for k, lbl in kinds]
    if any(c != first_chunk[r] for r, acts in enumerate(ranks) for _, c, *_ in acts):
        handles += [patch(facecolor=LATER_CHUNK_COLORS[k], label=f"{lbl}, later chunk") for k, lbl in kinds]
    fig.legend(handles=handles, fontsize=8, ncol=len(handles), loc="upper right", frameon=False)
    return _png(fig)


def pareto_front(points: Sequence[tuple[str, float, float]]) -> list[tuple[str, float, float]]:
    """(name, throughput, memory) points no other point beats on both: more throughput for no more memory."""
    front: list[tuple[str, float, float]] = []
    best = -math.inf
    for name, tput, mem in sorted(points, key=lambda x: (x[2], -x[1])):
        if tput > best:
            front.append((name, tput, mem))
            best = tput
    return front


def pareto_figure(points: Sequence[tuple[str, float, float, bool]], chosen: str, runner_up: str | None,
                  capacity_bytes: float) -> bytes:
    """Throughput (tokens/s/GPU) against peak memory per device for every priced candidate."""
    fig, ax = _new(10, 4.2, top_in=0.2)
    ax = ax[0][0]
    fit = [(n, t, m) for n, t, m, ok in points if ok]
    nofit = [(n, t, m) for n, t, m, ok in points if not ok]
    if fit:
        ax.scatter([m / GiB for _, _, m in fit], [t for _, t, _ in fit], s=14, color="#4c78a8", alpha=0.6,
                   label="fits")
    if nofit:
        ax.scatter([m / GiB for _, _, m in nofit], [t for _, t, _ in nofit], s=14, color="#bab0ac", marker="x",
                   label="does not fit")
    front = pareto_front(fit)
    if front:
        ax.step([m / GiB for _, _, m in front], [t for _, t, _ in front], where="post", color="#54a24b",
                linewidth=1.5, label="Pareto frontier")
    for name, marker, color, label in ((chosen, "*", "#e45756", "chosen"), (runner_up, "D", "#f58518", "runner-up")):
        hit = [(t, m) for n, t, m, _ in points if n == name]
        if name and hit:
            ax.scatter([hit[0][1] / GiB], [hit[0][0]], s=160 if marker == "*" else 60, marker=marker, color=color,
                       zorder=5, label=f"{label}: {name}")
    ax.axvline(capacity_bytes / GiB, color="#a33", linestyle="--", linewidth=1, label="device capacity")
    # candidates needing many times the device are off the scale: keep the axis about the capacity
    x_max = max([capacity_bytes * 1.3] + [m * 1.05 for _, _, m in fit]) / GiB
    x_min = min([capacity_bytes * 0.5] + [m * 0.9 for _, _, m in fit + nofit]) / GiB
    off = sum(1 for _, _, m in nofit if m / GiB > x_max)
    ax.set_xlim(x_min, x_max)
    beyond = f"; {off} candidates beyond {x_max:.0f} GiB not shown" if off else ""
    ax.set_xlabel("peak memory per device (GiB)" + beyond)
    ax.set_ylabel("tokens / s / GPU")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")
    return _png(fig)


def sensitivity_figure(panels: Sequence[tuple[str, Sequence[float],
                                               Mapping[str, Sequence[tuple[float, bool] | None]]]]) -> bytes:
    """One panel per input: predicted step time against the input's scale factor, one line per plan.

    ``panels``: (title, factors, {plan name: (step time, fits) or None where the plan becomes invalid});
    points that no longer fit in memory are hollow.
    """
    n = len(panels)
    fig, axes = _new(2.9 * n, 3.4, 1, n, left_in=0.7, top_in=0.8, wspace=0.35)
    colors = ("#e45756", "#4c78a8", "#54a24b")
    for ax, (title, factors, series) in zip(axes[0], panels):
        for i, (name, vals) in enumerate(series.items()):
            pts = [(f, v[0], v[1]) for f, v in zip(factors, vals) if v is not None]
            color = colors[i % len(colors)]
            ax.plot([f for f, _, _ in pts], [t for _, t, _ in pts], color=color,
                    label=name if ax is axes[0][0] else None)
            for fits in (True, False):
                sel = [(f, t) for f, t, ok in pts if ok == fits]
                if sel:
                    ax.scatter([f for f, _ in sel], [t for _, t in sel], color=color if fits else "white",
                               edgecolors=color, zorder=3, s=24)
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(factors), [f"x{f:g}" for f in factors])
        ax.minorticks_off()
        ax.set_title(title, fontsize=9)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("predicted step time (s)")
    fig.legend(fontsize=8, loc="upper center", ncol=2, frameon=False)
    return _png(fig)


def partition_figure(chunks: Sequence[tuple[int, int, int, float]]) -> bytes:
    """Per model chunk (chunk, pp rank, layers, fwd+bwd seconds per micro-batch): layers and time."""
    fig, axes = _new(10, 3.2, 1, 2, left_in=0.7, top_in=0.2, wspace=0.3)
    xs = [c for c, _, _, _ in chunks]
    ranks = [r for _, r, _, _ in chunks]
    palette = ("#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d")
    colors = [palette[r % len(palette)] for r in ranks]
    axes[0][0].bar(xs, [n for _, _, n, _ in chunks], color=colors)
    axes[0][0].set_ylabel("transformer layers")
    axes[0][1].bar(xs, [t * 1e3 for _, _, _, t in chunks], color=colors)
    axes[0][1].set_ylabel("fwd + bwd ms per micro-batch")
    for ax in axes[0]:
        ax.set_xlabel("model chunk (colour: pipeline rank)")
        ax.grid(axis="y", alpha=0.3)
        if len(xs) <= 24:
            ax.set_xticks(xs)
        _few_bars(ax, len(xs))
    return _png(fig)


def compare_figure(kinds: Sequence[str], predicted_s: Sequence[float], measured_s: Sequence[float]) -> bytes:
    """Busy seconds per step by track kind, predicted beside measured."""
    fig, ax = _new(8, 3.2, left_in=0.8, top_in=0.3)
    ax = ax[0][0]
    xs = list(range(len(kinds)))
    ax.bar([x - 0.2 for x in xs], predicted_s, width=0.4, color="#4c78a8", label="predicted")
    ax.bar([x + 0.2 for x in xs], measured_s, width=0.4, color="#f58518", label="measured")
    ax.set_xticks(xs, list(kinds))
    ax.set_ylabel("busy seconds (mean over ranks)")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _png(fig)
