"""Hypothesis strategies for the reliability fuzz suite: hostile values and hand-edit mutations.

A mutation is applied to a *valid* base document (a preset's spec, a published HF config, a
plan the planner wrote), so most generated inputs are near-valid: the kind a person produces by
editing a file, which is where parsers are weakest. ``Mutation.strict`` marks the edits whose
error must name the edited field (a wrong type or sign in a field the reader consumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from hypothesis import strategies as st

from tests.reliability.fuzzlib import all_paths, copy_tree, delete_at, field_name, get_at, near_values, set_at

# Values no field of any input format accepts as a size, a rate or a name... or that are absurd.
HOSTILE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**70), max_value=-1),
    st.integers(min_value=10**7, max_value=10**40),
    st.just(10**400),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from([math.nan, math.inf, -math.inf, -0.0, 1e308, 5e-324, 0.5]),
    st.text(max_size=8),
    st.sampled_from(["8", "1e3", "", " ", "\n", "bf16", "NaN", "-1", "0x10", "１２"]),
    st.lists(st.integers(min_value=-3, max_value=9), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(min_value=0, max_value=9), max_size=2),
)

UNKNOWN_KEYS = st.sampled_from(["extra", "hidden", "layers", "__proto__", "", "num_layer", "Tp", "😀", "1"])
OPS = ("delete", "hostile", "near", "unknown", "retype_parent")


@dataclass(frozen=True)
class Mutation:
    op: str
    path: tuple
    value: Any = None

    @property
    def field(self) -> str:
        return field_name(self.path)

    def strict(self, base: Any) -> bool:
        """True when the edit breaks the type or sign of a numeric field: its error must name the field."""
        if self.op != "hostile" or not self.path or not isinstance(self.path[-1], str):
            return False
        old = get_at(base, self.path)
        if isinstance(old, bool) or not isinstance(old, (int, float)):
            return False
        v = self.value
        wrong_type = isinstance(v, bool) or not isinstance(v, (int, float))
        bad_number = (isinstance(v, int) and not isinstance(v, bool) and v < 0) or \
            (isinstance(v, float) and (not math.isfinite(v) or v < 0))
        return wrong_type or bad_number

    def apply(self, doc: Any) -> Any:
        """Return a mutated copy of ``doc``."""
        out = copy_tree(doc)
        if not self.path:
            return self.value
        if self.op == "delete":
            delete_at(out, self.path)
        elif self.op == "unknown":
            parent = get_at(out, self.path[:-1])
            if isinstance(parent, dict):
                parent[self.value] = 1
            else:
                parent.append(self.value)
        elif self.op == "retype_parent":
            set_at(out, self.path[:-1], self.value) if len(self.path) > 1 else None
            if len(self.path) == 1:
                return self.value
        else:
            set_at(out, self.path, self.value)
        return out


@st.composite
def mutations(draw, doc: Any, paths: list[tuple] | None = None, max_size: int = 5) -> list[Mutation]:
    """Up to ``max_size`` independent single edits of ``doc``."""
    paths = paths if paths is not None else all_paths(doc)
    n = draw(st.integers(min_value=1, max_value=max_size))
    out = []
    for _ in range(n):
        path = draw(st.sampled_from(paths))
        op = draw(st.sampled_from(OPS))
        if op == "hostile":
            out.append(Mutation(op, path, draw(HOSTILE)))
        elif op == "near":
            out.append(Mutation(op, path, draw(st.sampled_from(near_values(get_at(doc, path))))))
        elif op == "unknown":
            out.append(Mutation(op, path, draw(UNKNOWN_KEYS)))
        elif op == "retype_parent":
            out.append(Mutation(op, path, draw(st.sampled_from([[], {}, None, "x", 3, [1, 2]]))))
        else:
            out.append(Mutation(op, path))
    return out


def combine(doc: Any, muts: list[Mutation]) -> Any:
    """All edits at once (later edits whose path vanished are skipped): a badly hand-edited file."""
    out = doc
    for m in muts:
        try:
            out = m.apply(out)
        except (KeyError, IndexError, TypeError, AttributeError):
            continue
    return out
