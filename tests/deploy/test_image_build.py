"""deploy/image/build.py and hatch_build.py without a container engine: the wheel carries the
compiled modules and is tagged for them, a wheel without them is refused, the build command
carries the OCI labels, and an image is reused only when nothing it is made from changed."""

from __future__ import annotations

import itertools
import os
import shutil
import time
import zipfile
from pathlib import Path

import pytest
from hatchling.builders.wheel import WheelBuilder

from tests.system.image import build_module

ROOT = Path(__file__).parents[2]
SUFFIX = ".cpython-311-x86_64-linux-gnu.so"


build = build_module()


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """A copy of what a wheel is built from, without any compiled module (as after `make pure`)."""
    for name in ("pyproject.toml", "hatch_build.py", "README.md", "Makefile"):
        shutil.copy(ROOT / name, tmp_path / name)
    shutil.copytree(
        ROOT / "src" / "meshop", tmp_path / "src" / "meshop", ignore=shutil.ignore_patterns("*.so", "__pycache__")
    )
    return tmp_path


def _compile(project: Path, modules: list[str]) -> None:
    """Stand-ins for `make compile`'s output: an extension per module and mypyc's shared library."""
    for module in modules:
        (project / "src" / f"{module}{SUFFIX}").write_bytes(b"\x7fELF")
    (project / "src" / f"0123456789abcdef0123__mypyc{SUFFIX}").write_bytes(b"\x7fELF")


def _wheel(project: Path) -> Path:
    (wheel,) = WheelBuilder(str(project)).build(directory=str(project / "dist"), versions=["standard"])
    return Path(wheel)


def test_the_makefile_compiled_list_names_modules_that_exist() -> None:
    modules = build.compiled_in_makefile((ROOT / "Makefile").read_text())
    assert len(modules) >= 10
    assert "meshop/mesh/client/client" in modules
    assert all((ROOT / "src" / f"{module}.py").is_file() for module in modules)


def test_a_compiled_tree_makes_a_platform_wheel_carrying_every_extension(project: Path) -> None:
    modules = build.compiled_in_makefile((project / "Makefile").read_text())
    _compile(project, modules)
    wheel = _wheel(project)
    assert wheel.name.startswith(f"meshop-{build.project_version(project)}-cp3")
    assert not wheel.name.endswith("-none-any.whl")
    assert build.missing_extensions(wheel, modules) == []
    with zipfile.ZipFile(wheel) as archive:  # the shared library sits beside the package, as mypyc put it
        assert f"0123456789abcdef0123__mypyc{SUFFIX}" in archive.namelist()


def test_a_pure_tree_makes_a_wheel_the_image_build_refuses(project: Path) -> None:
    modules = build.compiled_in_makefile((project / "Makefile").read_text())
    wheel = _wheel(project)
    assert wheel.name.endswith("-py3-none-any.whl")
    missing = build.missing_extensions(wheel, modules)
    assert len(missing) == len(modules) + 1  # and mypyc's shared library


def test_a_compiled_module_older_than_a_source_is_not_packaged(project: Path) -> None:
    _compile(project, ["meshop/mesh/client/client"])
    source = project / "src" / "meshop" / "mesh" / "client" / "balancing.py"
    later = time.time() + 10
    os.utime(source, (later, later))  # edited after the build
    with pytest.raises(RuntimeError, match="make compile"):
        _wheel(project)


def test_the_engine_is_the_override_else_podman_else_docker() -> None:
    installed = {"docker": "/usr/bin/docker", "podman": "/usr/bin/podman"}
    assert build.engine_of({"CONTAINER_ENGINE": "nerdctl"}, installed.get) == "nerdctl"
    assert build.engine_of({}, installed.get) == "podman"
    assert build.engine_of({}, {"docker": "/usr/bin/docker"}.get) == "docker"
    with pytest.raises(build.BuildError, match="neither podman nor docker"):
        build.engine_of({}, {}.get)


def test_the_build_command_labels_the_image_and_tags_it() -> None:
    revision = build.Revision("a" * 40, dirty=False, committed_at=1_800_000_000)
    common = {
        "root": ROOT,
        "base": "localhost/debian-python:bookworm",
        "tags": ["localhost/meshop:0.1.0-aaaaaaaaaaaa", "localhost/meshop:dev"],
        "version": "0.1.0",
        "revision": revision,
        "source": "https://example.org/meshop.git",
        "tree": "f" * 64,
    }
    command = build.build_command("podman", **common)
    pairs: dict[str, list[str]] = {}
    for flag, value in itertools.pairwise(command):
        pairs.setdefault(flag, []).append(value)
    assert "BASE=localhost/debian-python:bookworm" in pairs["--build-arg"]
    assert f"REVISION={'a' * 40}" in pairs["--build-arg"]
    assert "CREATED=2027-01-15T08:00:00Z" in pairs["--build-arg"]
    assert f"SOURCE_DATE_EPOCH={1_800_000_000}" in pairs["--build-arg"]
    assert f"org.opencontainers.image.revision={'a' * 40}" in pairs["--annotation"]
    assert pairs["--tag"] == common["tags"]
    assert pairs["--label"] == [f"{build.TREE_LABEL}={'f' * 64}"]
    assert command[-1] == str(ROOT)  # the context: .dockerignore narrows it to the wheelhouse
    assert "--annotation" not in build.build_command("docker", **common)  # docker build has no such flag


def test_a_dirty_tree_is_tagged_so() -> None:
    assert build.Revision("b" * 40, dirty=True, committed_at=0).tag == "b" * 12 + "-dirty"


def test_the_tree_digest_changes_with_a_source_or_the_base_and_only_then(project: Path) -> None:
    inputs = build.image_inputs(project)
    assert project / "Containerfile" in inputs
    (project / "Containerfile").write_text("FROM scratch\n")
    (project / ".dockerignore").write_text("*\n")
    digest = build.tree_digest(project, build.image_inputs(project), base="b", base_id="1")
    assert build.tree_digest(project, build.image_inputs(project), base="b", base_id="1") == digest
    assert build.tree_digest(project, build.image_inputs(project), base="b", base_id="2") != digest
    (project / "src" / "meshop" / "mesh" / "client" / "client.py").write_text("# changed\n")
    assert build.tree_digest(project, build.image_inputs(project), base="b", base_id="1") != digest


def test_the_build_context_admits_only_the_wheelhouse() -> None:
    lines = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and not line.startswith("#")]
    assert lines == ["*", f"!{build.WHEELHOUSE.as_posix()}"]
