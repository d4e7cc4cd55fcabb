"""The users database: accounts, signing keys, refresh tokens, order statistics, failed logins."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import sqlalchemy as sa

from meshop.mesh import Conn, SigningKey

metadata = sa.MetaData()

users = sa.Table(
    "users",
    metadata,
    sa.Column("id", sa.String(32), primary_key=True),
    sa.Column("email", sa.String(254), nullable=False, unique=True),
    sa.Column("name", sa.String(100), nullable=False),
    sa.Column("password_hash", sa.String(200), nullable=False),
    sa.Column("roles", sa.String(200), nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
)

signing_keys = sa.Table(
    "signing_keys",
    metadata,
    sa.Column("kid", sa.String(32), primary_key=True),
    sa.Column("private_pem", sa.Text, nullable=False),
    sa.Column("created_at", sa.String(40), nullable=False),
    #: When it starts signing (None: at once); published in the JWKS before that.
    sa.Column("activates_at", sa.Float),
)

refresh_tokens = sa.Table(
    "refresh_tokens",
    metadata,
    sa.Column("id", sa.String(64), primary_key=True),  # sha256 of the secret, never the secret
    sa.Column("family", sa.String(32), nullable=False),
    sa.Column("user_id", sa.String(32), nullable=False),
    sa.Column("expires_at", sa.Float, nullable=False),
    sa.Column("used_at", sa.Float),
    sa.Column("revoked", sa.Boolean, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
)


#: Failed logins per account: the email as typed (SHA-256 of it, known or not), the length
#: of its current streak of failures and when the last one came.
login_account_failures = sa.Table(
    "login_account_failures",
    metadata,
    sa.Column("account", sa.String(64), primary_key=True),
    sa.Column("failures", sa.Integer, nullable=False),
    sa.Column("last_failure_at", sa.Float, nullable=False),
)

#: Failed logins per client address: the times of those within the last window,
#: space-separated, oldest first (at most the per-address limit of them).
login_address_failures = sa.Table(
    "login_address_failures",
    metadata,
    sa.Column("address", sa.String(64), primary_key=True),
    sa.Column("recent", sa.Text, nullable=False),
    sa.Column("last_failure_at", sa.Float, nullable=False),
)


@dataclass(frozen=True, slots=True)
class StoredKey:
    key: SigningKey
    activates_at: float | None


async def find_by_email(conn: Conn, email: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.email == email))).mappings().first()
    return dict(row) if row else None


async def find_by_id(conn: Conn, user_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).mappings().first()
    return dict(row) if row else None


async def insert_user(conn: Conn, **values: Any) -> None:
    await conn.execute(users.insert().values(**{**values, "roles": json.dumps(values["roles"])}))


async def signing_keys_newest_first(conn: Conn) -> list[StoredKey]:
    rows = await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at.desc()))
    return [StoredKey(SigningKey(kid=r.kid, private_pem=r.private_pem.encode()), r.activates_at) for r in rows]


async def insert_signing_key(
    conn: Conn, key: SigningKey, created_at: str, *, activates_at: float | None = None
) -> None:
    await conn.execute(
        signing_keys.insert().values(
            kid=key.kid, private_pem=key.private_pem.decode(), created_at=created_at, activates_at=activates_at
        )
    )


order_stats = sa.Table(
    "order_stats",
    metadata,
    sa.Column("user_id", sa.String(32), primary_key=True),
    sa.Column("placed", sa.Integer, nullable=False),
    sa.Column("confirmed", sa.Integer, nullable=False),
    sa.Column("cancelled", sa.Integer, nullable=False),
    sa.Column("spent_cents", sa.BigInteger, nullable=False),
)


#: One statement, built once, for every order event: the customer's row made at `deltas`, or
#: `deltas` added to it (an upsert: the same SQL on SQLite and PostgreSQL).
_ADD_ORDER_STATS = sa.text(
    "INSERT INTO order_stats (user_id, placed, confirmed, cancelled, spent_cents)"
    " VALUES (:user_id, :placed, :confirmed, :cancelled, :spent_cents)"
    " ON CONFLICT (user_id) DO UPDATE SET placed = order_stats.placed + excluded.placed,"
    " confirmed = order_stats.confirmed + excluded.confirmed,"
    " cancelled = order_stats.cancelled + excluded.cancelled,"
    " spent_cents = order_stats.spent_cents + excluded.spent_cents"
)
_NO_CHANGE = {"placed": 0, "confirmed": 0, "cancelled": 0, "spent_cents": 0}


async def add_order_stats(conn: Conn, user_id: str, **deltas: int) -> None:
    """Add `deltas` to a customer's counters (a row at zero for a customer not seen before)."""
    if not deltas.keys() <= _NO_CHANGE.keys():
        raise ValueError(f"no such order counters: {sorted(deltas.keys() - _NO_CHANGE.keys())}")
    await conn.execute(_ADD_ORDER_STATS, {**_NO_CHANGE, **deltas, "user_id": user_id})


async def order_stats_of(conn: Conn, user_id: str) -> Any:
    return (await conn.execute(sa.select(order_stats).where(order_stats.c.user_id == user_id))).first()


async def clear_order_stats(conn: Conn) -> None:
    """Empty the read model (before a replay rebuilds it)."""
    await conn.execute(order_stats.delete())


async def refresh_token(conn: Conn, token_hash: str) -> Any:
    query = sa.select(refresh_tokens).where(refresh_tokens.c.id == token_hash).with_for_update()
    return (await conn.execute(query)).first()


async def insert_refresh_token(conn: Conn, **values: Any) -> None:
    await conn.execute(refresh_tokens.insert().values(used_at=None, revoked=False, **values))


async def use_refresh_token(conn: Conn, token_hash: str, now: float) -> bool:
    """Mark it used unless it already was (False: a second use)."""
    result = await conn.execute(
        refresh_tokens.update()
        .where(refresh_tokens.c.id == token_hash, refresh_tokens.c.used_at.is_(None))
        .values(used_at=now)
    )
    return bool(result.rowcount == 1)


async def revoke_family(conn: Conn, family: str) -> None:
    await conn.execute(refresh_tokens.update().where(refresh_tokens.c.family == family).values(revoked=True))


async def account_failures(conn: Conn, account: str) -> tuple[int, float] | None:
    """(failures, last failure time) of an account's streak, locked until the transaction ends."""
    t = login_account_failures
    row = (
        await conn.execute(sa.select(t.c.failures, t.c.last_failure_at).where(t.c.account == account).with_for_update())
    ).first()
    return (row.failures, row.last_failure_at) if row else None


async def put_account_failures(
    conn: Conn, account: str, failures: int, last_failure_at: float, *, exists: bool
) -> None:
    t = login_account_failures
    if exists:
        await conn.execute(
            t.update().where(t.c.account == account).values(failures=failures, last_failure_at=last_failure_at)
        )
    else:
        await conn.execute(t.insert().values(account=account, failures=failures, last_failure_at=last_failure_at))


async def forget_account_failures(conn: Conn, account: str) -> None:
    await conn.execute(login_account_failures.delete().where(login_account_failures.c.account == account))


async def uncount_account_failure(conn: Conn, account: str) -> None:
    """One failure fewer (an attempt whose password was never checked)."""
    t = login_account_failures
    await conn.execute(t.update().where(t.c.account == account, t.c.failures > 0).values(failures=t.c.failures - 1))


async def address_failures(conn: Conn, address: str) -> list[float] | None:
    """Times of an address's recent failed logins, oldest first; locked until the transaction ends."""
    t = login_address_failures
    recent = await conn.scalar(sa.select(t.c.recent).where(t.c.address == address).with_for_update())
    return None if recent is None else [float(at) for at in recent.split()]


async def put_address_failures(conn: Conn, address: str, recent: list[float], *, exists: bool) -> None:
    t = login_address_failures
    values = {"recent": " ".join(repr(at) for at in recent), "last_failure_at": max(recent, default=0.0)}
    if exists:
        await conn.execute(t.update().where(t.c.address == address).values(**values))
    else:
        await conn.execute(t.insert().values(address=address, **values))


async def sweep_login_failures(conn: Conn, *, accounts_before: float, addresses_before: float) -> int:
    """Delete streaks and address records that no longer limit anything; how many rows went."""
    accounts = await conn.execute(
        login_account_failures.delete().where(login_account_failures.c.last_failure_at < accounts_before)
    )
    addresses = await conn.execute(
        login_address_failures.delete().where(login_address_failures.c.last_failure_at < addresses_before)
    )
    return int(accounts.rowcount) + int(addresses.rowcount)
