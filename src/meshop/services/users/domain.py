"""The users' rules: what an account is, and how order events count against a customer.

- An email is an account's identity, compared trimmed and lower-cased: one account per email.
- A registered account is a customer; the admin account (`ADMIN_EMAIL`) is made once, at
  the first start.
- Order stats: a placed order counts as placed; a confirmed one as confirmed, its total
  spent; a cancelled one as cancelled.

How passwords are hashed is `passwords.py`, how sessions and signing keys rotate is
`sessions.py`, how failed logins are limited is `throttle.py`.
"""

from __future__ import annotations

import json
import uuid
from typing import Any

from meshop.contracts.orders import OrderCancelled, OrderConfirmed, OrderPlaced
from meshop.contracts.users import OrderStats, User

ADMIN_EMAIL = "admin@meshop.local"
CUSTOMER_ROLES = ["customer"]
ADMIN_ROLES = ["admin"]


def normalize_email(email: str) -> str:
    return email.strip().lower()


def new_account(email: str, name: str, password_hash: str, *, roles: list[str], now: str) -> dict[str, Any]:
    return {
        "id": uuid.uuid4().hex,
        "email": normalize_email(email),
        "name": name.strip(),
        "password_hash": password_hash,
        "roles": list(roles),
        "created_at": now,
    }


def order_stats_change(order: OrderPlaced | OrderConfirmed | OrderCancelled) -> dict[str, int]:
    """What an order event adds to its customer's stats."""
    match order:
        case OrderPlaced():
            return {"placed": 1}
        case OrderConfirmed(total_cents=total_cents):
            return {"confirmed": 1, "spent_cents": total_cents}
        case OrderCancelled():
            return {"cancelled": 1}


def user(row: dict[str, Any]) -> User:
    return User(
        id=row["id"], email=row["email"], name=row["name"], roles=json.loads(row["roles"]), created_at=row["created_at"]
    )


def stats(row: Any) -> OrderStats:
    return OrderStats(
        user_id=row.user_id,
        placed=row.placed,
        confirmed=row.confirmed,
        cancelled=row.cancelled,
        spent_cents=row.spent_cents,
    )


def no_stats(user_id: str) -> OrderStats:
    return OrderStats(user_id=user_id, placed=0, confirmed=0, cancelled=0, spent_cents=0)
