"""Reviews' operations: post a review of a product the catalog sells, list a product's reviews, hide one."""

from __future__ import annotations

import structlog
from sqlalchemy.exc import IntegrityError

from meshop.contracts import catalog
from meshop.mesh import (
    Conflict,
    Database,
    MeshError,
    NotFound,
    ProblemError,
    RequestContext,
    ServiceClient,
    ServiceUnavailable,
    Unauthorized,
    decode_cursor,
    encode_cursor,
)
from reviews import domain, store
from reviews.contract import Review, ReviewCreate, ReviewPage

log = structlog.get_logger("reviews")

PAGE_LIMIT = 100


class Reviews:
    """One method per operation of the reviews contract.

    `catalog_retry_after_s`: the Retry-After of a review refused because the catalog did
    not answer (unless it said when).
    """

    def __init__(self, *, db: Database, client: ServiceClient, catalog_retry_after_s: float = 2.0) -> None:
        self._db = db
        self._client = client
        self._catalog_retry_after_s = catalog_retry_after_s

    async def post(self, ctx: RequestContext, body: ReviewCreate) -> Review:
        if ctx.identity is None:  # Access.USER: the endpoint verified a token already
            raise Unauthorized("a review needs a signed-in customer")
        product = await self._product(ctx.path_params["id"], ctx.deadline)
        try:
            async with self._db.begin() as conn:
                return await domain.post(conn, product, ctx.identity.user_id, body)
        except IntegrityError:  # the same customer's concurrent review of this product won
            raise Conflict(f"you have reviewed {product.sku} already") from None

    async def list(self, ctx: RequestContext, _body: None) -> ReviewPage:
        limit = ctx.query_int("limit", default=20, low=1, high=PAGE_LIMIT)
        after = decode_cursor(ctx.query_str("cursor", max_length=300))
        async with self._db.read() as conn:
            items = await store.published(conn, ctx.path_params["id"][:64], after=after, limit=limit + 1)
        cursor = encode_cursor(items[limit - 1].id) if len(items) > limit else None
        return ReviewPage(items=items[:limit], next_cursor=cursor)

    async def hide(self, ctx: RequestContext, _body: None) -> Review:
        review_id = ctx.path_params["id"][:40]
        async with self._db.begin() as conn:
            if await store.find(conn, review_id) is None:
                raise NotFound(f"no review {review_id!r}")
            await store.set_status(conn, review_id, "HIDDEN")
            review = await store.find(conn, review_id)
        assert review is not None
        return review

    async def _product(self, product_id: str, deadline: float | None) -> catalog.Product:
        """The catalog's product (404 if it sells none with this id); 503 when it cannot say.

        A review is never accepted for a product nobody sells, nor refused as "not found"
        because the catalog was down: the customer is told to try again.
        """
        try:
            return await self._client.call(catalog.GET, path_params={"id": product_id[:64]}, deadline=deadline)
        except NotFound:
            raise NotFound(f"the catalog has no product {product_id[:64]!r}") from None
        except MeshError as exc:
            log.warning("catalog lookup failed; review refused", product_id=product_id[:64], error=repr(exc))
            retry_after_s = exc.retry_after_s if isinstance(exc, ProblemError) else None
            raise ServiceUnavailable(
                "the catalog cannot confirm this product now; try again",
                retry_after_s=retry_after_s or self._catalog_retry_after_s,
            ) from None
