"""An operation's answer as its caller gets it: the decoded response, or the error the peer raised."""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

from meshop.mesh.api.operation import Operation
from meshop.mesh.client.chain import Answer, retry_after_s
from meshop.mesh.errors import PROBLEM_CONTENT_TYPE, BadGateway, Problem, error_from_problem

Resp = TypeVar("Resp")

_problem = msgspec.json.Decoder(Problem)


def decode(op: Operation[Any, Resp], answer: Answer) -> Resp:
    """`op`'s response from `answer`; raises the error a 4xx or 5xx stands for, and
    `BadGateway` when a success's body is not the response `op` declares."""
    if answer.status >= 400:
        raise error_of(op, answer)
    if op.response is None or not answer.body:
        return None  # type: ignore[return-value]
    try:
        return msgspec.json.decode(answer.body, type=op.response)
    except msgspec.DecodeError as exc:
        raise BadGateway(f"{op.qualified} answered with an invalid body: {exc}") from None


def error_of(op: Operation[Any, Any], answer: Answer) -> Exception:
    """The error of a failed answer: the `ProblemError` its problem+json names, rebuilt."""
    retry_after = retry_after_s(answer.headers)
    if answer.headers.get("content-type", "").startswith(PROBLEM_CONTENT_TYPE):
        try:
            return error_from_problem(_problem.decode(answer.body), retry_after_s=retry_after)
        except msgspec.DecodeError:
            pass
    return error_from_problem(
        Problem(type="about:blank", title=f"{op.qualified} answered {answer.status}", status=answer.status),
        retry_after_s=retry_after,
    )
