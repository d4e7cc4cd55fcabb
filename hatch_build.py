"""Hatch build hook: meshop's wheel carries the request path compiled with mypyc (decision 0014).

`make compile` leaves the C extensions beside the sources (`src/meshop/**/*.so`) and mypyc's
shared runtime library at the top of `src/` (`<hash>__mypyc.cpython-*.so`). Git ignores
them, so hatch would leave them out; this hook puts them in the wheel, at the same paths,
and tags the wheel for this interpreter and platform (cp311-cp311-linux_x86_64): a compiled
wheel installs only where its extensions load. With no compiled module in the tree (after
`make pure`) the wheel stays pure Python (py3-none-any); an editable install never
carries them (they are imported from the tree). A stale build is refused, as `meshop run`
refuses it (meshop.runtime.build): it would ship old code under new sources.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface


def compiled_modules(src: Path) -> list[Path]:
    """The compiled files under `src` a wheel must carry: the package's extensions and
    mypyc's shared library beside the package."""
    return sorted([*src.glob("meshop/**/*.so"), *src.glob("*__mypyc*.so")])


def stale(src: Path, compiled: list[Path]) -> list[Path]:
    """Compiled files older than a source of the package (compiled code is typed against all of it)."""
    newest = max((p.stat().st_mtime for p in (src / "meshop").glob("**/*.py")), default=0.0)
    return [so for so in compiled if so.stat().st_mtime < newest]


class CompiledModulesHook(BuildHookInterface):  # type: ignore[misc]  # hatchling: only in the build's env
    PLUGIN_NAME = "custom"

    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if self.target_name != "wheel" or version == "editable":
            return
        src = Path(self.root) / "src"
        compiled = compiled_modules(src)
        if not compiled:
            return
        old = stale(src, compiled)
        if old:
            names = ", ".join(so.relative_to(src).as_posix() for so in old[:3])
            raise RuntimeError(f"compiled modules are older than the sources ({names}): run `make compile` first")
        for so in compiled:
            build_data["force_include"][str(so)] = so.relative_to(src).as_posix()
        build_data["pure_python"] = False
        build_data["infer_tag"] = True
