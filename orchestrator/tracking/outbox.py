"""The outbox: tracking calls that must not stop training, retried, and queued while the backend is down.

A call is a description and a function. :meth:`Outbox.submit` tries it now (retried with exponential
backoff by tenacity; errors that retrying cannot fix are dropped with a warning). When it still fails,
an outage starts: the call is queued in memory (bounded, oldest dropped first), one warning says what
is held back, and later calls go straight to the queue, keeping their order, with a probe now and then
(gaps doubling up to ``max_backoff_s``) that drains the queue once the backend answers again.
:meth:`Outbox.flush` retries the queue for a while (at stage boundaries, at the end) and lists what
is still held back. :meth:`Outbox.ask` is for calls whose answer the caller needs (retried, never
queued), :meth:`Outbox.now_or_later` for those whose answer can wait (a run created after an outage).

Nothing here knows MLflow: the tracker passes which errors are permanent, so the queue's contract is
tested with plain functions that fail and then succeed.
"""

from __future__ import annotations

import collections
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import tenacity

__all__ = ["Call", "Outbox", "Permanent"]

_log = logging.getLogger(__name__)


class Permanent(Exception):
    """A call failed in a way that retrying cannot fix (bad request, missing run, programming error)."""


@dataclass
class Call:
    """One tracking call: what it does (for warnings and flush reports) and how.

    `cleanup` runs once the call is done with (delivered, rejected or dropped from a full queue),
    e.g. to remove a temporary copy of the files it uploads. `record` is the call as data (an
    operation name and its arguments), so a call still queued when its process ends can be kept on
    storage and replayed by another (:mod:`orchestrator.tracking.backlog`); None: not replayable.
    """

    description: str
    fn: Callable[[], Any]
    created: float = field(default_factory=time.time)
    cleanup: Callable[[], None] | None = None
    record: dict[str, Any] | None = None


def _never_permanent(err: BaseException) -> bool:
    return False


_UNTIL_DEADLINE = 2**31  # attempts of a flush: only its deadline stops it


def _retryable(err: BaseException) -> bool:
    """Errors of the call itself; Ctrl-C, exit and cancellation stop at once, as do permanent ones."""
    return isinstance(err, Exception) and not isinstance(err, Permanent)


class Outbox:
    """Deliver calls to a backend that may be down, in order, without ever raising into the caller.

    Args:
        target: what the calls go to, named in warnings (a tracking URI).
        retries: attempts per call (1 = no retry) before it is queued (or :meth:`ask` raises).
        backoff_s: first wait between attempts; doubles each time, capped at `max_backoff_s`.
        max_backoff_s: cap of one wait, also the longest gap between probes while the backend is down.
        max_pending: the queue bound; when full, the oldest queued call is dropped (with a warning).
        is_permanent: which errors retrying cannot fix (they are dropped, not queued).
        service: what the backend is called in warnings.
        sleep, clock: ``time.sleep`` and ``time.monotonic`` unless a test drives time itself.
    """

    def __init__(
        self,
        target: str,
        *,
        retries: int = 5,
        backoff_s: float = 0.5,
        max_backoff_s: float = 30.0,
        max_pending: int = 10_000,
        is_permanent: Callable[[BaseException], bool] = _never_permanent,
        service: str = "MLflow",
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if retries < 1:
            raise ValueError(f"retries must be >= 1 (attempts per call), got {retries}")
        if max_pending < 1:
            raise ValueError(f"max_pending must be >= 1, got {max_pending}")
        self.target = target
        self.retries = retries
        self.backoff_s = max(0.0, backoff_s)
        self.max_backoff_s = max(self.backoff_s, max_backoff_s)
        self.max_pending = max_pending
        self.service = service
        self.lock = threading.RLock()  # held by a caller that reads and then writes through the outbox
        self._is_permanent = is_permanent
        self._sleep = sleep
        self._clock = clock
        self._queue: collections.deque[Call] = collections.deque()
        self._warned_outage = False
        self._dropped = 0
        self._next_probe = 0.0
        self._probe_wait = self.backoff_s

    @property
    def pending(self) -> int:
        """Number of calls queued because the backend was unreachable."""
        return len(self._queue)

    @property
    def dropped(self) -> int:
        """Queued calls lost because the queue was full (oldest first)."""
        return self._dropped

    def take_queued(self) -> list[Call]:
        """Remove and return every queued call, oldest first (their cleanup not run: the caller owns them now).

        For handing what an outage left to a durable queue on storage when this process is about to end.
        """
        with self.lock:
            taken = list(self._queue)
            self._queue.clear()
            self._warned_outage = False
            return taken

    def descriptions(self) -> list[str]:
        """What is queued, oldest first."""
        return [call.description for call in self._queue]

    # -----------------------------------------------------------------------------------------------------
    # Retrying one call

    def _attempt(self, call: Call, attempts: int, deadline: float | None = None) -> Any:
        """Run `call` up to `attempts` times, until `deadline`, with exponential backoff (tenacity).

        A permanent error raises :class:`Permanent` naming the call at once; after the last attempt the
        call's own error is raised.
        """

        def once() -> Any:
            try:
                return call.fn()
            except Permanent:
                raise
            except Exception as err:
                if self._is_permanent(err):
                    raise Permanent(f"{call.description}: {type(err).__name__}: {err}") from err
                raise

        exponential = tenacity.wait_exponential(multiplier=self.backoff_s, max=self.max_backoff_s)

        def wait(state: tenacity.RetryCallState) -> float:
            seconds = exponential(state)
            return seconds if deadline is None else max(0.0, min(seconds, deadline - self._clock()))

        def past_deadline(state: tenacity.RetryCallState) -> bool:
            return deadline is not None and self._clock() >= deadline

        retrying = tenacity.Retrying(
            stop=tenacity.stop_any(tenacity.stop_after_attempt(attempts), past_deadline),
            wait=wait,
            retry=tenacity.retry_if_exception(_retryable),
            sleep=self._sleep,
            reraise=True,
        )
        return retrying(once)

    # -----------------------------------------------------------------------------------------------------
    # The calls a caller makes

    def ask(self, call: Call) -> Any:
        """Run a call whose answer the caller needs: retried, never queued.

        Raises :class:`Permanent`, or the call's last error after ``retries`` attempts.
        """
        with self.lock:
            return self._attempt(call, self.retries)

    def submit(self, call: Call) -> bool:
        """Deliver `call` now if possible, else queue it; never raises (bar Ctrl-C). True when delivered."""
        with self.lock:
            if self._queue:
                # Outage mode: keep order; probe now and then (growing gaps) instead of waiting on every call.
                if self._clock() < self._next_probe:
                    self._enqueue(call)
                    return False
                if not self._drain(attempts=1):
                    self._enqueue(call)
                    self._probe_wait = min(max(self._probe_wait * 2, self.backoff_s), self.max_backoff_s)
                    self._next_probe = self._clock() + self._probe_wait
                    return False
            try:
                self._attempt(call, self.retries)
            except Permanent as err:
                _log.warning("%s rejected a tracking call, not logged: %s", self.service, err)
                if call.cleanup is not None:
                    call.cleanup()
                return False
            except Exception as err:
                self._start_outage(call, err)
                return False
            if call.cleanup is not None:
                call.cleanup()
            return True

    def now_or_later(self, now: Call, later: Call) -> tuple[bool, Any]:
        """``(True, answer of now)`` if the backend answers; else `later` is queued and ``(False, None)``.

        For a call whose answer can wait: `now` is tried only when nothing is queued ahead of it (or
        the queue drains first); `later` is what to deliver instead once the backend is back. A
        permanent error raises :class:`Permanent`.
        """
        with self.lock:
            failure: BaseException | None = None
            if not self._queue or self._drain(attempts=1):
                try:
                    return True, self._attempt(now, self.retries)
                except Permanent:
                    raise
                except Exception as err:
                    failure = err
            if failure is None:
                self._enqueue(later)
            else:
                self._start_outage(later, failure)
            return False, None

    def flush(self, timeout_s: float = 60.0) -> list[str]:
        """Retry queued calls in order for up to `timeout_s`; return descriptions of those still queued.

        The deadline alone ends the retrying (waits doubling up to ``max_backoff_s``), not ``retries``:
        a tracking server restarting on a busy machine can take most of a minute, and a catch-up that
        gave up after a few seconds would leave the runs of a finished trial behind.
        """
        with self.lock:
            if self._queue:
                self._drain(attempts=_UNTIL_DEADLINE, deadline=self._clock() + timeout_s)
            return self.descriptions()

    # -----------------------------------------------------------------------------------------------------
    # The queue

    def _enqueue(self, call: Call) -> None:
        if len(self._queue) >= self.max_pending:
            lost = self._queue.popleft()
            if lost.cleanup is not None:
                lost.cleanup()
            if self._dropped == 0:
                _log.warning(
                    "%s tracking queue full (%d calls); dropping the oldest, starting with: %s",
                    self.service,
                    self.max_pending,
                    lost.description,
                )
            self._dropped += 1
        self._queue.append(call)

    def _drain(self, attempts: int, deadline: float | None = None) -> bool:
        """Send queued calls in order; stop at the first that still fails. True when the queue is empty."""
        while self._queue:
            if deadline is not None and self._clock() >= deadline:
                return False
            call = self._queue[0]
            try:
                self._attempt(call, attempts, deadline)
            except Permanent as err:
                _log.warning("%s rejected a queued tracking call, dropped: %s", self.service, err)
            except Exception:
                return False
            self._queue.popleft()
            if call.cleanup is not None:
                call.cleanup()
        if self._warned_outage:
            _log.warning("%s at %s answers again; queued tracking calls delivered", self.service, self.target)
            self._warned_outage = False
        self._probe_wait = self.backoff_s
        return True

    def _start_outage(self, call: Call, err: BaseException) -> None:
        """Queue the first call that failed for good, warning once per outage."""
        if not self._warned_outage:
            _log.warning(
                "%s at %s unreachable after %d attempt(s) (%s: %s); training continues, tracking "
                "calls are queued in memory (first not logged: %s) and retried by flush()",
                self.service,
                self.target,
                self.retries,
                type(err).__name__,
                err,
                call.description,
            )
            self._warned_outage = True
        self._enqueue(call)
        self._probe_wait = self.backoff_s
        self._next_probe = self._clock() + self._probe_wait
