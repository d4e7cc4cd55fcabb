"""OpenAPI 3.1 documents built from operations and their msgspec types."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import msgspec

from meshop.mesh.api.operation import Access, Operation
from meshop.mesh.errors import Problem

_REF = "#/components/schemas/{name}"
_STATUS_TEXT = {
    400: "Bad request",
    401: "Authentication required",
    403: "Forbidden",
    404: "Not found",
    409: "Conflict",
    413: "Payload too large",
    422: "Validation failed",
    429: "Too many requests",
    431: "Request header fields too large",
    500: "Internal error",
    503: "Service unavailable",
    504: "Gateway timeout",
}
#: What a gateway in front of any operation may answer on its own: its rate limits (429),
#: header limit (431), its own failure (500), no instance (503), no answer in time (504).
#: 401/403 follow from the effective access, 413 from a request body.
GATEWAY_STATUSES = frozenset({429, 431, 500, 503, 504})
#: Least to most restricted. A tuple's `index` compares by identity in C; a dict keyed by
#: members would call `Enum.__hash__`, a Python function, twice per gateway request.
_ORDER: tuple[Access, ...] = (Access.PUBLIC, Access.USER, Access.ADMIN, Access.INTERNAL)


#: The tag of every admin operation: the documents group them apart, after the customer's.
ADMIN_TAG = "admin"


@dataclass(frozen=True, slots=True, kw_only=True)
class Example:
    """One operation's example, declared with its contract: a request and the answer to it.

    `request` and `response` are values of the operation's request and response types;
    `params` fills the path's parameters. The document carries them as OpenAPI `example`s.
    """

    request: Any = None
    response: Any = None
    params: Mapping[str, str] = field(default_factory=dict)


def stricter(access: Access, floor: Access | None) -> Access:
    """The access a request needs when a route requires `floor` of an operation that requires `access`."""
    return floor if floor is not None and _ORDER.index(floor) > _ORDER.index(access) else access


def build_openapi(
    service: str,
    version: str,
    operations: list[Operation[Any, Any]],
    *,
    prefix: str = "",
    extra_statuses: frozenset[int] = frozenset(),
    min_access: Access | None = None,
    examples: Mapping[Operation[Any, Any], Example] | None = None,
) -> dict[str, Any]:
    """The OpenAPI 3.1 document of `operations`, paths under `prefix`.

    `extra_statuses` are documented on every operation (a gateway's own answers);
    `min_access` is a route's stricter requirement (`stricter`): what the caller must present.
    Each operation is tagged with its service, or `ADMIN_TAG` when it needs the admin role;
    `examples` are shown with the operations they belong to.
    """
    types: list[Any] = [Problem]
    for op in operations:
        types.extend(t for t in (op.request, op.response) if t is not None)
    schemas, components = msgspec.json.schema_components(types, ref_template=_REF)
    by_type = dict(zip(types, schemas, strict=True))
    paths: dict[str, dict[str, Any]] = {}
    for op in operations:
        example = examples.get(op) if examples is not None else None
        paths.setdefault(prefix + op.path, {})[op.method.lower()] = _operation(
            op, by_type, extra_statuses, stricter(op.access, min_access), example
        )
    return {
        "openapi": "3.1.0",
        "info": {"title": f"meshop {service}", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}},
        },
    }


def _operation(
    op: Operation[Any, Any],
    schemas: dict[Any, Any],
    extra_statuses: frozenset[int],
    access: Access,
    example: Example | None,
) -> dict[str, Any]:
    problem = {"application/problem+json": {"schema": schemas[Problem]}}
    success: dict[str, Any] = {"description": "Success"}
    if op.response is not None:
        success["content"] = {
            "application/json": _media(schemas[op.response], None if example is None else example.response)
        }
    responses: dict[str, Any] = {str(op.status): success}
    statuses = set(op.errors) | {500, 503} | extra_statuses
    if op.request is not None:
        statuses |= {400, 413, 422}
    if op.requires_key:
        statuses |= {400}
    if op.path_params:
        statuses |= {404, 422}
    if access in (Access.USER, Access.ADMIN):
        statuses |= {401}
    if access is Access.ADMIN:
        statuses |= {403}
    for status in sorted(statuses):
        responses[str(status)] = {"description": _STATUS_TEXT.get(status, "Error"), "content": problem}
    doc: dict[str, Any] = {
        "operationId": op.qualified,
        "summary": op.summary or op.qualified,
        "tags": [ADMIN_TAG if access is Access.ADMIN else op.service],
        "responses": responses,
        "x-meshop-access": access.value,
        "x-meshop-idempotent": op.idempotent,
    }
    params: list[dict[str, Any]] = []
    for name in op.path_params:
        param: dict[str, Any] = {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
        if example is not None and name in example.params:
            param["example"] = example.params[name]
        params.append(param)
    if op.requires_key:
        params.append(
            {
                "name": "Idempotency-Key",
                "in": "header",
                "required": True,
                "schema": {"type": "string", "minLength": 1, "maxLength": 200},
            }
        )
    if params:
        doc["parameters"] = params
    if op.request is not None:
        body = _media(schemas[op.request], None if example is None else example.request)
        doc["requestBody"] = {"required": not op.body_optional, "content": {"application/json": body}}
    if access in (Access.USER, Access.ADMIN):
        doc["security"] = [{"bearer": []}]
    return doc


def _media(schema: Any, value: Any) -> dict[str, Any]:
    """A JSON media type object: the schema, and an example's value when there is one."""
    if value is None:
        return {"schema": schema}
    return {"schema": schema, "example": msgspec.to_builtins(value)}
