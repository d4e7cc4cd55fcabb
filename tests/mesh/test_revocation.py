"""Revoked tokens, shared through a real NATS KV bucket."""

from __future__ import annotations

import asyncio
import time
import uuid

import nats
import pytest

from meshop.mesh.security.revocation import RevocationList

pytestmark = pytest.mark.integration


async def test_a_revocation_reaches_every_process_and_ends_with_the_token(nats_url: str) -> None:
    bucket = f"revoked_{uuid.uuid4().hex[:8]}"
    a, b = await nats.connect(nats_url), await nats.connect(nats_url)
    here, there = RevocationList(a, bucket=bucket), RevocationList(b, bucket=bucket)
    await here.start()
    await there.start()
    try:
        await here.revoke("jti-1", time.time() + 600)
        assert "jti-1" in here  # at once where it was revoked
        deadline = time.monotonic() + 5
        while "jti-1" not in there:
            assert time.monotonic() < deadline, "the revocation never reached the other process"
            await asyncio.sleep(0.01)
        await here.revoke("jti-old", time.time() - 1)  # its token already expired
        assert "jti-old" not in here
        late = RevocationList(b, bucket=bucket)  # a process started later loads what exists
        await late.start()
        assert "jti-1" in late
        await late.stop()
    finally:
        await here.stop()
        await there.stop()
        await a.jetstream().delete_key_value(bucket)
        await a.close()
        await b.close()
