"""`meshop events dlq` says what it checked when nothing is dead-lettered (stdout stays JSON lines)."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import nats
import pytest
from nats.js import api

from meshop.mesh.events.consumer import DLQ_STREAM, DLQ_SUBJECTS
from meshop.mesh.events.outbox import ensure_event_stream, event_stream
from meshop.runtime.nats_server import EmbeddedNats

pytestmark = pytest.mark.integration


@pytest.fixture
def shop_nats(tmp_path: Path) -> Iterator[tuple[Path, str]]:
    """A data dir whose nats.url names a NATS of this test's own: the stream names are the shop's."""
    server = EmbeddedNats(tmp_path / "nats")
    url = asyncio.run(server.start())
    (tmp_path / "nats.url").write_text(url + "\n")
    yield tmp_path, url
    asyncio.run(server.stop())


def dlq(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "meshop", "events", "dlq", "--data-dir", str(data_dir)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


async def consumers_started(url: str, *durables: str) -> None:
    """What event consumers do as they start: the source stream, the DLQ and their durables."""
    nc = await nats.connect(url)
    try:
        js = nc.jetstream()
        await ensure_event_stream(js, "orders", owner=False)  # a consumer
        await js.add_stream(name=DLQ_STREAM, subjects=[DLQ_SUBJECTS])
        for durable in durables:
            await js.add_consumer(event_stream("orders"), config=api.ConsumerConfig(durable_name=durable))
    finally:
        await nc.close()


def test_an_empty_dead_letter_stream_is_said_with_the_consumers_that_write_to_it(shop_nats: tuple[Path, str]) -> None:
    data_dir, url = shop_nats
    asyncio.run(consumers_started(url, "users-order-stats", "shipping-orders"))
    done = dlq(data_dir)
    assert (done.returncode, done.stdout) == (0, "")
    assert done.stderr.strip() == (
        f"no dead-lettered events (stream {DLQ_STREAM} is empty; "
        "consumers that would put events there: shipping-orders, users-order-stats)"
    )


def test_a_shop_whose_consumers_never_started_has_no_dead_letter_stream_yet(shop_nats: tuple[Path, str]) -> None:
    done = dlq(shop_nats[0])
    assert (done.returncode, done.stdout) == (0, "")
    assert "no dead-lettered events (no stream MESHOP_DLQ yet; consumers that would put events there: none)" in (
        done.stderr
    )
