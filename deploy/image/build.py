"""Build meshop's container image: every wheel on the host, then the Containerfile with podman or docker.

    python deploy/image/build.py [--image localhost/meshop] [--base python:3.11-slim] [--engine podman]
                                 [--if-changed]

`make image` runs it after `make compile`. The steps (docs/decisions/0021):

1. meshop's wheel, built from the tree by hatch with the mypyc-compiled modules in it
   (hatch_build.py), checked to hold an extension for every module the Makefile compiles;
2. every dependency as a binary wheel (`pip download --only-binary=:all:`) into
   build/image/wheelhouse, the only thing the build context holds (.dockerignore);
3. `<engine> build`, tagged `<image>:<version>-<git sha>` and `<image>:dev`, with the OCI
   labels (source, revision, version, created) and a label with the digest of everything
   the image is made from, so `--if-changed` reuses an image built from the same tree.

The engine is CONTAINER_ENGINE (or --engine), else podman, else docker. The wheels are built
for this interpreter, which must be the base image's Python (3.11): a cp311 wheel installs
only there.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

ROOT = Path(__file__).resolve().parents[2]
WHEELHOUSE = Path("build/image/wheelhouse")  # under the root: the build context
PYTHON = (3, 11)  # the base image's python3 (Debian bookworm's, python:3.11-slim's)
TREE_LABEL = "dev.meshop.tree"
#: What the image is made from besides the package's sources.
INPUTS = ("pyproject.toml", "hatch_build.py", "Containerfile", ".dockerignore", "Makefile")


class BuildError(Exception):
    """The image cannot be built as asked; the message says why and what to do."""


def engine_of(environ: Mapping[str, str], which: Callable[[str], str | None] = shutil.which) -> str:
    """CONTAINER_ENGINE when set, else podman, else docker (the one that is installed)."""
    chosen = environ.get("CONTAINER_ENGINE")
    if chosen:
        return chosen
    for engine in ("podman", "docker"):
        if which(engine):
            return engine
    raise BuildError("neither podman nor docker is installed (or set CONTAINER_ENGINE)")


def project_version(root: Path = ROOT) -> str:
    return str(tomllib.loads((root / "pyproject.toml").read_text())["project"]["version"])


def compiled_in_makefile(makefile: str) -> list[str]:
    """The modules `make compile` builds with mypyc (the Makefile's COMPILED list), as
    package-relative module paths: `meshop/mesh/client/client`."""
    found = re.search(r"^COMPILED :=((?:[^\n]*\\\n)*[^\n]*)$", makefile, re.MULTILINE)
    if found is None:
        raise BuildError("no COMPILED list in the Makefile")
    return [f"meshop/{name}" for name in found.group(1).replace("\\\n", " ").split()]


def missing_extensions(wheel: Path, modules: Sequence[str]) -> list[str]:
    """The modules of `modules` that `wheel` carries no C extension for (and mypyc's shared
    library, `*__mypyc.*.so`, when it is absent)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
    extensions = {name.split(".", 1)[0] for name in names if name.endswith(".so")}
    missing = [module for module in modules if module not in extensions]
    if modules and not any("__mypyc" in name and "/" not in name for name in names if name.endswith(".so")):
        missing.append("<hash>__mypyc (mypyc's shared library)")
    return missing


def tree_digest(root: Path, paths: Sequence[Path], *, base: str, base_id: str) -> str:
    """A digest of everything an image is made from: these files' paths and contents, and the base."""
    digest = hashlib.sha256(f"{base}\0{base_id}\0".encode())
    for path in sorted(paths):
        digest.update(path.relative_to(root).as_posix().encode() + b"\0")
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return digest.hexdigest()


def image_inputs(root: Path = ROOT) -> list[Path]:
    """The files of the tree an image is built from: the package (compiled modules included) and INPUTS."""
    src = root / "src"
    package = [
        p for p in src.rglob("*") if p.is_file() and not {"__pycache__", "build"} & set(p.relative_to(src).parts)
    ]
    return [*package, *(root / name for name in INPUTS)]


@dataclass(frozen=True)
class Revision:
    sha: str  # the full commit hash, or "unknown" outside git
    dirty: bool  # tracked files differ from the commit
    committed_at: int  # the commit's Unix time: the image's creation time (reproducible)

    @property
    def tag(self) -> str:
        return self.sha[:12] + ("-dirty" if self.dirty else "")


def git_revision(root: Path = ROOT) -> Revision:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=root, check=True, capture_output=True, text=True).stdout.strip()

    try:
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
        committed_at = int(git("log", "-1", "--format=%ct"))
    except (OSError, subprocess.CalledProcessError):
        return Revision("unknown", dirty=True, committed_at=0)
    return Revision(sha, dirty, committed_at)


def git_source(root: Path = ROOT) -> str:
    """Where the source lives (org.opencontainers.image.source): the origin remote's URL."""
    found = subprocess.run(["git", "remote", "get-url", "origin"], cwd=root, capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 and found.stdout.strip() else "local checkout (no git remote)"


#: Prints the base image's environment markers (PEP 508), with its own python3: a
#: dependency may hold only on some 3.11 releases (redis needs async-timeout below 3.11.3;
#: Debian bookworm's python3 is 3.11.2), and pip resolves on the host for the host's.
_MARKERS = """
import json, os, platform, sys
print(json.dumps({
    "implementation_name": sys.implementation.name,
    "implementation_version": platform.python_version(),
    "os_name": os.name,
    "platform_machine": platform.machine(),
    "platform_release": platform.release(),
    "platform_system": platform.system(),
    "platform_version": platform.version(),
    "python_full_version": platform.python_version(),
    "platform_python_implementation": platform.python_implementation(),
    "python_version": ".".join(platform.python_version_tuple()[:2]),
    "sys_platform": sys.platform,
}))
"""


def base_environment(engine: str, base: str) -> dict[str, str]:
    """The base image's marker environment, from its python3 (which must be PYTHON)."""
    found = subprocess.run(
        [engine, "run", "--rm", "--network", "none", "--entrypoint", "python3", base, "-c", _MARKERS],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0:
        raise BuildError(f"cannot run python3 in the base image {base}: {found.stderr.strip()[-500:]}")
    environment: dict[str, str] = json.loads(found.stdout)
    if environment["python_version"] != ".".join(map(str, PYTHON)):
        raise BuildError(f"{base} has Python {environment['python_full_version']}; the image needs 3.11")
    return environment


def missing_requirements(wheelhouse: Path, environment: Mapping[str, str]) -> list[str]:
    """Requirements of meshop, direct or not, that hold in `environment` but that no wheel in
    `wheelhouse` provides (markers evaluated for the base, extras followed)."""
    # packaging is pip's and hatchling's own dependency: any venv that builds wheels has it.
    from packaging.metadata import Metadata
    from packaging.utils import NormalizedName, canonicalize_name, parse_wheel_filename

    wheels = {parse_wheel_filename(wheel.name)[0]: wheel for wheel in wheelhouse.glob("*.whl")}
    missing: list[str] = []
    seen: set[tuple[NormalizedName, str]] = set()
    todo: list[tuple[NormalizedName, frozenset[str]]] = [(canonicalize_name("meshop"), frozenset())]
    while todo:
        name, extras = todo.pop()
        if all((name, extra) in seen for extra in {"", *extras}):
            continue
        seen.update((name, extra) for extra in {"", *extras})
        with zipfile.ZipFile(wheels[name]) as archive:
            (metadata,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
            requires = Metadata.from_email(archive.read(metadata), validate=False).requires_dist or []
        for requirement in requires:
            wanted = requirement.marker is None or any(
                requirement.marker.evaluate({**environment, "extra": extra}) for extra in {"", *extras}
            )
            required = canonicalize_name(requirement.name)
            if not wanted:
                continue
            if required in wheels:
                todo.append((required, frozenset(requirement.extras)))
                continue
            requirement.marker = None  # downloaded for the base: the marker held there
            if str(requirement) not in missing:
                missing.append(str(requirement))
    return missing


def build_wheels(root: Path, wheelhouse: Path, environment: Mapping[str, str], *, python: str = sys.executable) -> Path:
    """Fill `wheelhouse` (emptied first) with meshop's compiled wheel and every dependency's
    for a Python of `environment` (the base image's); meshop's wheel."""
    if sys.version_info[:2] != PYTHON:
        raise BuildError(
            f"the wheels are built for the image's Python {'.'.join(map(str, PYTHON))}; "
            f"this is {sys.version_info.major}.{sys.version_info.minor}"
        )
    shutil.rmtree(wheelhouse, ignore_errors=True)
    wheelhouse.mkdir(parents=True)
    pip = [python, "-m", "pip", "--disable-pip-version-check"]
    _run([*pip, "wheel", "--quiet", "--no-deps", "--wheel-dir", str(wheelhouse), str(root)], "meshop's wheel")
    (wheel,) = wheelhouse.glob("meshop-*.whl")
    missing = missing_extensions(wheel, compiled_in_makefile((root / "Makefile").read_text()))
    if missing or wheel.name.endswith("-none-any.whl"):
        raise BuildError(f"{wheel.name} lacks compiled modules ({', '.join(missing[:3])}): run `make compile` first")
    download = [*pip, "download", "--quiet", "--only-binary=:all:", "--dest", str(wheelhouse)]
    _run([*download, str(wheel)], "the dependencies' wheels")
    for _round in range(5):  # what only the base's Python needs, and what that needs in turn
        missing = missing_requirements(wheelhouse, environment)
        if not missing:
            return wheel
        _run([*download, *missing], f"the wheels only the base's Python needs ({', '.join(missing)})")
    raise BuildError(f"the base's Python still lacks {', '.join(missing)}")


def build_command(
    engine: str,
    *,
    root: Path,
    base: str,
    tags: Sequence[str],
    version: str,
    revision: Revision,
    source: str,
    tree: str,
) -> list[str]:
    """The `<engine> build` command line for the Containerfile at `root`."""
    created = datetime.fromtimestamp(revision.committed_at, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    args = {
        "BASE": base,
        "VERSION": version,
        "REVISION": revision.sha + ("-dirty" if revision.dirty else ""),
        "SOURCE": source,
        "CREATED": created,
        "SOURCE_DATE_EPOCH": str(revision.committed_at),
    }
    command = [engine, "build", "--file", str(root / "Containerfile"), "--label", f"{TREE_LABEL}={tree}"]
    for name, value in args.items():
        command += ["--build-arg", f"{name}={value}"]
    if Path(engine).name == "podman":  # OCI annotations on the manifest too (docker's build has no flag)
        for key in ("source", "revision", "version", "created"):
            command += ["--annotation", f"org.opencontainers.image.{key}={args[key.upper()]}"]
    for tag in tags:
        command += ["--tag", tag]
    return [*command, str(root)]


def inspect(engine: str, image: str, template: str) -> str | None:
    """`<engine> image inspect --format TEMPLATE IMAGE`, or None when there is no such image."""
    found = subprocess.run([engine, "image", "inspect", "--format", template, image], capture_output=True, text=True)
    return found.stdout.strip() if found.returncode == 0 else None


def build(
    *,
    image: str,
    base: str,
    engine: str,
    if_changed: bool = False,
    root: Path = ROOT,
    out: TextIO = sys.stderr,
) -> str:
    """Build the image (or, `if_changed`, keep the one built from this same tree); its `:dev` tag."""
    base_id = inspect(engine, base, "{{.Id}}") or ""
    tree = tree_digest(root, image_inputs(root), base=base, base_id=base_id)
    dev = f"{image}:dev"
    if if_changed and inspect(engine, dev, '{{index .Config.Labels "' + TREE_LABEL + '"}}') == tree:
        print(f"image: {dev} is built from this tree already", file=out)
        return dev
    started = time.monotonic()
    build_wheels(root, root / WHEELHOUSE, base_environment(engine, base))
    wheels_s = time.monotonic() - started
    version, revision = project_version(root), git_revision(root)
    tags = [f"{image}:{version}-{revision.tag}", dev]
    command = build_command(
        engine, root=root, base=base, tags=tags, version=version, revision=revision, source=git_source(root), tree=tree
    )
    _run(command, f"the image ({engine} build)")
    size = int(inspect(engine, dev, "{{.Size}}") or 0)
    print(
        f"image: {', '.join(tags)}: {size / 1e6:.1f} MB, built in {time.monotonic() - started:.1f} s "
        f"(wheels {wheels_s:.1f} s)",
        file=out,
    )
    return dev


def _run(command: Sequence[str], what: str) -> None:
    found = subprocess.run(command, capture_output=True, text=True)
    if found.returncode != 0:
        tail = "\n".join((found.stdout + found.stderr).strip().splitlines()[-30:])
        raise BuildError(f"building {what} failed ({' '.join(command[:4])} ...):\n{tail}")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="localhost/meshop", help="the image's name, without a tag")
    parser.add_argument("--base", default="python:3.11-slim", help="the base image (its python3 must be 3.11)")
    parser.add_argument("--engine", default=None, help="podman or docker (default: CONTAINER_ENGINE, or found)")
    parser.add_argument("--if-changed", action="store_true", help="keep an image built from this same tree")
    args = parser.parse_args(argv)
    try:
        engine = args.engine or engine_of(os.environ)
        build(image=args.image, base=args.base, engine=engine, if_changed=args.if_changed)
    except BuildError as exc:
        print(f"image: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
