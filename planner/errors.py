"""Typed errors the CLI turns into one line on stderr and a documented exit code.

Exit codes (README "Exit codes"):
  2  invalid input: malformed spec/config/plan file, impossible cluster, bad CLI value,
     a request no parallel layout can satisfy (world size, batch divisibility, nothing fits)
  3  the configuration is valid but does not fit in device memory (``estimate``)
  4  a check failed (``validate`` thresholds missed, ``runtime verify`` past tolerance)
  5  runtime: a collective timed out (a rank stopped responding; runtime/faults.py names the rank and op)
"""

from __future__ import annotations

EXIT_INVALID = 2
EXIT_DOES_NOT_FIT = 3
EXIT_CHECK_FAILED = 4


class PlannerError(Exception):
    """Base class: a user-facing error whose message is one line and whose exit code is documented."""

    exit_code = EXIT_INVALID

    def __init__(self, message: str):
        # One line, always: the CLI prints str(self) and nothing else.
        super().__init__(" ".join(str(message).split()))


class SpecError(PlannerError):
    """A model, cluster, profile or plan description is malformed or inconsistent."""


class ConfigError(PlannerError):
    """A parallel configuration is inconsistent with the model or the cluster."""


class InfeasibleError(PlannerError):
    """No configuration satisfies the request (nothing fits, nothing divides)."""


class DoesNotFitError(PlannerError):
    """A valid configuration whose memory per rank exceeds the device capacity."""

    exit_code = EXIT_DOES_NOT_FIT


class CheckFailedError(PlannerError):
    """A numerical check (validation against published runs, runtime verification) failed."""

    exit_code = EXIT_CHECK_FAILED
