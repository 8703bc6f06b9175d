"""`python -m planner <command>`: subcommands that return exit codes.

Each command lives in ``planner/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``. A PlannerError becomes one line on stderr with its documented exit
code (planner/errors.py); an unexpected exception also becomes one line (exit 1) unless
``--verbose`` asks for the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from planner import __version__
from planner.errors import PlannerError

COMMANDS = {
    "search": "find the fastest plan that fits (main entry)",
    "estimate": "price one fully specified configuration",
    "validate": "compare the cost model with published training runs",
    "compare": "lay a measured runtime trace beside the plan's prediction",
    "rebalance": "re-split layers from measured stage times and write a new plan",
    "presets": "list built-in models and clusters",
}


class _Parser(argparse.ArgumentParser):
    """argparse prints usage + error and exits 2; keep the error to one line."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"error: {self.prog}: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="planner", description="hybridplan: auto-parallel planner for LLM training")
    parser.add_argument("--version", action="version", version=f"hybridplan {__version__}")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging and full tracebacks")
    sub = parser.add_subparsers(dest="command", parser_class=_Parser)
    for name, help_text in COMMANDS.items():
        try:
            module = importlib.import_module(f"planner.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"planner.commands.{name}":
                raise
            continue
        p = sub.add_parser(name, help=help_text, description=help_text)
        p.add_argument("--verbose", "-v", action="store_true", default=argparse.SUPPRESS,
                       help="debug logging and full tracebacks")
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    verbose = False
    while argv and argv[0] in ("-v", "--verbose"):
        verbose = True
        argv = argv[1:]
    if argv and not argv[0].startswith("-") and argv[0] not in COMMANDS:
        print(f"error: unknown command {argv[0][:100]!r} (expected one of: {', '.join(COMMANDS)})", file=sys.stderr)
        return 2
    if not argv or argv[0] not in COMMANDS and argv[0] not in ("-h", "--help", "--version"):
        argv = ["search", *argv]  # search is the main job: `python -m planner` runs the built-in default
    parser = build_parser()
    args = parser.parse_args(argv)
    verbose = verbose or bool(getattr(args, "verbose", False))
    logging.basicConfig(level=logging.DEBUG if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not hasattr(args, "_run"):
        print(f"error: command {args.command!r} is not available in this build", file=sys.stderr)
        return 2
    try:
        return int(args._run(args) or 0)
    except PlannerError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        return 0
    except Exception as exc:  # never a traceback for users; --verbose shows it
        if verbose:
            raise
        msg = " ".join(str(exc).split()) or type(exc).__name__
        print(f"error: internal error ({type(exc).__name__}): {msg} (re-run with --verbose for details)",
              file=sys.stderr)
        return 1
