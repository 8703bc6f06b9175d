"""The measured per-rank timeline, written in planner.trace_schema's Chrome / Perfetto format.

Each rank records, per traced step, its F / B / W slices per (chunk, micro-batch) (runtime.pipeline
``StageTimer`` or the pp = 1 loop), the gradient finalisation (reductions left after backward,
clipping: track 'dp', kind 'S') and the optimizer step (track 'compute', kind 'O'). Times are taken
with ``time.perf_counter`` after a barrier at the start of the traced window, so on one machine the
ranks share an origin (across machines the origin is the barrier's exit, skewed by its latency).
The per-rank events travel to rank 0 as JSON bytes (no pickles) and rank 0 writes the file.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from planner import trace_schema


class TimelineRecorder:
    """Collects this rank's slices across steps, relative to ``origin_s``."""

    def __init__(self, rank: int, origin_s: float):
        self.rank, self.origin_s = rank, origin_s
        self.events: list[dict[str, Any]] = []

    def _us(self, t: float) -> float:
        return max(0.0, (t - self.origin_s) * 1e6)

    def add_step(self, step: int, records: list[tuple[str, int, int, float, float]],
                 sync_span: tuple[float, float] | None, opt_span: tuple[float, float] | None) -> None:
        for kind, chunk, mb, t0, t1 in records:
            self.events.append({"track": "compute", "name": f"{kind}{mb} c{chunk}", "ts": self._us(t0),
                                "dur": (t1 - t0) * 1e6, "chunk": chunk, "microbatch": mb, "kind": kind, "step": step})
        if sync_span is not None:
            a, b = sync_span
            self.events.append({"track": "dp", "name": "grad finalize + clip", "ts": self._us(a), "dur": (b - a) * 1e6,
                                "chunk": None, "microbatch": None, "kind": "S", "step": step})
        if opt_span is not None:
            a, b = opt_span
            self.events.append({"track": "compute", "name": "optimizer", "ts": self._us(a), "dur": (b - a) * 1e6,
                                "chunk": None, "microbatch": None, "kind": "O", "step": step})


def gather_json(obj: Any) -> list[Any] | None:
    """All ranks' ``obj`` on rank 0 (None elsewhere), as JSON over uint8 tensors."""
    data = json.dumps(obj).encode()
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return [obj]
    device = torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")
    size = torch.tensor([len(data)], dtype=torch.long, device=device)
    sizes = [torch.zeros_like(size) for _ in range(dist.get_world_size())]
    dist.all_gather(sizes, size)
    longest = int(max(s.item() for s in sizes))
    buf = torch.zeros(longest, dtype=torch.uint8, device=device)
    buf[:len(data)] = torch.frombuffer(bytearray(data), dtype=torch.uint8).to(device)
    bufs = [torch.zeros_like(buf) for _ in sizes]
    dist.all_gather(bufs, buf)
    if dist.get_rank() != 0:
        return None
    return [json.loads(bytes(b[: int(s.item())].cpu().tolist()).decode()) for b, s in zip(bufs, sizes)]


def write_trace(path: str | Path, recorder: TimelineRecorder, **other: Any) -> Path | None:
    """Collective: gather every rank's events and write the validated trace on rank 0."""
    per_rank = gather_json(recorder.events)
    if per_rank is None:
        return None
    builder = trace_schema.TraceBuilder("measured", **other)
    for rank, evs in enumerate(per_rank):
        for e in evs:
            builder.add(rank, e["track"], e["name"], e["ts"], e["dur"], chunk=e["chunk"], microbatch=e["microbatch"],
                        kind=e["kind"], step=e["step"])
    return trace_schema.save(path, builder.to_dict())
