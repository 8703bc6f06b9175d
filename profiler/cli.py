"""`python -m profiler {layers,links,merge}`: subcommands that return exit codes (STYLE.md 16).

A PlannerError becomes one line on stderr with its documented exit code (planner/errors.py).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from planner.errors import PlannerError, SpecError
from planner.profile import COLLECTIVE_OPS, Profile


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def _int_list(text: str) -> list[int]:
    try:
        vals = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not vals or any(v <= 0 for v in vals):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return vals


def _bytes(text: str) -> int:
    units = {"k": 2**10, "m": 2**20, "g": 2**30}
    t = text.strip().lower().removesuffix("ib").removesuffix("b")
    mult = units.get(t[-1:], 1)
    try:
        v = int(float(t[:-1] if t[-1:] in units else t) * mult)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a size such as 4096, 64KiB or 16MiB, got {text!r}") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"size must be positive, got {text!r}")
    return v


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="profiler", description="measure this environment into a hybridplan profile")
    p.add_argument("--verbose", "-v", action="store_true")
    sub = p.add_subparsers(dest="command", parser_class=_Parser)

    lay = sub.add_parser("layers", help="time each distinct block per TP degree and micro-batch shape")
    lay.add_argument("--model", required=True, help="preset name, HF config.json or spec file")
    lay.add_argument("--tp", type=_int_list, default=[1], help="TP degrees, e.g. 1,2,4")
    lay.add_argument("--micro-batch", type=_int_list, default=[1], help="micro-batch sizes, e.g. 1,2,4")
    lay.add_argument("--seq", type=_int_list, default=None, help="sequence lengths (default: the model's)")
    lay.add_argument("--sequence-parallel", action="store_true", help="also time the SP variants (tp > 1)")
    lay.add_argument("--concurrency", type=int, default=1,
                     help="run this many identical timing processes at once (CPU: the ranks that will share "
                          "the cores in training)")
    lay.add_argument("--threads", type=int, default=None, help="torch intra-op threads per process "
                     "(default: cores // concurrency, as the runtime sets them)")
    lay.add_argument("--warmup", type=int, default=2)
    lay.add_argument("--repeats", type=int, default=7)
    lay.add_argument("--out", required=True, help="profile JSON to write")

    links = sub.add_parser("links", help="sweep collectives over message sizes (torchrun, or --nproc N)")
    links.add_argument("--nproc", type=int, default=None, help="spawn N local gloo processes instead of torchrun")
    links.add_argument("--ops", default=",".join(COLLECTIVE_OPS), help="comma-separated collectives")
    links.add_argument("--min-bytes", type=_bytes, default=4096)
    links.add_argument("--max-bytes", type=_bytes, default=16 * 2**20)
    links.add_argument("--factor", type=int, default=4, help="size multiplier between sweep points")
    links.add_argument("--warmup", type=int, default=2)
    links.add_argument("--repeats", type=int, default=7)
    links.add_argument("--threads", type=int, default=None, help="torch threads per process (CPU)")
    links.add_argument("--no-grad-sync", action="store_true",
                       help="skip timing the runtime's compressed gradient syncs (profiler/grad_sync.py)")
    links.add_argument("--out", required=True, help="profile JSON to write (rank 0)")

    merge = sub.add_parser("merge", help="merge profiles of several runs on the same device")
    merge.add_argument("inputs", nargs="+")
    merge.add_argument("--out", required=True)
    merge.add_argument("--average", action="store_true",
                       help="a block measured in several inputs gets the mean of their times (default: the latest)")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not args.command:
        build_parser().print_help()
        return 2
    try:
        return int(_run(args) or 0)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130


def _run(args: argparse.Namespace) -> int:
    if args.command == "merge":
        merged = Profile.merge((Profile.load(p) for p in args.inputs), average=args.average)
        merged.save(args.out)
        print(f"merged {len(args.inputs)} profiles -> {args.out}")
        return 0
    if args.command == "links":
        from profiler.links_main import run_links

        return run_links(args)
    if args.command == "layers":
        from profiler.layers_main import run_layers

        return run_layers(args)
    raise SpecError(f"unknown command {args.command!r}")


def default_threads(concurrency: int) -> int:
    """Cores shared evenly among the ranks on this host (never fewer than one thread)."""
    return max(1, (os.cpu_count() or 1) // max(1, concurrency))
