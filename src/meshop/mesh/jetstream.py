"""The JetStream streams and KV buckets meshop creates, kept at `MESHOP_NATS_REPLICAS` copies.

Every stream and bucket is created with the setting's replicas: 1 on one server (`meshop up`),
3 on a JetStream cluster (decision 0022). One that already exists with fewer is raised by a
process that owns it (`update_stream` keeps its messages; the new peers catch up); any other
process logs the mismatch with the command that fixes it. Replicas are never lowered: during
a rollout, processes still on the old setting must not undo the new one.

Who owns what: a service's event stream is its producer's (the outbox relay); the
dead-letter stream and the KV buckets (registry, revocations) are shared, so every process
that opens them owns them.
"""

from __future__ import annotations

import contextlib
import dataclasses

import structlog
from nats.js.api import KeyValueConfig, StreamConfig, StreamInfo
from nats.js.client import JetStreamContext
from nats.js.errors import APIError, BadRequestError, NotFoundError
from nats.js.kv import KeyValue

from meshop.mesh.errors import ConfigError

log = structlog.get_logger("meshop.streams")

REPLICAS_VARIABLE = "MESHOP_NATS_REPLICAS"
#: JetStream's error codes: a name taken by a stream of another configuration; more than
#: one replica asked of a server that is not in a cluster.
STREAM_NAME_IN_USE = 10058
REPLICAS_NEED_A_CLUSTER = 10074


async def ensure_stream(js: JetStreamContext, config: StreamConfig, *, owner: bool) -> StreamInfo:
    """Create the stream `config` describes unless it exists, then reconcile its replicas.

    An existing stream keeps its configuration (another replica may have created it with
    other limits); only its replicas are raised, and only by an `owner`.
    """
    assert config.name is not None
    try:
        info = await js.stream_info(config.name)
    except NotFoundError:
        try:
            return await js.add_stream(config)
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
            info = await js.stream_info(config.name)  # created concurrently by another process
        except APIError as exc:
            raise _translated(exc, config.num_replicas or 1) from None
    return await reconcile_replicas(js, info, config.num_replicas or 1, owner=owner)


async def reconcile_replicas(js: JetStreamContext, info: StreamInfo, replicas: int, *, owner: bool) -> StreamInfo:
    """Raise the stream of `info` to `replicas` copies if it has fewer and this process owns it.

    Not the owner: log the mismatch and the `nats` command that fixes it.
    """
    have = info.config.num_replicas or 1
    if have >= replicas:
        return info
    name = info.config.name
    fix = f"nats stream edit {name} --replicas {replicas}"
    if not owner:
        log.warning("stream has fewer replicas than the setting", stream=name, replicas=have, wanted=replicas, fix=fix)
        return info
    try:
        raised = await js.update_stream(dataclasses.replace(info.config, num_replicas=replicas))
    except APIError as exc:
        raise _translated(exc, replicas, fix=fix) from None
    log.info("stream replicas raised", stream=name, replicas=replicas, was=have)
    return raised


async def open_key_value(
    js: JetStreamContext, config: KeyValueConfig, *, limit_marker_ttl: float | None = None
) -> KeyValue:
    """Open the bucket `config` describes, creating it if absent; raise its replicas (every opener owns it).

    `limit_marker_ttl`: ask for expiry markers (nats-server 2.11+) when creating it; an older
    server raises KeyValueLimitMarkerTTLNotSupportedError.
    """
    stream = f"KV_{config.bucket}"
    try:
        info = await js.stream_info(stream)
    except NotFoundError:
        try:
            if limit_marker_ttl is None:
                return await js.create_key_value(config)
            return await js.create_key_value(config, limit_marker_ttl=limit_marker_ttl)
        except BadRequestError as exc:
            if exc.err_code != STREAM_NAME_IN_USE:
                raise
        except APIError as exc:
            raise _translated(exc, config.replicas) from None
        return await js.key_value(config.bucket)  # created concurrently by another process
    await reconcile_replicas(js, info, config.replicas, owner=True)
    return await js.key_value(config.bucket)


def _translated(exc: APIError, replicas: int, *, fix: str | None = None) -> Exception:
    if exc.err_code == REPLICAS_NEED_A_CLUSTER:
        return ConfigError(
            f"{REPLICAS_VARIABLE}={replicas}, but the NATS server is not part of a JetStream cluster "
            f"({exc.description}): set {REPLICAS_VARIABLE}=1 or run NATS clustered"
        )
    if fix is not None:
        return ConfigError(f"cannot raise the stream's replicas ({exc.description}); fix it with: {fix}")
    return exc


async def stop_watcher(watcher: KeyValue.KeyWatcher) -> None:
    """Unsubscribe a KV watch whose reader has stopped (cancelled, failed or done).

    A watch is a subscription whose callback puts each update in a bounded queue (256).
    Left subscribed after its reader is gone, it fills that queue, then blocks: its
    messages pile up in the connection, and draining the connection at stop waits for
    them until the drain times out.
    """
    with contextlib.suppress(Exception):  # the connection may be closed or reconnecting
        await watcher.stop()  # type: ignore[no-untyped-call]  # (nats-py leaves it unannotated)
