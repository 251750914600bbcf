"""Secrets in URLs: refused in params, redacted when shown, and never stored by a real DVC run
(a loopback server that wants HTTP basic auth, credentials from a netrc file)."""

from __future__ import annotations

import base64
import hashlib
import http.server
import secrets
import subprocess
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cxr.core.urls import (
    plain_http_warning,
    redact,
    redact_url,
    request_auth,
    strip_userinfo,
    url_secret,
)
from tests.helpers.project import run, set_params, tool_env

# Drawn per test session, so that no file of the project holds it by chance (this one included).
SECRET = f"pw-{secrets.token_hex(8)}"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("https://bob:hunter2@example.org/a.zip", "https://***@example.org/a.zip"),
        ("https://tok@example.org:8443/a.zip", "https://***@example.org:8443/a.zip"),
        ("https://example.org/a.zip?X-Amz-Signature=ab&v=1", "https://example.org/a.zip?X-Amz-Signature=***&v=1"),
        ("postgresql://mlflow:hunter2@db:5432/mlflow", "postgresql://***@db:5432/mlflow"),
        ("https://example.org/a.zip", "https://example.org/a.zip"),
    ],
)  # fmt: skip
def test_redact_url_hides_user_info_and_secret_query_values(url: str, shown: str) -> None:
    assert redact_url(url) == shown


def test_redact_finds_urls_inside_text() -> None:
    text = "HTTPConnectionPool: Max retries for url http://u:hunter2@h:5000/api (refused)"
    assert redact(text) == "HTTPConnectionPool: Max retries for url http://***@h:5000/api (refused)"


def test_url_secret_and_strip_userinfo() -> None:
    assert url_secret("https://a:b@h/x") == "credentials (user:password@)"
    assert url_secret("https://h/x?token=1") == "the query parameter 'token'"
    assert url_secret("https://h/x.zip?dl=1") is None
    assert strip_userinfo("http://u:p@h:5000/x") == ("http://h:5000/x", "u", "p")


def test_request_auth_reads_the_environment() -> None:
    assert request_auth({}) == ({}, None)
    assert request_auth({"CXR_HTTP_USER": "u", "CXR_HTTP_PASSWORD": "p"}) == ({}, ("u", "p"))
    headers, auth = request_auth({"CXR_HTTP_TOKEN": "t"})
    assert headers == {"Authorization": "Bearer t"} and auth is None


def test_credentials_over_plain_http_are_warned_about_without_showing_them() -> None:
    env = {"CXR_HTTP_USER": "u", "CXR_HTTP_PASSWORD": "hunter2"}
    warning = plain_http_warning("http://data.example/cxr.zip", env)
    assert warning is not None and warning.startswith("WARNING: http://data.example/cxr.zip")
    assert "unencrypted" in warning and "hunter2" not in warning
    assert plain_http_warning("http://x/cxr.zip", {"CXR_HTTP_TOKEN": "t"}) is not None
    assert plain_http_warning("https://data.example/cxr.zip", env) is None  # encrypted
    assert plain_http_warning("http://data.example/cxr.zip", {}) is None  # nothing to leak


# ---------------------------------------------------------------- a real DVC run


@pytest.fixture
def private_server(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Loopback HTTP serving a folder only to `reader:<SECRET>` (basic auth)."""
    root = tmp_path / "www"
    root.mkdir()
    expected = "Basic " + base64.b64encode(f"reader:{SECRET}".encode()).decode()

    class Private(http.server.SimpleHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.headers.get("Authorization") != expected:
                self.send_error(401)
                return
            super().do_GET()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), lambda *a, **k: Private(*a, directory=str(root), **k)
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def image_zip(path: Path) -> str:
    """Two classes of three small noise images; returns the zip's sha256."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as zf:
        for name in ("COVID", "Normal"):
            for i in range(3):
                png = path.parent / f"{name}{i}.png"
                Image.fromarray(rng.integers(0, 256, (40, 40), dtype=np.uint8)).save(png)
                zf.write(png, f"cxr/{name}/{name}{i}.png")
                png.unlink()
    return hashlib.sha256(path.read_bytes()).hexdigest()


def files_holding(folder: Path, secret: str, skip: tuple[str, ...]) -> list[str]:
    """Every file below `folder` (binary ones included: mlflow.db) whose bytes hold `secret`."""
    return [
        path.relative_to(folder).as_posix()
        for path in folder.rglob("*")
        if path.is_file()
        and path.relative_to(folder).parts[0] not in skip
        and secret.encode() in path.read_bytes()
    ]


@pytest.mark.e2e  # runs a stage for real (README: the slow part)
@pytest.mark.e2e
def test_credentials_never_reach_dvc_lock_run_cache_mlflow_or_logs(
    project_copy: Path, private_server: tuple[str, Path], tmp_path: Path
) -> None:
    host, www = private_server
    sha = image_zip(www / "cxr.zip")
    # 1. A URL with the password in it: refused by the first stage, before anything is stored.
    set_params(
        project_copy,
        {"data.source": f"http://reader:{SECRET}@{host}/cxr.zip", "data.archive.sha256": sha},
    )
    done = subprocess.run(
        ["dvc", "repro"], cwd=project_copy, env=tool_env(), capture_output=True, text=True
    )
    assert done.returncode != 0
    assert "data.source: the URL carries credentials" in done.stderr
    assert SECRET not in done.stdout + done.stderr
    assert files_holding(project_copy, SECRET, skip=("params.yaml", ".git")) == []
    # 2. The same download with the credentials in a netrc file: it runs, and stores none.
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1 login reader password {SECRET}\n")
    netrc.chmod(0o600)
    set_params(project_copy, {"data.source": f"http://{host}/cxr.zip"})
    done = run(["dvc", "repro", "download"], project_copy, NETRC=str(netrc))
    assert "Running stage 'download'" in done.stdout
    assert (project_copy / "data/raw/COVID/COVID0.png").is_file()
    assert (project_copy / "mlflow.db").is_file()
    assert SECRET not in done.stdout + done.stderr
    assert files_holding(project_copy, SECRET, skip=(".git",)) == []
