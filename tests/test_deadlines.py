"""Deadlines: an answer that comes too late stops the app, by the same cancellation."""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

import anyio
import anyio.to_thread
import pytest
from apps import FOREVER, Record, read_body, respond, work_until_cancelled
from backends import is_trio
from communicator import communicate, http_scope
from portable import seen_deadline

from asgi_disconnect import (
    Cause,
    Disconnect,
    DisconnectMiddleware,
    Phase,
    is_disconnected,
    on_stop,
    time_left,
    wait_disconnected,
)
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

#: Long enough for the request to outlive the middleware's ticks, and for an app on a busy
#: machine to have read its body and begun its work; short for a test.
BUDGET = 0.2

GATEWAY_TIMEOUT = [
    {
        "type": "http.response.start",
        "status": 504,
        "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"16")],
    },
    {"type": "http.response.body", "body": b"Gateway Timeout\n"},
]


class Clock:
    """When the app saw its deadline, and when it was stopped, on the event loop's clock."""

    def __init__(self) -> None:
        self.deadline = math.nan
        self.stopped = math.nan

    def start(self, scope: Scope) -> None:
        self.deadline = seen_deadline(scope)

    def stop(self) -> None:
        self.stopped = anyio.current_time()


def worker(record: Record, clock: Clock, *, read: bool = True) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.start(scope)
        if read:
            await read_body(receive, record)
        record.started.set()
        try:
            await work_until_cancelled(record)
        finally:
            clock.stop()
        await respond(send)

    return app


def streamer(record: Record, clock: Clock, chunks: int = 2) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.start(scope)
        await read_body(receive, record)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(chunks):
            await send({"type": "http.response.body", "body": b"chunk", "more_body": True})
        record.started.set()
        try:
            await work_until_cancelled(record)
        finally:
            clock.stop()
        await send({"type": "http.response.body", "body": b"end"})

    return app


async def test_a_deadline_before_the_response_cancels_the_app_and_answers_504(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    app = DisconnectMiddleware(worker(record, clock), timeout=BUDGET, on_disconnect=reports.append)
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(app) as c:
            await c.send_body(b"body")
            await c.wait()
    assert record.events == ["cancelled"]
    assert clock.stopped >= clock.deadline
    assert c.returned and c.sent == GATEWAY_TIMEOUT
    [report] = reports
    assert (report.cause, report.phase) == (Cause.DEADLINE, Phase.WORKING)
    assert report.elapsed >= BUDGET
    [line] = [r for r in caplog.records if r.name == "asgi_disconnect"]
    assert line.levelno == logging.WARNING
    assert "POST /: deadline passed while working" in line.getMessage()


async def test_a_deadline_while_the_body_comes_in_answers_504() -> None:
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    app = DisconnectMiddleware(worker(record, clock), timeout=BUDGET, on_disconnect=reports.append)
    async with communicate(app) as c:
        await c.send_input({"type": "http.request", "body": b"part", "more_body": True})
        await c.wait()  # the rest never comes
    assert c.sent == GATEWAY_TIMEOUT
    assert [(r.cause, r.phase) for r in reports] == [(Cause.DEADLINE, Phase.BODY)]
    assert not record.started.is_set()


async def test_a_deadline_while_streaming_cuts_the_response() -> None:
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    app = DisconnectMiddleware(
        streamer(record, clock), timeout=BUDGET, on_disconnect=reports.append
    )
    async with communicate(app) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["cancelled"]
    assert clock.stopped >= clock.deadline
    # The response is not completed for the app: the server sees it end short.
    assert [m.get("more_body", False) for m in c.sent[1:]] == [True, True]
    assert c.sent[0]["status"] == 200
    assert [(r.cause, r.phase) for r in reports] == [(Cause.DEADLINE, Phase.STREAMING)]


async def test_after_the_response_is_complete_nothing_is_cancelled() -> None:
    record = Record()
    deadlines: list[float] = []
    left: list[float] = []
    reports: list[Disconnect] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await respond(send)
        # Work after the response, as a background task does: the deadline is lifted.
        deadlines.append(anyio.current_effective_deadline())
        left.append(time_left(scope))
        await anyio.sleep(BUDGET * 3)
        record.events.append("background finished")
        assert not is_disconnected(scope)

    app_ = DisconnectMiddleware(app, timeout=BUDGET, on_disconnect=reports.append)
    async with communicate(app_) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["background finished"]
    assert deadlines == [math.inf] and left == [math.inf]
    assert [m.get("status") for m in c.sent] == [200, None]
    assert reports == []


async def test_the_response_completed_in_the_deadlines_moment_stands() -> None:
    # The final send is under way when the deadline passes: the response counted complete as
    # the send began, so it is not cut.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"all"})
        record.events.append("sent")

    async def slow_server_send(message: Any) -> None:
        if message.get("type") == "http.response.body":
            await anyio.sleep(BUDGET * 2)  # flushing, as a full socket does
        await c.send(message)

    middleware = DisconnectMiddleware(app, timeout=BUDGET)
    async with communicate(lambda s, r, _: middleware(s, r, slow_server_send)) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["sent"]
    assert [m.get("status") for m in c.sent] == [200, None]


async def test_with_a_grace_period_a_response_complete_in_time_stands() -> None:
    reports: list[Disconnect] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, Record())
        await anyio.sleep(BUDGET / 5)  # outlives the ticks: the deadline is armed
        await respond(send)
        await anyio.sleep(BUDGET * 2)  # work after the response
        assert not is_disconnected(scope)

    middleware = DisconnectMiddleware(
        app, timeout=BUDGET, grace_period=BUDGET, on_disconnect=reports.append
    )
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.returned and [m.get("status") for m in c.sent] == [200, None]
    assert reports == []


async def test_a_request_queued_too_long_whose_client_has_gone_is_reported() -> None:
    reports: list[Disconnect] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError  # pragma: no cover

    async def gone(message: Any) -> None:
        raise ConnectionResetError  # an ASGI 2.4 server, whose client has gone

    middleware = DisconnectMiddleware(
        app, timeout=1.0, request_start_header="x-request-start", on_disconnect=reports.append
    )
    scope = http_scope(headers=[(b"x-request-start", _stamp(5.0)())])
    await middleware(scope, Record().received.pop, gone)  # type: ignore[arg-type]
    assert [r.phase for r in reports] == [Phase.QUEUED]


async def test_a_shielded_section_finishes_and_the_504_follows(anyio_backend: object) -> None:
    record, clock = Record(), Clock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.start(scope)
        await read_body(receive, record)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(BUDGET * 2)
            record.events.append("shield done")
            # Answering from inside the shield, after the deadline: too late.
            await respond(send, b"late")
        await work_until_cancelled(record)

    async with communicate(DisconnectMiddleware(app, timeout=BUDGET)) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["shield done", "cancelled"]
    assert c.sent == GATEWAY_TIMEOUT


async def test_a_listening_app_is_told_first_and_the_504_follows(anyio_backend: object) -> None:
    record, clock = Record(), Clock()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        clock.start(scope)
        await read_body(receive, record)
        try:
            message = await receive()  # listens for the disconnect, as Django >= 5 does
        except anyio.get_cancelled_exc_class():
            record.events.append("cancelled")
            raise
        finally:
            clock.stop()
        record.events.append(message["type"])

    async with communicate(DisconnectMiddleware(app, timeout=BUDGET)) as c:
        await c.send_body(b"")
        await c.wait()
    assert clock.stopped >= clock.deadline
    # trio cancels at the deadline by itself: a trio app is cancelled as trio code expects.
    assert record.events == (["cancelled"] if is_trio(anyio_backend) else ["http.disconnect"])
    assert c.sent == GATEWAY_TIMEOUT


async def test_a_grace_period_follows_the_deadline(anyio_backend: object) -> None:
    record = Record()
    times: dict[str, float] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        times["start"] = anyio.current_time()
        times["visible"] = seen_deadline(scope)
        await read_body(receive, record)
        await wait_disconnected(scope)
        times["told"] = anyio.current_time()
        try:
            await anyio.sleep(FOREVER)  # and goes on
        finally:
            times["cancelled"] = anyio.current_time()

    middleware = DisconnectMiddleware(app, timeout=BUDGET, grace_period=BUDGET)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent == GATEWAY_TIMEOUT
    # anyio's deadline is when the app is cancelled: on trio, known from the start.
    trio = is_trio(anyio_backend)
    assert times["visible"] - times["start"] <= BUDGET * (2 if trio else 1)
    # The grace period runs from the deadline, not from when a busy loop let the app see it.
    deadline = times["visible"] - (BUDGET if trio else 0)
    assert times["told"] >= deadline
    assert times["cancelled"] >= deadline + BUDGET * 0.9


@pytest.mark.fast_path  # the portable path keeps the deadline out of anyio's scope
async def test_the_deadline_is_visible_to_async_code_and_to_threads() -> None:
    seen: dict[str, float] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen["now"] = anyio.current_time()
        seen["deadline"] = anyio.current_effective_deadline()
        seen["left"] = await anyio.to_thread.run_sync(time_left, scope)
        await respond(send)

    async with communicate(DisconnectMiddleware(app, timeout=30.0)) as c:
        await c.send_body(b"")
        await c.wait()
    assert 29.0 < seen["deadline"] - seen["now"] <= 30.0
    assert 29.0 < seen["left"] <= 30.0


async def test_sync_code_in_a_thread_sees_the_deadline_pass() -> None:
    record = Record()

    def work(scope: Scope) -> str:
        stop_by = time.monotonic() + 10
        while not is_disconnected(scope) and time.monotonic() < stop_by:
            time.sleep(0.005)
        return f"stopped with {time_left(scope)} s left"

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.events.append(await anyio.to_thread.run_sync(work, scope))
        await respond(send)

    async with communicate(DisconnectMiddleware(app, timeout=BUDGET)) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["stopped with 0.0 s left"]
    assert c.sent == GATEWAY_TIMEOUT


async def test_a_callable_gives_each_route_its_budget() -> None:
    budgets = {"/slow": BUDGET, "/stream": None}
    deadlines: dict[str, float] = {}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        deadlines[scope["path"]] = seen_deadline(scope)
        await receive()
        with anyio.move_on_after(BUDGET * 3):
            await anyio.sleep(FOREVER)
        await respond(send)

    middleware = DisconnectMiddleware(app, timeout=lambda scope: budgets[scope["path"]])
    statuses: dict[str, list[Any]] = {}
    for path in budgets:
        async with communicate(middleware, http_scope(path=path)) as c:
            await c.send_body(b"")
            await c.wait()
        statuses[path] = [m.get("status") for m in c.sent]
    assert statuses == {"/slow": [504, None], "/stream": [200, None]}
    assert deadlines["/slow"] < math.inf and deadlines["/stream"] == math.inf


@pytest.mark.parametrize(
    ("values", "expected"),
    [
        ([b"50"], 0.05),  # the header's budget is shorter than timeout's
        ([b"50000"], 0.5),  # timeout's is shorter
        ([b"80", b"50"], 0.05),  # repeated: the shortest
        ([b"80, 50"], 0.05),  # merged by a proxy
        ([b"-5", b"nonsense", b"50"], 0.05),  # the valid one among invalid ones
        ([b"-50"], 0.5),
        ([b"0"], 0.5),
        ([b"1e2"], 0.5),
        ([b"nan"], 0.5),
        ([b"9" * 400], 0.5),
        ([b"50, " * 30000], 0.5),  # too long to be a proxy's: ignored unread
        ([b"\xff\x00"], 0.5),
    ],
)
async def test_the_proxys_timeout_header_only_ever_shortens_the_deadline(
    values: list[bytes], expected: float
) -> None:
    seen: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(time_left(scope))
        await respond(send)

    headers = [(b"x-envoy-expected-rq-timeout-ms", value) for value in values]
    middleware = DisconnectMiddleware(
        app, timeout=0.5, timeout_header="X-Envoy-Expected-Rq-Timeout-Ms"
    )
    async with communicate(middleware, http_scope(headers=headers)) as c:
        await c.send_body(b"")
        await c.wait()
    [left] = seen
    assert expected - 0.04 < left <= expected


async def test_the_header_alone_sets_a_deadline() -> None:
    record, clock = Record(), Clock()
    middleware = DisconnectMiddleware(worker(record, clock), timeout_header="x-timeout-ms")
    scope = http_scope(headers=[(b"x-timeout-ms", b"50")])
    async with communicate(middleware, scope) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent == GATEWAY_TIMEOUT
    assert clock.deadline < math.inf
    async with communicate(middleware) as c:  # without the header: no deadline
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert clock.deadline == math.inf


def _stamp(seconds_ago: float, scale: float = 1000.0, prefix: bytes = b"t=") -> Any:
    # Made when the test runs: the proxy stamped the request that long before.
    return lambda: prefix + b"%d" % round((time.time() - seconds_ago) * scale)


async def test_a_request_that_queued_past_its_deadline_is_answered_503_unrun(
    caplog: pytest.LogCaptureFixture,
) -> None:
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(
        worker(record, clock),
        timeout=2.0,
        request_start_header="x-request-start",
        on_disconnect=reports.append,
    )
    scope = http_scope(headers=[(b"x-request-start", _stamp(5.0)())])
    with caplog.at_level(logging.INFO, logger="asgi_disconnect"):
        async with communicate(middleware, scope) as c:
            await c.wait()
    assert c.reads == 0 and record.events == [] and math.isnan(clock.deadline)
    assert [m.get("status") for m in c.sent] == [503, None]
    assert c.sent[1]["body"] == b"Service Unavailable\n"
    assert [(r.cause, r.phase, r.elapsed) for r in reports] == [(Cause.DEADLINE, Phase.QUEUED, 0)]
    assert "POST /: deadline passed while queued in front of the app" in caplog.text


@pytest.mark.parametrize(
    ("stamp", "left"),
    [
        (_stamp(1.5), 1.5),  # 1.5 s queued, less 1 s of clock skew: 0.5 s counted
        (_stamp(0.5), 2.0),  # within the clock skew: nothing counted
        (_stamp(-60), 2.0),  # from the future: a clock ahead of ours
        (_stamp(1.5, 1.0), 1.5),  # seconds (rounded to whole ones here: see below)
        (lambda: b"t=%.3f" % (time.time() - 1.5), 1.5),  # nginx's $msec: seconds.milliseconds
        (_stamp(1.5, 1e6), 1.5),  # Apache: microseconds
        (_stamp(1.5, 1e9, b""), 1.5),  # nanoseconds, without "t="
        (_stamp(5 * 86400, 1.0), 2.0),  # days ago: a misreading, ignored
        (lambda: b"t=", 2.0),
        (lambda: b"garbage", 2.0),
        (lambda: b"t=" + b"9" * 400, 2.0),
        (lambda: b"t=1, " * 30000, 2.0),
    ],
)
async def test_queueing_counts_within_the_bounds_of_clock_skew(stamp: Any, left: float) -> None:
    seen: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(time_left(scope))
        await respond(send)

    middleware = DisconnectMiddleware(app, timeout=2.0, request_start_header="x-request-start")
    async with communicate(middleware, http_scope(headers=[(b"x-request-start", stamp())])) as c:
        await c.send_body(b"")
        await c.wait()
    slack = 0.5 if b"." not in stamp() and len(stamp()) < 14 else 0.0
    assert left - 0.1 - slack < seen[0] <= left + slack + 0.001  # stamps are rounded


async def test_excluded_requests_have_no_deadline() -> None:
    seen: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(anyio.current_effective_deadline())
        await anyio.sleep(BUDGET * 2)
        await respond(send)

    middleware = DisconnectMiddleware(app, timeout=BUDGET, exclude_paths=["/events"])
    async with communicate(middleware, http_scope(path="/events")) as c:
        await c.send_body(b"")
        await c.wait()
    assert seen == [math.inf]
    assert [m.get("status") for m in c.sent] == [200, None]


async def test_a_client_that_left_first_is_reported_as_such() -> None:
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(
        worker(record, clock), timeout=BUDGET * 4, on_disconnect=reports.append
    )
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert [r.cause for r in reports] == [Cause.CLIENT_LEFT]
    assert [m["status"] for m in c.sent[:1]] == [499]


async def test_what_the_app_sends_after_its_deadline_does_not_reach_an_asgi_2_4_server() -> None:
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        with anyio.CancelScope(shield=True):
            await anyio.sleep(BUDGET * 2)
            await respond(send, b"late")
            record.events.append("sent")

    scope = http_scope(asgi={"version": "3.0", "spec_version": "2.4"})
    async with communicate(DisconnectMiddleware(app, timeout=BUDGET), scope) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["sent"]
    assert c.sent == GATEWAY_TIMEOUT


async def test_an_outer_timeout_shorter_than_the_deadline_still_propagates() -> None:
    record, clock = Record(), Clock()
    middleware = DisconnectMiddleware(worker(record, clock), timeout=30.0)

    async def server(scope: Scope, receive: Receive, send: Send) -> None:
        with pytest.raises(TimeoutError):
            with anyio.fail_after(BUDGET):
                await middleware(scope, receive, send)
        record.events.append("outer timeout")

    async with communicate(server) as c:
        await c.send_body(b"")
        await c.wait()
    assert record.events == ["cancelled", "outer timeout"]
    assert clock.deadline < anyio.current_time() + 30.0


async def test_a_deadline_shorter_than_a_tick_is_kept() -> None:
    # Wherever it finds the app (reading its body, or at work), the deadline stops it.
    record, clock = Record(), Clock()
    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(
        worker(record, clock), timeout=0.0005, on_disconnect=reports.append
    )
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.wait()
    assert "finished" not in record.events
    assert c.sent == GATEWAY_TIMEOUT
    assert [r.cause for r in reports] == [Cause.DEADLINE]


@pytest.mark.parametrize(
    ("option", "value", "words"),
    [
        ("timeout", 0, "timeout must be a finite number of seconds > 0, not 0"),
        ("timeout", -1.0, "timeout must be"),
        ("timeout", math.inf, "timeout must be"),
        ("timeout", math.nan, "timeout must be"),
        ("timeout_header", "x envoy", "timeout_header must be an HTTP header name"),
        ("request_start_header", "", "request_start_header must be an HTTP header name"),
        ("clock_skew", -0.1, "clock_skew must be a finite number of seconds >= 0"),
    ],
)
def test_invalid_options_are_named(option: str, value: Any, words: str) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError  # pragma: no cover

    options: dict[str, Any] = {"timeout": 30, option: value}
    with pytest.raises(ValueError, match=words):
        DisconnectMiddleware(app, **options)


@pytest.mark.parametrize(
    ("returned", "error"),
    [
        (0, ValueError),
        (-1.0, ValueError),
        (math.nan, ValueError),
        ("5", TypeError),
        (True, TypeError),
    ],
)
async def test_a_timeout_callable_that_returns_nonsense_is_named(
    returned: object, error: type[Exception]
) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        raise AssertionError  # pragma: no cover

    middleware = DisconnectMiddleware(app, timeout=lambda scope: returned)  # type: ignore[arg-type,return-value]
    async with communicate(middleware) as c:
        await c.wait()
    assert type(c.error) is error
    assert "the seconds that timeout(scope) returns must be" in str(c.error)


async def test_a_grace_period_after_the_client_left_holds_when_its_send_fails() -> None:
    # ASGI 2.4: the app's last send fails once the client left; it goes on regardless, and its
    # grace period still ends it, deadline or not.
    record = Record()
    scope = http_scope(asgi={"version": "3.0", "spec_version": "2.4"})

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await wait_disconnected(scope)
        try:
            await send({"type": "http.response.body", "body": b"end"})
        except OSError:
            record.events.append("send failed")
        await work_until_cancelled(record)

    middleware = DisconnectMiddleware(app, timeout=FOREVER, grace_period=BUDGET)
    async with communicate(middleware, scope, send_raises=True) as c:
        await c.send_body(b"")
        await c.receive_output()
        await c.disconnect()
        await c.wait()
    assert record.events == ["send failed", "cancelled"]


async def test_an_app_told_that_its_client_left_is_not_cancelled_at_its_deadline() -> None:
    # It listens, hears the disconnect and cleans up past its deadline: it stops itself, as
    # Django >= 5 does, and nothing may cut its clean-up.
    record = Record()

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        record.started.set()
        assert (await receive())["type"] == "http.disconnect"
        await anyio.sleep(BUDGET * 3)
        record.events.append("clean-up done")

    reports: list[Disconnect] = []
    middleware = DisconnectMiddleware(app, timeout=BUDGET, on_disconnect=reports.append)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await record.started.wait()
        await c.disconnect()
        await c.wait()
    assert record.events == ["clean-up done"]
    assert [r.cause for r in reports] == [Cause.CLIENT_LEFT]


async def test_an_app_that_returns_after_its_deadline_without_answering_gets_a_504() -> None:
    # Blocking code held the loop past the deadline; the app then returns without a response,
    # before the deadline's timer had its turn.
    reports: list[Disconnect] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await anyio.sleep(0.005)  # past the ticks: the deadline has its timer
        time.sleep(BUDGET * 2)  # noqa: ASYNC251 (the point: a blocked loop)

    middleware = DisconnectMiddleware(app, timeout=BUDGET, on_disconnect=reports.append)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.wait()
    assert c.sent == GATEWAY_TIMEOUT
    assert [(r.cause, r.phase) for r in reports] == [(Cause.DEADLINE, Phase.WORKING)]


class LaggingLoop(asyncio.SelectorEventLoop):
    """An event loop whose clock may lag time.monotonic(), as uvloop's, read once an
    iteration, does."""

    lag = 0.0

    def time(self) -> float:
        return super().time() - self.lag


def test_a_loop_clock_that_lags_never_brings_the_deadline_forward() -> None:
    loop = LaggingLoop()
    stopped: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        deadline = time.monotonic() + time_left(scope)
        loop.lag = 0.0  # the clock catches up: the scope's timer was set 0.03 s too early
        try:
            await anyio.sleep(FOREVER)
        finally:
            stopped.append(time.monotonic() - deadline)

    async def main() -> list[Any]:
        loop.lag = 0.03
        async with communicate(DisconnectMiddleware(app, timeout=BUDGET)) as c:
            await c.send_body(b"")
            await c.wait()
        return c.sent

    try:
        assert loop.run_until_complete(main()) == GATEWAY_TIMEOUT
    finally:
        loop.close()
    assert stopped[0] >= 0


async def test_a_deadline_cuts_short_the_grace_period_of_a_client_that_left() -> None:
    # The client leaves long before the deadline, the grace period would run long past it:
    # the app is cancelled at the deadline, on both loops, and what it might answer later
    # would reach nobody (nor may it be spared for it).
    record = Record()
    stopped: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, record)
        on_stop(lambda: stopped.append(time.monotonic()))
        await wait_disconnected(scope)
        await work_until_cancelled(record, BUDGET * 10)  # well past the deadline
        await respond(send)

    middleware = DisconnectMiddleware(app, timeout=BUDGET * 2, grace_period=FOREVER)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.disconnect()
        await c.wait()
    assert record.events == ["cancelled"]  # before its work's end: at the deadline
    assert len(stopped) == 1
    assert c.sent[0]["status"] == 499


def test_on_uvloop_every_request_past_its_deadline_is_answered_504() -> None:
    # uvloop's clock lags time.monotonic() and its timers round to the millisecond: one that
    # fires early must wait again, never leave the app cancelled unanswered.
    uvloop = pytest.importorskip("uvloop")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await asyncio.sleep(0.0212)  # past its 20 ms by a little more than a millisecond
        await respond(send)

    async def main() -> list[object]:
        middleware = DisconnectMiddleware(app, timeout=0.02)
        statuses = []
        for _ in range(300):
            async with communicate(middleware) as c:
                await c.send_body(b"")
                await c.wait()
            statuses.append(c.sent[0]["status"] if c.sent else None)
        return statuses

    loop = uvloop.new_event_loop()
    try:
        assert set(loop.run_until_complete(main())) == {504}
    finally:
        loop.close()


def test_on_uvloop_a_deadline_gives_the_app_its_whole_grace_period() -> None:
    uvloop = pytest.importorskip("uvloop")
    told_to_cancelled: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await wait_disconnected(scope)
        told = time.monotonic()
        try:
            await anyio.sleep(FOREVER)
        finally:
            told_to_cancelled.append(time.monotonic() - told)

    async def main() -> None:
        middleware = DisconnectMiddleware(app, timeout=0.02, grace_period=0.1)
        for _ in range(10):
            async with communicate(middleware) as c:
                await c.send_body(b"")
                await c.wait()
            assert c.sent == GATEWAY_TIMEOUT

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()
    assert min(told_to_cancelled) >= 0.09  # uvloop's timers round to the millisecond
