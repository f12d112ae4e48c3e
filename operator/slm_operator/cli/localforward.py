"""A local listening socket whose every connection is piped to a stream of its own.

The in-process port-forward's local side (podforward.py opens the streams): two daemon threads
copy each connection's bytes, one each way, until either side is done.
"""

from __future__ import annotations

import contextlib
import selectors
import socket
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

CHUNK = 64 * 1024
THREAD_NAME = "slm-port-forward"
CLOSE_WAIT = 5.0  # seconds `with` exit waits for the copying threads (daemons: none can block exit)


class Stream(Protocol):
    """Where one local connection's bytes go, and come from."""

    def send(self, data: bytes) -> None:
        """All of `data`; OSError when the far side is gone."""

    def recv(self) -> bytes:
        """The next bytes; b"" when the stream is over."""

    def abort(self) -> None:
        """End the stream now: a recv blocked in another thread returns b""."""

    def close(self) -> None: ...

    def error(self) -> str | None:
        """What the far side reported when it failed, if it did."""


def _shutdown(sock: socket.socket, how: int = socket.SHUT_RDWR) -> None:
    with contextlib.suppress(OSError):
        sock.shutdown(how)


class LocalForwarder:
    """127.0.0.1:PORT; each connection there is piped to a fresh stream from `open_stream`.

    A connection whose stream cannot be opened, or fails, is closed alone and reported once per
    distinct problem; leaving the `with` block closes the listener and every connection.
    """

    def __init__(self, open_stream: Callable[[], Stream], report: Callable[[str], None]) -> None:
        self.open_stream = open_stream
        self.report = report
        self.local_port = 0
        self._listener: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None
        self._lock = threading.Lock()
        self._closing = False
        self._live: dict[socket.socket, Stream | None] = {}  # each connection and its stream
        self._threads: set[threading.Thread] = set()
        self._reported: set[str] = set()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.local_port}"

    def __enter__(self) -> LocalForwarder:
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self._listener.setblocking(False)
        self.local_port = int(self._listener.getsockname()[1])
        self._wake = socket.socketpair()
        self._spawn(self._accept_loop, "accept")
        return self

    def _spawn(self, target: Callable[..., None], role: str, *args: Any) -> threading.Thread:
        thread = threading.Thread(
            target=self._run, args=(target, *args), name=f"{THREAD_NAME}-{role}", daemon=True
        )
        with self._lock:
            self._threads.add(thread)
        thread.start()
        return thread

    def _run(self, target: Callable[..., None], *args: Any) -> None:
        try:
            target(*args)
        finally:
            with self._lock:
                self._threads.discard(threading.current_thread())

    def _accept_loop(self) -> None:
        assert self._listener is not None and self._wake is not None
        with selectors.DefaultSelector() as selector:
            selector.register(self._listener, selectors.EVENT_READ)
            selector.register(self._wake[0], selectors.EVENT_READ)
            while True:
                for key, _ in selector.select():
                    if key.fileobj is self._wake[0]:
                        return
                    try:
                        local, _ = self._listener.accept()
                    except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                        continue
                    local.setblocking(True)
                    self._spawn(self._serve, "connection", local)

    def _track(self, local: socket.socket, stream: Stream | None = None) -> bool:
        with self._lock:
            if self._closing:
                return False
            self._live[local] = stream
            return True

    def _serve(self, local: socket.socket) -> None:
        if not self._track(local):
            local.close()
            return
        try:
            try:
                stream = self.open_stream()
            except Exception as error:  # one connection's failure: report it, close it, go on
                self._report_once(
                    f"port-forward: no stream for a connection: {getattr(error, 'message', error)}"
                )
                return
            try:
                if not self._track(local, stream):
                    return
                back = self._spawn(self._stream_to_local, "copy", stream, local)
                self._local_to_stream(local, stream)
                back.join()
            finally:
                problem = stream.error()
                stream.close()
                if problem:
                    self._report_once(f"port-forward: {stream}: {problem}")
        finally:
            with self._lock:
                self._live.pop(local, None)
            local.close()

    @staticmethod
    def _local_to_stream(local: socket.socket, stream: Stream) -> None:
        with contextlib.suppress(OSError):
            while data := local.recv(CHUNK):
                stream.send(data)
        # The client is done (a stream cannot be half-closed): so is the connection. This also
        # wakes the other thread's recv.
        stream.abort()

    @staticmethod
    def _stream_to_local(stream: Stream, local: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := stream.recv():
                local.sendall(data)
        # The far side is over, so is the connection (this also wakes the other thread's recv).
        _shutdown(local)
        stream.abort()

    def _report_once(self, line: str) -> None:
        with self._lock:
            if line in self._reported:
                return
            self._reported.add(line)
        self.report(line)

    def close(self) -> None:
        with self._lock:
            if self._closing:
                return
            self._closing = True
            live = list(self._live.items())
        if self._wake is not None:
            with contextlib.suppress(OSError):
                self._wake[1].send(b"x")
        for local, stream in live:
            _shutdown(local)
            if stream is not None:
                stream.abort()
        deadline = time.monotonic() + CLOSE_WAIT
        while True:
            with self._lock:
                threads = [thread for thread in self._threads if thread is not threading.current_thread()]
            if not threads or time.monotonic() >= deadline:
                break
            threads[0].join(max(0.0, deadline - time.monotonic()))
        for sock in (self._listener, *(self._wake or ())):
            if sock is not None:
                sock.close()

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.close()
