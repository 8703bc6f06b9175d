"""Profile: measured block times and collective curves of one environment; one module reads and writes it.

File format: JSON (human-readable, diff-able), ``kind = "hybridplan.profile"``, ``schema_version = 1``::

    {"kind": "hybridplan.profile", "schema_version": 1,
     "header": {"device": "...", "backend": "gloo", "torch_version": "2.13.0", "nccl_version": null,
                "world_size": 4, "nodes": 1, "devices_per_node": 4, "date": "2025-...Z", "host": "...",
                "notes": "..."},
     "models": {"tiny-llama": {<ModelSpec.to_dict()>}},      # architectures the block records belong to
     "blocks": [{"model", "block_kind", "tp", "micro_batch", "seq_len", "sequence_parallel", "dtype",
                 "concurrency", "forward_s", "backward_s", "recompute_s", "forward_spread_s",
                 "backward_spread_s", "repeats", "peak_memory_bytes"}, ...],
     "collectives": [{"op", "group_size", "link_level", "concurrency", "nbytes", "time_s"}, ...],  # raw samples
     "device_rates": [{"name", "concurrency", "value"}, ...],    # see below
     "fits": [...]}                                               # derived, written for readers only

Device rates (per rank, all ranks running): ``matmul_<dtype>`` FLOP/s of a 512^3 matmul,
``memory_bandwidth`` bytes/s of a streaming add, ``optimizer_adamw_s_per_param`` seconds per parameter of
the runtime's gradient clipping and AdamW step (``..._tp<t>``: over tensor-parallel DTensors, per local parameter),
``grad_sync_<method>_g<group>_s_per_element`` the runtime's compressed gradient sync per element
(profiler/grad_sync.py). Long-form records, no keys parsed out of strings (STYLE.md 7). ``fits`` are
recomputed from the raw samples on load (one source of truth), so they can never disagree with them.

``concurrency``: how many ranks ran on this host while the record was measured. On a CPU host the
ranks share the cores, so a block measured alone is faster than it will be in an N-process run; the
profiler measures with all N running (issue #5) and queries pick records of the concurrency the plan
runs at (``for_cluster``; default: the header's world size when present, else the largest measured).

Interpolation (``block_time_s``, ``recompute_time_s``): for a (model, block_kind, tp, sequence_parallel,
dtype, concurrency) the measured shapes are points on ``tokens = micro_batch * seq_len``. Records with the
same ``seq_len`` are preferred (attention is quadratic in seq_len, so mixing lengths is a last resort);
time is piecewise linear in tokens between measured points and extends the nearest segment (or scales
proportionally from a single point) at most ``EXTRAPOLATION_FACTOR`` beyond the measured range. Outside
that, or for an unmeasured tp / block kind, the answer is None (not covered): the caller falls back to
its analytical estimate and warns. Collectives: the fitted alpha-beta line (planner/fits.py) for the
exact (op, group_size, link_level), up to ``EXTRAPOLATION_FACTOR`` x the largest message measured.
"""


from __future__ import annotations

import dataclasses
import statistics
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

from planner.errors import SpecError
from planner.fits import AlphaBetaFit, fit_alpha_beta
from planner.profile_records import (BLOCK_KINDS, COLLECTIVE_OPS, EXTRAPOLATION_FACTOR, LINK_LEVELS,  # noqa: F401
                                     PROFILE_KIND, SCHEMA_VERSION, BlockRecord, CollectiveSample, DeviceRate,
                                     ProfileHeader, _check_record, _from_row)


@dataclass(frozen=True)
class Profile:
    """Measured block times and collective curves; see the module docstring for the file and lookups."""

    header: ProfileHeader
    blocks: tuple[BlockRecord, ...] = ()
    collectives: tuple[CollectiveSample, ...] = ()
    device_rates: tuple[DeviceRate, ...] = ()
    models: dict[str, dict] = field(default_factory=dict)
    """Architecture (ModelSpec.to_dict()) of each model named by a block record."""
    concurrency: float | None = None
    """Which concurrency queries use; None: the header's world size if measured, else the largest. A level
    between two measured ones (a fractional average of busy ranks, planner/cost/shared_host.py) blends them."""

    def __post_init__(self) -> None:
        _check_record(self.header, 0, "profile")
        for i, r in enumerate(self.blocks + self.collectives + self.device_rates):
            _check_record(r, i, "profile")

    # --- concurrency selection -----------------------------------------------------------------
    @property
    def concurrency_levels(self) -> tuple[int, ...]:
        return tuple(sorted({r.concurrency for r in (*self.blocks, *self.collectives, *self.device_rates)}))

    @property
    def active_concurrency(self) -> float | None:
        levels = self.concurrency_levels
        if self.concurrency is not None or not levels:
            return self.concurrency
        return self.header.world_size if self.header.world_size in levels else levels[-1]

    def at_concurrency(self, n: float) -> "Profile":
        """The same profile answering queries from records measured with ``n`` ranks on the host."""
        return dataclasses.replace(self, concurrency=n)

    def _level_weights(self) -> tuple[tuple[int | float | None, float], ...]:
        """(measured level, weight) pairs the active concurrency reads from.

        A measured level reads alone. A level between two measured ones blends them linearly: with ranks
        sharing C cores, each of k > C busy ranks gets C / k of them, so a block's time grows linearly in k
        (processor sharing, Kleinrock 1967); measuring at two levels and interpolating keeps what the law
        misses (cache and memory-bandwidth contention) inside the measured numbers. Outside the measured
        range the nearest level answers (fewer busy ranks than measured cannot be extrapolated safely)."""
        conc = self.active_concurrency
        levels = self.concurrency_levels
        if conc is None or not levels or conc in levels:
            return ((conc, 1.0),)
        if conc <= levels[0]:
            return ((levels[0], 1.0),)
        if conc >= levels[-1]:
            return ((levels[-1], 1.0),)
        hi = next(lv for lv in levels if lv > conc)
        lo = levels[levels.index(hi) - 1]
        w = (conc - lo) / (hi - lo)
        return ((lo, 1.0 - w), (hi, w))

    def _blend(self, one) -> Any:
        """``one(level)`` blended over ``_level_weights``: a tuple of floats, a float, or None if any level
        has no answer."""
        got = []
        for level, w in self._level_weights():
            v = one(level)
            if v is None:
                return None
            got.append((v, w))
        if len(got) == 1:
            return got[0][0]
        if isinstance(got[0][0], tuple):
            return tuple(sum(v[i] * w for v, w in got) for i in range(len(got[0][0])))
        return sum(v * w for v, w in got)

    def for_cluster(self, cluster: Any) -> "Profile":
        """Queries for a cluster: a gloo cluster's ranks share one host (the ``cpu`` preset), so its
        devices_per_node is the concurrency; an accelerator per rank does not share compute, so the
        concurrency is the one measured (default selection)."""
        if getattr(cluster, "backend", "") == "gloo":
            return self.at_concurrency(int(cluster.devices_per_node))
        return self

    # --- block times -------------------------------------------------------------------------
    def block_time_s(self, block_kind: str, tp: int, micro_batch: int, seq_len: int, sequence_parallel: bool,
                     *, model: Any = None, dtype: str | None = None) -> tuple[float, float] | None:
        """(forward_s, backward_s) of one block at this shape, interpolated; None when not covered."""
        f = self._interpolate(block_kind, tp, micro_batch, seq_len, sequence_parallel, model, dtype,
                              lambda r: (r.forward_s, r.backward_s))
        return None if f is None else (f[0], f[1])

    def recompute_time_s(self, block_kind: str, tp: int, micro_batch: int, seq_len: int, sequence_parallel: bool,
                         *, model: Any = None, dtype: str | None = None) -> float | None:
        """Extra backward time of one block under full activation recompute (its forward re-run);
        None when not covered (callers may then use forward_s, which it approximates)."""
        f = self._interpolate(block_kind, tp, micro_batch, seq_len, sequence_parallel, model, dtype,
                              lambda r: None if r.recompute_s is None else (r.recompute_s,))
        return None if f is None else f[0]

    def _model_names(self, model: Any) -> set[str] | None:
        if model is None:
            return None
        if isinstance(model, str):
            return {model}
        want = _arch(model.to_dict())
        names = {name for name, d in self.models.items() if _arch(d) == want}
        name = getattr(model, "name", "")
        if name not in self.models:  # no architecture recorded under that name: trust the name
            names.add(name)
        return names

    def _interpolate(self, kind: str, tp: int, mb: int, seq: int, sp: bool, model: Any, dtype: str | None,
                     value) -> tuple[float, ...] | None:
        names = self._model_names(model)
        return self._blend(lambda conc: self._interpolate_at(conc, kind, tp, mb, seq, sp, names, dtype, value))

    def _interpolate_at(self, conc: Any, kind: str, tp: int, mb: int, seq: int, sp: bool, names: set[str] | None,
                        dtype: str | None, value) -> tuple[float, ...] | None:
        recs = [r for r in self.blocks if r.block_kind == kind and r.tp == tp and r.sequence_parallel == bool(sp)
                and r.concurrency == conc and (names is None or r.model in names)
                and (dtype is None or r.dtype == dtype) and value(r) is not None]
        if names is None and len({r.model for r in recs}) > 1:
            raise SpecError(f"profile holds {kind} times of several models ({', '.join(sorted({r.model for r in recs}))}); "
                            "pass model= to choose")
        same_seq = [r for r in recs if r.seq_len == seq]
        for pool in (same_seq, recs):
            got = _piecewise_linear([(r.tokens, value(r)) for r in pool], mb * seq)
            if got is not None:
                return got
        return None

    # --- collectives -------------------------------------------------------------------------
    @property
    def fits(self) -> dict[tuple[str, int, str], AlphaBetaFit]:
        """Alpha-beta fit per (op, group_size, link_level) at the active concurrency (at a blended level:
        the upper measured one; ``collective_time_s`` blends the two); raw samples in ``collectives``."""
        return self._fits_at(self._level_weights()[-1][0])

    def _fits_at(self, conc: Any) -> dict[tuple[str, int, str], AlphaBetaFit]:
        groups: dict[tuple[str, int, str], list[tuple[float, float]]] = {}
        for s in self.collectives:
            if s.concurrency == conc:
                groups.setdefault((s.op, s.group_size, s.link_level), []).append((s.nbytes, s.time_s))
        return {k: fit_alpha_beta(v) for k, v in sorted(groups.items())}

    def collective_time_s(self, op: str, group_size: int, link_level: str, nbytes: float) -> float | None:
        """Time of one collective from the fitted alpha-beta curve (monotone in nbytes); None if the
        (op, group_size, link_level) was not measured or nbytes is beyond the extrapolation limit."""
        if group_size <= 1:
            return 0.0

        def one(level: Any) -> float | None:
            fit = self._fits_cache(level).get((op, group_size, link_level))
            if fit is None or nbytes > fit.max_bytes * EXTRAPOLATION_FACTOR:
                return None
            return fit.time_s(nbytes)
        return self._blend(one)

    def _fits_cache(self, level: Any = None) -> dict[tuple[str, int, str], AlphaBetaFit]:
        """Fits per measured level, memoised on the instance (a frozen dataclass: set through __dict__)."""
        level = self._level_weights()[-1][0] if level is None else level
        memo = self.__dict__.setdefault("_fits_memo", {})
        got = memo.get(level)
        if got is None:
            got = memo[level] = self._fits_at(level)
        return got

    def device_rate(self, name: str) -> float | None:
        """Median of a measured device rate (e.g. 'matmul_fp32' FLOP/s) at the active concurrency."""
        def one(level: Any) -> float | None:
            vals = [r.value for r in self.device_rates if r.name == name and r.concurrency == level]
            return statistics.median(vals) if vals else None
        return self._blend(one)

    def grad_sync_s_per_element(self, method: str, group_size: int) -> float | None:
        """Measured seconds per gradient element of the runtime's ``method`` sync over ``group_size`` ranks
        (profiler/grad_sync.py: wire and codec together); None where not measured."""
        return self.device_rate(f"grad_sync_{method}_g{group_size}_s_per_element")

    def calibrated_cluster(self, cluster: Any) -> Any:
        """``cluster`` with its spec-sheet device rate and link numbers replaced by this profile's
        measurements (at the cluster's concurrency): peak FLOP/s from ``matmul_<dtype>`` rates, memory
        bandwidth from the streaming ``memory_bandwidth`` rate, and each
        link level's latency / bandwidth from the send_recv fit of 2 ranks (a point-to-point link as
        used under all ranks' load). Use with the ``cpu`` preset so analytical terms the profile does not
        cover still reflect this machine."""
        p = self.for_cluster(cluster)
        flops = dict(cluster.device.peak_flops)
        for dtype in list(flops):
            rate = p.device_rate(f"matmul_{dtype}")
            if rate:
                flops[dtype] = rate
        hbm = p.device_rate("memory_bandwidth") or cluster.device.hbm_bandwidth_bytes_per_s
        device = dataclasses.replace(cluster.device, peak_flops=flops, hbm_bandwidth_bytes_per_s=hbm,
                                     source=f"measured: profile of {self.header.device} ({self.header.date})")
        fits = p._fits_cache()
        links = []
        for level in cluster.links:
            fit = fits.get(("send_recv", 2, level.name))
            if fit is None or fit.beta_s_per_byte <= 0:
                links.append(level)
                continue
            links.append(dataclasses.replace(level, latency_s=fit.alpha_s, bandwidth_bytes_per_s=fit.bandwidth_bytes_per_s,
                                             source=f"measured: send_recv alpha-beta fit ({self.header.date})"))
        return dataclasses.replace(cluster, device=device, links=tuple(links))

    # --- (de)serialisation ---------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fits = []
        for conc in self.concurrency_levels:
            for (op, g, lvl), fit in self.at_concurrency(conc).fits.items():
                fits.append({"op": op, "group_size": g, "link_level": lvl, "concurrency": conc, **fit.to_dict()})
        return {"kind": PROFILE_KIND, "schema_version": SCHEMA_VERSION,
                "header": dataclasses.asdict(self.header), "models": self.models,
                "blocks": [dataclasses.asdict(r) for r in self.blocks],
                "collectives": [dataclasses.asdict(r) for r in self.collectives],
                "device_rates": [dataclasses.asdict(r) for r in self.device_rates],
                "fits": fits}

    def save(self, path: str | Path) -> Path:
        from planner.io import atomic_write_json

        return atomic_write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, data: Any, source: str = "profile") -> "Profile":
        if not isinstance(data, dict) or data.get("kind") != PROFILE_KIND:
            raise SpecError(f"{source}: not a hybridplan profile (expected kind {PROFILE_KIND!r})")
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise SpecError(f"{source}: profile schema version {version!r} is not supported (this tool reads "
                            f"version {SCHEMA_VERSION}); re-run `python -m profiler`")
        header = _from_row(ProfileHeader, data.get("header"), 0, f"{source}: header")
        models = data.get("models") or {}
        if not isinstance(models, dict):
            raise SpecError(f"{source}: models must map a model name to its spec")
        from planner.model_spec import ModelSpec

        for name, spec in models.items():
            ModelSpec.from_dict(spec, f"{source}: models[{name!r}]")  # a bad spec fails here, not in a query
        out = {}
        for key, klass in (("blocks", BlockRecord), ("collectives", CollectiveSample), ("device_rates", DeviceRate)):
            rows = data.get(key) or []
            if not isinstance(rows, list):
                raise SpecError(f"{source}: {key} must be a list of records")
            out[key] = tuple(_from_row(klass, row, i, source) for i, row in enumerate(rows))
        return cls(header=header, models=models, **out)

    @classmethod
    def load(cls, path: str | Path) -> "Profile":
        from planner.io import read_json

        return cls.from_dict(read_json(path, "profile"), str(path))

    @classmethod
    def merge(cls, profiles: Iterable["Profile"], average: bool = False) -> "Profile":
        """One profile from several runs on the same device: all raw samples kept; a block measured in
        several runs (same model, kind, tp, shape, sp, dtype, concurrency) keeps the latest run's record,
        or with ``average`` the mean of the runs' times (profiles taken before and after a measurement
        bracket it: a shared machine's speed drifts over minutes, and the mean is its speed in between)."""
        ps = list(profiles)
        if not ps:
            raise SpecError("nothing to merge: no profiles given")
        devices = {p.header.device for p in ps}
        if len(devices) > 1:
            raise SpecError(f"cannot merge profiles of different devices: {', '.join(sorted(devices))}")
        ps.sort(key=lambda p: p.header.date)
        latest = ps[-1].header
        widest = max(ps, key=lambda p: p.header.world_size).header
        runs: dict[tuple, list[BlockRecord]] = {}
        for p in ps:
            for r in p.blocks:
                runs.setdefault((r.model, r.block_kind, r.tp, r.micro_batch, r.seq_len, r.sequence_parallel, r.dtype,
                                 r.concurrency), []).append(r)
        blocks = {k: _mean_record(v) if average else v[-1] for k, v in runs.items()}
        header = dataclasses.replace(latest, world_size=widest.world_size, nodes=widest.nodes,
                                     devices_per_node=widest.devices_per_node,
                                     notes="; ".join(dict.fromkeys(p.header.notes for p in ps if p.header.notes)))
        models: dict[str, dict] = {}
        for p in ps:
            for name, spec in p.models.items():
                if name in models and _arch(models[name]) != _arch(spec):
                    raise SpecError(f"cannot merge: model {name!r} has different architectures in the profiles")
                models[name] = spec
        return cls(header=header, blocks=tuple(blocks.values()),
                   collectives=tuple(s for p in ps for s in p.collectives),
                   device_rates=tuple(r for p in ps for r in p.device_rates), models=models)


def _mean_record(recs: list[BlockRecord]) -> BlockRecord:
    """The latest record with every time replaced by the mean over ``recs`` (spreads: the largest)."""
    def mean(name: str) -> float | None:
        vals = [getattr(r, name) for r in recs]
        return None if any(v is None for v in vals) else sum(vals) / len(vals)
    return dataclasses.replace(recs[-1], forward_s=mean("forward_s"), backward_s=mean("backward_s"),
                               recompute_s=mean("recompute_s"),
                               forward_spread_s=max(r.forward_spread_s for r in recs),
                               backward_spread_s=max(r.backward_spread_s for r in recs),
                               repeats=sum(r.repeats for r in recs))


def _arch(spec: dict) -> dict:
    """The parts of a ModelSpec dict that change a block's cost (not its name, depth or default length)."""
    return {k: v for k, v in spec.items() if k not in ("name", "num_layers", "seq_len", "notes")}


def _piecewise_linear(points: list[tuple[int, tuple[float, ...]]], x: float) -> tuple[float, ...] | None:
    """Values at x, linear between measured points, extended at most EXTRAPOLATION_FACTOR outside."""
    if not points:
        return None
    by: dict[int, tuple[float, ...]] = {}
    for t, v in sorted(points):
        by[t] = v  # duplicates (same tokens, different shapes) : keep one
    xs = sorted(by)
    if x in by:
        return by[x]
    lo, hi = xs[0], xs[-1]
    if x < lo / EXTRAPOLATION_FACTOR or x > hi * EXTRAPOLATION_FACTOR:
        return None
    if len(xs) == 1:
        return tuple(v * x / lo for v in by[lo])
    if x < lo:
        a, b = xs[0], xs[1]
    elif x > hi:
        a, b = xs[-2], xs[-1]
    else:
        b = next(p for p in xs if p > x)
        a = xs[xs.index(b) - 1]
    w = (x - a) / (b - a)
    out = tuple(va + w * (vb - va) for va, vb in zip(by[a], by[b]))
    if any(v <= 0 for v in out):  # a falling end segment extended too far: scale the end point instead
        end = lo if x < lo else hi
        out = tuple(v * x / end for v in by[end])
    return out
