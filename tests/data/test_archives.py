"""Safe extraction and verified downloads, against real archives and a real loopback HTTP server."""

from __future__ import annotations

import base64
import hashlib
import http.server
import io
import os
import struct
import tarfile
import threading
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from cxr.data.archives import ArchiveError, ExtractLimits, download, safe_extract

LIMITS = ExtractLimits(max_files=100, max_bytes=1 << 20)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def make_zip(path: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return path


def zip_symlink(path: Path, name: str, target: str) -> Path:
    with zipfile.ZipFile(path, "w") as zf:
        info = zipfile.ZipInfo(name)
        info.external_attr = (0o120777 << 16) | 0x20  # S_IFLNK: how zip tools store links
        zf.writestr(info, target)
        zf.writestr("A/ok.txt", b"fine")
    return path


def assert_refused(archive: Path, dest: Path, match: str) -> None:
    """Extraction fails with `match`, writes nothing anywhere, and leaves the archive as it was."""
    before = digest(archive)
    with pytest.raises(ArchiveError, match=match):
        safe_extract(archive, dest, LIMITS)
    assert digest(archive) == before
    assert list(dest.iterdir()) == []
    assert not (dest.parent / "evil").exists()


@pytest.fixture
def dest(tmp_path: Path) -> Path:
    folder = tmp_path / "sandbox" / "out"
    folder.mkdir(parents=True)
    return folder


def test_zip_with_dotdot_member_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"A/ok.txt": b"x", "../evil": b"pwned"})
    assert_refused(archive, dest, r"'\.\./evil' points outside the folder")


def test_zip_with_absolute_member_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"/tmp/evil": b"pwned"})
    assert_refused(archive, dest, "'/tmp/evil' has an absolute path")


def test_zip_symlink_escaping_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = zip_symlink(tmp_path / "a.zip", "A/link", "../../evil")
    assert_refused(archive, dest, r"link 'A/link' -> '\.\./\.\./evil' escapes the folder")


def test_tar_symlink_escaping_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        link = tarfile.TarInfo("A/link")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    assert_refused(archive, dest, "escapes the folder")


def test_zip_bomb_is_refused_before_writing(tmp_path: Path, dest: Path) -> None:
    # 8 MiB of zeros deflate to a few KiB; the cap is 1 MiB uncompressed.
    archive = make_zip(tmp_path / "bomb.zip", {"A/zeros.png": bytes(8 << 20)})
    assert archive.stat().st_size < 64 << 10
    assert_refused(archive, dest, "zip bomb")


def test_too_many_members_are_refused(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "many.zip", {f"A/{i}.txt": b"x" for i in range(101)})
    assert_refused(archive, dest, "101 members exceed data.archive.max_files=100")


def test_not_an_archive_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "a.zip"
    archive.write_text("not a zip")
    assert_refused(archive, dest, "not a zip or tar archive")


def test_good_zip_and_tar_extract_the_same_tree(tmp_path: Path) -> None:
    members = {"top/A/one.txt": b"1", "top/B/two.txt": b"22"}
    zipped = make_zip(tmp_path / "a.zip", members)
    tarred = tmp_path / "a.tar.gz"
    with tarfile.open(tarred, "w:gz") as tf:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    for archive in (zipped, tarred):
        out = safe_extract(archive, tmp_path / archive.name.replace(".", "_"), LIMITS)
        assert {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*.txt")} == (
            members
        )


def test_zip_member_over_max_ratio_is_refused_before_writing(tmp_path: Path, dest: Path) -> None:
    # issue 16, case 4: 4 MiB of zeros deflate ~1000:1; within the size cap, over the ratio.
    archive = make_zip(tmp_path / "bomb.zip", {"A/ok.txt": b"fine", "A/zeros.png": bytes(4 << 20)})
    limits = ExtractLimits(max_files=100, max_bytes=64 << 20, max_ratio=100)
    with pytest.raises(ArchiveError, match=r"member 'A/zeros.png'.*data\.archive\.max_ratio=100"):
        safe_extract(archive, dest, limits)
    assert list(dest.iterdir()) == []


def test_tar_gz_over_max_ratio_is_refused(tmp_path: Path, dest: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("A/zeros.png")
        info.size = 4 << 20
        tf.addfile(info, io.BytesIO(bytes(info.size)))
    limits = ExtractLimits(max_files=100, max_bytes=64 << 20, max_ratio=100)
    with pytest.raises(ArchiveError, match=r"bomb\.tar\.gz: 4194304 bytes packed into"):
        safe_extract(archive, dest, limits)
    assert list(dest.iterdir()) == []


def test_zip_with_lying_size_header_names_the_member(tmp_path: Path, dest: Path) -> None:
    # issue 16, case 8: headers claiming 10 bytes for a 100 kB member made zipfile raise
    # BadZipFile (a traceback) mid-extraction.
    archive = make_zip(tmp_path / "lie.zip", {"A/ok.txt": b"fine", "A/x.png": os.urandom(100_000)})
    data = bytearray(archive.read_bytes())
    member = data.index(b"A/x.png")  # in the local header, then in the central directory
    local = data.rindex(b"PK\x03\x04", 0, member)
    central = data.rindex(b"PK\x01\x02", 0, data.index(b"A/x.png", member + 1))
    struct.pack_into("<I", data, local + 22, 10)  # uncompressed size
    struct.pack_into("<I", data, central + 24, 10)
    archive.write_bytes(bytes(data))
    with pytest.raises(ArchiveError, match=r"member 'A/x.png' is damaged.*BadZipFile"):
        safe_extract(archive, dest, LIMITS)
    assert list(dest.iterdir()) == []  # what was written before the bad member is gone too


def test_tar_symlink_chain_names_the_member(tmp_path: Path, dest: Path) -> None:
    # Each link alone stays inside (d/x -> .. is the top, d/x/y -> .. is d/x/..), but d/x/y
    # is reached through d/x, so it points above the folder: Python's tar filter raised.
    archive = tmp_path / "chain.tar"
    with tarfile.open(archive, "w") as tf:
        for name in ("d/x", "d/x/y"):
            link = tarfile.TarInfo(name)
            link.type, link.linkname = tarfile.SYMTYPE, ".."
            tf.addfile(link)
        evil = tarfile.TarInfo("d/x/y/evil")
        evil.size = 5
        tf.addfile(evil, io.BytesIO(b"pwned"))
    with pytest.raises(ArchiveError, match=r"member 'd/x/y' .*outside the destination"):
        safe_extract(archive, dest, LIMITS)
    assert list(dest.iterdir()) == []
    assert not (dest.parent / "evil").exists()


def test_zip_backslash_paths_become_folders(tmp_path: Path, dest: Path) -> None:
    # issue 16, case 9: zips made on Windows may use `\` separators.
    archive = tmp_path / "win.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ds\\", b"")
        zf.writestr("ds\\COVID\\x.png", b"1")
        zf.writestr("ds\\Normal\\y.png", b"22")
    out = safe_extract(archive, dest, LIMITS)
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in out.rglob("*") if p.is_file()}
    assert files == {"ds/COVID/x.png": b"1", "ds/Normal/y.png": b"22"}


def test_zip_backslash_dotdot_is_still_refused(tmp_path: Path, dest: Path) -> None:
    archive = make_zip(tmp_path / "a.zip", {"ds\\..\\..\\evil": b"pwned"})
    assert_refused(archive, dest, "points outside the folder")


# ---------------------------------------------------------------- HTTP on loopback


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder; `/flaky/<name>` answers 503 on the first request for each name,
    `/endless` streams zeros until the client hangs up (no Content-Length), `/huge` announces
    10 GB, and `/private/<name>` wants HTTP basic auth `reader:s3cret-pass`."""

    failed: set[str]

    def do_GET(self) -> None:
        if self.path == "/endless":
            self.send_response(200)
            self.end_headers()
            try:
                while True:
                    self.wfile.write(bytes(1 << 16))
            except (BrokenPipeError, ConnectionResetError):
                return
        if self.path == "/huge":
            self.send_response(200)
            self.send_header("Content-Length", str(10 << 30))
            self.end_headers()
            return
        if self.path.startswith("/private/"):
            expected = "Basic " + base64.b64encode(b"reader:s3cret-pass").decode()
            if self.headers.get("Authorization") != expected:
                self.send_error(401)
                return
            self.path = self.path.removeprefix("/private")
        if self.path.startswith("/flaky/"):
            name = self.path.removeprefix("/flaky")
            if name not in self.failed:
                self.failed.add(name)
                self.send_error(503)
                return
            self.path = name
        super().do_GET()

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real HTTP server on 127.0.0.1 serving a temp folder; yields (base URL, folder)."""
    root = tmp_path / "www"
    root.mkdir()

    def handler(*args, **kwargs):
        return _Handler(*args, directory=str(root), **kwargs)

    _Handler.failed = set()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", root
    server.shutdown()
    server.server_close()


def test_download_verifies_sha256(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    payload = os.urandom(300_000)
    (root / "data.zip").write_bytes(payload)
    got = download(f"{base}/data.zip", tmp_path / "got.zip", hashlib.sha256(payload).hexdigest())
    assert got.read_bytes() == payload


def test_download_wrong_sha256_leaves_nothing(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    (root / "data.zip").write_bytes(b"payload")
    out = tmp_path / "dl"
    out.mkdir()
    with pytest.raises(ArchiveError, match=r"sha256 is [0-9a-f]{64}, but data.archive.sha256"):
        download(f"{base}/data.zip", out / "got.zip", "0" * 64, retries=0)
    assert list(out.iterdir()) == []
    assert (root / "data.zip").read_bytes() == b"payload"


def test_download_404_is_clear_and_leaves_nothing(served: tuple[str, Path], tmp_path: Path):
    base, _ = served
    out = tmp_path / "dl"
    out.mkdir()
    with pytest.raises(ArchiveError, match=r"HTTP 404, not found; check data\.source"):
        download(f"{base}/missing.zip", out / "got.zip", "0" * 64, backoff=0)
    assert list(out.iterdir()) == []


def test_download_retries_transient_errors(served: tuple[str, Path], tmp_path: Path) -> None:
    base, root = served
    (root / "data.zip").write_bytes(b"payload")
    sha = hashlib.sha256(b"payload").hexdigest()
    with pytest.raises(ArchiveError, match="gave up after 1 tries: HTTP 503"):
        download(f"{base}/flaky/data.zip", tmp_path / "a.zip", sha, retries=0)
    _Handler.failed.clear()
    got = download(f"{base}/flaky/data.zip", tmp_path / "b.zip", sha, retries=1, backoff=0)
    assert got.read_bytes() == b"payload"


def test_download_endless_body_stops_at_max_bytes(served: tuple[str, Path], tmp_path: Path):
    # issue 16, case 4: an endless body (no Content-Length) wrote 1.6 GB with max_mb: 100.
    base, _ = served
    out = tmp_path / "dl"
    out.mkdir()
    cap = r"body goes on past \d+ bytes, more than data\.archive\.max_mb allows \(1048576"
    with pytest.raises(ArchiveError, match=cap):
        download(f"{base}/endless", out / "got.zip", "0" * 64, retries=0, max_bytes=1 << 20)
    assert list(out.iterdir()) == []


def test_download_refuses_announced_size_over_max_bytes(served: tuple[str, Path], tmp_path: Path):
    base, _ = served
    with pytest.raises(ArchiveError, match=r"announces 10737418240 bytes"):
        download(f"{base}/huge", tmp_path / "got.zip", "0" * 64, retries=0, max_bytes=1 << 20)
    assert not (tmp_path / "got.zip").exists()


def test_download_credentials_come_from_netrc_and_never_show(
    served: tuple[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # issue 16, case 3: credentials in ~/.netrc (here $NETRC) reach the server ...
    base, root = served
    (root / "data.zip").write_bytes(b"payload")
    sha = hashlib.sha256(b"payload").hexdigest()
    for name in ("CXR_HTTP_USER", "CXR_HTTP_PASSWORD", "CXR_HTTP_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    with pytest.raises(ArchiveError, match="HTTP 401"):
        download(f"{base}/private/data.zip", tmp_path / "a.zip", sha, retries=0)
    netrc = tmp_path / "netrc"
    netrc.write_text("machine 127.0.0.1 login reader password s3cret-pass\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    got = download(f"{base}/private/data.zip", tmp_path / "b.zip", sha, retries=0)
    assert got.read_bytes() == b"payload"
    # ... or from the environment ...
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
    monkeypatch.setenv("CXR_HTTP_USER", "reader")
    monkeypatch.setenv("CXR_HTTP_PASSWORD", "s3cret-pass")
    got = download(f"{base}/private/data.zip", tmp_path / "c.zip", sha, retries=0)
    assert got.read_bytes() == b"payload"
    # ... and a URL that still carries them (params refuse it) is redacted in every message.
    host = base.removeprefix("http://")
    with pytest.raises(ArchiveError) as caught:
        download(f"http://reader:s3cret-pass@{host}/missing.zip", tmp_path / "d.zip", sha)
    assert "HTTP 404" in str(caught.value) and "s3cret-pass" not in str(caught.value)
    assert f"http://***@{host}/missing.zip" in str(caught.value)
