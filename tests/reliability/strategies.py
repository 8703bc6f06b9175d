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


# --------------------------------------------------------------------------------------------------
# Valid-by-construction models and clusters (for properties of what the planner computes from them)
# --------------------------------------------------------------------------------------------------
@st.composite
def models(draw, max_layers: int = 48):
    """A random but well-formed ModelSpec: dense or MoE, MHA or GQA, GeLU or SwiGLU, small to large."""
    from planner.model_spec import ModelSpec

    heads = draw(st.sampled_from([1, 2, 4, 8, 12, 16, 32, 64]))
    kv = draw(st.sampled_from([d for d in (1, 2, 4, 8, heads) if heads % d == 0]))
    head_dim = draw(st.sampled_from([16, 32, 64, 128]))
    hidden = heads * head_dim
    swiglu = draw(st.booleans())
    moe = draw(st.integers(0, 3)) == 0
    experts = draw(st.sampled_from([4, 8, 16, 64])) if moe else 0
    layers = draw(st.integers(1, max_layers))
    return ModelSpec(
        name="fuzz-model", num_layers=layers, hidden_size=hidden,
        ffn_hidden_size=draw(st.sampled_from([2 * hidden, 4 * hidden, 8 * hidden // 3 // 8 * 8 or 8])),
        num_heads=heads, num_kv_heads=kv, vocab_size=draw(st.sampled_from([256, 1000, 32000, 128256])),
        seq_len=draw(st.sampled_from([32, 128, 1024, 2048, 4096])),
        norm="rmsnorm" if swiglu else "layernorm", activation="swiglu" if swiglu else "gelu",
        position_embedding="rope" if swiglu else "learned", tied_embeddings=draw(st.booleans()),
        linear_bias=not swiglu, num_experts=experts, moe_top_k=min(2, experts) if moe else 0,
        moe_ffn_hidden_size=hidden if moe else 0,
        first_dense_layers=draw(st.integers(0, min(1, layers - 1))) if moe else 0,
        dtype=draw(st.sampled_from(["bf16", "fp16", "fp32"])),
    )


@st.composite
def clusters(draw):
    from planner.cluster_spec import resolve_cluster

    name = draw(st.sampled_from(["dgx-a100-80gb", "dgx-a100-40gb", "dgx-h100", "hgx-h800", "a100-25gbe", "cpu"]))
    gpus = draw(st.sampled_from([1, 2, 4, 8, 16, 32, 64]))
    return resolve_cluster(name, gpus=gpus)


def divisors(n: int) -> list[int]:
    return [d for d in range(1, n + 1) if n % d == 0]


@st.composite
def configs_for(draw, model, world: int):
    """A ParallelConfig that passes validate_for(model, world), or None when the draw cannot make one."""
    from planner.errors import PlannerError
    from planner.parallel_config import ParallelConfig

    tp = draw(st.sampled_from([d for d in divisors(world) if model.num_heads % d == 0 and model.kv_heads % d == 0
                               and model.ffn_hidden_size % d == 0]))
    pp = draw(st.sampled_from([d for d in divisors(world // tp) if d <= model.num_layers]))
    dp = world // (tp * pp)
    ep = draw(st.sampled_from([e for e in divisors(tp * dp) if not model.is_moe and e == 1
                               or model.is_moe and model.num_experts % e == 0]))
    schedule = draw(st.sampled_from(["1f1b", "gpipe"] + (["interleaved", "zbv"] if pp > 1 else [])))
    v = {"interleaved": 2, "zbv": 2}.get(schedule, 1)
    mb = draw(st.sampled_from([1, 2, 4]))
    m = draw(st.sampled_from([pp, 2 * pp, 4 * pp, 8 * pp]))
    try:
        c = ParallelConfig(dp=dp, tp=tp, pp=pp, ep=ep, micro_batch_size=mb, global_batch_size=dp * mb * m,
                           seq_len=model.seq_len, schedule=schedule, virtual_stages=v,
                           recompute=draw(st.sampled_from(["none", "selective", "full"])),
                           sequence_parallel=tp > 1 and draw(st.booleans()), zero_stage=draw(st.integers(0, 3)))
        c.validate_for(model, world)
    except PlannerError:
        return None
    return c
