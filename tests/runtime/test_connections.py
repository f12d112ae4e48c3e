"""Slow and half-open clients cannot hold the server's connections."""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.runtime.conftest import RunningServer, start_server

pytestmark = pytest.mark.runtime


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=30)


def _read_all(sock: socket.socket) -> bytes:
    received = b""
    while chunk := sock.recv(65536):
        received += chunk
    return received


@pytest.fixture(scope="module")
def guarded(tiny_gguf: Path) -> Iterator[RunningServer]:
    server = start_server(
        model=tiny_gguf,
        model_name="guarded",
        parallel_requests=1,
        max_queue=1,
        max_connections=4,
        header_timeout_seconds=0.5,
        body_timeout_seconds=0.5,
        context_length=256,
        threads=1,
    )
    yield server
    server.stop()


@pytest.mark.parametrize(
    "sent", [b"", b"POST /api/chat HTTP/1.1\r\nHost: x\r\n"], ids=["nothing", "half-headers"]
)
def test_a_connection_without_a_whole_request_is_closed(guarded: RunningServer, sent: bytes) -> None:
    with _connect(guarded.url) as sock:
        sock.sendall(sent)
        assert _read_all(sock) == b""  # closed by the server, with nothing to say


def test_a_body_that_does_not_arrive_gets_a_408_in_the_api_shape(guarded: RunningServer) -> None:
    with _connect(guarded.url) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b'Content-Length: 100\r\n\r\n{"model":'
        )
        response = _read_all(sock).decode()
    head, _, body = response.partition("\r\n\r\n")
    assert head.startswith("HTTP/1.1 408")
    assert json.loads(body)["error"]["message"] == "request body not received within 0.5s"


def test_connections_past_the_limit_get_a_503(guarded: RunningServer) -> None:
    # Three connections already open (one short of the limit of 4), each between two requests.
    held = [httpx.Client(base_url=guarded.url) for _ in range(3)]
    try:
        assert [client.get("/api/version").status_code for client in held] == [200, 200, 200]
        with httpx.Client(base_url=guarded.url) as fourth:
            assert fourth.get("/api/version").status_code == 503
        held[0].close()
        held.pop(0)
        with httpx.Client(base_url=guarded.url) as again:
            assert again.get("/api/version").status_code == 200
    finally:
        for client in held:
            client.close()


def test_a_kept_alive_connection_must_send_its_next_headers_in_time(guarded: RunningServer) -> None:
    with _connect(guarded.url) as sock:
        sock.sendall(b"GET /api/version HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b'"version"' not in first:  # the whole first response: headers and body
            first += sock.recv(65536)
        assert first.startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /api/version HTTP/1.1\r\n")  # ... and the rest never comes
        assert _read_all(sock) == b""
