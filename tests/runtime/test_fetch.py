"""`slm_runtime fetch`: resume after a cut connection, checksums, concurrent fetchers, hf://, pvc://, file://."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import logging
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from slm_runtime.fetch import FetchError, fetch, run
from slm_runtime.fetch.space import SPACE_MARGIN as _SPACE_MARGIN
from slm_runtime.integrity import RESULT_FILE
from slm_runtime.settings import FetchSettings

pytestmark = pytest.mark.runtime

PAYLOAD = os.urandom(3 * 1024 * 1024 + 123)
DIGEST = hashlib.sha256(PAYLOAD).hexdigest()


@dataclass
class ServerState:
    cut_first: int = 0  # the first N full-body responses stop half-way
    slow: float = 0.0  # seconds to sleep per 256 KiB sent
    token: str = "hf-secret"
    requests: list[tuple[str, str | None]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: ServerState

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        with state.lock:
            state.requests.append((self.path, self.headers.get("Range")))
        if self.path.startswith("/org/repo/resolve/"):
            # Hugging Face: the resolve URL redirects to the CDN and names the LFS sha256.
            if self.headers.get("Authorization") != f"Bearer {state.token}":
                self.send_error(401)
                return
            self.send_response(302)
            self.send_header("Location", "/cdn/blob")
            self.send_header("X-Linked-Etag", f'"{DIGEST}"')
            self.send_header("X-Linked-Size", str(len(PAYLOAD)))
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/org/repo-bad/resolve/"):
            self.send_response(302)
            self.send_header("Location", "/cdn/blob")
            self.send_header("X-Linked-Etag", '"' + "0" * 64 + '"')
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path not in ("/model.bin", "/cdn/blob"):
            self.send_error(404)
            return
        start = 0
        requested = self.headers.get("Range")
        if requested:
            start = int(requested.removeprefix("bytes=").split("-")[0])
            if start >= len(PAYLOAD):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(PAYLOAD)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(PAYLOAD) - 1}/{len(PAYLOAD)}")
        else:
            self.send_response(200)
        body = PAYLOAD[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        cut = False
        with state.lock:
            if state.cut_first > 0 and start == 0:
                state.cut_first -= 1
                cut = True
        if cut:
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        for offset in range(0, len(body), 256 * 1024):
            self.wfile.write(body[offset : offset + 256 * 1024])
            if state.slow:
                time.sleep(state.slow)


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request: object, client_address: object) -> None:
        pass  # the cut connections are deliberate


@contextlib.contextmanager
def _serving(
    handler: type[BaseHTTPRequestHandler], bind: str = "127.0.0.1", **shared: object
) -> Iterator[str]:
    """A loopback HTTP server whose handler sees ``shared`` as attributes of its server; yields its URL."""
    server = _QuietServer((bind, 0), handler)
    for name, value in shared.items():
        setattr(server, name, value)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{bind}:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture
def origin() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    with _serving(_Handler, state=state) as url:
        yield url, state


def _settings(dest: Path, source: str, **values: Any) -> FetchSettings:
    return FetchSettings(
        source=source, dest=dest, retries=3, backoff_seconds=0.01, timeout_seconds=10, **values
    )


def _cli(dest: Path, source: str, *extra: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    command = [sys.executable, "-m", "slm_runtime", "fetch", "--source", source, "--dest", str(dest), *extra]
    return subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "SLM_BACKOFF_SECONDS": "0.01", **(env or {})},
    )


def test_resumes_after_a_cut_connection(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    state.cut_first = 1
    record = fetch(_settings(tmp_path, url + "/model.bin", sha256=DIGEST))
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    ranges = [r for _, r in state.requests]
    assert ranges[0] is None
    assert ranges[1] is not None
    assert ranges[1].startswith("bytes=")
    assert int(ranges[1].removeprefix("bytes=").rstrip("-")) > 0
    assert record["sha256"] == DIGEST
    assert record["verified"] is True
    written = json.loads((tmp_path / RESULT_FILE).read_text())
    assert written == record
    assert written["sizeBytes"] == len(PAYLOAD)
    assert written["source"] == url + "/model.bin"
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".lock")) == [
        RESULT_FILE,
        "model.bin",
    ]


def test_gives_up_after_retries(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    state.cut_first = 100
    settings = FetchSettings(source=url + "/model.bin", dest=tmp_path, retries=0, backoff_seconds=0)
    with pytest.raises(FetchError, match="giving up"):
        fetch(settings)
    assert not (tmp_path / "model.bin").exists()


def test_wrong_checksum_fails_cleanly(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = origin
    process = _cli(tmp_path, url + "/model.bin", "--sha256", "ab" * 32)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1
    assert "sha256 mismatch" in stderr
    assert not (tmp_path / "model.bin").exists()
    assert not list(tmp_path.glob("*.part"))
    assert json.loads((tmp_path / RESULT_FILE).read_text())["phase"] == "Failed"


def test_two_fetchers_at_once(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    state.slow = 0.02
    first = _cli(tmp_path, url + "/model.bin")
    second = _cli(tmp_path, url + "/model.bin")
    outputs = [p.communicate(timeout=120) for p in (first, second)]
    assert [first.returncode, second.returncode] == [0, 0], outputs
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    records = [json.loads(out) for out, _ in outputs]
    assert {r["sha256"] for r in records} == {DIGEST}
    # The lock made one wait and then find the finished file: one download only.
    assert len([path for path, _ in state.requests if path == "/model.bin"]) == 1


def test_hf_source_with_token_and_published_digest(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    process = _cli(
        tmp_path,
        "hf://org/repo/sub/dir/model.gguf@main",
        env={"SLM_HF_ENDPOINT": url, "SLM_HF_TOKEN": state.token},
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    record = json.loads(stdout)
    assert record["verified"] is True
    assert record["file"] == "model.gguf"
    assert (tmp_path / "model.gguf").read_bytes() == PAYLOAD
    assert state.requests[0][0] == "/org/repo/resolve/main/sub/dir/model.gguf"


def test_hf_without_token_is_a_clear_error(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = origin
    process = _cli(tmp_path, "hf://org/repo/model.gguf", env={"SLM_HF_ENDPOINT": url, "HF_TOKEN": ""})
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 1
    assert "HTTP 401" in stderr
    assert "HF_TOKEN" in stderr


def test_published_digest_mismatch(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, _ = origin
    with pytest.raises(FetchError, match="sha256 mismatch"):
        fetch(_settings(tmp_path, "hf://org/repo-bad/model.gguf", hf_endpoint=url))
    assert not (tmp_path / "model.gguf").exists()


def test_missing_file_is_404_error(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(_settings(tmp_path, url + "/nothing.gguf"))
    assert len(state.requests) == 1  # 4xx is not retried


def test_file_and_pvc_sources(tmp_path: Path) -> None:
    origin_file = tmp_path / "mnt" / "claim" / "models" / "m.gguf"
    origin_file.parent.mkdir(parents=True)
    origin_file.write_bytes(PAYLOAD)
    via_file = fetch(_settings(tmp_path / "a", origin_file.as_uri()))
    assert via_file["sha256"] == DIGEST
    via_pvc = fetch(_settings(tmp_path / "b", "pvc://claim/models/m.gguf", pvc_root=tmp_path / "mnt"))
    assert (tmp_path / "b" / "m.gguf").read_bytes() == PAYLOAD
    assert via_pvc["source"] == "pvc://claim/models/m.gguf"
    with pytest.raises(FetchError, match="leaves the mount root"):
        fetch(_settings(tmp_path / "c", "pvc://claim/../../etc/passwd", pvc_root=tmp_path / "mnt"))
    with pytest.raises(FetchError, match="unsupported source scheme"):
        fetch(_settings(tmp_path / "d", "ftp://example/x"))


def test_disk_space_is_checked_first(
    origin: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, _ = origin

    class _Usage:
        free = 1024

    monkeypatch.setattr("slm_runtime.fetch.space.shutil.disk_usage", lambda path: _Usage())
    with pytest.raises(FetchError, match="not enough disk space"):
        fetch(_settings(tmp_path, url + "/model.bin"))
    assert not (tmp_path / "model.bin").exists()


def test_quantize_after_fetch(tiny_gguf: Path, tmp_path: Path) -> None:
    import gguf

    record = fetch(_settings(tmp_path, tiny_gguf.as_uri(), quantize="q8_0"))
    served = Path(record["path"])
    assert served.name == "tiny.q8_0.gguf"
    assert record["quantization"] == "q8_0"
    reader = gguf.GGUFReader(str(served))
    file_type = reader.fields["general.file_type"]
    assert int(file_type.parts[file_type.data[0]][0]) == 7
    assert served.stat().st_size < tiny_gguf.stat().st_size
    again = fetch(_settings(tmp_path, tiny_gguf.as_uri(), quantize="q8_0"))
    assert again == record  # cached: no second download or quantization


# A tiny Hugging Face Hub: tree listings (paginated) and resolve URLs, LFS files behind a redirect.
HUB_FILES: dict[str, dict[str, bytes]] = {
    "org/genai": {
        "cpu/int4/model.onnx": os.urandom(300_000),
        "cpu/int4/model.onnx.data": os.urandom(200_000),
        "cpu/int4/genai_config.json": b'{"model": {}}',
        "cpu/int4/tokenizer.json": b"{}",
        "cpu/fp16/model.onnx": b"other variant",
        "README.md": b"# readme",
    },
    "org/embed": {
        "onnx/model_quantized.onnx": os.urandom(100_000),
        "onnx/model.onnx": b"the unquantized one",
        "tokenizer.json": b'{"tok": 1}',
        "config.json": b'{"hidden_size": 8}',
        "README.md": b"# readme",
    },
}


# Listings a broken or impostor endpoint might answer with.
BROKEN_LISTINGS: dict[str, bytes] = {
    "org/notjson": b"<html>Service Unavailable</html>",
    "org/nopath": b'[{"type": "file", "size": 3}]',
    "org/notalist": b'{"error": "no"}',
}


def _is_lfs(path: str) -> bool:
    return path.endswith((".onnx", ".data"))


def _git_oid(content: bytes) -> str:
    return hashlib.sha1(b"blob %d\0" % len(content) + content, usedforsecurity=False).hexdigest()


class _HubHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _json(self, body: object, headers: dict[str, str] | None = None) -> None:
        data = json.dumps(body).encode()
        self.send_response(200)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        from urllib.parse import parse_qs, urlsplit

        parts = urlsplit(self.path)
        query = parse_qs(parts.query)
        segments = parts.path.strip("/").split("/")
        corrupt = self.server.corrupt  # type: ignore[attr-defined]
        if segments[:2] == ["api", "models"] and segments[4] == "tree":
            repo, folder = "/".join(segments[2:4]), "/".join(segments[6:])
            if repo in BROKEN_LISTINGS:
                data = BROKEN_LISTINGS[repo]
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)
                return
            self._tree(repo, folder, query.get("recursive") == ["true"], int(query.get("cursor", ["0"])[0]))
            return
        requests: list[tuple[str, str | None]] = getattr(self.server, "requests", [])
        requests.append((parts.path, self.headers.get("Range")))
        if len(segments) > 4 and segments[2] == "resolve":
            repo, path = "/".join(segments[:2]), "/".join(segments[4:])
            content = HUB_FILES.get(repo, {}).get(path)
            if content is None or path in getattr(self.server, "missing", ()):
                self.send_error(404)
                return
            body = content[:-1] + bytes([content[-1] ^ 0xFF]) if path in corrupt else content
            start = (
                int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
                if self.headers["Range"]
                else 0
            )
            self.send_response(206 if start else 200)
            if start:
                self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
            if _is_lfs(path):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Content-Length", str(len(body) - start))
            self.end_headers()
            self.wfile.write(body[start:])
            return
        self.send_error(404)

    def _tree(self, repo: str, folder: str, recursive: bool, cursor: int) -> None:
        files = HUB_FILES.get(repo)
        if files is None:
            self.send_error(404)
            return
        prefix = f"{folder}/" if folder else ""
        entries: list[dict[str, object]] = []
        directories: set[str] = set()
        for path, content in sorted(files.items()):
            if not path.startswith(prefix):
                continue
            rest = path[len(prefix) :]
            if "/" in rest and not recursive:
                directories.add(prefix + rest.split("/", 1)[0])
                continue
            entry: dict[str, object] = {
                "type": "file",
                "path": path,
                "size": len(content),
                "oid": _git_oid(content),
            }
            if _is_lfs(path):
                entry["lfs"] = {"oid": hashlib.sha256(content).hexdigest(), "size": len(content)}
            entries.append(entry)
        entries += [{"type": "directory", "path": d, "oid": "0" * 40} for d in sorted(directories)]
        page = entries[cursor : cursor + 2]  # two per page: pagination must be followed
        headers = {}
        if cursor + 2 < len(entries):
            base = f"http://{self.headers['Host']}{self.path.split('?')[0]}"
            flag = "recursive=true&" if recursive else ""
            headers["Link"] = f'<{base}?{flag}cursor={cursor + 2}>; rel="next"'
        self._json(page, headers)


@pytest.fixture
def hub() -> Iterator[tuple[str, set[str]]]:
    corrupt: set[str] = set()
    with _serving(_HubHandler, corrupt=corrupt) as url:
        yield url, corrupt


def test_hf_folder_is_fetched_whole(hub: tuple[str, set[str]], tmp_path: Path) -> None:
    url, _ = hub
    record = fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url))
    expected = {
        k.removeprefix("cpu/int4/"): v for k, v in HUB_FILES["org/genai"].items() if k.startswith("cpu/int4/")
    }
    for name, content in expected.items():
        assert (tmp_path / name).read_bytes() == content
    assert not (tmp_path / "README.md").exists()
    assert record["path"] == str(tmp_path)
    assert record["verified"] is True
    assert sorted(f["path"] for f in record["files"]) == sorted(expected)
    assert record["sizeBytes"] == sum(len(v) for v in expected.values())
    assert fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url)) == record  # cached


def test_hf_repository_root_folder(hub: tuple[str, set[str]], tmp_path: Path) -> None:
    url, _ = hub
    record = fetch(_settings(tmp_path, "hf://org/genai@main", hf_endpoint=url))
    assert (tmp_path / "cpu" / "fp16" / "model.onnx").read_bytes() == b"other variant"
    assert len(record["files"]) == len(HUB_FILES["org/genai"])


def test_hf_onnx_file_brings_its_tokenizer(hub: tuple[str, set[str]], tmp_path: Path) -> None:
    url, _ = hub
    fetch(_settings(tmp_path, "hf://org/embed/onnx/model_quantized.onnx", hf_endpoint=url))
    names = sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("."))
    assert names == ["config.json", "model_quantized.onnx", "tokenizer.json"]
    assert (tmp_path / "tokenizer.json").read_bytes() == b'{"tok": 1}'


@pytest.mark.parametrize("broken", ["cpu/int4/model.onnx", "cpu/int4/genai_config.json"])
def test_hf_folder_file_corrupted_in_transit(hub: tuple[str, set[str]], tmp_path: Path, broken: str) -> None:
    url, corrupt = hub
    corrupt.add(broken)
    with pytest.raises(FetchError, match="mismatch"):
        fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url))
    assert not (tmp_path / broken.removeprefix("cpu/int4/")).exists()
    assert not list(tmp_path.glob("**/*.part"))


def test_local_folder_copy(tmp_path: Path) -> None:
    folder = tmp_path / "src" / "model"
    (folder / "sub").mkdir(parents=True)
    (folder / "model.onnx").write_bytes(b"graph")
    (folder / "sub" / "x.bin").write_bytes(b"x")
    record = fetch(_settings(tmp_path / "dest", folder.as_uri()))
    assert (tmp_path / "dest" / "sub" / "x.bin").read_bytes() == b"x"
    assert sorted(f["path"] for f in record["files"]) == ["model.onnx", "sub/x.bin"]


def test_outcome_is_the_termination_message(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    """The operator reads the fetch result (or error) from the Pod's termination message."""
    url, _ = origin
    log = tmp_path / "termination-log"
    log.touch()  # the kubelet provides the file in a container
    ok = run(
        _settings(tmp_path / "cache", url + "/model.bin", sha256=DIGEST, termination_log=log), io.StringIO()
    )
    assert ok == 0
    record = json.loads(log.read_text())
    assert (record["sha256"], record["sizeBytes"], record["phase"]) == (DIGEST, len(PAYLOAD), "Ready")

    failed = run(
        _settings(tmp_path / "other", url + "/model.bin", sha256="0" * 64, termination_log=log), io.StringIO()
    )
    assert failed == 1
    assert log.read_text().startswith("error: ") and "sha256" in log.read_text()


# --- a cache that cannot be written, and cached files that changed -------------------------------

OTHER_UID = 65532  # the images' non-root user; as root, the fetch runs as it (in a forked child)


def _as_unprivileged(settings: FetchSettings) -> tuple[int, int, int]:
    """run() as a user the test's files deny: (exit code, uid, gid) it ran as."""
    if os.geteuid() != 0:
        return run(settings, io.StringIO()), os.getuid(), os.getgid()
    pid = os.fork()
    if pid == 0:  # the child: drop to the images' user, fetch, report only the exit code
        code = 99
        try:
            os.setgroups([])
            os.setgid(OTHER_UID)
            os.setuid(OTHER_UID)
            code = run(settings, io.StringIO())
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status), OTHER_UID, OTHER_UID


@pytest.fixture
def shared_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A folder the unprivileged user can reach (pytest's own are private to root)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(prefix="slm-fetch-"))
    folder.chmod(0o755)
    yield folder
    for path in [folder, *folder.rglob("*")]:
        if path.is_dir():
            path.chmod(0o755)
    shutil.rmtree(folder)


def _not_writable_line(path: Path, blocker: Path, uid: int, gid: int) -> str:
    info = blocker.lstat()
    return (
        f"CacheNotWritable: cache volume not writable: {path} (uid {uid}, gid {gid}): {blocker} is owned by "
        f"{info.st_uid}:{info.st_gid} with mode {info.st_mode & 0o7777:04o} and the volume does not apply "
        f"fsGroup (hostPath and some CSI drivers); make it writable for uid {uid} (chown {uid}:{gid} or chmod "
        "on the node, or a StorageClass whose driver honours fsGroup)"
    )


@pytest.mark.parametrize("blocked", ["cache mount", "lock file", "partial download"])
def test_unwritable_destination_is_one_line_with_the_cause_and_the_fix(
    origin: tuple[str, ServerState], shared_dir: Path, blocked: str, capfd: pytest.CaptureFixture[str]
) -> None:
    url, state = origin
    mount = shared_dir / "models"
    dest = mount / "model-1a2b3c4d"
    dest.mkdir(parents=True)
    dest.chmod(0o777)
    log = shared_dir / "termination-log"
    log.touch()
    log.chmod(0o666)
    if blocked == "cache mount":
        dest.rmdir()
        mount.chmod(0o555)  # like a root:root 0755 hostPath folder for anyone but its owner
        path, blocker = dest, mount
    elif blocked == "lock file":
        path = blocker = dest / ".slm-fetch.lock"
        path.touch()
        path.chmod(0o444)
    else:
        path = blocker = dest / ".model.bin.part"
        path.write_bytes(PAYLOAD[:1000])
        path.chmod(0o444)
    capfd.readouterr()
    code, uid, gid = _as_unprivileged(_settings(dest, url + "/model.bin", termination_log=log))
    stderr = capfd.readouterr().err
    expected = _not_writable_line(path, blocker, uid, gid)
    assert code == 1
    assert log.read_text() == expected
    assert stderr.strip().splitlines()[-1] == expected
    assert "Traceback" not in stderr and "Errno" not in log.read_text()
    assert [r for _, r in state.requests] == (["bytes=1000-"] if blocked == "partial download" else [])
    assert not (dest / "model.bin").exists()


def test_read_only_cache_volume(
    origin: tuple[str, ServerState], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    url, _ = origin
    dest = tmp_path / "models" / "m"

    def read_only(self: Path, *args: Any, **kwargs: Any) -> None:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(self))

    monkeypatch.setattr(Path, "mkdir", read_only)
    log = tmp_path / "termination-log"
    log.touch()
    assert run(_settings(dest, url + "/model.bin", termination_log=log), io.StringIO()) == 1
    assert log.read_text() == (
        f"CacheNotWritable: cache volume not writable: {dest} (uid {os.getuid()}, gid {os.getgid()}): the "
        "volume is mounted read-only; the fetch Job needs the cache claim read-write (a read-write "
        "PersistentVolume and mount)"
    )


def test_a_permission_error_outside_the_cache_stays_a_plain_error(tmp_path: Path) -> None:
    import errno

    from slm_runtime.fetch.errors import as_cache_error as _as_cache_error

    dest = tmp_path / "models" / "m"
    source = OSError(errno.EACCES, "Permission denied", "/mnt/pvc/seed/model.gguf")
    assert _as_cache_error(source, dest) is None
    assert _as_cache_error(OSError(errno.ENOSPC, "No space left", str(dest / "x")), dest) is None
    above = _as_cache_error(OSError(errno.EACCES, "Permission denied", str(tmp_path / "models")), dest)
    assert above is not None and str(above).startswith(f"cache volume not writable: {tmp_path / 'models'} ")


def _corrupt(path: Path) -> str:
    with path.open("r+b") as handle:
        handle.seek(path.stat().st_size // 2)
        handle.write(b"\xde\xad\xbe\xef" * 256)
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_a_cached_file_that_changed_is_fetched_again(
    origin: tuple[str, ServerState], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, state = origin
    first = fetch(_settings(tmp_path, url + "/model.bin"))
    assert fetch(_settings(tmp_path, url + "/model.bin")) == first  # intact: trusted, not downloaded
    assert len(state.requests) == 1

    bad = _corrupt(tmp_path / "model.bin")
    again = fetch(_settings(tmp_path, url + "/model.bin"))
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert again["sha256"] == DIGEST
    assert [r for _, r in state.requests] == [None, None]  # downloaded whole, nothing resumed
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warnings == [
        f"fetch: {tmp_path / 'model.bin'} changed since it was fetched (sha256 {bad}, recorded {DIGEST}); "
        "fetching it again"
    ]

    with (tmp_path / "model.bin").open("r+b") as handle:
        handle.truncate(1000)
    caplog.clear()
    fetch(_settings(tmp_path, url + "/model.bin"))
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"fetch: {tmp_path / 'model.bin'} changed since it was fetched (1000 bytes, recorded {len(PAYLOAD)}); "
        "fetching it again"
    ]
    assert len(state.requests) == 3


def test_an_intact_cached_gguf_is_not_fetched_twice(origin: tuple[str, ServerState], tmp_path: Path) -> None:
    url, state = origin
    env = {"hf_endpoint": url, "hf_token": state.token}
    first = fetch(_settings(tmp_path, "hf://org/repo/model.gguf", **env))
    assert fetch(_settings(tmp_path, "hf://org/repo/model.gguf", **env)) == first
    assert [path for path, _ in state.requests].count("/cdn/blob") == 1


def test_a_resumed_partial_download_that_fails_its_digest_starts_over(
    origin: tuple[str, ServerState], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, state = origin
    kept = bytearray(PAYLOAD[: len(PAYLOAD) // 2])
    kept[100] ^= 0xFF  # the earlier attempt's bytes went bad on the volume
    (tmp_path / ".model.bin.part").write_bytes(bytes(kept))
    record = fetch(_settings(tmp_path, url + "/model.bin", sha256=DIGEST))
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert record["sha256"] == DIGEST
    assert [r for _, r in state.requests] == [f"bytes={len(kept)}-", None]
    spliced = hashlib.sha256(bytes(kept) + PAYLOAD[len(kept) :]).hexdigest()
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"fetch: {url}/model.bin resumed from a partial download has sha256 {spliced}, not {DIGEST}; "
        "downloading it again from the start"
    ]
    assert not list(tmp_path.glob(".*.part"))


def test_a_file_without_a_record_is_trusted_only_by_the_expected_digest(
    origin: tuple[str, ServerState], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, state = origin
    (tmp_path / "model.bin").write_bytes(PAYLOAD)  # seeded by hand: no .slm-fetch.json
    record = fetch(_settings(tmp_path, url + "/model.bin", sha256=DIGEST))
    assert (record["sha256"], record["verified"], record["sizeBytes"]) == (DIGEST, True, len(PAYLOAD))
    assert state.requests == []
    assert json.loads((tmp_path / RESULT_FILE).read_text()) == record

    (tmp_path / RESULT_FILE).unlink()
    bad = _corrupt(tmp_path / "model.bin")
    fetch(_settings(tmp_path, url + "/model.bin", sha256=DIGEST))
    assert (tmp_path / "model.bin").read_bytes() == PAYLOAD
    assert [r for _, r in state.requests] == [None]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"fetch: {tmp_path / 'model.bin'} is present but its sha256 {bad} is not {DIGEST}; fetching it again"
    ]


def test_a_folder_file_that_changed_is_fetched_again(
    hub: tuple[str, set[str]], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    url, _ = hub
    record = fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url))
    bad = _corrupt(tmp_path / "model.onnx")
    entry = next(f for f in record["files"] if f["path"] == "model.onnx")
    assert fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url)) == record
    assert (tmp_path / "model.onnx").read_bytes() == HUB_FILES["org/genai"]["cpu/int4/model.onnx"]
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == [
        f"fetch: {tmp_path / 'model.onnx'} changed since it was fetched (sha256 {bad}, recorded "
        f"{entry['sha256']}); fetching it again"
    ]


# --- a file that changes between attempts, gzip, redirect loops (a versioned origin) --------------

V1 = os.urandom(1024 * 1024 + 7)


@dataclass
class Versioned:
    content: bytes = V1
    etag: str | None = '"v1"'
    last_modified: str | None = None
    honour_if_range: bool = True  # False: a server (or proxy) that ignores If-Range
    gzip: str = "no"  # "allowed": when Accept-Encoding allows it; "always": whatever the client asks
    cut_first: int = 0  # the first N full-body responses stop half-way
    start_shift: int = 0  # a 206 that starts this many bytes after the asked start
    requests: list[dict[str, str | None]] = field(default_factory=list)


class _VersionedHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        state: Versioned = self.server.state  # type: ignore[attr-defined]
        asked = {h: self.headers.get(h) for h in ("Range", "If-Range", "Accept-Encoding", "Authorization")}
        state.requests.append({"path": self.path, **asked})
        path = urlsplit(self.path).path
        if path == "/loop/model.gguf":
            self.send_response(302)
            self.send_header("Location", self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if path != "/file.bin":
            self.send_error(404)
            return
        body, encoding = state.content, None
        if state.gzip == "always" or (state.gzip == "allowed" and "gzip" in (asked["Accept-Encoding"] or "")):
            body, encoding = gzip.compress(state.content, mtime=0), "gzip"
        ranged = asked["Range"]
        if (
            ranged
            and state.honour_if_range
            and asked["If-Range"] not in (None, state.etag, state.last_modified)
        ):
            ranged = None  # If-Range names another version: the whole current one
        start = int(ranged.removeprefix("bytes=").split("-")[0]) + state.start_shift if ranged else 0
        if ranged and start >= len(body):
            self.send_response(416)
            self.send_header("Content-Range", f"bytes */{len(body)}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        self.send_response(206 if ranged else 200)
        if ranged:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        for name, value in (
            ("ETag", state.etag),
            ("Last-Modified", state.last_modified),
            ("Content-Encoding", encoding),
        ):
            if value:
                self.send_header(name, value)
        self.send_header("Content-Length", str(len(body) - start))
        self.end_headers()
        if not ranged and state.cut_first > 0:
            state.cut_first -= 1
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.close_connection = True
            self.connection.shutdown(2)
            return
        self.wfile.write(body[start:])


@pytest.fixture
def versioned() -> Iterator[tuple[str, Versioned]]:
    state = Versioned()
    with _serving(_VersionedHandler, state=state) as url:
        yield url, state


def _leave_a_part(url: str, dest: Path, state: Versioned) -> int:
    """A first attempt cut half-way, not retried: its .part stays, as after a killed fetch Job."""
    state.cut_first = 1
    with pytest.raises(FetchError, match="giving up"):
        fetch(FetchSettings(source=url, dest=dest, retries=0, backoff_seconds=0, timeout_seconds=10))
    return (dest / ".file.bin.part").stat().st_size


OLD_DATE, NEW_DATE = "Mon, 01 Jan 2024 00:00:00 GMT", "Tue, 02 Jan 2024 00:00:00 GMT"
# change: (validators before, what changes with the new version, its content, the If-Range sent)
_CHANGES: dict[str, tuple[dict[str, Any], dict[str, Any], bytes, str | None]] = {
    "new ETag, If-Range honoured": ({}, {"etag": '"v2"'}, os.urandom(len(V1)), '"v1"'),
    "new ETag, If-Range ignored": (
        {},
        {"etag": '"v2"', "honour_if_range": False},
        os.urandom(len(V1)),
        '"v1"',
    ),
    "new Last-Modified": (
        {"etag": None, "last_modified": OLD_DATE},
        {"last_modified": NEW_DATE},
        os.urandom(len(V1)),
        OLD_DATE,
    ),
    "bigger, no validators": ({"etag": None}, {}, os.urandom(len(V1) + 4096), None),
    "smaller than the part, no validators": ({"etag": None}, {}, os.urandom(100_000), None),
}


@pytest.mark.parametrize("change", list(_CHANGES))
def test_a_part_of_an_older_version_is_never_spliced_with_the_new_one(
    versioned: tuple[str, Versioned], tmp_path: Path, change: str
) -> None:
    url, state = versioned
    before, after, new, if_range = _CHANGES[change]
    for name, value in before.items():
        setattr(state, name, value)
    kept = _leave_a_part(url + "/file.bin", tmp_path, state)
    assert 0 < kept < len(V1)
    for name, value in after.items():
        setattr(state, name, value)
    state.content = new
    state.requests.clear()

    record = fetch(_settings(tmp_path, url + "/file.bin"))  # no digest known: only the protocol protects
    assert (tmp_path / "file.bin").read_bytes() == new
    assert (record["sha256"], record["sizeBytes"]) == (hashlib.sha256(new).hexdigest(), len(new))
    assert (state.requests[0]["Range"], state.requests[0]["If-Range"]) == (f"bytes={kept}-", if_range)
    assert not [p for p in tmp_path.iterdir() if ".part" in p.name]


def test_a_206_that_does_not_continue_the_part_starts_over(
    versioned: tuple[str, Versioned], tmp_path: Path
) -> None:
    url, state = versioned
    kept = _leave_a_part(url + "/file.bin", tmp_path, state)
    state.start_shift = 10  # a 206 for other bytes than asked
    state.requests.clear()
    fetch(_settings(tmp_path, url + "/file.bin"))
    assert (tmp_path / "file.bin").read_bytes() == V1
    assert [r["Range"] for r in state.requests] == [f"bytes={kept}-", None]


def test_an_unchanged_file_resumes_with_if_range(versioned: tuple[str, Versioned], tmp_path: Path) -> None:
    url, state = versioned
    state.cut_first = 1
    record = fetch(_settings(tmp_path, url + "/file.bin"))
    assert (tmp_path / "file.bin").read_bytes() == V1
    assert record["sha256"] == hashlib.sha256(V1).hexdigest()
    assert [(r["Range"], r["If-Range"]) for r in state.requests] == [
        (None, None),
        (f"bytes={len(V1) // 2}-", '"v1"'),
    ]


@pytest.mark.parametrize("mode", ["allowed", "always"])
def test_gzip_is_never_decoded_so_sizes_and_ranges_hold(
    versioned: tuple[str, Versioned], tmp_path: Path, mode: str
) -> None:
    """Ranges count the stored bytes: asked for identity, and what comes is written as it comes."""
    url, state = versioned
    state.content = b"a compressible model file " * 40_000
    state.gzip, state.cut_first = mode, 1
    record = fetch(_settings(tmp_path, url + "/file.bin"))
    # A server that gzips anyway serves its stored representation: that is the file, byte for byte.
    stored = state.content if mode == "allowed" else gzip.compress(state.content, mtime=0)
    assert (tmp_path / "file.bin").read_bytes() == stored
    assert record["sizeBytes"] == len(stored)
    assert {r["Accept-Encoding"] for r in state.requests} == {"identity"}
    assert [r["Range"] for r in state.requests] == [None, f"bytes={len(stored) // 2}-"]


# --- symlinks in local source folders -------------------------------------------------------------


def _source_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A claim under a pvc root: snapshot/ holds a model whose files link to ../blobs (HF cache style)."""
    claim = tmp_path / "mnt" / "claim"
    (claim / "blobs").mkdir(parents=True)
    (claim / "blobs" / "abc").write_bytes(b"weights")
    snapshot = claim / "snapshot"
    (snapshot / "sub").mkdir(parents=True)
    (snapshot / "model.onnx").symlink_to("../blobs/abc")
    (snapshot / "sub" / "x.bin").write_bytes(b"x")
    (snapshot / "alias.bin").symlink_to("sub/x.bin")
    outside = tmp_path / "outside-secret"
    outside.write_bytes(b"not for the cache")
    return claim, outside


def test_symlinks_that_stay_in_the_source_are_copied_as_files(tmp_path: Path) -> None:
    claim, _ = _source_tree(tmp_path)
    record = fetch(_settings(tmp_path / "a", "pvc://claim/snapshot", pvc_root=tmp_path / "mnt"))
    assert sorted(f["path"] for f in record["files"]) == ["alias.bin", "model.onnx", "sub/x.bin"]
    assert (tmp_path / "a" / "model.onnx").read_bytes() == b"weights"
    assert not (tmp_path / "a" / "model.onnx").is_symlink()
    assert (tmp_path / "a" / "alias.bin").read_bytes() == b"x"
    # file://: the folder named is the bound; a link within it is followed.
    (claim / "snapshot" / "model.onnx").unlink()
    (claim / "snapshot" / "model.onnx").write_bytes(b"weights")
    via_file = fetch(_settings(tmp_path / "b", (claim / "snapshot").as_uri()))
    assert (tmp_path / "b" / "alias.bin").read_bytes() == b"x"
    assert via_file["sha256"] == record["sha256"]


@pytest.mark.parametrize("scheme", ["pvc", "file"])
def test_symlinks_that_leave_the_source_are_refused(tmp_path: Path, scheme: str) -> None:
    claim, outside = _source_tree(tmp_path)
    (claim / "snapshot" / "sub" / "leak.bin").symlink_to(outside)
    if scheme == "file":  # the folder named is the bound: the link to ../blobs would leave it first
        (claim / "snapshot" / "model.onnx").unlink()
    source = "pvc://claim/snapshot" if scheme == "pvc" else (claim / "snapshot").as_uri()
    with pytest.raises(FetchError) as caught:
        fetch(_settings(tmp_path / "dest", source, pvc_root=tmp_path / "mnt"))
    root = claim if scheme == "pvc" else claim / "snapshot"
    assert str(caught.value) == (
        f"{source}: sub/leak.bin is a symlink to {outside}, outside the source root {root}; "
        "refusing to follow it"
    )
    assert not [p for p in (tmp_path / "dest").rglob("*") if p.read_bytes() == b"not for the cache"]


def test_a_symlinked_folder_is_refused(tmp_path: Path) -> None:
    claim, _ = _source_tree(tmp_path)
    (claim / "snapshot" / "loop").symlink_to("..")  # inside the claim, but a cycle
    with pytest.raises(FetchError, match="loop is a symlink to a folder"):
        fetch(_settings(tmp_path / "dest", "pvc://claim/snapshot", pvc_root=tmp_path / "mnt"))
    (claim / "snapshot" / "loop").unlink()
    (claim / "snapshot" / "etc").symlink_to("/etc")
    with pytest.raises(FetchError, match="etc is a symlink to /etc, outside the source root"):
        fetch(_settings(tmp_path / "dest", "pvc://claim/snapshot", pvc_root=tmp_path / "mnt"))


# --- a folder fetch retried on a nearly full volume -----------------------------------------------


@pytest.fixture
def flaky_hub() -> Iterator[tuple[str, set[str], list[tuple[str, str | None]]]]:
    """The hub, with files that answer 404 while named in `missing`, and a log of requests."""
    missing: set[str] = set()
    requests: list[tuple[str, str | None]] = []
    with _serving(_HubHandler, corrupt=set(), missing=missing, requests=requests) as url:
        yield url, missing, requests


def test_a_folder_retry_needs_space_only_for_what_is_left(
    flaky_hub: tuple[str, set[str], list[tuple[str, str | None]]],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    url, missing, requests = flaky_hub
    files = HUB_FILES["org/genai"]
    missing.add("cpu/int4/model.onnx.data")
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url))
    assert (tmp_path / "model.onnx").read_bytes() == files["cpu/int4/model.onnx"]  # done before the cut
    data = files["cpu/int4/model.onnx.data"]
    (tmp_path / ".model.onnx.data.part").write_bytes(data[:150_000])  # a cut transfer's part
    missing.clear()
    requests.clear()
    left = len(data) - 150_000 + len(files["cpu/int4/tokenizer.json"])
    # Room for what is left (and the margin), far from room for the whole folder.
    monkeypatch.setattr("slm_runtime.fetch.space._free_bytes", lambda path: _SPACE_MARGIN + left + 100)

    record = fetch(_settings(tmp_path, "hf://org/genai/cpu/int4", hf_endpoint=url))
    assert record["verified"] is True
    for name in ("model.onnx", "model.onnx.data", "tokenizer.json", "genai_config.json"):
        assert (tmp_path / name).read_bytes() == files[f"cpu/int4/{name}"]
    fetched = [(path.rsplit("/", 1)[-1], ranged) for path, ranged in requests if "/resolve/" in path]
    assert fetched == [("model.onnx.data", "bytes=150000-"), ("tokenizer.json", None)]


# --- every failure ends in a Failed record and one line ---------------------------------------------


def _failed_cli(
    tmp_path: Path, source: str, env: dict[str, str] | None = None
) -> tuple[str, dict[str, Any], str]:
    """Runs the CLI, expecting failure: (last stderr line, the record, the termination message)."""
    log = tmp_path / "termination-log"
    log.touch()
    process = _cli(tmp_path / "cache", source, "--termination-log", str(log), "--retries", "1", env=env)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 1, stderr
    assert "Traceback" not in stderr, stderr
    record = json.loads((tmp_path / "cache" / RESULT_FILE).read_text())
    assert record["phase"] == "Failed"
    assert "\n" not in record["error"]
    assert log.read_text() == record["error"]
    return stderr.strip().splitlines()[-1], record, log.read_text()


def test_a_redirect_loop_ends_in_a_failed_record(versioned: tuple[str, Versioned], tmp_path: Path) -> None:
    url, _ = versioned
    last, record, message = _failed_cli(tmp_path, url + "/loop/model.gguf")
    assert (
        message
        == f"error: fetching {url}/loop/model.gguf failed: TooManyRedirects: Exceeded maximum allowed redirects."
    )
    assert last == message.replace("error: ", "fetch failed: ", 1)
    assert record["source"] == url + "/loop/model.gguf"


@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("org/notjson", "is not JSON"),
        (
            "org/nopath",
            'malformed entry in the listing from {url}/api/models/org/nopath/tree/main?recursive=true: {{"type": "file", "size": 3}}',
        ),
        ("org/notalist", "unexpected listing from"),
    ],
)
def test_a_bad_listing_ends_in_a_failed_record(
    hub: tuple[str, set[str]], tmp_path: Path, repo: str, expected: str
) -> None:
    url, _ = hub
    last, record, message = _failed_cli(tmp_path, f"hf://{repo}", env={"SLM_HF_ENDPOINT": url})
    assert message.startswith("error: ")
    assert expected.format(url=url) in message
    assert last == message.replace("error: ", "fetch failed: ", 1)
    assert record["source"] == f"hf://{repo}"


def test_an_unexpected_error_still_ends_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    def broken(settings: FetchSettings) -> None:
        raise KeyError("bug")

    monkeypatch.setattr("slm_runtime.fetch.plan_fetch", broken)
    log = tmp_path / "termination-log"
    log.touch()
    assert run(_settings(tmp_path / "cache", "https://example.invalid/m.gguf", termination_log=log)) == 1
    assert log.read_text() == "error: unexpected KeyError: 'bug'"
    assert capfd.readouterr().err.strip().splitlines()[-1] == "fetch failed: unexpected KeyError: 'bug'"
    assert json.loads((tmp_path / "cache" / RESULT_FILE).read_text())["phase"] == "Failed"


# --- credentials in the source never reach the record, the logs or the termination message ---------

SECRETS = ("u53rn4me", "s3cr3tpass", "AKIAEXAMPLE", "deadbeefsig", "azuresig", "tok3n", "acc3ss", "s1gnature")
QUERY = (
    "?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101%2Fus-east-1"
    "&X-Amz-Signature=deadbeefsig&sig=azuresig&token=tok3n&access_token=acc3ss&signature=s1gnature&v=2"
)


def test_redact_url() -> None:
    from slm_runtime.redact import redact_text, redact_url

    assert (
        redact_url("https://user:pass@host.example:8443/a/b.gguf") == "https://***@host.example:8443/a/b.gguf"
    )
    assert redact_url("https://tokenonly@host/x") == "https://***@host/x"
    assert redact_url("https://h/x.gguf" + QUERY) == (
        "https://h/x.gguf?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***"
        "&sig=***&token=***&access_token=***&signature=***&v=2"
    )
    assert redact_url("https://h/x?SIG=a&Token=b&sigma=c") == "https://h/x?SIG=***&Token=***&sigma=c"
    assert redact_url("https://h/x#access_token=abc") == "https://h/x#access_token=***"
    for plain in ("https://h/x.gguf?v=1", "hf://org/repo/m.gguf@main", "pvc://claim/a b", "/local/path", ""):
        assert redact_url(plain) == plain
    assert redact_text("GET https://a:b@h/x?token=t failed; see http://h/y") == (
        "GET https://***@h/x?token=*** failed; see http://h/y"
    )


@pytest.mark.parametrize("kind", ["userinfo", "presigned"])
@pytest.mark.parametrize("outcome", ["Ready", "Failed"])
def test_credentials_in_the_source_are_redacted_everywhere(
    versioned: tuple[str, Versioned],
    tmp_path: Path,
    kind: str,
    outcome: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url, state = versioned
    host = url.removeprefix("http://")
    path = "/file.bin" if outcome == "Ready" else "/gone.bin"
    if kind == "userinfo":
        source, shown = f"http://u53rn4me:s3cr3tpass@{host}{path}", f"http://***@{host}{path}"
    else:
        source = url + path + QUERY
        shown = (
            f"{url}{path}?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Signature=***"
            "&sig=***&token=***&access_token=***&signature=***&v=2"
        )
    caplog.set_level(logging.DEBUG)
    # httpx's own logger too: an imported library may have raised its level (LiteLLM sets WARNING).
    caplog.set_level(logging.DEBUG, logger="httpx")
    state.cut_first = 1  # a retry line, too
    log = tmp_path / "termination-log"
    log.touch()
    out = io.StringIO()
    code = run(_settings(tmp_path / "cache", source, termination_log=log), out)
    assert code == (0 if outcome == "Ready" else 1)
    assert state.requests  # the real URL, credentials included, was used
    if kind == "userinfo":
        assert state.requests[0]["Authorization"] is not None
    else:
        assert "X-Amz-Signature=deadbeefsig" in str(state.requests[0]["path"])
    record = json.loads((tmp_path / "cache" / RESULT_FILE).read_text())
    assert (record["phase"], record["source"]) == (outcome, shown)
    captured = capfd.readouterr()
    everything = "\n".join(
        [
            json.dumps(record),
            log.read_text(),
            out.getvalue(),
            captured.out,
            captured.err,
            *(r.getMessage() for r in caplog.records),
        ]
    )
    assert any("HTTP Request" in r.getMessage() for r in caplog.records)  # httpx's request log, redacted
    leaked = [secret for secret in SECRETS if secret in everything]
    assert leaked == [], everything
    # Cached again under the same (redacted) source: a rotated presigned signature still finds it.
    if outcome == "Ready":
        assert fetch(_settings(tmp_path / "cache", source)) == record


# --- credentials from Secret files: to the source's own host, never to a redirect target ----------

TOKEN = "t0ken-from-the-registry-secret"
API_KEY = "k3y-from-another-secret"
CREDENTIAL_HEADERS = ("Authorization", "X-Api-Key")
PRESIGNED = "X-Amz-Signature=presigned"


@dataclass
class Guarded:
    cdn: str = ""  # where the origin redirects downloads, as Hugging Face does to its CDN
    seen: list[tuple[str, str, dict[str, str | None]]] = field(
        default_factory=list
    )  # (server, path, headers)


class _GuardedHandler(BaseHTTPRequestHandler):
    """The origin wants both credentials and redirects downloads to the CDN, which refuses any credential."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: object) -> None:
        pass

    def _send(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state: Guarded = self.server.state  # type: ignore[attr-defined]
        role: str = self.server.role  # type: ignore[attr-defined]
        asked = {h: self.headers.get(h) for h in CREDENTIAL_HEADERS}
        state.seen.append((role, self.path, asked))
        path = urlsplit(self.path).path
        if role == "cdn":
            if any(asked.values()):
                self._send(400, b"a credential reached the CDN")
            elif path == "/blob":
                self._send(200, PAYLOAD)
            else:
                self._send(403, b"signature expired")
            return
        if asked != {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY}:
            self._send(401, b"unauthorized")
        elif path == "/api/models/org/repo/tree/main":
            entry = {"type": "file", "path": "model.gguf", "size": len(PAYLOAD), "lfs": {"oid": DIGEST}}
            self._send(200, json.dumps([entry]).encode(), {"Content-Type": "application/json"})
        elif path in ("/model.gguf", "/org/repo/resolve/main/model.gguf"):
            self._send(
                302, headers={"Location": f"{state.cdn}/blob?{PRESIGNED}", "X-Linked-Etag": f'"{DIGEST}"'}
            )
        elif path == "/expired.gguf":
            self._send(302, headers={"Location": f"{state.cdn}/expired?{PRESIGNED}"})
        else:
            self._send(404)


@pytest.fixture(params=["cdn on another host", "cdn on another port"])
def guarded(request: pytest.FixtureRequest) -> Iterator[tuple[str, Guarded]]:
    """(the origin's URL, the shared state); the CDN is 127.0.0.2, or 127.0.0.1 on another port."""
    state = Guarded()
    cdn_bind = "127.0.0.2" if request.param == "cdn on another host" else "127.0.0.1"
    with (
        _serving(_GuardedHandler, state=state, role="origin") as origin_url,
        _serving(_GuardedHandler, bind=cdn_bind, state=state, role="cdn") as cdn_url,
    ):
        state.cdn = cdn_url
        yield origin_url, state


def _header_files(
    tmp_path: Path, token: bytes = TOKEN.encode() + b"\n", api_key: bytes = API_KEY.encode()
) -> list[dict[str, str]]:
    """The two Secret keys as the fetch Job mounts them (the token as `kubectl create secret --from-file` keeps it)."""
    files = {("registry", "token"): token, ("other", "api-key"): api_key}
    for (secret, key), content in files.items():
        (tmp_path / "secrets" / secret).mkdir(parents=True, exist_ok=True)
        (tmp_path / "secrets" / secret / key).write_bytes(content)
    return [
        {
            "header": "Authorization",
            "prefix": "Bearer ",
            "file": str(tmp_path / "secrets" / "registry" / "token"),
            "secret": "registry",
            "key": "token",
        },
        {
            "header": "X-Api-Key",
            "file": str(tmp_path / "secrets" / "other" / "api-key"),
            "secret": "other",
            "key": "api-key",
        },
    ]


@pytest.mark.parametrize("kind", ["https file", "hf file", "hf folder"])
def test_credentials_reach_the_source_host_and_never_the_redirect_target(
    guarded: tuple[str, Guarded],
    tmp_path: Path,
    kind: str,
    caplog: pytest.LogCaptureFixture,
    capfd: pytest.CaptureFixture[str],
) -> None:
    url, state = guarded
    source = {
        "https file": f"{url}/model.gguf",
        "hf file": "hf://org/repo/model.gguf",
        "hf folder": "hf://org/repo",
    }
    caplog.set_level(logging.DEBUG)
    log = tmp_path / "termination-log"
    log.touch()
    settings = _settings(
        tmp_path / "cache",
        source[kind],
        hf_endpoint=url,
        headers_from=_header_files(tmp_path),
        termination_log=log,
    )
    assert run(settings, io.StringIO()) == 0
    record = json.loads((tmp_path / "cache" / RESULT_FILE).read_text())
    file_record = record["files"][0] if kind == "hf folder" else record  # a folder's sha256 is its manifest's
    assert (record["phase"], file_record["sha256"], record["verified"]) == ("Ready", DIGEST, True)
    assert (tmp_path / "cache" / "model.gguf").read_bytes() == PAYLOAD
    at_origin = [headers for role, _, headers in state.seen if role == "origin"]
    at_cdn = [headers for role, _, headers in state.seen if role == "cdn"]
    # The trailing newline of the token file is dropped; both headers reach the origin.
    assert at_origin and all(
        h == {"Authorization": f"Bearer {TOKEN}", "X-Api-Key": API_KEY} for h in at_origin
    )
    assert at_cdn and all(h == {"Authorization": None, "X-Api-Key": None} for h in at_cdn)
    captured = capfd.readouterr()
    everything = "\n".join([json.dumps(record), log.read_text(), captured.out, captured.err])
    everything += "\n".join(r.getMessage() for r in caplog.records)
    assert TOKEN not in everything and API_KEY not in everything


def test_the_headers_from_flag_takes_the_json_list(guarded: tuple[str, Guarded], tmp_path: Path) -> None:
    url, state = guarded
    process = _cli(
        tmp_path / "cache", f"{url}/model.gguf", "--headers-from", json.dumps(_header_files(tmp_path))
    )
    stdout, stderr = process.communicate(timeout=120)
    assert process.returncode == 0, stderr
    assert json.loads(stdout)["sha256"] == DIGEST
    assert [role for role, _, _ in state.seen] == ["origin", "cdn"]


def test_a_refused_credential_ends_in_a_failed_record_naming_the_secret(
    guarded: tuple[str, Guarded], tmp_path: Path
) -> None:
    url, state = guarded
    wrong = "an-expired-t0ken"
    headers = _header_files(tmp_path, token=wrong.encode())
    last, record, message = _failed_cli(
        tmp_path, f"{url}/model.gguf", env={"SLM_HEADERS_FROM": json.dumps(headers)}
    )
    token_file = tmp_path / "secrets" / "registry" / "token"
    assert message == (
        f"SourceUnauthorized: HTTP 401 fetching {url}/model.gguf with the Authorization header from Secret "
        f"registry, key token (file {token_file}); the X-Api-Key header from Secret other, key api-key (file "
        f"{tmp_path / 'secrets' / 'other' / 'api-key'}): check that the Secret holds a valid, unexpired "
        "credential for 127.0.0.1 that grants access to this file, in the header and prefix the server expects"
    )
    assert last == message
    assert record["error"] == message
    assert [role for role, _, _ in state.seen] == ["origin"]  # a 401 is not retried


def test_a_refusal_after_a_redirect_says_the_credentials_stayed_with_the_source(
    guarded: tuple[str, Guarded], tmp_path: Path
) -> None:
    url, state = guarded
    headers = _header_files(tmp_path)
    _, _, message = _failed_cli(
        tmp_path, f"{url}/expired.gguf", env={"SLM_HEADERS_FROM": json.dumps(headers)}
    )
    cdn_host = urlsplit(state.cdn).hostname
    assert message.startswith(
        f"SourceUnauthorized: HTTP 403 fetching {url}/expired.gguf: refused by {cdn_host}, "
    )
    assert "credentials go to 127.0.0.1 only, never to a redirect target" in message
    assert [headers for role, _, headers in state.seen if role == "cdn"] == [
        {"Authorization": None, "X-Api-Key": None}
    ]


def test_a_401_without_credentials_says_how_to_give_them(
    guarded: tuple[str, Guarded], tmp_path: Path
) -> None:
    url, _ = guarded
    _, _, message = _failed_cli(tmp_path, f"{url}/model.gguf")
    assert message == (
        f"SourceUnauthorized: HTTP 401 fetching {url}/model.gguf (the source needs credentials: "
        "spec.model.headersFrom sends request headers from a Secret)"
    )


def _with(entries: list[dict[str, str]], index: int, **changes: str) -> list[dict[str, str]]:
    return [{**entry, **changes} if i == index else entry for i, entry in enumerate(entries)]


@pytest.mark.parametrize(
    ("broken", "expected"),
    [
        (
            "a line break inside",
            "Secret registry, key token (file {token_file}) holds a line break inside the value of header "
            "Authorization: a header value is one line",
        ),
        ("a CRLF inside", "holds a line break inside the value of header Authorization"),
        ("a NUL byte", "holds control or non-ASCII characters in the value of header Authorization"),
        ("non-ASCII", "holds control or non-ASCII characters in the value of header Authorization"),
        (
            "empty",
            "Secret registry, key token (file {token_file}) is empty: header Authorization needs a value",
        ),
        ("missing", "cannot read header Authorization from Secret registry, key token (file {token_file}): "),
        ("Range", "header Range (for Secret other, key api-key"),
        ("a space in the name", "header name 'X Api Key' (for Secret other, key api-key"),
        ("twice", "header authorization is given twice (from Secret registry, key token"),
    ],
)
def test_unusable_credentials_fail_before_any_request(
    guarded: tuple[str, Guarded], tmp_path: Path, broken: str, expected: str
) -> None:
    url, state = guarded
    token = {
        "a line break inside": f"{TOKEN[:5]}\n{TOKEN[5:]}\n",
        "a CRLF inside": f"{TOKEN[:5]}\r\n{TOKEN[5:]}",
        "a NUL byte": f"{TOKEN}\0",
        "non-ASCII": f"{TOKEN}\u00e9",
        "empty": "\n",
    }.get(broken, TOKEN)
    headers = _header_files(tmp_path, token=token.encode())
    token_file = tmp_path / "secrets" / "registry" / "token"
    if broken == "missing":
        token_file.unlink()
    elif broken == "Range":
        headers = _with(headers, 1, header="Range")
    elif broken == "a space in the name":
        headers = _with(headers, 1, header="X Api Key")
    elif broken == "twice":
        headers = _with(headers, 1, header="authorization")
    log = tmp_path / "termination-log"
    log.touch()
    settings = _settings(tmp_path / "cache", f"{url}/model.gguf", headers_from=headers, termination_log=log)
    assert run(settings, io.StringIO()) == 1
    record = json.loads((tmp_path / "cache" / RESULT_FILE).read_text())
    assert record["phase"] == "Failed"
    assert expected.format(token_file=token_file) in record["error"], record["error"]
    assert TOKEN[5:] not in record["error"]
    assert log.read_text() == record["error"]
    assert state.seen == []


@pytest.mark.parametrize("scheme", ["file", "pvc"])
def test_volume_sources_take_no_headers(tmp_path: Path, scheme: str) -> None:
    model = tmp_path / "mnt" / "claim" / "m.gguf"
    model.parent.mkdir(parents=True)
    model.write_bytes(PAYLOAD)
    source = model.as_uri() if scheme == "file" else "pvc://claim/m.gguf"
    settings = _settings(
        tmp_path / "cache", source, pvc_root=tmp_path / "mnt", headers_from=_header_files(tmp_path)
    )
    with pytest.raises(FetchError, match=rf"^{scheme}:// sources take no request headers"):
        fetch(settings)


def test_registered_secrets_are_masked_in_text() -> None:
    from slm_runtime.redact import redact_text, register_secret

    register_secret("a-secret-header-value\n")
    register_secret("abc")  # too short to mask without masking ordinary words
    assert redact_text("refused 'Bearer a-secret-header-value' at https://h/x?token=t") == (
        "refused 'Bearer ***' at https://h/x?token=***"
    )
    assert redact_text("abc") == "abc"
