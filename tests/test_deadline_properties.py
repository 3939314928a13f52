"""Generated deadlines against generated apps: never stopped early, never after the response.

Each example is one request with a deadline, and an app that works (in a shield or not, or
listening for a disconnect), then streams a response of some chunks, then works after the
response. Whatever the timing, the client gets exactly one of: the app's whole response, a
504, or the app's response cut short; and the app is stopped only once its deadline passed,
and never after its response was complete.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import anyio
import pytest
from hypothesis import given
from hypothesis import strategies as st
from test_properties import TIME_LIMIT

from asgi_disconnect import Disconnect, DisconnectMiddleware, is_disconnected, time_left
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

MOMENTS = st.sampled_from([0.0, 0.0005, 0.002, 0.006, 0.015])


@dataclass(frozen=True)
class Plan:
    budget: float
    grace: float
    #: Work before the response: sleeping, in a shield, or listening for a disconnect.
    work: float
    how: str
    #: ``http.response.body`` messages before the last one, and the time between them.
    chunks: int
    gap: float
    #: Work after the response.
    after: float


plans = st.builds(
    Plan,
    budget=st.sampled_from([0.0005, 0.003, 0.008, 0.02]),
    grace=st.sampled_from([0.0, 0.004]),
    work=MOMENTS,
    how=st.sampled_from(["sleep", "shield", "listen"]),
    chunks=st.integers(0, 3),
    gap=MOMENTS,
    after=MOMENTS,
)


@dataclass
class Seen:
    deadline: float = math.nan
    #: time.monotonic() when the app was stopped, and when its last send returned.
    stopped: float | None = None
    completed: float | None = None
    after_done: bool = False
    told: bool = False


def app_for(plan: Plan, seen: Seen) -> DisconnectMiddleware:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.deadline = time.monotonic() + time_left(scope)  # never later than the deadline
        await receive()
        try:
            if plan.how == "listen":
                with anyio.move_on_after(plan.work):
                    if (await receive())["type"] == "http.disconnect":
                        seen.told = True
                        return  # as Django does: it stops itself
                # Told while its own timeout cut its receive() short: it looks again, as an
                # app polling for the disconnect does, and stops.
                if is_disconnected(scope):
                    seen.told = True
                    return
            else:
                with anyio.CancelScope(shield=plan.how == "shield"):
                    await anyio.sleep(plan.work)
            await send({"type": "http.response.start", "status": 200, "headers": []})
            for _ in range(plan.chunks):
                await send({"type": "http.response.body", "body": b"x", "more_body": True})
                await anyio.sleep(plan.gap)
            await send({"type": "http.response.body", "body": b"end"})
            seen.completed = time.monotonic()
        except anyio.get_cancelled_exc_class():
            seen.stopped = time.monotonic()
            raise
        await anyio.sleep(plan.after)
        seen.after_done = True

    return DisconnectMiddleware(app, timeout=plan.budget, grace_period=plan.grace)


@given(plan=plans)
async def test_a_deadline_stops_the_app_only_between_its_passing_and_the_response(
    plan: Plan,
) -> None:
    seen = Seen()
    reports: list[Disconnect] = []
    middleware = app_for(plan, seen)
    middleware.on_disconnect = reports.append
    sent: list[Message] = []
    messages = iter([{"type": "http.request", "body": b""}])

    async def receive() -> Message:
        try:
            return next(messages)
        except StopIteration:
            await anyio.sleep_forever()  # the client stays
            raise AssertionError from None  # pragma: no cover

    async def send(message: Message) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "GET", "path": "/", "headers": []}
    with anyio.fail_after(TIME_LIMIT):
        await middleware(scope, receive, send)

    whole = [m for m in sent if m.get("status") == 200] and sent[-1].get("body") == b"end"
    if whole:
        # The app's response, unchanged; it was never stopped, and its work after ran.
        assert [m.get("more_body", False) for m in sent[1:]] == [True] * plan.chunks + [False]
        assert seen.stopped is None and seen.after_done and reports == []
        return
    assert len(reports) == 1, (sent, seen, reports)
    [report] = reports
    assert report.cause == "deadline"
    # The deadline passed before the response was complete (the middleware saw it pass before
    # the last send returned), and nothing stopped the app before then.
    assert seen.completed is None or seen.completed >= seen.deadline
    if seen.stopped is not None:
        assert seen.stopped >= seen.deadline
    if not plan.grace:
        assert not seen.after_done  # within a grace period it may finish: unheard
    if sent[0]["status"] == 504:
        assert sent[1:] == [{"type": "http.response.body", "body": b"Gateway Timeout\n"}]
        assert report.phase in ("body", "working")
    else:
        # Cut: the app's start and some of its chunks, never a last one.
        assert sent[0]["status"] == 200
        assert all(m.get("more_body") for m in sent[1:])
        assert report.phase == "streaming"
