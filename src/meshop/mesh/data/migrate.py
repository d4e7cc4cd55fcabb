"""`python -m meshop.mesh.data.migrate URL VERSIONS NAME`: upgrade one database to head.

Run as a child process by `Database.migrate`, so a service never loads Alembic itself.
"""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

from meshop.mesh.data.store import run_migrations

if __name__ == "__main__":
    if len(sys.argv) != 4:
        print("usage: python -m meshop.mesh.data.migrate URL VERSIONS NAME", file=sys.stderr)
        sys.exit(2)
    asyncio.run(run_migrations(sys.argv[1], Path(sys.argv[2]), sys.argv[3]))
