"""Generated servers and apps: whatever the timing, nothing is lost and nothing hangs.

Each example runs one to three requests side by side through one middleware. Each request has
a scripted server (its body cut into chunks, a client that leaves at some moment or never, a
disconnect reported once or on every ``receive()``, a ``receive()`` that breaks) and an app
that follows a plan (reads all, part or none of its body, answers early, streams, raises,
goes on after being told, works or listens after its response).

A small model says, from the plan alone, whether the middleware can see the client leave
before the response is complete. An app waits forever only where the model says the
middleware will see it, so a missed cancellation fails the example by its time limit.
Everything else is checked against what the server and the app recorded.

``HYPOTHESIS_PROFILE=thorough`` runs many more examples than the default profile.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from typing import Literal

import anyio
import pytest
from apps import UNANSWERED
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from asgi_disconnect import Disconnect, DisconnectMiddleware, Phase, wait_disconnected
from asgi_disconnect._exchange import MAX_BUFFERED_MESSAGES
from asgi_disconnect._types import Message, Receive, Scope, Send

pytestmark = pytest.mark.anyio

# Examples wait on real timers (the middleware's tick, grace periods): no per-example
# deadline, and a bounded number of them unless asked for more.
settings.register_profile(
    "default",
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    print_blob=True,
)
settings.register_profile("thorough", parent=settings.get_profile("default"), max_examples=3000)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "default"))

#: No example takes near this long unless the middleware missed a disconnect.
TIME_LIMIT = 10.0
#: Work that ends on its own: long enough for the middleware to start reading ahead.
SHORT_WORK = 0.003

Leave = Literal["never", "upload", "working", "streaming", "after"]
Told = Literal["ignore", "stop", "keep_going", "listen"]
Raises = Literal["before", "mid", "after"] | None
After = Literal["work", "receive"] | None


def start() -> Message:
    return {"type": "http.response.start", "status": 200, "headers": []}


def end() -> Message:
    return {"type": "http.response.body", "body": b"end"}


class AppError(Exception):
    pass


class ServerError(RuntimeError):
    pass


@dataclass(frozen=True)
class Plan:
    """One request: what its server does and what its app does."""

    #: The body, as the sizes of its ``http.request`` messages.
    sizes: tuple[int, ...]
    #: When the client leaves.
    leave: Leave
    #: For ``upload``: how many body messages the client sent before leaving.
    sent: int
    #: The disconnect is reported on every later ``receive()``, or once.
    sticky: bool
    #: ``receive()`` raises instead of returning this body message, and ever after.
    fail_at: int | None
    #: Body messages the app reads before working; None: all of them.
    reads: int | None
    #: The app sends its whole response before reading its body.
    early: bool
    #: ``http.response.body`` messages in the response.
    parts: int
    #: What the app does when the client leaves while it waits.
    told: Told
    #: Where the app raises, if anywhere.
    raises: Raises
    #: What the app does after its response.
    after: After


SIZES = st.sampled_from([0, 1, 10, 1000, 70_000])
BODIES = st.one_of(
    st.lists(SIZES, min_size=1, max_size=6).map(tuple),
    # A flood of empty messages, past the buffer's bound on their number.
    st.integers(MAX_BUFFERED_MESSAGES - 2, MAX_BUFFERED_MESSAGES + 8).map(lambda n: (0,) * n),
)


@st.composite
def plans(draw: st.DrawFn) -> Plan:
    sizes = draw(BODIES)
    early = draw(st.booleans())
    fail_at = draw(st.none() | st.integers(0, len(sizes)))
    leave: Leave = "never"
    if fail_at is None:
        choices: list[Leave] = ["never", "after", "upload"]
        if not early:
            choices += ["working", "streaming"]
        leave = draw(st.sampled_from(choices))
    raises: list[Raises] = [None, "after"] if early else [None, "before", "mid", "after"]
    after: list[After] = [None, "work"]
    if leave == "after":
        after.append("receive")
    return Plan(
        sizes=sizes,
        leave=leave,
        sent=draw(st.integers(0, len(sizes) - 1)) if leave == "upload" else len(sizes),
        sticky=draw(st.booleans()),
        fail_at=fail_at,
        reads=draw(st.none() | st.integers(0, len(sizes))),
        early=early,
        parts=1 if early else draw(st.integers(1, 3)),
        told=draw(st.sampled_from(["ignore", "stop", "keep_going", "listen"])),
        raises=draw(st.sampled_from(raises)),
        after=draw(st.sampled_from(after)),
    )


# -- the model --------------------------------------------------------------------------


def reads(plan: Plan) -> int:
    return len(plan.sizes) if plan.reads is None else plan.reads


def hangs_in_body(plan: Plan) -> bool:
    """The app is still reading its body when the client leaves mid-upload."""
    return plan.leave == "upload" and not plan.early and reads(plan) > plan.sent


def abandoned(plan: Plan, read_ahead: int) -> bool:
    """Whether the middleware can see the client leave before the response is complete.

    It reads ahead of the app while fewer than ``read_ahead`` bytes and fewer than
    ``MAX_BUFFERED_MESSAGES`` messages wait for the app, and without bound once the body is
    complete; an app that listens reads everything itself.
    """
    if plan.leave in ("never", "after") or plan.early:
        return False
    if plan.leave == "streaming" and plan.raises == "before":
        return False  # it raises before the moment the client would have left
    if hangs_in_body(plan) or plan.told == "listen":
        return True
    if plan.leave == "upload":
        waiting = plan.sizes[reads(plan) : plan.sent]  # then the disconnect
        return sum(waiting) < read_ahead and len(waiting) < MAX_BUFFERED_MESSAGES
    if reads(plan) >= len(plan.sizes):
        return True
    waiting = plan.sizes[reads(plan) :]  # the last one completes the body
    return sum(waiting[:-1]) < read_ahead and len(waiting) < MAX_BUFFERED_MESSAGES


def outcomes(plan: Plan, read_ahead: int, grace: float) -> set[str]:
    """How the app may end."""
    if abandoned(plan, read_ahead):
        if hangs_in_body(plan):
            return {"cancelled"} if grace == 0 else {"told"}
        if plan.told in ("ignore", "keep_going"):
            return {"cancelled"}
        if plan.told == "listen" and plan.leave != "upload" and reads(plan) >= len(plan.sizes):
            return {"returned"}  # it was listening: it stops itself, never cancelled
        # Told and stopping at once: a cancellation may still land first without grace.
        return {"returned", "cancelled"} if grace == 0 else {"returned"}
    if plan.fail_at is not None and plan.fail_at < reads(plan):
        return {"server-error"}
    if plan.leave == "upload" and reads(plan) > plan.sent:
        return {"told"}  # an early answer, then the body: the client left after the response
    return {"raised"} if plan.raises is not None else {"returned"}


# -- the scripted server and the planned app ----------------------------------------------


@dataclass
class Request:
    plan: Plan
    index: int
    read_ahead: int
    messages: list[Message] = field(init=False)
    log: list[tuple[str, float]] = field(default_factory=list)
    app_sent: list[Message] = field(default_factory=list)
    server_sent: list[Message] = field(default_factory=list)
    received: list[Message] = field(default_factory=list)
    sent_when_left: int | None = None
    outcome: str | None = None
    raised: BaseException | None = None
    app_error: AppError = field(default_factory=AppError)
    server_error: ServerError = field(default_factory=lambda: ServerError("receive() broke"))
    reports: list[Disconnect] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    at_wait: anyio.Event = field(default_factory=anyio.Event)
    # The server's side.
    _queue: list[Message | ServerError] = field(default_factory=list)
    _more: anyio.Event = field(default_factory=anyio.Event)
    _delivered: list[Message] = field(default_factory=list)
    _reading = False
    _broken = False
    _left = False

    def __post_init__(self) -> None:
        last = len(self.plan.sizes) - 1
        self.messages = [
            {"type": "http.request", "body": b"x" * size, "more_body": i < last}
            for i, size in enumerate(self.plan.sizes)
        ]
        plan = self.plan
        if plan.fail_at is not None:
            self._queue = [*self.messages[: plan.fail_at], self.server_error]
        elif plan.leave == "upload":
            self._queue = [*self.messages[: plan.sent], {"type": "http.disconnect"}]
        else:
            self._queue = list(self.messages)

    @property
    def scope(self) -> Scope:
        return {
            "type": "http",
            "asgi": {"version": "3.0", "spec_version": "2.3"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": f"/{self.index}",
            "raw_path": f"/{self.index}".encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [],
        }

    def note(self, event: str) -> None:
        self.log.append((event, time.monotonic()))

    def when(self, event: str) -> float | None:
        return next((at for name, at in self.log if name == event), None)

    def client_leaves(self) -> None:
        self._queue.append({"type": "http.disconnect"})
        self._more.set()

    async def receive(self) -> Message:
        body_in = any(not m.get("more_body", False) for m in self._delivered)
        waiting = len(self._delivered) - len(self.received)
        waiting_bytes = sum(len(m["body"]) for m in self._delivered[len(self.received) :])
        # A read while the app has not read everything delivered is the middleware's own
        # reading ahead, which stays below its bounds. (Noted rather than raised: the
        # middleware would take an exception for the server's.)
        if self._reading:
            self.violations.append("two receive() calls in flight at once")
        if waiting >= MAX_BUFFERED_MESSAGES:
            self.violations.append(f"read with {waiting} messages buffered")
        if not body_in and waiting and waiting_bytes >= self.read_ahead:
            self.violations.append(f"read with {waiting_bytes} bytes of body buffered")
        if self._left and self.plan.sticky:
            return {"type": "http.disconnect"}
        self._reading = True
        try:
            while not self._queue:
                self._more = anyio.Event()
                await self._more.wait()
        finally:
            self._reading = False
        if self._broken:
            raise self.server_error
        item = self._queue.pop(0)
        if isinstance(item, ServerError):
            self._broken = True
            self._queue.append(item)
            raise item
        if item["type"] == "http.disconnect":
            self._left = True
            self.note("disconnect")
            self.sent_when_left = len(self.app_sent)
        else:
            self._delivered.append(item)
        return item

    async def send(self, message: Message) -> None:
        self.server_sent.append(message)
        if message["type"] == "http.response.body" and not message.get("more_body", False):
            self.note("complete")
            if self.plan.leave == "after":
                self.client_leaves()  # as uvicorn reports it: at once

    # -- the app -------------------------------------------------------------------------

    async def app(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def sending(message: Message) -> None:
            self.app_sent.append(message)
            await send(message)

        try:
            self.outcome = await self._follow_plan(scope, receive, sending)
        except anyio.get_cancelled_exc_class():
            self.outcome = "cancelled"
            self.note("cancelled")
            raise
        except AppError:
            self.outcome = "raised"
            raise
        except ServerError:
            self.outcome = "server-error"
            raise

    async def _follow_plan(self, scope: Scope, receive: Receive, send: Send) -> str:
        plan = self.plan
        waits = abandoned(plan, self.read_ahead)
        if plan.early:
            await send(start())
            await send(end())
        for _ in range(reads(plan)):
            message = await receive()
            self.received.append(message)
            if message["type"] == "http.disconnect":
                return "told"
            if not message.get("more_body", False):
                break
        if waits and plan.leave in ("upload", "working"):
            return await self._wait_for_the_client(scope, receive, send)
        if plan.leave == "working":
            self.at_wait.set()  # the client leaves now, where the middleware cannot see it
        await anyio.sleep(SHORT_WORK)
        if plan.raises == "before":
            raise self.app_error
        if not plan.early:
            await send(start())
            for _ in range(plan.parts - 1):
                await send({"type": "http.response.body", "body": b"part", "more_body": True})
            if waits:
                return await self._wait_for_the_client(scope, receive, send)
            if plan.leave == "streaming":
                self.at_wait.set()
            if plan.raises == "mid":
                raise self.app_error
            await send(end())
        if plan.raises == "after":
            raise self.app_error
        if plan.after == "work":
            await anyio.sleep(SHORT_WORK)
            self.note("after-work-done")
        elif plan.after == "receive":
            while (message := await receive())["type"] != "http.disconnect":
                self.received.append(message)
        return "returned"

    async def _wait_for_the_client(self, scope: Scope, receive: Receive, send: Send) -> str:
        """Wait, without end, for the middleware to see the client leave."""
        self.at_wait.set()
        told = self.plan.told
        if told == "listen":
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    return "returned"
                self.received.append(message)
        if told == "ignore":
            await anyio.sleep_forever()
        await wait_disconnected(scope)
        self.note("told")
        if told == "keep_going":
            await anyio.sleep_forever()
        # Ends its response, for nobody: the middleware drops it.
        if not any(message["type"] == "http.response.start" for message in self.app_sent):
            await send(start())
        await send(end())
        return "returned"

    async def client(self) -> None:
        if self.plan.leave in ("working", "streaming"):
            await self.at_wait.wait()
            self.client_leaves()


# -- the property -----------------------------------------------------------------------


def running_tasks() -> set[object]:
    try:
        return set(asyncio.all_tasks())
    except RuntimeError:
        import trio

        tasks: set[object] = set()
        root = trio.lowlevel.current_root_task()
        assert root is not None
        pending = [root]
        while pending:
            task = pending.pop()
            tasks.add(task)
            for nursery in task.child_nurseries:
                pending.extend(nursery.child_tasks)
        return tasks


@contextmanager
def logged_errors() -> Iterator[list[logging.LogRecord]]:
    records: list[logging.LogRecord] = []

    class Collect(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Collect(logging.ERROR)
    logger = logging.getLogger("asgi_disconnect")
    logger.addHandler(handler)
    try:
        yield records
    finally:
        logger.removeHandler(handler)


async def serve(middleware: DisconnectMiddleware, request: Request) -> None:
    async with anyio.create_task_group() as task_group:
        task_group.start_soon(request.client)
        try:
            await middleware(request.scope, request.receive, request.send)
        except BaseException as exc:
            request.raised = exc
            if not isinstance(exc, Exception):
                raise
        task_group.cancel_scope.cancel()


PHASES = {"upload": Phase.BODY, "working": Phase.WORKING, "streaming": Phase.STREAMING}


def check(request: Request, read_ahead: int, grace: float) -> None:
    plan = request.plan
    outcome = request.outcome
    assert request.violations == []
    assert outcome in outcomes(plan, read_ahead, grace), request.raised

    # The body: the server's own messages, in order, each once, then only disconnects.
    body = [m for m in request.received if m["type"] == "http.request"]
    sent = request.messages[: len(body)]
    assert len(body) == len(sent)
    assert all(got is message for got, message in zip(body, sent, strict=True))
    kinds = [m["type"] for m in request.received]
    if "http.disconnect" in kinds:
        assert set(kinds[kinds.index("http.disconnect") :]) == {"http.disconnect"}

    # A cancellation only ever follows a disconnect reported before the response was
    # complete, and with a grace period only once it is over.
    if outcome == "cancelled":
        events = [name for name, _ in request.log]
        assert "disconnect" in events
        assert "complete" not in events[: events.index("disconnect")]
        left, cancelled = request.when("disconnect"), request.when("cancelled")
        assert left is not None and cancelled is not None
        assert cancelled - left >= grace - 0.001

    if abandoned(plan, read_ahead):
        assert request.sent_when_left is not None
        kept = request.app_sent[: request.sent_when_left]
        started = any(m["type"] == "http.response.start" for m in kept)
        assert request.server_sent[: len(kept)] == kept
        assert request.server_sent[len(kept) :] == ([] if started else UNANSWERED)
        assert request.raised is None
        assert [report.phase for report in request.reports] == [PHASES[plan.leave]]
    else:
        assert len(request.server_sent) == len(request.app_sent)
        assert all(a is b for a, b in zip(request.server_sent, request.app_sent, strict=True))
        expected = {"raised": request.app_error, "server-error": request.server_error}
        assert request.raised is expected.get(str(outcome))
        assert request.reports == []
        if plan.after == "work" and outcome == "returned":
            assert request.when("after-work-done") is not None


FLOOD = (0,) * (MAX_BUFFERED_MESSAGES + 2)
NEVER_READS = Plan(FLOOD, "working", 0, True, None, 0, False, 1, "ignore", None, None)


@given(
    plans=st.lists(plans(), min_size=1, max_size=3),
    read_ahead=st.sampled_from([0, 1, 1000, 65536]),
    grace=st.sampled_from([0.0, 0.02]),
)
# The bound on buffered messages, which a random draw rarely reaches.
@example(plans=[NEVER_READS], read_ahead=1, grace=0.0)
@example(plans=[replace(NEVER_READS, reads=1, told="listen")], read_ahead=1, grace=0.0)
async def test_nothing_is_lost_and_nothing_hangs(
    plans: list[Plan], read_ahead: int, grace: float
) -> None:
    requests = {f"/{i}": Request(plan, i, read_ahead) for i, plan in enumerate(plans)}

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await requests[scope["path"]].app(scope, receive, send)

    def on_disconnect(disconnect: Disconnect) -> None:
        requests[disconnect.scope["path"]].reports.append(disconnect)

    middleware = DisconnectMiddleware(
        app, read_ahead=read_ahead, grace_period=grace, on_disconnect=on_disconnect
    )
    before = running_tasks()
    with logged_errors() as errors, anyio.fail_after(TIME_LIMIT):
        async with anyio.create_task_group() as task_group:
            for request in requests.values():
                task_group.start_soon(serve, middleware, request)
        # What the middleware started is gone once the ticker has had its last tick.
        for _ in range(5000):
            if not running_tasks() - before:
                break
            await anyio.sleep(0.001)
        assert running_tasks() - before == set()

    for request in requests.values():
        check(request, read_ahead, grace)
    # A broken receive() the app never read is logged, with the server's own exception.
    unread = {id(r.server_error) for r in requests.values() if r.outcome != "server-error"}
    assert all(id(record.exc_info[1]) in unread for record in errors if record.exc_info)
