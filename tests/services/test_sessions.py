"""Users' sessions: key publication and activation; refresh-token rotation and reuse detection."""

from __future__ import annotations

import pytest

from meshop.mesh.data.store import Database
from meshop.mesh.errors import Unauthorized
from meshop.mesh.security.tokens import SigningKey
from meshop.services.users.sessions import RefreshTokens, published, signing_key
from meshop.services.users.store import StoredKey

TTL = 900.0


def keys(*activations: float | None) -> list[StoredKey]:
    """Newest first, as the store returns them."""
    return [StoredKey(SigningKey(kid=f"k{n}", private_pem=b""), at) for n, at in enumerate(activations)]


def kids(stored: list[StoredKey]) -> list[str]:
    return [k.key.kid for k in stored]


def test_a_rotated_in_key_is_published_before_it_signs() -> None:
    ring = keys(1000.0, None)  # k0 pending until t=1000, k1 the original
    assert kids(published(ring, 990.0, TTL)) == ["k0", "k1"]
    assert signing_key(ring, 990.0).kid == "k1"
    assert signing_key(ring, 1000.0).kid == "k0"


def test_the_previous_key_is_retired_once_its_last_token_expired() -> None:
    ring = keys(1000.0, None)
    assert kids(published(ring, 1000.0 + TTL + 59, TTL)) == ["k0", "k1"]
    assert kids(published(ring, 1000.0 + TTL + 61, TTL)) == ["k0"]
    three = keys(5000.0, 1000.0, None)
    assert kids(published(three, 4000.0, TTL)) == ["k0", "k1"]  # k2 retired long ago, k0 pending


@pytest.mark.integration
async def test_refresh_tokens_rotate_and_reuse_revokes_the_session(users_db: Database) -> None:
    now = [1000.0]
    tokens = RefreshTokens(users_db, ttl_s=3600, clock=lambda: now[0])
    first = await tokens.start("u1")
    user, second = await tokens.rotate(first)
    assert user == "u1"
    assert second != first
    user, third = await tokens.rotate(second)
    with pytest.raises(Unauthorized, match="reused"):
        await tokens.rotate(second)  # a copy of an old token is used: theft
    with pytest.raises(Unauthorized):
        await tokens.rotate(third)  # so the legitimate holder's newest token is dead too
    other = await tokens.start("u2")  # other sessions are untouched
    assert (await tokens.rotate(other))[0] == "u2"
    with pytest.raises(Unauthorized):
        await tokens.rotate("rt_made-up")
    late = await tokens.start("u1")
    now[0] += 3601
    with pytest.raises(Unauthorized, match="expired"):
        await tokens.rotate(late)


@pytest.mark.integration
async def test_ending_a_session_revokes_its_refresh_tokens_only_for_their_owner(users_db: Database) -> None:
    tokens = RefreshTokens(users_db, ttl_s=3600)
    mine = await tokens.start("u1")
    await tokens.end_session(mine, "someone-else")  # not theirs: nothing happens
    _, mine = await tokens.rotate(mine)
    await tokens.end_session(mine, "u1")
    with pytest.raises(Unauthorized):
        await tokens.rotate(mine)
