"""The users database: accounts and signing keys."""

from __future__ import annotations

import json
from typing import Any

import sqlalchemy as sa

from meshop.mesh.auth import SigningKey
from meshop.mesh.store import Conn

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
)


async def find_by_email(conn: Conn, email: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.email == email))).mappings().first()
    return dict(row) if row else None


async def find_by_id(conn: Conn, user_id: str) -> dict[str, Any] | None:
    row = (await conn.execute(sa.select(users).where(users.c.id == user_id))).mappings().first()
    return dict(row) if row else None


async def insert_user(conn: Conn, **values: Any) -> None:
    await conn.execute(users.insert().values(**{**values, "roles": json.dumps(values["roles"])}))


async def signing_keys_newest_first(conn: Conn) -> list[SigningKey]:
    rows = await conn.execute(sa.select(signing_keys).order_by(signing_keys.c.created_at.desc()))
    return [SigningKey(kid=r.kid, private_pem=r.private_pem.encode()) for r in rows]


async def insert_signing_key(conn: Conn, key: SigningKey, created_at: str) -> None:
    await conn.execute(
        signing_keys.insert().values(kid=key.kid, private_pem=key.private_pem.decode(), created_at=created_at)
    )
