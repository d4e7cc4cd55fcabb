"""`meshop up` tells how to run the other commands as they can be typed from where it runs."""

from __future__ import annotations

from pathlib import Path

from meshop.cli.invocation import command_name


def venv(root: Path) -> Path:
    """A virtualenv's bin dir with a python and the `meshop` console script."""
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    for name in ("python", "meshop"):
        (bin_dir / name).write_text("")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def nowhere(_name: str) -> str | None:
    return None


def test_a_script_under_the_working_dir_is_named_by_its_relative_path(tmp_path: Path) -> None:
    bin_dir = venv(tmp_path)
    assert command_name(".venv/bin/meshop", executable=str(bin_dir / "python"), cwd=tmp_path, which=nowhere) == (
        ".venv/bin/meshop"
    )


def test_a_script_that_path_finds_is_named_meshop(tmp_path: Path) -> None:
    bin_dir = venv(tmp_path)
    found = str(bin_dir / "meshop")
    assert command_name(found, executable=str(bin_dir / "python"), cwd=tmp_path, which=lambda _: found) == "meshop"


def test_another_meshop_on_path_is_not_this_one(tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "project")
    other = venv(tmp_path / "elsewhere") / "meshop"
    name = command_name(
        str(bin_dir / "meshop"),
        executable=str(bin_dir / "python"),
        cwd=tmp_path / "project",
        which=lambda _: str(other),
    )
    assert name == ".venv/bin/meshop"


def test_a_script_outside_the_working_dir_is_named_by_its_absolute_path(tmp_path: Path) -> None:
    bin_dir = venv(tmp_path / "project")
    (tmp_path / "work").mkdir()
    name = command_name(
        str(bin_dir / "meshop"), executable=str(bin_dir / "python"), cwd=tmp_path / "work", which=nowhere
    )
    assert name == str(bin_dir / "meshop")


def test_python_dash_m_is_named_by_the_script_beside_its_interpreter(tmp_path: Path) -> None:
    bin_dir = venv(tmp_path)
    main = str(tmp_path / "src" / "meshop" / "__main__.py")
    assert command_name(main, executable=str(bin_dir / "python"), cwd=tmp_path, which=nowhere) == ".venv/bin/meshop"


def test_python_dash_m_without_a_script_is_named_as_it_was_run(tmp_path: Path) -> None:
    (tmp_path / "bin").mkdir()
    main = str(tmp_path / "src" / "meshop" / "__main__.py")
    python = str(tmp_path / "bin" / "python3")
    assert command_name(main, executable=python, cwd=tmp_path, which=nowhere) == "bin/python3 -m meshop"
