"""Training data: deterministic per global sample index, so every parallel layout sees the same samples.

Sample ``i`` (a sequence of ``seq_len + 1`` tokens; inputs are [:-1], labels [1:]) depends only on
``(seed, i)``. Step ``t`` consumes the global samples ``[t*B, (t+1)*B)``; data-parallel rank ``d``
takes the contiguous slice ``[d*B/dp, (d+1)*B/dp)`` of them, and splits it into micro-batches in
order. The single-process reference takes the same samples in the same (dp, micro-batch) order.
The loader's position (the next global sample index) is part of the checkpoint, so a resumed run
neither skips nor repeats a sample.

Sources:
* ``synthetic`` (default): learnable counting sequences ``x_k = (a + b*k) mod V`` with (a, b) drawn
  from a generator seeded by (seed, i); a model can learn them, so losses fall in smoke runs.
* ``bytes:PATH``: byte-level tokens (V must be >= 256) of a local text file; sample i is the window
  starting at a pseudo-random offset keyed by (seed, i).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from planner.errors import ConfigError, SpecError


class SyntheticSource:
    """Counting sequences mod V with a per-sample start and stride (deterministic in (seed, index))."""

    def __init__(self, vocab_size: int, seq_len: int, seed: int = 0):
        self.vocab_size, self.seq_len, self.seed = vocab_size, seq_len, seed

    def sample(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) & (2**63 - 1))
        a = int(torch.randint(0, self.vocab_size, (1,), generator=g))
        b = int(torch.randint(1, max(2, min(self.vocab_size, 17)), (1,), generator=g))
        k = torch.arange(self.seq_len + 1, dtype=torch.long)
        return (a + b * k) % self.vocab_size


class ByteFileSource:
    """Byte-level tokens of a local text file (0..255)."""

    def __init__(self, path: str | Path, vocab_size: int, seq_len: int, seed: int = 0):
        if vocab_size < 256:
            raise ConfigError(f"byte-level data needs a vocabulary of at least 256, the model has {vocab_size}")
        try:
            data = Path(path).read_bytes()
        except OSError as exc:
            raise SpecError(f"cannot read text data {path}: {exc.strerror or exc}") from None
        if len(data) < seq_len + 2:
            raise SpecError(f"text data {path} has {len(data)} bytes, fewer than one sequence ({seq_len + 1})")
        self.tokens = torch.frombuffer(bytearray(data), dtype=torch.uint8).long()
        self.seq_len, self.seed = seq_len, seed

    def sample(self, index: int) -> torch.Tensor:
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + index) & (2**63 - 1))
        start = int(torch.randint(0, len(self.tokens) - self.seq_len - 1, (1,), generator=g))
        return self.tokens[start:start + self.seq_len + 1]


def make_source(spec: str, vocab_size: int, seq_len: int, seed: int = 0):
    """'synthetic' or 'bytes:PATH'."""
    if spec == "synthetic":
        return SyntheticSource(vocab_size, seq_len, seed)
    if spec.startswith("bytes:"):
        return ByteFileSource(spec[len("bytes:"):], vocab_size, seq_len, seed)
    raise ConfigError(f"unknown data source {spec!r} (expected 'synthetic' or 'bytes:PATH')")


@dataclass
class BatchLoader:
    """Hands each data-parallel rank its slice of every global batch; ``position`` is checkpointed."""

    source: object
    global_batch_size: int
    dp: int
    dp_rank: int
    position: int = 0
    """Index of the next global sample."""

    def __post_init__(self) -> None:
        if self.global_batch_size % self.dp:
            raise ConfigError(f"global batch {self.global_batch_size} is not divisible by dp {self.dp}")

    @property
    def local_batch_size(self) -> int:
        return self.global_batch_size // self.dp

    def samples(self, first: int, count: int) -> torch.Tensor:
        return torch.stack([self.source.sample(first + i) for i in range(count)])

    def next_batch(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs [b, S], labels [b, S]) of this rank for the next step; advances by the global batch."""
        first = self.position + self.dp_rank * self.local_batch_size
        seqs = self.samples(first, self.local_batch_size)
        self.position += self.global_batch_size
        return seqs[:, :-1].contiguous(), seqs[:, 1:].contiguous()

    def state_dict(self) -> dict[str, int]:
        return {"position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        pos = state.get("position")
        if isinstance(pos, bool) or not isinstance(pos, int) or pos < 0:
            raise SpecError(f"checkpoint data position must be a non-negative integer, got {pos!r}")
        self.position = pos
