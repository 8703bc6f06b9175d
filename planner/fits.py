"""Alpha-beta fits of collective time against message size, with monotone bandwidth.

Model (Hockney 1994; Thakur, Rabenseifner & Gropp 2005 eq. 1): ``time_s = alpha_s + beta_s_per_byte * nbytes``.
``alpha_s`` is the start-up latency, ``1 / beta_s_per_byte`` the asymptotic bandwidth the collective
achieves *as measured* (so the algorithm's factor, e.g. 2(p-1)/p for a ring all-reduce, is inside beta).

Why these choices:
- The fit minimises *relative* squared error, sum(((alpha + beta n_i) - t_i) / t_i)^2: message sizes span
  five or more orders of magnitude, and an absolute least-squares fit would ignore every small message.
- Both coefficients are constrained to be >= 0 (an exact two-variable non-negative least squares by
  active sets). With alpha >= 0 and beta >= 0, time is non-decreasing in size and the effective bandwidth
  ``n / (alpha + beta n)`` is non-decreasing in n: a larger message never looks faster per byte than
  the asymptote allows, and never takes less time than a smaller one.
- The fit is made on the median time of each message size (robust to the scheduler hiccups of a shared
  CPU), and keeps every size's relative residual so a reader can see where the line is poor.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass
from typing import Iterable, Sequence

from planner.errors import SpecError


@dataclass(frozen=True)
class AlphaBetaFit:
    """One fitted curve, per (op, group_size, link_level) in a profile."""

    alpha_s: float
    """Start-up latency (seconds), >= 0."""
    beta_s_per_byte: float
    """Seconds per byte of message, >= 0; 1 / beta is the asymptotic bandwidth."""
    min_bytes: float
    """Smallest message size measured."""
    max_bytes: float
    """Largest message size measured."""
    num_samples: int
    """Raw samples behind the fit (all repeats of all sizes)."""
    residuals: tuple[tuple[float, float], ...]
    """(nbytes, relative residual (predicted - median) / median) per measured size."""

    @property
    def bandwidth_bytes_per_s(self) -> float:
        """Asymptotic bandwidth 1 / beta (inf when the fit found no size dependence)."""
        return math.inf if self.beta_s_per_byte <= 0 else 1.0 / self.beta_s_per_byte

    @property
    def max_abs_residual(self) -> float:
        return max((abs(r) for _, r in self.residuals), default=0.0)

    @property
    def rms_residual(self) -> float:
        if not self.residuals:
            return 0.0
        return math.sqrt(sum(r * r for _, r in self.residuals) / len(self.residuals))

    def time_s(self, nbytes: float) -> float:
        """Predicted time of one collective of ``nbytes`` (monotone non-decreasing in nbytes)."""
        return self.alpha_s + self.beta_s_per_byte * max(0.0, float(nbytes))

    def effective_bandwidth_bytes_per_s(self, nbytes: float) -> float:
        """``nbytes / time``: non-decreasing in nbytes because alpha >= 0."""
        t = self.time_s(nbytes)
        return nbytes / t if t > 0 else math.inf

    def to_dict(self) -> dict:
        return {"alpha_s": self.alpha_s, "beta_s_per_byte": self.beta_s_per_byte,
                "bandwidth_bytes_per_s": None if math.isinf(self.bandwidth_bytes_per_s)
                else self.bandwidth_bytes_per_s,
                "min_bytes": self.min_bytes, "max_bytes": self.max_bytes, "num_samples": self.num_samples,
                "rms_relative_residual": self.rms_residual, "max_relative_residual": self.max_abs_residual,
                "residuals": [{"nbytes": n, "relative_residual": r} for n, r in self.residuals]}


def median_by_size(samples: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """[(nbytes, median time_s)] sorted by size, from raw (nbytes, time_s) samples."""
    by: dict[float, list[float]] = {}
    for n, t in samples:
        by.setdefault(float(n), []).append(float(t))
    return [(n, statistics.median(ts)) for n, ts in sorted(by.items())]


def _nnls2(xs: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """argmin_{a,b >= 0} sum(((a + b x_i) - y_i) / y_i)^2, exactly, by enumerating active sets.

    Dividing by y_i turns it into ordinary least squares with rows (1/y_i, x_i/y_i) -> 1; with two
    unknowns the KKT solution is the unconstrained one if feasible, else the best of the two
    one-variable fits (a = 0 or b = 0), each clamped at 0.
    """
    u = [1.0 / y for y in ys]
    v = [x / y for x, y in zip(xs, ys)]
    suu = sum(a * a for a in u)
    svv = sum(b * b for b in v)
    suv = sum(a * b for a, b in zip(u, v))
    su1 = sum(u)
    sv1 = sum(v)

    def loss(a: float, b: float) -> float:
        return sum((a * ui + b * vi - 1.0) ** 2 for ui, vi in zip(u, v))

    det = suu * svv - suv * suv
    candidates: list[tuple[float, float]] = []
    if det > 1e-300 * max(1.0, suu * svv):
        a = (su1 * svv - sv1 * suv) / det
        b = (sv1 * suu - su1 * suv) / det
        if a >= 0 and b >= 0:
            return a, b
    candidates.append((max(0.0, su1 / suu) if suu > 0 else 0.0, 0.0))
    candidates.append((0.0, max(0.0, sv1 / svv) if svv > 0 else 0.0))
    return min(candidates, key=lambda ab: loss(*ab))


def fit_alpha_beta(samples: Iterable[tuple[float, float]]) -> AlphaBetaFit:
    """Fit ``time = alpha + beta * nbytes`` (alpha, beta >= 0) to raw (nbytes, time_s) samples."""
    raw = [(float(n), float(t)) for n, t in samples]
    if not raw:
        raise SpecError("cannot fit a collective curve to zero samples")
    for n, t in raw:
        if not (math.isfinite(n) and math.isfinite(t)) or n < 0 or t <= 0:
            raise SpecError(f"collective sample must have nbytes >= 0 and time_s > 0, got ({n}, {t})")
    med = median_by_size(raw)
    xs = [n for n, _ in med]
    ys = [t for _, t in med]
    if len(med) == 1:
        # One size: no slope information; attribute it all to bandwidth unless the message is empty.
        alpha, beta = (ys[0], 0.0) if xs[0] == 0 else (0.0, ys[0] / xs[0])
    else:
        alpha, beta = _nnls2(xs, ys)
    residuals = tuple((n, (alpha + beta * n - t) / t) for n, t in med)
    return AlphaBetaFit(alpha_s=alpha, beta_s_per_byte=beta, min_bytes=xs[0], max_bytes=xs[-1],
                        num_samples=len(raw), residuals=residuals)
