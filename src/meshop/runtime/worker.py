"""The entrypoint of one service process, lean on purpose.

`meshop up` starts each service as `python -m meshop.runtime.worker SERVICE`, and
`meshop run SERVICE` calls `run_service` too. It imports no CLI framework, so a service
process carries only what serving needs (the RSS budget is 80 MB per process).
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys

from meshop.mesh.errors import ConfigError


def run_service(name: str) -> int:
    """Run process `name` (a shop process, or `module:ATTRIBUTE` naming another service's
    definition) until SIGINT/SIGTERM; the exit code (2: bad configuration)."""
    # Until the event loop takes SIGTERM over (Service.run), it ends the process at once:
    # as a container's PID 1 the process would otherwise ignore it (the kernel delivers no
    # signal to PID 1 that has no handler) and be killed only at the end of the grace period.
    signal.signal(signal.SIGTERM, _exit_now)
    from meshop.mesh.service.lifecycle import Service
    from meshop.mesh.service.settings import load_settings
    from meshop.mesh.telemetry.logs import configure_logging
    from meshop.services import load_definition

    try:
        definition = load_definition(name)
        name = definition.name
        settings = load_settings(name)
    except (ConfigError, ValueError) as exc:
        print(f"meshop: {exc}", file=sys.stderr)
        return 2
    service = Service(definition, settings)
    configure_logging(service=name, instance=service.instance_id, fmt=settings.log_format, level=settings.log_level)
    use_uvloop()
    try:
        asyncio.run(service.run())
    except ConfigError as exc:
        print(f"meshop: {exc}", file=sys.stderr)
        return 2
    return 0


def _exit_now(_signum: int, _frame: object) -> None:
    sys.exit(0)


def use_uvloop() -> None:
    """Run asyncio on uvloop where it is installed (it is a dependency on POSIX)."""
    try:
        import uvloop
    except ImportError:
        return
    asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())


def import_nats_without_websockets() -> None:
    """Import nats-py with aiohttp hidden from it, unless NATS is reached over WebSocket.

    nats-py imports aiohttp (~11 MB of RSS, the biggest import of a service) only for its
    WebSocket transport; meshop connects with `nats://`, and its own calls use its own
    HTTP client. aiohttp is hidden only while nats-py loads: a process that needs
    aiohttp itself (the console's scraper) still imports it.
    """
    urls = os.environ.get("MESHOP_NATS_URL", "").lower()  # nats-py reads the scheme case-blind
    if "ws://" in urls or "wss://" in urls or "aiohttp" in sys.modules:
        return  # nats-py imports it as usual
    sys.modules["aiohttp"] = None  # type: ignore[assignment]  # an import of it raises ImportError
    try:
        import nats  # noqa: F401  (binds its WebSocket transport's aiohttp as missing)
    finally:
        del sys.modules["aiohttp"]


if __name__ == "__main__":
    # structlog pretty-prints tracebacks with rich (and pygments) when it can import
    # them; a service's logs do not need that, and it costs ~3 MB of RSS per process.
    sys.modules.setdefault("rich", None)  # type: ignore[arg-type]
    import_nats_without_websockets()
    if len(sys.argv) != 2:
        print("usage: python -m meshop.runtime.worker SERVICE", file=sys.stderr)
        sys.exit(2)
    sys.exit(run_service(sys.argv[1]))
