"""`--fix k=v` constraints: pin any dimension of the search space to one value.

Keys (aliases in brackets) and the values they take::

    tp, pp, dp, ep                     positive integers
    micro_batch [mbs, micro-batch]     positive integer
    schedule                           gpipe | 1f1b | interleaved:V | zbv   (interleaved alone leaves V free)
    vp [virtual_stages]                positive integer: model chunks per pipeline rank
    recompute [ac]                     none | selective | full   (sel / nothing accepted)
    sp [sequence_parallel]             true | false
    zero                               0 | 1 | 2 | 3
    grad_sync                          allreduce | hierarchical | ps
    compression                        none | fp16 | bf16 | int8 | topk | powersgd

A fixed value also lifts the default pruning rules of ``planner.search.space`` for that dimension
(e.g. ``--fix tp=16`` allows tensor parallelism across nodes, ``--fix grad_sync=ps`` the
parameter-server baseline), but never makes an invalid configuration valid.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Iterable

from planner.errors import ConfigError
from planner.parallel_config import COMPRESSION, GRAD_SYNC, RECOMPUTE

_ALIASES = {
    "mbs": "micro_batch", "micro-batch": "micro_batch", "micro_batch_size": "micro_batch",
    "virtual_stages": "vp", "v": "vp", "sequence_parallel": "sp", "sequence-parallel": "sp",
    "ac": "recompute", "grad-sync": "grad_sync", "zero_stage": "zero",
}
_RECOMPUTE_ALIASES = {"sel": "selective", "no": "none", "off": "none"}


@dataclass(frozen=True)
class Constraints:
    """Pinned dimensions; None means free."""

    tp: int | None = None
    pp: int | None = None
    dp: int | None = None
    ep: int | None = None
    micro_batch: int | None = None
    schedule: str | None = None
    """'gpipe', '1f1b', 'interleaved' or 'zbv' (the chunk count is ``vp``)."""
    vp: int | None = None
    recompute: str | None = None
    sp: bool | None = None
    zero: int | None = None
    grad_sync: str | None = None
    compression: str | None = None

    def is_fixed(self, key: str) -> bool:
        return getattr(self, key) is not None

    def allows(self, key: str, value: object) -> bool:
        fixed = getattr(self, key)
        return fixed is None or fixed == value

    def as_dict(self) -> dict[str, object]:
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}


def _positive(key: str, text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise ConfigError(f"--fix {key}={text}: expected a positive integer") from None
    if v <= 0:
        raise ConfigError(f"--fix {key}={text}: expected a positive integer")
    return v


def _choice(key: str, text: str, allowed: Iterable[str]) -> str:
    allowed = tuple(allowed)
    if text not in allowed:
        raise ConfigError(f"--fix {key}={text}: expected one of {', '.join(allowed)}")
    return text


def parse_fixes(items: Iterable[str] | None) -> Constraints:
    """Parse ``["tp=8", "schedule=interleaved:3", ...]``; a key given twice with different values is an error."""
    values: dict[str, object] = {}

    def put(key: str, value: object) -> None:
        if key in values and values[key] != value:
            raise ConfigError(f"--fix {key} given twice with different values ({values[key]} and {value})")
        values[key] = value

    for item in items or ():
        key, sep, text = item.partition("=")
        key, text = key.strip().lower(), text.strip().lower()
        if not sep or not key or not text:
            raise ConfigError(f"--fix expects key=value, got {item!r}")
        key = _ALIASES.get(key, key)
        if key in ("tp", "pp", "dp", "ep", "micro_batch", "vp"):
            put(key, _positive(key, text))
        elif key == "zero":
            if text not in ("0", "1", "2", "3"):
                raise ConfigError(f"--fix zero={text}: expected 0, 1, 2 or 3")
            put(key, int(text))
        elif key == "sp":
            if text not in ("true", "false", "1", "0", "yes", "no", "on", "off"):
                raise ConfigError(f"--fix sp={text}: expected true or false")
            put(key, text in ("true", "1", "yes", "on"))
        elif key == "recompute":
            put(key, _choice(key, _RECOMPUTE_ALIASES.get(text, text), RECOMPUTE))
        elif key == "grad_sync":
            put(key, _choice(key, text, GRAD_SYNC))
        elif key == "compression":
            put(key, _choice(key, text, COMPRESSION))
        elif key == "schedule":
            name, _, v = text.partition(":")
            put("schedule", _choice(key, name, ("gpipe", "1f1b", "interleaved", "zbv")))
            if v:
                if name != "interleaved":
                    raise ConfigError(f"--fix schedule={text}: only interleaved takes a chunk count")
                chunks = _positive("schedule", v)
                if chunks < 2:
                    raise ConfigError(f"--fix schedule={text}: interleaved needs at least 2 chunks per rank")
                put("vp", chunks)
        else:
            known = "tp, pp, dp, ep, micro_batch, schedule, vp, recompute, sp, zero, grad_sync, compression"
            raise ConfigError(f"--fix {key}: unknown dimension (expected one of {known})")
    sched, vp = values.get("schedule"), values.get("vp")
    if vp is not None and sched in ("gpipe", "1f1b") and vp != 1:
        raise ConfigError(f"--fix schedule={sched} runs one chunk per rank; vp={vp} contradicts it")
    if vp is not None and sched == "zbv" and vp != 2:
        raise ConfigError(f"--fix schedule=zbv runs 2 chunks per rank; vp={vp} contradicts it")
    return Constraints(**values)  # type: ignore[arg-type]
