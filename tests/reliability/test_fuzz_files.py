"""Fuzz the file readers behind --model and --cluster: JSON and YAML text, hand-edited or hostile.

The documents are mutated specs written out as text (JSON with NaN literals allowed, YAML via the
safe dumper), plus YAML constructs a hand-written file can contain (tags, anchors, tabs, duplicate keys).
"""

from __future__ import annotations

import yaml
from hypothesis import given
from hypothesis import strategies as st

from planner.cluster_spec import resolve_cluster
from planner.model_presets import resolve_model
from tests.reliability import bases, fuzzlib
from tests.reliability.fuzzlib import dump_json_text, feed, fuzz_settings
from tests.reliability.strategies import combine, mutations
from tests.reliability.test_fuzz_specs import check_cluster, check_model

TARGETS = {"model_file": 500, "cluster_file": 350}

YAML_ODDITIES = [
    "!!python/object/apply:os.system ['true']",
    "a: &x [1, 2]\nb: *x\n",
    "name: x\nname: y\n",
    "\tname: x\n",
    "--- 1\n--- 2\n",
    "? [1, 2]\n: 3\n",
    "num_layers: 0o10\nname: x\n",
    "hidden_size: 1_024\n",
    "seq_len: .inf\n",
    "name: 2020-01-01\n",
    "!!binary aGVsbG8=",
    "{" * 40,
]  # deep nesting (~1 s for PyYAML to reject at depth 3000) is checked once in test_input_regressions.py


def _text(doc, as_yaml: bool) -> str:
    if not as_yaml:
        return dump_json_text(doc)
    try:
        return yaml.safe_dump(doc, allow_unicode=True)
    except (yaml.YAMLError, ValueError, TypeError):
        return dump_json_text(doc)  # JSON is YAML too


def _write(dirpath, name: str, text: str):
    p = dirpath / name
    p.write_text(text, encoding="utf-8", errors="surrogatepass")
    return p


@fuzz_settings(max_examples=135)
@given(st.data())
def test_fuzz_model_files(tmp_path_factory, data) -> None:
    d = tmp_path_factory.getbasetemp()
    base = data.draw(st.sampled_from(bases.model_dicts() + tuple(c for _, c in bases.hf_configs())))
    muts = data.draw(mutations(base, max_size=3))
    as_yaml = data.draw(st.booleans())
    suffix = ".yaml" if as_yaml else ".json"
    docs = [m.apply(base) for m in muts] + [combine(base, muts)]
    for doc in docs:
        path = _write(d, "model" + suffix, _text(doc, as_yaml))
        out = feed("model_file", resolve_model, str(path), input_repr=doc)
        if out.accepted:
            check_model(out.value)
    path = _write(d, "odd.yaml", data.draw(st.sampled_from(YAML_ODDITIES)))
    feed("model_file", resolve_model, str(path), input_repr=path.read_text()[:80])


def test_model_file_count() -> None:
    assert fuzzlib.total("model_file") >= TARGETS["model_file"], dict(fuzzlib.COUNTS["model_file"])


@fuzz_settings(max_examples=90)
@given(st.data())
def test_fuzz_cluster_files(tmp_path_factory, data) -> None:
    d = tmp_path_factory.getbasetemp()
    base = data.draw(st.sampled_from(bases.cluster_dicts()))
    muts = data.draw(mutations(base, max_size=3))
    as_yaml = data.draw(st.booleans())
    suffix = ".yml" if as_yaml else ".json"
    for doc in [m.apply(base) for m in muts] + [combine(base, muts)]:
        path = _write(d, "cluster" + suffix, _text(doc, as_yaml))
        gpus = data.draw(st.sampled_from([None, 1, 8, 16, 12]))
        out = feed("cluster_file", resolve_cluster, str(path), gpus=gpus, input_repr=(gpus, doc))
        if out.accepted:
            check_cluster(out.value)
    path = _write(d, "odd.yaml", data.draw(st.sampled_from(YAML_ODDITIES)))
    feed("cluster_file", resolve_cluster, str(path), input_repr=path.read_text()[:80])


def test_cluster_file_count() -> None:
    assert fuzzlib.total("cluster_file") >= TARGETS["cluster_file"], dict(fuzzlib.COUNTS["cluster_file"])
