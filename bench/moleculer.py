"""MoleculerPy vs raw nats-py: the latency of calling one trivial action over the same NATS server.

Starts an embedded nats-server (loopback, free port) and two child processes in a Python 3.12 venv (MoleculerPy
needs Python >= 3.12; this script itself runs in the project's 3.11 venv):

- the server child runs a MoleculerPy `ServiceBroker` (NATS transporter, JSON serializer) with a service `bench` whose
  action `echo` returns its params, and, on a plain nats-py connection, a responder on `bench.raw` that decodes the
  JSON request and answers it re-encoded (the same work as the action);
- the caller child runs a second `ServiceBroker` and a plain nats-py connection, and times, with the same JSON
  payload, `broker.call("bench.echo", payload)` against `nc.request("bench.raw", json.dumps(payload))` (the
  baseline), one call at a time, alternating in rounds so drift hits both paths.

Both paths are measured in the same 3.12 process, on the same asyncio loop (the default one: MoleculerPy does not
use uvloop), against responders in the same other process, so the ratio is MoleculerPy's own cost on top of a
NATS round trip. It prints p50/p99 latency and the p50 ratio against raw nats-py.

    python bench/moleculer.py [--calls 3000] [--warmup 300] [--smoke]

The 3.12 venv is created on first use at .venv-moleculer/ (it ignores itself in git) and gets `moleculerpy` and
`nats-py` from PyPI. If no Python 3.12 is found (set MOLECULER_PYTHON to one) or the install fails, it prints why
and exits 0 with "skipped" (1 with --smoke: a smoke run that cannot run has failed); if the benchmark itself fails it
prints the children's output and exits 1.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import NoReturn

from _common import add_smoke, pct, table
from meshop.runtime.nats_server import EmbeddedNats

ROOT = Path(__file__).resolve().parent.parent
VENV = ROOT / ".venv-moleculer"
REQUIREMENTS = ("moleculerpy>=0.14.22,<0.15", "nats-py>=2.10")
PYENV_312 = Path.home() / ".pyenv/versions/3.12.1/bin/python3.12"
ROUNDS = 10
CALL_TIMEOUT_S = 120.0  # the caller child, start to finish
INSTALL_TIMEOUT_S = 600.0

CHILD = """
import asyncio, json, signal, sys, time
from importlib.metadata import version
from pathlib import Path

import moleculerpy
import nats
from moleculerpy import Context, Service, ServiceBroker, Settings, action

PAYLOAD = {"id": "42", "name": "thing", "qty": 3, "tags": ["a", "b"]}


class Bench(Service):
    name = "bench"

    @action()
    async def echo(self, ctx: Context):
        return ctx.params


def settings(url):
    return Settings(transporter=url, log_level="WARNING", request_timeout=5.0)


async def raw_echo(msg):
    await msg.respond(json.dumps(json.loads(msg.data)).encode())


async def serve(url):
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(sig, stop.set)
    nc = await nats.connect(url)
    await nc.subscribe("bench.raw", cb=raw_echo)
    broker = ServiceBroker("bench-server", settings=settings(url))
    await broker.register(Bench())
    await broker.start()
    try:
        await stop.wait()
    finally:
        await broker.stop()
        await nc.close()


async def call(url, calls, warmup, rounds, out):
    broker = ServiceBroker("bench-caller", settings=settings(url))
    await broker.start()
    nc = await nats.connect(url)
    try:
        await broker.wait_for_services(["bench"], timeout=30)
        deadline = time.monotonic() + 30
        while True:  # the raw responder may subscribe after we connect
            try:
                await nc.request("bench.raw", json.dumps(PAYLOAD).encode(), timeout=1)
                break
            except (nats.errors.TimeoutError, nats.errors.NoRespondersError):
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.1)

        async def moleculer():
            return await broker.call("bench.echo", PAYLOAD)

        async def raw():
            return json.loads((await nc.request("bench.raw", json.dumps(PAYLOAD).encode(), timeout=5)).data)

        paths = {"moleculer": moleculer, "raw": raw}
        for name, fn in paths.items():
            got = await fn()
            if got != PAYLOAD:
                raise SystemExit(f"{name} answered {got!r}, expected {PAYLOAD!r}")
            for _ in range(warmup):
                await fn()
        latencies = {name: [] for name in paths}
        per_round = max(1, calls // rounds)
        for _ in range(rounds):
            for name, fn in paths.items():
                samples = latencies[name]
                for _ in range(per_round):
                    start = time.perf_counter()
                    await fn()
                    samples.append(time.perf_counter() - start)
        python = sys.version.split()[0]
        versions = {"moleculerpy": moleculerpy.__version__, "nats_py": version("nats-py"), "python": python}
        Path(out).write_text(json.dumps({**versions, "latencies_s": latencies}))
    finally:
        await nc.close()
        await broker.stop()


if sys.argv[1] == "serve":
    asyncio.run(serve(sys.argv[2]))
else:
    url, calls, warmup, rounds, out = sys.argv[2:7]
    asyncio.run(asyncio.wait_for(call(url, int(calls), int(warmup), int(rounds), out), timeout=110))
"""


class Skipped(Exception):
    """The benchmark cannot run here (no Python 3.12, or MoleculerPy would not install): why."""


def skipped(reason: str) -> NoReturn:
    raise Skipped(reason)


def find_python312() -> str | None:
    """MOLECULER_PYTHON > python3.12 on PATH > pyenv's 3.12.1: the first that runs and is >= 3.12."""
    check = "import sys; assert sys.version_info >= (3, 12)"
    for candidate in (os.environ.get("MOLECULER_PYTHON"), shutil.which("python3.12"), str(PYENV_312)):
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        with contextlib.suppress(OSError, subprocess.TimeoutExpired):  # e.g. a pyenv shim with no 3.12 selected
            if subprocess.run([candidate, "-c", check], capture_output=True, timeout=30).returncode == 0:
                return candidate
    return None


def venv_python() -> Path:
    """The 3.12 venv's python with MoleculerPy installed (created on first use); skips the bench if it can't be."""
    python = VENV / "bin" / "python"
    check = [str(python), "-c", "import sys, moleculerpy, nats; assert sys.version_info >= (3, 12)"]
    if python.exists() and subprocess.run(check, capture_output=True, timeout=60).returncode == 0:
        return python
    base = find_python312()
    if base is None:
        skipped("no Python 3.12 found (MoleculerPy needs >= 3.12); set MOLECULER_PYTHON to one")
    print(f"creating {VENV} with {base} and installing {' '.join(REQUIREMENTS)} ...", flush=True)
    steps = [
        [base, "-m", "venv", "--clear", str(VENV)],
        [str(python), "-m", "pip", "install", "--quiet", "--disable-pip-version-check", *REQUIREMENTS],
    ]
    for step in steps:
        try:
            done = subprocess.run(step, capture_output=True, text=True, timeout=INSTALL_TIMEOUT_S)
        except (OSError, subprocess.TimeoutExpired) as exc:
            skipped(f"{' '.join(step[:4])} failed: {exc}")
        if done.returncode != 0:
            skipped(f"{' '.join(step[:4])} exited {done.returncode}:\n{(done.stdout + done.stderr)[-2000:]}")
        if step is steps[0]:
            (VENV / ".gitignore").write_text("*\n")  # keeps the venv out of git without touching the repo's ignores
    if subprocess.run(check, capture_output=True, timeout=60).returncode != 0:
        skipped(f"moleculerpy does not import in {VENV}")
    return python


def stop_process(process: subprocess.Popen[bytes], timeout_s: float = 10.0) -> None:
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


async def measure(python: Path, calls: int, warmup: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory(prefix="bench-moleculer-") as tmp:
        work = Path(tmp)
        child = work / "child.py"
        child.write_text(CHILD)
        out = work / "result.json"
        server_log = work / "server.log"
        nats_server = EmbeddedNats(work / "store")
        url = await nats_server.start()
        server: subprocess.Popen[bytes] | None = None
        try:
            with server_log.open("wb") as log:
                server = subprocess.Popen(  # noqa: ASYNC220 (returns at once)
                    [str(python), str(child), "serve", url],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                )
            argv = [str(python), str(child), "call", url, str(calls), str(warmup), str(ROUNDS), str(out)]
            try:
                done = await asyncio.to_thread(
                    subprocess.run,
                    argv,
                    stdin=subprocess.DEVNULL,
                    capture_output=True,
                    text=True,
                    timeout=CALL_TIMEOUT_S,
                )
                failure = "" if done.returncode == 0 and out.exists() else f"exited {done.returncode}"
                caller_output = done.stdout + done.stderr
            except subprocess.TimeoutExpired as exc:
                failure, caller_output = f"timed out after {CALL_TIMEOUT_S:.0f} s", str(exc.stdout or "")
            if failure:
                print(f"moleculer bench failed: the caller {failure}\n--- caller ---\n{caller_output[-3000:]}")
                print(f"--- server ---\n{server_log.read_text(errors='replace')[-3000:]}")
                raise SystemExit(1)
            result: dict[str, object] = json.loads(out.read_text())
            return result
        finally:
            if server is not None:
                await asyncio.to_thread(stop_process, server)
            await nats_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--calls", type=int, default=3000, help="timed calls per path (default 3000)")
    parser.add_argument("--warmup", type=int, default=300, help="untimed calls per path first (default 300)")
    add_smoke(parser)
    args = parser.parse_args()
    if args.smoke:  # ROUNDS rounds of a few calls per path
        args.calls, args.warmup = 5 * ROUNDS, 20
    if not 1 <= args.calls <= 100_000 or not 0 <= args.warmup <= 10_000:
        parser.error("--calls must be in 1..100000 and --warmup in 0..10000")
    try:
        python = venv_python()
    except Skipped as exc:
        print(f"moleculer bench skipped: {exc}")
        # With --smoke a skip is a failure: the test that runs every benchmark must not pass on one that did not run.
        raise SystemExit(1 if args.smoke else 0) from None
    result = asyncio.run(measure(python, args.calls, args.warmup))
    latencies: dict[str, list[float]] = result["latencies_s"]  # type: ignore[assignment]
    paths = {"raw nats-py request (baseline)": latencies["raw"], "MoleculerPy broker.call": latencies["moleculer"]}
    base50 = pct(latencies["raw"], 0.5)
    rows = []
    for name, values in paths.items():
        p50 = pct(values, 0.5)
        ratio = f"{p50 / base50:.2f}x (+{(p50 - base50) * 1e6:.0f} us)"
        rows.append((name, p50 * 1000, pct(values, 0.99) * 1000, ratio))
    table(
        f"MoleculerPy {result['moleculerpy']} vs nats-py, Python {result['python']}, "
        f"{len(latencies['raw'])} calls each after {args.warmup} warm-up, sequential",
        rows,
        ["path", "p50 ms", "p99 ms", "p50 vs raw"],
    )


if __name__ == "__main__":
    main()
