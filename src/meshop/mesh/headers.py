"""The header fields meshop itself sends between processes, named once.

Below every other part of the mesh: the client that sets a field and the server that
reads it both import its name from here, not from each other.
"""

from __future__ import annotations

#: What is left of the caller's deadline, in whole milliseconds.
DEADLINE_HEADER = "meshop-deadline-ms"
#: The key that makes a request safe to repeat (RFC draft `Idempotency-Key`).
IDEMPOTENCY_HEADER = "idempotency-key"
#: The calling service's signed identity (docs/decisions/0020).
IDENTITY_HEADER = "meshop-identity"
#: A NATS request's path, when it is not its operation's own (docs/decisions/0026).
PATH_HEADER = "meshop-path"
#: A NATS reply's status, when it is not 200.
STATUS_HEADER = "meshop-status"
#: A mesh client's NATS request: its deadline, traceparent, identity and path in one header
#: (docs/decisions/0040).
CALL_HEADER = "meshop-call"

#: Not a header: the ASGI scope extension the mesh's HTTP server (`transport.server`) offers,
#: `answer(status, head_lines, body)`, a whole answer in one synchronous call instead of two
#: ASGI messages (the gateway's hot path, and an operation's endpoint's).
ANSWER_EXTENSION = "meshop.answer"
