"""Operator-only endpoints: answered for a request from this machine and nowhere else."""

from __future__ import annotations

from starlette.requests import Request


def from_loopback(request: Request) -> bool:
    """True when the request comes from this machine (operator-only endpoints)."""
    return request.client is not None and request.client.host in ("127.0.0.1", "::1")
