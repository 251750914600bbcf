"""Real servers for tests: an `mlflow server` on loopback, a PostgreSQL cluster, and helpers to
wait on conditions (a deadline loop polling a real condition) and to call MLflow's REST API."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")


def wait_for(condition: Callable[[], T], timeout: float, what: str, poll: float = 0.05) -> T:
    """Poll `condition` until it returns something truthy; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = condition()
        if result:
            return result
        # Polling interval of a deadline loop, not a fixed wait for an outcome.
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def rest(base: str, endpoint: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
    """Call MLflow's REST API: GET with a query when body is None, else POST JSON."""
    url = f"{base}/api/2.0/mlflow/{endpoint}"
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=30) as response:
        return json.loads(response.read())


def _healthy(base: str) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
            return response.status == 200
    except (urllib.error.URLError, ConnectionError, TimeoutError):
        return False


def search_runs(base: str, experiment: str) -> list[dict[str, Any]]:
    """Every run of `experiment`, as the REST API returns them."""
    found = rest(base, "experiments/get-by-name?experiment_name=" + experiment)
    experiment_id = found["experiment"]["experiment_id"]
    return rest(base, "runs/search", {"experiment_ids": [experiment_id], "max_results": 1000}).get(
        "runs", []
    )


def as_dict(items: list[dict[str, Any]]) -> dict[str, Any]:
    """REST `[{"key": k, "value": v}]` lists → {k: v}."""
    return {item["key"]: item["value"] for item in items}


def stop(process: subprocess.Popen) -> None:
    """End a server we started, and the workers in its process group."""
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=30)


@contextmanager
def mlflow_server(backend_uri: str, artifacts: Path, log: Path) -> Iterator[tuple[str, Any]]:
    """A real `mlflow server` on a free loopback port; yields (base URL, process)."""
    port = free_port()
    command = [
        str(Path(sys.executable).parent / "mlflow"),
        "server",
        "--backend-store-uri",
        backend_uri,
        "--artifacts-destination",
        str(artifacts),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        "1",
    ]
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    with log.open("w") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    base = f"http://127.0.0.1:{port}"
    try:
        wait_for(
            lambda: process.poll() is not None or _healthy(base), 120, f"mlflow server at {base}"
        )
        if process.poll() is not None:
            raise RuntimeError(f"mlflow server exited {process.returncode}:\n{log.read_text()}")
        yield base, process
    finally:
        stop(process)


def postgres_bin() -> Path | None:
    """The folder of the distribution's PostgreSQL server binaries (Debian keeps them off PATH)."""
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), reverse=True)
    if candidates:
        return candidates[0].parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def _as_postgres_user() -> list[str]:
    """initdb and postgres refuse to run as root: run them as the `postgres` system user."""
    return ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []


def _run_checked(command: list[str]) -> None:
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command)} exited {done.returncode}:\n{done.stderr}")


@contextmanager
def postgres_server(parent: Path) -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a free loopback port; yields its SQLAlchemy URI."""
    bin_dir = postgres_bin()
    if bin_dir is None:
        raise RuntimeError(
            "PostgreSQL is not installed: apt-get install postgresql (.ci/run does this)"
        )
    # As root the cluster belongs to `postgres`, who cannot enter pytest's private temp
    # folders: the cluster gets its own folder under the system temp dir.
    folder = Path(tempfile.mkdtemp(prefix="cxr-pg-")) if os.geteuid() == 0 else parent
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(folder, "postgres", "postgres")
    data, port, user = folder / "data", free_port(), _as_postgres_user()
    _run_checked([*user, str(bin_dir / "initdb"), "-D", str(data), "-U", "mlflow", "--auth=trust"])
    options = ["-c", "listen_addresses=127.0.0.1", "-c", f"unix_socket_directories={folder}"]
    server = subprocess.Popen(
        [*user, str(bin_dir / "postgres"), "-D", str(data), "-p", str(port), *options],
        stdout=subprocess.DEVNULL,
        stderr=(folder / "postgres.log").open("w"),
        start_new_session=True,
    )
    try:
        ready = [str(bin_dir / "pg_isready"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow"]
        accepting = lambda: subprocess.run(ready, capture_output=True).returncode == 0  # noqa: E731
        wait_for(
            lambda: server.poll() is not None or accepting(),
            60,
            "PostgreSQL to accept connections",
        )
        if server.poll() is not None:
            raise RuntimeError(f"postgres exited: {(folder / 'postgres.log').read_text()}")
        createdb = [str(bin_dir / "createdb"), "-h", "127.0.0.1", "-p", str(port), "-U", "mlflow"]
        _run_checked([*createdb, "mlflow"])
        yield f"postgresql://mlflow@127.0.0.1:{port}/mlflow"
    finally:
        if server.poll() is None:
            os.killpg(server.pid, signal.SIGINT)  # fast shutdown, runuser included
        server.wait(timeout=60)
        if folder != parent:
            shutil.rmtree(folder, ignore_errors=True)
