"""`slm_runtime fetch`: resume after a cut connection, checksums, concurrent fetchers, hf://, pvc://, file://."""

from __future__ import annotations

import hashlib
import io
import json
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

import pytest

from slm_runtime.fetch import RESULT_FILE, FetchError, fetch, run
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


@pytest.fixture
def origin() -> Iterator[tuple[str, ServerState]]:
    state = ServerState()
    server = _QuietServer(("127.0.0.1", 0), _Handler)
    server.state = state  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", state
    server.shutdown()
    server.server_close()


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

    monkeypatch.setattr("slm_runtime.fetch.shutil.disk_usage", lambda path: _Usage())
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
            self._tree(repo, folder, query.get("recursive") == ["true"], int(query.get("cursor", ["0"])[0]))
            return
        if len(segments) > 4 and segments[2] == "resolve":
            repo, path = "/".join(segments[:2]), "/".join(segments[4:])
            content = HUB_FILES.get(repo, {}).get(path)
            if content is None:
                self.send_error(404)
                return
            body = content[:-1] + bytes([content[-1] ^ 0xFF]) if path in corrupt else content
            self.send_response(200)
            if _is_lfs(path):
                self.send_header("X-Linked-Etag", f'"{hashlib.sha256(content).hexdigest()}"')
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
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
    server = _QuietServer(("127.0.0.1", 0), _HubHandler)
    corrupt: set[str] = set()
    server.corrupt = corrupt  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", corrupt
    server.shutdown()
    server.server_close()


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

    from slm_runtime.fetch import _as_cache_error

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
