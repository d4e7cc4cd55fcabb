"""W3C trace context: parsing, children, and the current context."""

from __future__ import annotations

from meshop.mesh.telemetry import tracecontext


def test_a_child_keeps_the_trace_and_flags_with_a_new_span() -> None:
    parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    child = tracecontext.child(parent)
    assert tracecontext.valid(child)
    assert child.startswith("00-4bf92f3577b34da6a3ce929d0e0e4736-")
    assert child.endswith("-01")
    assert child[36:52] != "00f067aa0ba902b7"
    assert tracecontext.trace_id(child) == "4bf92f3577b34da6a3ce929d0e0e4736"


def test_invalid_headers_are_refused_and_start_a_new_trace() -> None:
    for bad in (
        None,
        "",
        "garbage",
        "01-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # unknown version
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero parent id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
    ):
        assert not tracecontext.valid(bad)
        assert tracecontext.valid(tracecontext.child(bad))


def test_use_traceparent_scopes_the_current_context() -> None:
    assert tracecontext.current() is None
    value = tracecontext.start()
    with tracecontext.use_traceparent(value):
        assert tracecontext.current() == value
        with tracecontext.use_traceparent("not valid"):
            assert tracecontext.current() is None
        assert tracecontext.current() == value
    assert tracecontext.current() is None
