"""Whether the compiled modules beside the sources (docs/decisions/0014) were built from them.

Python imports a compiled module before its source, so after an edit an old build would
run old code, silently. `make` rebuilds on any change; what runs outside it checks here.
"""

from __future__ import annotations

from pathlib import Path

import meshop

PACKAGE = Path(meshop.__file__).resolve().parent


def stale_compiled(package: Path) -> list[str]:
    """Compiled modules older than any source of the package (compiled code is typed against
    all of it, not only its own module), as paths relative to the package's parent."""
    newest = max((p.stat().st_mtime for p in package.glob("**/*.py")), default=0.0)
    return sorted(
        so.relative_to(package.parent).as_posix() for so in package.glob("**/*.so") if so.stat().st_mtime < newest
    )


def refusal() -> str | None:
    """Why this checkout must not run as built (a stale build), or None."""
    stale = stale_compiled(PACKAGE)
    if not stale:
        return None
    return (
        f"compiled modules are older than the sources ({', '.join(stale[:3])}{', ...' if len(stale) > 3 else ''}): "
        "run `make compile` (or `make pure` to run the sources as they are)"
    )
