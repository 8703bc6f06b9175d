"""Entry of `python -m profiler links`: one worker per rank (torchrun or local gloo processes)."""

from __future__ import annotations

import argparse
import os

from planner.errors import SpecError
from planner.profile import COLLECTIVE_OPS, DeviceRate, Profile


def links_worker(opts: dict) -> None:
    """Runs on every rank; rank 0 writes the profile."""
    import torch
    import torch.distributed as dist

    from profiler.env import make_header
    from profiler.links import LinkSweep, init_from_env, run_sweep

    if opts.get("threads"):
        torch.set_num_threads(int(opts["threads"]))
    device, backend, per_node = init_from_env()
    sweep = LinkSweep(ops=tuple(opts["ops"]), min_bytes=opts["min_bytes"], max_bytes=opts["max_bytes"],
                      factor=opts["factor"], warmup=opts["warmup"], repeats=opts["repeats"])
    try:
        samples = run_sweep(sweep, per_node, device)
        rates = ()
        if opts.get("grad_sync", True):
            from profiler.grad_sync import compressed_sync_rates, rate_name

            world = dist.get_world_size()
            rates = tuple(DeviceRate(name=rate_name(m, world), value=v, concurrency=per_node)
                          for m, v in compressed_sync_rates(per_node, device, repeats=opts["repeats"]).items())
        if dist.get_rank() == 0:
            header = make_header(device, backend, dist.get_world_size(), per_node,
                                 notes=f"links: {torch.get_num_threads()} threads per rank")
            Profile(header=header, collectives=tuple(samples), device_rates=rates).save(opts["out"])
        dist.barrier()
    finally:
        dist.destroy_process_group()


def run_links(args: argparse.Namespace) -> int:
    ops = [o.strip() for o in args.ops.split(",") if o.strip()]
    bad = [o for o in ops if o not in COLLECTIVE_OPS]
    if bad:
        raise SpecError(f"unknown collective {bad[0]!r} (expected {', '.join(COLLECTIVE_OPS)})")
    if args.factor < 2 or args.min_bytes > args.max_bytes or args.repeats < 1 or args.warmup < 0:
        raise SpecError("links: need --factor >= 2, --min-bytes <= --max-bytes, --repeats >= 1, --warmup >= 0")
    opts = dict(ops=ops, min_bytes=args.min_bytes, max_bytes=args.max_bytes, factor=args.factor,
                warmup=args.warmup, repeats=args.repeats, out=os.path.abspath(args.out), threads=args.threads,
                grad_sync=not getattr(args, "no_grad_sync", False))
    if args.nproc is None:
        if "RANK" not in os.environ:
            raise SpecError("links needs several ranks: run it under torchrun, or pass --nproc N")
        links_worker(opts)
    else:
        if args.nproc < 2:
            raise SpecError(f"--nproc must be at least 2 to measure collectives, got {args.nproc}")
        from profiler.launch import launch_local

        if not opts["threads"]:
            from profiler.cli import default_threads

            opts["threads"] = default_threads(args.nproc)
        launch_local(links_worker, args.nproc, opts, threads_per_rank=opts["threads"])
    if os.environ.get("RANK", "0") == "0":
        print(_summary(Profile.load(args.out)))
    return 0


def _summary(p: Profile) -> str:
    lines = [f"profile {p.header.device}, {p.header.backend}, world {p.header.world_size}:",
             f"{'op':<15}{'group':>6} {'level':<11}{'alpha_us':>10}{'GB/s':>9}{'rms_resid':>10}"]
    for (op, g, lvl), fit in p.fits.items():
        bw = fit.bandwidth_bytes_per_s / 1e9
        lines.append(f"{op:<15}{g:>6} {lvl:<11}{fit.alpha_s * 1e6:>10.1f}{bw:>9.3f}{fit.rms_residual:>10.1%}")
    return "\n".join(lines)
