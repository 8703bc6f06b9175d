"""Benchmark: DP gradient sync methods on local gloo processes, time relative to plain all-reduce + bytes.

    python bench/comm_sync.py [--elements 100000000] [--world-sizes 2 4] [--reps 3]

For one gradient of ``--elements`` fp32 entries on each of p forked ranks (runtime.local_launch), every
method runs through the same code the DDP hooks run (runtime/aggregation.py, runtime/compression.py):
ring all-reduce (the baseline, as DDP: divide + all_reduce), hierarchical (``--devices-per-node`` fake
nodes, default p / 2), central parameter server, fp16, bf16, int8, top-k (1 %, error feedback), PowerSGD
(rank 4, the gradient viewed as one square matrix, after its 2 uncompressed warm-up calls). Each timed
rep syncs a fresh copy of the gradient in place, as DDP syncs its buckets.

Printed per method, in one run: median wall time over ``--reps`` (each rep: barrier, sync, max over
ranks), its ratio to ring all-reduce, the bytes each rank sent, MEASURED from the kernel's per-process
write counter (/proc/self/io wchar: gloo's TCP transport writes every byte it sends with write/writev;
max over ranks: the PS server / node leaders), and the bytes planner/compression.py predicts for a flat
ring (compression methods only; the topologies are priced by planner/collectives.py).

On one machine every "link" is loopback on shared cores, so the times mix compute (codecs, 2 cores for p
ranks) with transfer; ratios show the codec cost that a fast network would expose. Not a unit test.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.distributed as dist  # noqa: E402

from planner import compression as model  # noqa: E402
from runtime.aggregation import DpGroups, make_sum  # noqa: E402
from runtime.compression import FlatBucket, make_state, sync  # noqa: E402
from runtime.local_launch import run_ranks  # noqa: E402

TOPOLOGIES = ("allreduce", "hierarchical", "ps")
COMPRESSIONS = (("fp16", 0.0), ("bf16", 0.0), ("int8", 0.0), ("topk", 0.01), ("powersgd", 4.0))


def _wchar() -> int:
    with open("/proc/self/io") as f:
        for line in f:
            if line.startswith("wchar"):
                return int(line.split()[1])
    raise RuntimeError("/proc/self/io has no wchar")


def _worker(n: int, reps: int, dpn: int) -> dict[str, list[float]]:
    p = dist.get_world_size()
    groups = DpGroups(None, devices_per_node=dpn)
    x = torch.randn(n, generator=torch.Generator().manual_seed(dist.get_rank()))
    side = math.isqrt(n)
    shapes = [(side, n // side)] + ([(n - side * (n // side),)] if n % side else [])
    runs = {}
    for mode in TOPOLOGIES:  # as DDP without a hook: divide, then sum in place
        runs[mode] = (lambda t, fn=make_sum(mode, groups): fn(t.div_(p)), 0)
    for method, param in COMPRESSIONS:
        state = make_state(method, param, "allreduce", groups, overlap=False, warmup_steps=2)
        runs[method] = (lambda t, st=state: sync(st, FlatBucket(t, shapes)), 2 if method == "powersgd" else 0)
    runs["allreduce"] = (runs["allreduce"][0], 1)  # one untimed call first: pages, connections
    for run, warmup in runs.values():
        for _ in range(warmup):
            run(x.clone())
    times: dict[str, list[float]] = {name: [] for name in runs}
    sent: dict[str, list[int]] = {name: [] for name in runs}
    for _ in range(reps):  # rep-major: a burst of load on the shared machine hits every method alike
        for name, (run, _) in runs.items():
            grad = x.clone()  # a fresh gradient, outside the timed region (DDP syncs its buckets in place)
            dist.barrier()
            w0, t0 = _wchar(), time.perf_counter()
            run(grad)
            dt = torch.tensor([time.perf_counter() - t0])
            sent[name].append(_wchar() - w0)
            dist.all_reduce(dt, op=dist.ReduceOp.MAX)
            times[name].append(dt.item())
            del grad
    # min bytes: a log line may add a few; median time over reps
    out = {name: [statistics.median(times[name]), float(min(sent[name]))] for name in runs}
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--elements", type=int, default=100_000_000)
    ap.add_argument("--world-sizes", type=int, nargs="+", default=[2, 4])
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--devices-per-node", type=int, default=0, help="fake node size (default p / 2)")
    args = ap.parse_args(argv)
    n = args.elements
    t_start = time.perf_counter()
    print(f"gradient: {n:,} fp32 elements ({n * 4 / 1e6:.0f} MB) per rank; gloo on {torch.get_num_threads()} "
          f"threads here; median of {args.reps} reps")
    for p in args.world_sizes:
        dpn = args.devices_per_node or max(1, p // 2)
        res = run_ranks(_worker, p, n, args.reps, dpn, timeout_s=900).values
        base_s = max(r["allreduce"][0] for r in res)
        print(f"\np = {p} ranks (hierarchical: nodes of {dpn})")
        print(f"{'method':13s} {'time_s':>8s} {'vs ring':>8s} {'sent MB/rank (max)':>19s} "
              f"{'vs ring':>8s} {'model MB/rank':>14s}")
        base_b = max(r["allreduce"][1] for r in res)
        for name in (*TOPOLOGIES, *(m for m, _ in COMPRESSIONS)):
            t = max(r[name][0] for r in res)
            b = max(r[name][1] for r in res)
            param = dict(COMPRESSIONS).get(name)
            pred = "-" if param is None else f"{model.sync_bytes_per_rank(name, n, param, 4, p) / 1e6:14.1f}"
            if name == "allreduce":
                pred = f"{model.sync_bytes_per_rank('none', n, 0, 4, p) / 1e6:14.1f}"
            print(f"{name:13s} {t:8.3f} {t / base_s:8.2f} {b / 1e6:19.1f} {b / base_b:8.3f} {pred:>14s}")
    print(f"\nbench wall time {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
