"""Whether a failure says the database could not be reached: without importing a driver.

The HTTP endpoints answer such a failure 503 (try again later) instead of 500, and the
event consumers hold the event instead of spending a delivery on it. Both run in processes
that may not load SQLAlchemy (the gateway's routing is shared: decision 0013), so the
exceptions are read by their attributes, not by their classes.
"""

from __future__ import annotations

#: SQLSTATEs of a server that is not there, whatever the statement: class 08 (connection
#: exception), 57P01-57P03 (terminated by a shutdown, a crash, or starting up).
_UNAVAILABLE_STATES = ("08", "57P01", "57P02", "57P03")


def unavailable(exc: BaseException) -> bool:
    """Whether `exc` says the database could not be reached, not that the work was wrong.

    The server refused or dropped the connection (a restart, a kill -9, a network fault), or
    is recovering and refuses connections: trying the same work again later can succeed. What
    the work itself did wrong (a constraint, a bug in a handler) is not.
    """
    seen: set[int] = set()
    cause: BaseException | None = exc
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if getattr(cause, "connection_invalidated", False) is True:  # SQLAlchemy's DBAPIError
            return True
        if isinstance(cause, OSError):  # refused, reset, unreachable, timed out connecting
            return True
        state = getattr(cause, "sqlstate", None)  # asyncpg's
        if isinstance(state, str) and state.startswith(_UNAVAILABLE_STATES):
            return True
        orig = getattr(cause, "orig", None)  # the driver's exception under SQLAlchemy's
        cause = orig if isinstance(orig, BaseException) else cause.__cause__
    return False
