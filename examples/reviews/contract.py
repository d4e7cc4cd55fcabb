"""The reviews service's contract: its operations and its event, shared by every caller.

A service outside the shop keeps its contract beside its code; callers import this
module, never the service's other modules (the shop keeps its contracts in
`meshop.contracts`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import msgspec
from msgspec import Meta

from meshop.mesh import Access, EventType, Example, Operation, outbox_operation

#: What the contract checks at the edge (422); the rules that need the database are in domain.py.
Rating = Annotated[int, Meta(ge=1, le=5, description="1 (poor) to 5 (excellent)")]
MAX_TEXT = 2000

ReviewStatus = Literal["PUBLISHED", "HIDDEN"]


class ReviewCreate(msgspec.Struct, kw_only=True):
    rating: Rating
    text: Annotated[str, Meta(max_length=MAX_TEXT)]


class Review(msgspec.Struct, kw_only=True):
    id: str
    #: The catalog's product (its id, and its SKU, which orders' events name).
    product_id: str
    sku: str
    user_id: str
    rating: int
    text: str
    #: The author bought this product in an order that was confirmed.
    verified_purchase: bool
    status: ReviewStatus
    created_at: str


class ReviewPage(msgspec.Struct, kw_only=True):
    items: list[Review]
    next_cursor: str | None


POST: Operation[ReviewCreate, Review] = Operation(
    "reviews",
    "post",
    "POST",
    "/products/{id}/reviews",
    ReviewCreate,
    Review,
    Access.USER,
    status=201,
    errors=(404, 409, 422),
    summary="Review a product the catalog sells (one review per customer and product)",
)
LIST: Operation[None, ReviewPage] = Operation(
    "reviews",
    "list",
    "GET",
    "/products/{id}/reviews",
    None,
    ReviewPage,
    Access.PUBLIC,
    idempotent=True,
    errors=(422,),
    summary="A product's published reviews, oldest first (limit <= 100, cursor)",
    per_try_timeout_s=1.0,
)
HIDE: Operation[None, Review] = Operation(
    "reviews",
    "hide",
    "POST",
    "/admin/reviews/{id}/hide",
    None,
    Review,
    Access.ADMIN,
    idempotent=True,
    summary="Hide a review from its product's page (moderation)",
)

ADMIN_OUTBOX = outbox_operation("reviews")


# Events (emitted in the transaction of the change they announce; see meshop.mesh.emit).


class ReviewPosted(msgspec.Struct, kw_only=True, frozen=True):
    """A customer reviewed a product."""

    review_id: str
    product_id: str
    sku: str
    user_id: str
    rating: int
    verified_purchase: bool


REVIEW_POSTED = EventType(source="reviews", name="ReviewPosted", data=ReviewPosted)


# What /docs and /openapi.json show for each operation.
_REVIEW = Review(
    id="01765432100000a1b2c3d4",
    product_id="5a7c2e0f9b1d4c3a8e6f0b2d",
    sku="KIT-001",
    user_id="u-42",
    rating=5,
    text="Heats evenly and cleans up in a minute.",
    verified_purchase=True,
    status="PUBLISHED",
    created_at="2026-12-07T09:41:00+00:00",
)
EXAMPLES: dict[Operation[Any, Any], Example] = {
    POST: Example(
        request=ReviewCreate(rating=5, text="Heats evenly and cleans up in a minute."),
        response=_REVIEW,
        params={"id": "5a7c2e0f9b1d4c3a8e6f0b2d"},
    ),
    LIST: Example(response=ReviewPage(items=[_REVIEW], next_cursor=None), params={"id": "5a7c2e0f9b1d4c3a8e6f0b2d"}),
    HIDE: Example(response=msgspec.structs.replace(_REVIEW, status="HIDDEN"), params={"id": "01765432100000a1b2c3d4"}),
}
