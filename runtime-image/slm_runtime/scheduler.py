"""Admission control: `parallel` requests run, up to `max_queue` wait, the rest get 503 like Ollama."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Callable

OLLAMA_QUEUE_FULL = "server busy, please try again.  maximum pending requests exceeded"


class QueueFullError(Exception):
    def __init__(self) -> None:
        super().__init__(OLLAMA_QUEUE_FULL)


class Ticket:
    """A request's place: waiting in the queue, then holding a slot until released."""

    def __init__(self, scheduler: Scheduler) -> None:
        self._scheduler = scheduler
        self._granted: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.arrived_at = time.perf_counter()
        self.queue_seconds = 0.0
        self._released = False

    async def wait(self) -> None:
        """Waits for a slot; cancelling (client gone) leaves the queue."""
        try:
            await self._granted
        except asyncio.CancelledError:
            self.release()
            raise
        self.queue_seconds = time.perf_counter() - self.arrived_at

    def release(self) -> None:
        if self._released:
            return
        self._released = True
        self._scheduler._release(self)


class Scheduler:
    def __init__(
        self,
        parallel: int,
        max_queue: int,
        on_change: Callable[[int, int], None] = lambda running, waiting: None,
    ) -> None:
        self.parallel = parallel
        self.max_queue = max_queue
        self._running: set[Ticket] = set()
        self._waiting: deque[Ticket] = deque()
        self._on_change = on_change

    @property
    def running(self) -> int:
        return len(self._running)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def admit(self) -> Ticket:
        """Takes a slot or a queue place at once, or raises QueueFullError (before any response starts)."""
        ticket = Ticket(self)
        if len(self._running) < self.parallel:
            self._running.add(ticket)
            ticket._granted.set_result(None)
        elif len(self._waiting) < self.max_queue:
            self._waiting.append(ticket)
        else:
            raise QueueFullError
        self._on_change(self.running, self.waiting)
        return ticket

    def _release(self, ticket: Ticket) -> None:
        if ticket in self._running:
            self._running.discard(ticket)
        else:
            with contextlib.suppress(ValueError):
                self._waiting.remove(ticket)
        while self._waiting and len(self._running) < self.parallel:
            successor = self._waiting.popleft()
            if successor._granted.done():  # cancelled while waiting
                continue
            self._running.add(successor)
            successor._granted.set_result(None)
        self._on_change(self.running, self.waiting)
