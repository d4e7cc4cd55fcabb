"""The YAML writer: what it writes reads back as the same objects (PyYAML, the tests' reader)."""

from __future__ import annotations

from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from meshop.deploy._yaml import dump_all

scalars = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**40), max_value=2**40),
    st.text(max_size=20),
    st.sampled_from(["on", "no", "null", "0.0.0.0/0", "8080", "a: b", "- x", "#", "", "*", "&a", "~", "1e3"]),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)),
    max_leaves=20,
)


@settings(max_examples=50)
@given(st.lists(st.dictionaries(st.text(max_size=8), values, min_size=1, max_size=5), min_size=1, max_size=3))
def test_what_is_written_reads_back_the_same(objects: list[dict[str, Any]]) -> None:
    assert list(yaml.safe_load_all(dump_all(objects))) == objects


def test_a_key_ending_in_a_newline_is_quoted() -> None:
    """Found by the property above: a regex's `$` matches before a final newline."""
    assert dump_all([{"A\n": []}]) == '---\n"A\\u000a": []\n'
    assert list(yaml.safe_load_all(dump_all([{"A\n": []}]))) == [{"A\n": []}]


def test_it_reads_like_kubectl_output() -> None:
    policy = {"spec": {"podSelector": {}, "ingress": [{"ports": [{"port": 8080, "protocol": "TCP"}]}]}}
    assert dump_all([policy]) == (
        "---\nspec:\n  podSelector: {}\n  ingress:\n  - ports:\n    - port: 8080\n      protocol: TCP\n"
    )
