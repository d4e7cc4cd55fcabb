"""The lab's PostgreSQL killed with kill -9: nothing of the old server survives, the new one recovers.

The server is the lab's own (`postgres_init`, `postgres_command`: the Debian binaries as
the postgres user, through runuser), here on 127.0.0.1. One backend is busy in a loop when
the server is killed: a backend notices its postmaster's death only when it waits, so this
one would run on, holding the old server's shared memory, and the next postmaster would
refuse to start beside it. Needs root (runuser); CI runs as root.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import pytest

from meshop.lab.hosts import LabError
from meshop.lab.shop import (
    LabProcess,
    LabState,
    alive,
    kill,
    postgres_command,
    postgres_init,
    restart,
    server_processes,
)
from meshop.runtime.nats_server import free_port

pytestmark = pytest.mark.integration


async def _connect(port: int, within_s: float = 30.0) -> asyncpg.Connection:
    deadline = time.monotonic() + within_s
    while True:
        try:
            return await asyncpg.connect(host="127.0.0.1", port=port, user="postgres", database="postgres", timeout=1)
        except (OSError, TimeoutError, asyncpg.PostgresError):  # not listening yet, or recovering
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.05)


@pytest.fixture
def lab_postgres(tmp_path: Path) -> Iterator[tuple[Path, int]]:
    if os.geteuid() != 0 or not Path("/usr/lib/postgresql").is_dir():
        if os.environ.get("CI"):
            pytest.fail("CI runs as root with PostgreSQL's binaries")
        pytest.skip("runs PostgreSQL as the postgres user through runuser: needs root and the server's binaries")
    pg_dir = Path(f"/tmp/meshop-test-pg-{os.getpid()}")  # not under tmp_path: the postgres user must reach it
    port = free_port()
    postgres_init(pg_dir, trusted="127.0.0.1/32")
    state = LabState(lab_id=252, directory=str(tmp_path), hosts=[])
    state.processes.append(
        LabProcess("postgres", "postgres", "h4", "127.0.0.1", port, log=str(tmp_path / "postgres.log"),
                   argv=postgres_command(pg_dir, "127.0.0.1", port))
    )  # fmt: skip
    state.save()
    try:
        yield tmp_path, port
    finally:
        with contextlib.suppress(LabError):
            pid = kill(tmp_path, "postgres", signal.SIGKILL).pid
            deadline = time.monotonic() + 10
            while alive(pid) and time.monotonic() < deadline:  # runuser, a child of ours: reaped
                time.sleep(0.02)
        shutil.rmtree(pg_dir, ignore_errors=True)


async def test_kill_9_leaves_no_process_of_the_server_and_the_restart_recovers_every_commit(
    lab_postgres: tuple[Path, int],
) -> None:
    directory, port = lab_postgres
    first = restart(directory, "postgres")
    conn = await _connect(port)
    await conn.execute("CREATE TABLE accepted (id int PRIMARY KEY)")
    await conn.execute("INSERT INTO accepted SELECT generate_series(1, 100)")  # committed: answered
    busy = await _connect(port)
    looping = asyncio.create_task(busy.execute("DO $$ BEGIN LOOP END LOOP; END $$"))
    await asyncio.sleep(0.3)  # its backend is in the loop
    assert len(server_processes(first)) >= 3  # postmaster, its auxiliary processes, the two backends

    kill(directory, "postgres", signal.SIGKILL)
    deadline = time.monotonic() + 5
    while alive(first.pid):  # runuser, our child, and the postmaster its child: killed with their group
        assert time.monotonic() < deadline
        await asyncio.sleep(0.02)
    assert server_processes(first) == []  # the busy backend too, a session of its own
    looping.cancel()
    with contextlib.suppress(asyncio.CancelledError, asyncpg.PostgresError, OSError):
        await looping
    for c in (conn, busy):
        c.terminate()

    second = restart(directory, "postgres")
    assert second.pid != first.pid
    conn = await _connect(port)  # once it has replayed its WAL
    try:
        assert await conn.fetchval("SELECT count(*) FROM accepted") == 100
    finally:
        await conn.close()
    assert "database system was interrupted" in await asyncio.to_thread(Path(second.log).read_text)  # recovered
