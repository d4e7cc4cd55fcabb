"""The mesh's exceptions, and their RFC 9457 problem+json form.

    MeshError
    ├── ConfigError (ValueError)          a setting is missing or malformed
    ├── StateError (RuntimeError)         an illegal lifecycle transition
    ├── TransportError                    the request may not have reached the peer (retryable)
    │   └── NoInstancesError              nothing registered for the target service
    ├── DeadlineExceeded                  the call's overall deadline is spent
    └── ProblemError                      an error with an HTTP status and a problem type
        ├── BadRequest (400)   ├── Unauthorized (401)   ├── Forbidden (403)
        ├── NotFound (404)     ├── MethodNotAllowed (405) ├── Conflict (409)
        ├── PayloadTooLarge (413) ├── Unprocessable (422) ├── TooManyRequests (429)
        ├── HeadersTooLarge (431)
        ├── InternalError (500) ├── BadGateway (502)    ├── ServiceUnavailable (503)
        ├── GatewayTimeout (504)
        └── RemoteError                   a peer answered with a problem type we do not know

Errors say whether they are retryable, so policies decide from data, not from messages.
"""

from __future__ import annotations

from typing import Any, ClassVar

import msgspec

PROBLEM_CONTENT_TYPE = "application/problem+json"
_TYPE_PREFIX = "urn:meshop:problem:"


class MeshError(Exception):
    """Root of every error the mesh raises."""

    retryable: ClassVar[bool] = False


class ConfigError(MeshError, ValueError):
    """A setting is missing or malformed; raised at start with the setting's name."""


class StateError(MeshError, RuntimeError):
    """A lifecycle method was called in a state that does not allow it."""


class TransportError(MeshError):
    """The request failed before an answer arrived (connect refused, reset, timeout)."""

    retryable: ClassVar[bool] = True

    def __init__(self, message: str, *, sent: bool = False) -> None:
        super().__init__(message)
        #: True when the request may have reached the peer (a timeout after sending).
        self.sent = sent


class NoInstancesError(TransportError):
    """No instance of the target service is registered."""


class DeadlineExceeded(MeshError):
    """The overall deadline of a call is spent; nothing more is sent."""


class Problem(msgspec.Struct, omit_defaults=True):
    """The RFC 9457 body of an error answer."""

    type: str
    title: str
    status: int
    detail: str | None = None
    instance: str | None = None
    errors: list[dict[str, Any]] | None = None


class ProblemError(MeshError):
    """An error that has an HTTP status and a stable problem type."""

    status: ClassVar[int] = 500
    slug: ClassVar[str] = "internal"
    title: ClassVar[str] = "Internal error"

    def __init__(
        self,
        detail: str | None = None,
        *,
        errors: list[dict[str, Any]] | None = None,
        retry_after_s: float | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(detail or self.title)
        self.detail = detail
        self.errors = errors
        self.retry_after_s = retry_after_s
        #: Extra response headers (a 429's RateLimit-* headers, say).
        self.headers = headers

    @property
    def type(self) -> str:
        return _TYPE_PREFIX + self.slug

    def to_problem(self, *, instance: str | None = None) -> Problem:
        return Problem(
            type=self.type,
            title=self.title,
            status=self.status,
            detail=self.detail,
            instance=instance,
            errors=self.errors,
        )


class BadRequest(ProblemError):
    """400: the request is malformed (a body that does not decode, a bad parameter)."""

    status, slug, title = 400, "bad-request", "Bad request"


class Unauthorized(ProblemError):
    """401: the request carries no valid credentials."""

    status, slug, title = 401, "unauthorized", "Authentication required"


class Forbidden(ProblemError):
    """403: the caller is known but may not do this."""

    status, slug, title = 403, "forbidden", "Forbidden"


class NotFound(ProblemError):
    """404: the thing the request names does not exist."""

    status, slug, title = 404, "not-found", "Not found"


class MethodNotAllowed(ProblemError):
    status, slug, title = 405, "method-not-allowed", "Method not allowed"


class Conflict(ProblemError):
    """409: the request conflicts with the current state (a duplicate, a stale version)."""

    status, slug, title = 409, "conflict", "Conflict"


class PayloadTooLarge(ProblemError):
    status, slug, title = 413, "payload-too-large", "Payload too large"


class HeadersTooLarge(ProblemError):
    status, slug, title = 431, "headers-too-large", "Request header fields too large"


class Unprocessable(ProblemError):
    """422: the request is well formed but its values are invalid."""

    status, slug, title = 422, "validation", "Validation failed"


class TooManyRequests(ProblemError):
    """429: the caller is over a limit; retryable, after `retry_after_s` when given."""

    status, slug, title = 429, "too-many-requests", "Too many requests"
    retryable = True


class InternalError(ProblemError):
    status, slug, title = 500, "internal", "Internal error"


class BadGateway(ProblemError):
    status, slug, title = 502, "bad-gateway", "Bad gateway"


class ServiceUnavailable(ProblemError):
    """503: the service cannot answer now (overloaded, draining); retryable."""

    status, slug, title = 503, "unavailable", "Service unavailable"
    retryable = True


class GatewayTimeout(ProblemError):
    status, slug, title = 504, "gateway-timeout", "Gateway timeout"


class RemoteError(ProblemError):
    """A peer answered with a problem whose type this process does not know."""

    def __init__(self, problem: Problem) -> None:
        super().__init__(problem.detail or problem.title, errors=problem.errors)
        self.problem = problem

    @property
    def type(self) -> str:
        return self.problem.type

    @property
    def remote_status(self) -> int:
        return self.problem.status

    def to_problem(self, *, instance: str | None = None) -> Problem:
        return self.problem


_KNOWN: dict[str, type[ProblemError]] = {
    cls.slug: cls
    for cls in (
        BadRequest,
        Unauthorized,
        Forbidden,
        NotFound,
        MethodNotAllowed,
        Conflict,
        PayloadTooLarge,
        HeadersTooLarge,
        Unprocessable,
        TooManyRequests,
        InternalError,
        BadGateway,
        ServiceUnavailable,
        GatewayTimeout,
    )
}


_BY_STATUS: dict[int, type[ProblemError]] = {cls.status: cls for cls in _KNOWN.values()}


def error_from_problem(problem: Problem, *, retry_after_s: float | None = None) -> ProblemError:
    """Rebuild the typed error a peer raised from its problem+json answer.

    A meshop problem type gives its exact class; an answer that is not a problem
    (`about:blank`) gives the class of its status; anything else is a `RemoteError`.
    """
    cls: type[ProblemError] | None = None
    if problem.type.startswith(_TYPE_PREFIX):
        cls = _KNOWN.get(problem.type.removeprefix(_TYPE_PREFIX))
    elif problem.type == "about:blank":
        cls = _BY_STATUS.get(problem.status)
    if cls is not None and cls.status == problem.status:
        return cls(problem.detail, errors=problem.errors, retry_after_s=retry_after_s)
    return RemoteError(problem)
