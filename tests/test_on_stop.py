"""``on_stop()``: what blocking work registers to be stopped with its request.

The callback runs when the request is stopped (the client left, or the deadline passed, and
the grace period is over), at most once, never once the response is complete; it may be
registered from any thread and taken back, and what it raises is logged.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import anyio
import pytest
from apps import UNANSWERED, read_body, respond
from communicator import communicate, http_scope

from asgi_disconnect import DisconnectMiddleware, StopHandle, _stop, on_stop, wait_disconnected
from asgi_disconnect._types import Receive, Scope, Send

pytestmark = pytest.mark.anyio

GATEWAY_TIMEOUT = 504


class Blocking:
    """Work in a thread that waits until it is stopped, as a statement does for its cancel."""

    def __init__(self) -> None:
        self.registered = threading.Event()
        self.stopped = threading.Event()
        self.stopped_in: list[int] = []
        self.handle: StopHandle | None = None

    def stop(self) -> None:
        self.stopped_in.append(threading.get_ident())
        self.stopped.set()

    def run(self, seconds: float = 5.0) -> bool:
        self.handle = on_stop(self.stop)
        self.registered.set()
        return self.stopped.wait(seconds)


def app_in_a_thread(blocking: Blocking, outcome: list[str]) -> Any:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        stopped = await anyio.to_thread.run_sync(blocking.run)
        outcome.append("stopped" if stopped else "ran to its end")
        await respond(send)

    return app


async def test_work_in_a_thread_is_stopped_when_the_client_leaves(anyio_backend: str) -> None:
    blocking, outcome = Blocking(), list[str]()
    middleware = DisconnectMiddleware(app_in_a_thread(blocking, outcome))
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await anyio.to_thread.run_sync(blocking.registered.wait, 5)
        await c.disconnect()
        await c.wait()
    assert outcome == ["stopped"]  # within the thread's 5 s, not at their end
    # In the event loop's thread, once.
    assert blocking.stopped_in == [threading.get_ident()]
    assert c.sent == UNANSWERED
    assert blocking.handle is not None and blocking.handle.unregister() is False


async def test_work_in_a_thread_is_stopped_at_the_deadline(anyio_backend: str) -> None:
    blocking, outcome = Blocking(), list[str]()
    middleware = DisconnectMiddleware(app_in_a_thread(blocking, outcome), timeout=0.2)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await c.wait()
    assert outcome == ["stopped"]
    assert c.sent[0]["status"] == GATEWAY_TIMEOUT
    assert len(blocking.stopped_in) == 1


@pytest.mark.parametrize("cause", ["client", "deadline"])
async def test_the_callback_runs_after_the_grace_period(anyio_backend: str, cause: str) -> None:
    grace = 0.3
    ran: list[float] = []
    told: list[float] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        on_stop(lambda: ran.append(time.monotonic()))
        await wait_disconnected(scope)
        told.append(time.monotonic())
        assert ran == []  # told, not yet stopped
        await anyio.sleep(30)  # clean-up that outlasts its grace period

    timeout = 0.1 if cause == "deadline" else None
    middleware = DisconnectMiddleware(app, grace_period=grace, timeout=timeout)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        if cause == "client":
            await anyio.sleep(0.05)
            await c.disconnect()
        await c.wait()
    assert len(ran) == 1 and len(told) == 1
    assert ran[0] - told[0] >= grace * 0.9


async def test_an_app_that_answers_in_its_grace_period_is_never_stopped(
    anyio_backend: str,
) -> None:
    ran: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        on_stop(lambda: ran.append("stop"))
        await wait_disconnected(scope)
        await respond(send)  # the response is complete: nothing is stopped from now on
        await anyio.sleep(0.3)
        assert on_stop(lambda: ran.append("late")).unregister() is False

    middleware = DisconnectMiddleware(app, grace_period=0.1)
    async with communicate(
        middleware, http_scope(asgi={"version": "3.0", "spec_version": "2.4"})
    ) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert ran == []


async def test_it_runs_at_most_once_and_at_once_when_registered_after_the_stop(
    anyio_backend: str,
) -> None:
    ran: list[tuple[str, int]] = []

    def late() -> None:
        # The request has been stopped: registered now, the callback runs at once, here.
        handle = on_stop(lambda: ran.append(("late", threading.get_ident())))
        ran.append(("registered", threading.get_ident()))
        assert handle.unregister() is False

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        on_stop(lambda: ran.append(("early", threading.get_ident())))
        try:
            await anyio.sleep(30)
        finally:
            with anyio.CancelScope(shield=True):
                await anyio.to_thread.run_sync(late)
        # A deadline passing after the client left stops nothing again.

    middleware = DisconnectMiddleware(app, timeout=0.3)
    async with communicate(middleware) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    await anyio.sleep(0.4)
    loop_thread = threading.get_ident()
    assert ran[0] == ("early", loop_thread)
    assert ran[1][0] == "late" and ran[1][1] != loop_thread
    assert ran[2] == ("registered", ran[1][1])
    assert len(ran) == 3


async def test_a_request_that_is_answered_runs_none_of_its_callbacks(anyio_backend: str) -> None:
    ran: list[str] = []
    handles: list[StopHandle] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        handles.append(on_stop(lambda: ran.append("before"), scope))
        await respond(send)
        # After the response: a background task's work, which the client leaving never stops.
        handles.append(on_stop(lambda: ran.append("after"), scope))
        await anyio.sleep(0.2)

    async with communicate(DisconnectMiddleware(app, timeout=0.1)) as c:
        await c.send_body(b"")
        assert (await c.receive_output())["status"] == 200
        await c.disconnect()
        await c.wait()
    assert ran == []
    assert [handle.unregister() for handle in handles] == [False, False]


async def test_a_callback_taken_back_never_runs(anyio_backend: str) -> None:
    ran: list[str] = []
    taken_back: list[bool] = []

    def register_and_take_back() -> None:
        handle = on_stop(lambda: ran.append("taken back"))
        on_stop(lambda: ran.append("kept"))
        taken_back.append(handle.unregister())
        taken_back.append(handle.unregister())

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await anyio.to_thread.run_sync(register_and_take_back)
        await anyio.sleep(30)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert taken_back == [True, False]
    assert ran == ["kept"]


class NotAnException(BaseException):
    pass


@pytest.mark.parametrize("error", [RuntimeError, NotAnException])
async def test_what_a_callback_raises_is_logged_and_the_others_run(
    anyio_backend: str, caplog: pytest.LogCaptureFixture, error: type[BaseException]
) -> None:
    ran: list[str] = []

    def broken() -> None:
        raise error("the subprocess had gone already")

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        on_stop(broken)
        on_stop(lambda: ran.append("second"))
        await anyio.sleep(30)

    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await anyio.sleep(0.05)
        await c.disconnect()
        await c.wait()
    assert ran == ["second"]
    assert c.sent == UNANSWERED  # stopped all the same
    [record] = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert record.name == "asgi_disconnect" and "on_stop callback" in record.getMessage()
    assert record.exc_info is not None and isinstance(record.exc_info[1], error)


def test_outside_a_request_the_callback_never_runs() -> None:
    ran: list[str] = []
    handle = on_stop(lambda: ran.append("ran"))
    assert handle.unregister() is False
    assert ran == []


def test_a_scope_the_middleware_did_not_see_is_refused() -> None:
    with pytest.raises(ValueError, match="not seen by DisconnectMiddleware"):
        on_stop(lambda: None, http_scope())


def test_a_callback_that_is_not_callable_is_refused() -> None:
    with pytest.raises(TypeError, match="callback must be callable"):
        on_stop("not callable")  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [1, None, "yes"])
def test_cancel_statements_must_be_a_bool(value: object) -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await read_body(receive, None)  # type: ignore[arg-type]  # never called

    with pytest.raises(TypeError, match="cancel_statements must be True or False"):
        DisconnectMiddleware(app, cancel_statements=value)  # type: ignore[arg-type]


async def test_registered_once_the_response_is_complete_it_never_runs(anyio_backend: str) -> None:
    ran: list[str] = []
    handles: list[StopHandle] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await receive()
        await respond(send)
        handles.append(on_stop(lambda: ran.append("ran"), scope))  # work after the response
        scopes.append(scope)
        await wait_disconnected(scope)

    scopes: list[Scope] = []
    async with communicate(DisconnectMiddleware(app)) as c:
        await c.send_body(b"")
        await c.receive_output()
        await c.disconnect()
        await c.wait()
    # And once the request is over, from work it left behind.
    handles.append(on_stop(lambda: ran.append("ran late"), scopes[0]))
    assert ran == []
    assert [handle.unregister() for handle in handles] == [False, False]


@pytest.mark.parametrize("error", [KeyboardInterrupt, SystemExit])
def test_a_callback_that_stops_the_process_is_let_through(error: type[BaseException]) -> None:
    from asgi_disconnect._stop import run_callback

    def stopping() -> None:
        raise error

    with pytest.raises(error):
        run_callback(stopping)


def test_a_callback_registered_as_its_request_finishes_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # finish() takes no lock: a request that finishes between register()'s first look at
    # its state and the callback's insertion must neither run it nor keep it.
    stop = _stop.Stop()

    class FinishingMeanwhile(_stop.StopHandle):
        def __init__(self, owner: _stop.Stop | None) -> None:
            super().__init__(owner)
            stop.finish()  # in the event loop's thread, while a worker thread registers

    monkeypatch.setattr(_stop, "StopHandle", FinishingMeanwhile)
    ran: list[str] = []
    assert stop.register(lambda: ran.append("ran")) is None
    assert not stop._callbacks
    stop.stop()
    assert ran == []


def test_a_request_that_finishes_with_a_callback_drops_it() -> None:
    stop = _stop.Stop()
    ran: list[str] = []
    handle = stop.register(lambda: ran.append("ran"))
    assert handle is not None
    stop.finish()
    stop.stop()
    assert ran == []
    assert handle.unregister() is False
