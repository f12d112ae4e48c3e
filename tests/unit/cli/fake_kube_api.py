"""A fake Kubernetes API server for the in-process port-forward's tests.

It serves one Service (ai/assistant), the Pods its selector lists, and pods/portforward: the
websocket upgrade, then the v4.channel.k8s.io protocol (channel 0 data, channel 1 errors, each
opened by the port number) bridged to a local TCP port standing in for the Pod's container port.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import re
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

WEBSOCKET_GUID = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


@dataclass
class ApiState:
    service: dict[str, Any] | None
    pods: list[dict[str, Any]]
    backends: dict[str, int]  # Pod name -> the local port its container port reaches
    refuse: dict[str, int] = field(default_factory=dict)  # "service" | "pods" | "portforward" -> status
    upgrades: list[tuple[str, str, str]] = field(default_factory=list)  # pod, ports, Authorization
    pod_lists: list[str] = field(default_factory=list)  # the label selector of each Pod list


def status_body(code: int, message: str) -> bytes:
    return json.dumps(
        {"kind": "Status", "apiVersion": "v1", "status": "Failure", "message": message, "code": code}
    ).encode()


def send_frame(conn: socket.socket, payload: bytes) -> None:
    length = len(payload)
    if length < 126:
        head = bytes([0x82, length])
    elif length < 65536:
        head = bytes([0x82, 126]) + length.to_bytes(2, "big")
    else:
        head = bytes([0x82, 127]) + length.to_bytes(8, "big")
    conn.sendall(head + payload)


def read_frame(rfile: Any) -> tuple[int, bytes] | None:
    head = rfile.read(2)
    if len(head) < 2:
        return None
    length = head[1] & 0x7F
    if length >= 126:
        length = int.from_bytes(rfile.read(2 if length == 126 else 8), "big")
    mask = rfile.read(4) if head[1] & 0x80 else b"\0\0\0\0"
    data = rfile.read(length)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    return head[0] & 0x0F, (int.from_bytes(data, "big") ^ key).to_bytes(length, "big")


class FakeApi(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Any

    def log_message(self, *_: Any) -> None:
        pass

    def _json(self, code: int, body: bytes) -> None:
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        state: ApiState = self.server.state
        path, _, query = self.path.partition("?")
        forwarding = re.fullmatch(r"/api/v1/namespaces/ai/pods/([^/]+)/portforward", path)
        if path == "/api/v1/namespaces/ai/services/assistant":
            if "service" in state.refuse or state.service is None:
                code = state.refuse.get("service", 404)
                self._json(code, status_body(code, 'services "assistant" is forbidden or absent'))
            else:
                self._json(200, json.dumps(state.service).encode())
        elif path == "/api/v1/namespaces/ai/pods":
            state.pod_lists.append(parse_qs(query)["labelSelector"][0])
            if "pods" in state.refuse:
                self._json(state.refuse["pods"], status_body(state.refuse["pods"], "cannot list pods"))
            else:
                self._json(
                    200,
                    json.dumps(
                        {"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": state.pods}
                    ).encode(),
                )
        elif forwarding:
            self._portforward(state, forwarding.group(1), parse_qs(query)["ports"][0])
        else:
            self._json(404, status_body(404, "no such path"))

    def _portforward(self, state: ApiState, name: str, ports: str) -> None:
        state.upgrades.append((name, ports, self.headers.get("Authorization", "")))
        if "portforward" in state.refuse:
            code = state.refuse["portforward"]
            message = (
                f'pods "{name}" is forbidden: cannot create pods/portforward'
                if code == 403
                else "error upgrading connection: unable to upgrade connection: container not found"
            )
            return self._json(code, status_body(code, message))
        if name not in state.backends:
            return self._json(404, status_body(404, f'pods "{name}" not found'))
        accept = base64.b64encode(
            hashlib.sha1((self.headers["Sec-WebSocket-Key"] + WEBSOCKET_GUID).encode()).digest()
        )
        self.send_response(101)
        self.send_header("Upgrade", "websocket")
        self.send_header("Connection", "Upgrade")
        self.send_header("Sec-WebSocket-Accept", accept.decode())
        self.send_header("Sec-WebSocket-Protocol", "v4.channel.k8s.io")
        self.end_headers()
        self.close_connection = True
        conn, port = self.connection, int(ports)
        for channel in (0, 1):  # each channel's first frame names the port
            send_frame(conn, bytes([channel]) + port.to_bytes(2, "little"))
        try:
            backend = socket.create_connection(("127.0.0.1", state.backends[name]))
        except OSError as error:
            send_frame(
                conn, b"\x01" + f"error forwarding port {port} to pod {name}: {error.strerror}".encode()
            )
            return
        threading.Thread(target=self._backend_to_client, args=(backend, conn), daemon=True).start()
        with backend:
            while (frame := read_frame(self.rfile)) is not None and frame[0] != 0x8:
                if frame[0] == 0x2 and frame[1][:1] == b"\x00":
                    backend.sendall(frame[1][1:])

    @staticmethod
    def _backend_to_client(backend: socket.socket, conn: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := backend.recv(65536):
                send_frame(conn, b"\x00" + data)
        with contextlib.suppress(OSError):
            conn.shutdown(socket.SHUT_RDWR)


@contextlib.contextmanager
def fake_api(state: ApiState, tmp_path: Path) -> Iterator[Path]:
    """The fake API server; yields a kubeconfig for it (namespace ai, a bearer token)."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeApi)
    server.state = state  # type: ignore[attr-defined]
    threading.Thread(target=server.serve_forever, daemon=True).start()
    kubeconfig = tmp_path / "cluster" / "kubeconfig"  # no kubectl beside it
    kubeconfig.parent.mkdir()
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "fake",
        "clusters": [{"name": "fake", "cluster": {"server": f"http://127.0.0.1:{server.server_address[1]}"}}],
        "users": [{"name": "me", "user": {"token": "t0ken"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "me", "namespace": "ai"}}],
    }))  # fmt: skip
    try:
        yield kubeconfig
    finally:
        server.shutdown()
        server.server_close()
