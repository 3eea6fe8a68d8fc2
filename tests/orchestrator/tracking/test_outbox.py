"""The outbox's own contract, without MLflow: plain functions that fail and then succeed, on a clock the test drives.

What the tracker relies on: transient errors retried with doubling waits (capped), permanent ones
never retried, an outage queues calls in order behind the first that failed, later calls wait for a
probe instead of retrying each, flush delivers in order and lists what is left, the queue is bounded,
and every call's cleanup runs exactly once however it ends.
"""

from __future__ import annotations

import logging

import pytest

from orchestrator.tracking.outbox import Call, Outbox, Permanent


class Clock:
    """time.monotonic and time.sleep for the outbox: sleeping moves the clock, and is recorded."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.slept.append(seconds)
        self.now += seconds


class Backend:
    """A backend that is down (raises ConnectionError) until `up` is set; it records what it received."""

    def __init__(self, failures: int = 0) -> None:
        self.up = True
        self.failures = failures  # calls that fail before it answers, even while up
        self.received: list[str] = []
        self.attempts = 0

    def call(self, name: str) -> Call:
        def fn() -> str:
            self.attempts += 1
            if not self.up or self.failures > 0:
                self.failures -= 1
                raise ConnectionError(f"down ({name})")
            self.received.append(name)
            return f"ok {name}"

        return Call(name, fn)


@pytest.fixture
def clock() -> Clock:
    return Clock()


def _outbox(clock: Clock, **settings) -> Outbox:
    defaults = {"retries": 3, "backoff_s": 1.0, "max_backoff_s": 3.0}
    return Outbox("test://backend", sleep=clock.sleep, clock=clock, **(defaults | settings))


def test_transient_errors_are_retried_with_doubling_waits(clock):
    backend = Backend(failures=2)
    outbox = _outbox(clock)
    assert outbox.submit(backend.call("a")) is True
    assert backend.received == ["a"] and backend.attempts == 3 and clock.slept == [1.0, 2.0]
    assert outbox.pending == 0


def test_waits_are_capped(clock):
    backend = Backend(failures=4)
    assert _outbox(clock, retries=5).submit(backend.call("a")) is True
    assert clock.slept == [1.0, 2.0, 3.0, 3.0]


def test_ask_returns_the_answer_or_raises_the_last_error(clock):
    backend = Backend(failures=1)
    outbox = _outbox(clock)
    assert outbox.ask(backend.call("a")) == "ok a"
    backend.up = False
    with pytest.raises(ConnectionError, match="down"):
        outbox.ask(backend.call("b"))
    assert outbox.pending == 0, "an answer the caller needs is never queued"


def test_permanent_errors_are_not_retried_nor_queued(clock, caplog):
    def rejected() -> None:
        raise ValueError("no such run")

    cleaned: list[str] = []
    outbox = _outbox(clock, is_permanent=lambda err: isinstance(err, ValueError))
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        assert outbox.submit(Call("log x", rejected, cleanup=lambda: cleaned.append("x"))) is False
    assert outbox.pending == 0 and clock.slept == [] and cleaned == ["x"]
    assert "rejected a tracking call" in caplog.text and "log x: ValueError: no such run" in caplog.text
    with pytest.raises(Permanent, match="log y: ValueError"):
        outbox.ask(Call("log y", rejected))

    def gone() -> None:
        raise Permanent("run was never created")

    assert outbox.submit(Call("log z", gone)) is False and outbox.pending == 0


def test_ctrl_c_is_never_retried(clock):
    def interrupted() -> None:
        raise KeyboardInterrupt

    outbox = _outbox(clock)
    with pytest.raises(KeyboardInterrupt):
        outbox.submit(Call("log", interrupted))
    assert clock.slept == [] and outbox.pending == 0


def test_an_outage_queues_in_order_warns_once_and_flush_delivers(clock, caplog):
    backend = Backend()
    backend.up = False
    outbox = _outbox(clock)
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        assert outbox.submit(backend.call("a")) is False
        attempts = backend.attempts
        assert outbox.submit(backend.call("b")) is False
        assert outbox.submit(backend.call("c")) is False
        assert backend.attempts == attempts, "during an outage, calls before the next probe are not tried"
        assert outbox.flush(timeout_s=0) == ["a", "b", "c"]
        backend.up = True
        assert outbox.flush(timeout_s=10) == []
    assert backend.received == ["a", "b", "c"]
    outage = [r.getMessage() for r in caplog.records if "unreachable" in r.getMessage()]
    assert len(outage) == 1 and "test://backend" in outage[0] and "first not logged: a" in outage[0]
    assert "answers again" in caplog.text


def test_probes_back_off_then_deliver_the_queue_before_the_new_call(clock):
    backend = Backend()
    backend.up = False
    outbox = _outbox(clock, retries=1, backoff_s=1.0, max_backoff_s=4.0)
    outbox.submit(backend.call("a"))  # outage starts: next probe in 1 s
    probes = []
    for name in "bcdefgh":
        before = backend.attempts
        clock.now += 1.0
        outbox.submit(backend.call(name))
        probes.append(backend.attempts > before)
    # probe gaps double (1, 2, 4 s) and stay capped at max_backoff_s
    assert probes == [True, False, True, False, False, False, True]
    backend.up = True
    clock.now += 4.0
    assert outbox.submit(backend.call("i")) is True
    assert backend.received == list("abcdefghi") and outbox.pending == 0


def test_flush_stops_at_its_deadline(clock):
    backend = Backend()
    backend.up = False
    outbox = _outbox(clock, retries=10, backoff_s=1.0, max_backoff_s=1.0)
    outbox.submit(backend.call("a"))
    outbox.submit(backend.call("b"))
    started = clock.now
    assert outbox.flush(timeout_s=2.5) == ["a", "b"]
    assert clock.now - started == pytest.approx(2.5), "the last wait is cut to the deadline"


class BackAt(Backend):
    """Down until the clock reaches `at` (a server that takes a while to restart)."""

    def __init__(self, clock: Clock, at: float) -> None:
        super().__init__()
        self.clock, self.at = clock, at

    def call(self, name: str) -> Call:
        inner = super().call(name)

        def fn() -> str:
            self.up = self.clock.now >= self.at
            return inner.fn()

        return Call(name, fn)


def test_flush_keeps_retrying_past_its_attempts_until_the_backend_is_back(clock):
    outbox = _outbox(clock, retries=3, backoff_s=1.0, max_backoff_s=4.0)  # 3 attempts span only 3 s
    backend = BackAt(clock, at=clock.now + 40.0)
    outbox.submit(backend.call("a"))
    outbox.submit(backend.call("b"))
    assert outbox.flush(timeout_s=60) == []
    assert backend.received == ["a", "b"] and backend.attempts > 3


def test_the_queue_is_bounded_and_drops_the_oldest(clock, caplog):
    backend = Backend()
    backend.up = False
    cleaned: list[str] = []
    outbox = _outbox(clock, retries=1, max_pending=2)
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        for name in "abcd":
            call = backend.call(name)
            call.cleanup = lambda name=name: cleaned.append(name)
            outbox.submit(call)
    assert outbox.descriptions() == ["c", "d"] and outbox.dropped == 2 and cleaned == ["a", "b"]
    assert caplog.text.count("queue full") == 1
    backend.up = True
    assert outbox.flush() == [] and cleaned == ["a", "b", "c", "d"]


def test_a_queued_call_rejected_later_is_dropped_and_the_rest_delivered(clock, caplog):
    backend = Backend()
    backend.up = False
    state = {"permanent": False}

    def sometimes_rejected() -> None:
        if state["permanent"]:
            raise ValueError("rejected at delivery")
        raise ConnectionError("down")

    outbox = _outbox(clock, retries=1, is_permanent=lambda err: isinstance(err, ValueError))
    outbox.submit(Call("bad", sometimes_rejected))
    outbox.submit(backend.call("good"))
    state["permanent"], backend.up = True, True
    with caplog.at_level(logging.WARNING, logger="orchestrator.tracking"):
        assert outbox.flush() == []
    assert backend.received == ["good"] and "rejected a queued tracking call, dropped: bad" in caplog.text


def test_now_or_later_answers_now_or_queues_the_later_call(clock):
    backend = Backend()
    outbox = _outbox(clock, retries=1)
    assert outbox.now_or_later(backend.call("create"), backend.call("create later")) == (True, "ok create")
    backend.up = False
    assert outbox.now_or_later(backend.call("create"), backend.call("create later")) == (False, None)
    outbox.submit(backend.call("log into it"))
    assert outbox.descriptions() == ["create later", "log into it"]
    backend.up = True
    assert outbox.flush() == [] and backend.received == ["create", "create later", "log into it"]
    assert outbox.now_or_later(backend.call("x"), backend.call("x later")) == (True, "ok x")


def test_now_or_later_waits_behind_a_queue_it_cannot_drain(clock):
    backend = Backend()
    backend.up = False
    outbox = _outbox(clock, retries=1)
    outbox.submit(backend.call("first"))
    attempts = backend.attempts
    assert outbox.now_or_later(backend.call("create"), backend.call("create later")) == (False, None)
    assert backend.attempts == attempts + 1, "one probe of the queue, the new call itself not tried"
    assert outbox.descriptions() == ["first", "create later"]


def test_settings_are_checked():
    with pytest.raises(ValueError, match="retries"):
        Outbox("x", retries=0)
    with pytest.raises(ValueError, match="max_pending"):
        Outbox("x", max_pending=0)
