"""The work queue of reconciles: one at a time per object, bursts coalesced, failures retried.

Triggers (watch events, timers, resyncs) only enqueue a key; the queue runs the reconcile after a
short debounce, under a per-key lock and a limit on how many run at once. A reconcile that raises
anything is counted and retried with a doubling backoff; one that asks to be looked at again later
gets a timer.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable

from slm_operator.k8s.client import ApiError
from slm_operator.metrics import OperatorMetrics

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (namespace, name)
# One reconcile of a key; returns after how many seconds to run it again (None: only on a trigger).
Work = Callable[[Key], Awaitable[float | None]]

RETRY_MAX_SECONDS = 300.0


def retry_delay(failures: int) -> float:
    """Seconds before retrying a reconcile that failed ``failures`` times in a row (doubling, capped)."""
    return min(2.0**failures, RETRY_MAX_SECONDS)


class WorkQueue:
    """Runs `work` for keys: one run at a time per key, at most `concurrency` at once."""

    def __init__(
        self,
        work: Work,
        metrics: OperatorMetrics,
        *,
        concurrency: int = 8,
        debounce_seconds: float = 0.5,
    ) -> None:
        self._work = work
        self._metrics = metrics
        # Every key enqueued and not forgotten: what a resync or a node change goes over.
        self.known: set[Key] = set()
        # Children change in bursts (claim bound, Job done, pods ready...): triggers that
        # arrive within this window of the first one share one run.
        self.debounce_seconds = debounce_seconds
        # The pending run-again (a requeue or a retry) per key; a newer one replaces it.
        self.timers: dict[Key, asyncio.TimerHandle] = {}
        self._locks: dict[Key, asyncio.Lock] = {}
        self._pending: set[Key] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._slots = asyncio.Semaphore(concurrency)
        self._failures: dict[Key, int] = {}

    def enqueue(self, key: Key) -> None:
        """Ask for a run of ``key`` soon; triggers that arrive before it starts merge."""
        self.known.add(key)
        if key in self._pending:
            return
        self._pending.add(key)
        task = asyncio.get_running_loop().create_task(self._run(key))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def enqueue_all(self) -> None:
        for key in sorted(self.known):
            self.enqueue(key)

    def enqueue_after(self, key: Key, delay: float) -> None:
        previous = self.timers.pop(key, None)
        if previous is not None:
            previous.cancel()
        self.timers[key] = asyncio.get_running_loop().call_later(delay, self.enqueue, key)

    def forget(self, key: Key) -> None:
        """Drop what the queue holds for a deleted object (a run already started finishes)."""
        self.known.discard(key)
        lock = self._locks.get(key)
        if lock is not None and not lock.locked():
            del self._locks[key]
        self._failures.pop(key, None)
        timer = self.timers.pop(key, None)
        if timer is not None:
            timer.cancel()

    async def idle(self) -> None:
        """Wait until no run is queued or running (tests, shutdown)."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _run(self, key: Key) -> None:
        if self.debounce_seconds:
            await asyncio.sleep(self.debounce_seconds)
        lock = self._locks.setdefault(key, asyncio.Lock())
        async with lock, self._slots:
            self._pending.discard(key)
            started = time.perf_counter()
            try:
                requeue_after = await self._work(key)
            except ApiError as error:
                delay = self._failed(key)
                log.warning(
                    "reconcile of %s/%s failed (retry in %.0fs): %s", key[0], key[1], delay, error.message
                )
                return
            except Exception:
                # Anything else (a transport error the client did not wrap, a bug): counted and retried
                # like an API error, never lost as an unretrieved task exception.
                delay = self._failed(key)
                log.exception("reconcile of %s/%s failed (retry in %.0fs)", key[0], key[1], delay)
                return
            finally:
                self._metrics.reconcile_duration.observe(time.perf_counter() - started)
            self._failures.pop(key, None)
            self._metrics.reconciles.labels(result="ok").inc()
            if requeue_after is not None:
                self.enqueue_after(key, requeue_after)

    def _failed(self, key: Key) -> float:
        """Count a failed run and schedule the retry; the delay."""
        failures = self._failures.get(key, 0) + 1
        self._failures[key] = failures
        delay = retry_delay(failures)
        self._metrics.reconcile_errors.inc()
        self._metrics.reconciles.labels(result="error").inc()
        self.enqueue_after(key, delay)
        return delay
