"""Real servers in subprocesses, raw-socket clients (HTTP/1.1 and HTTP/2), and the apps' side
channel."""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import h2.connection

HOST = "127.0.0.1"

#: Seconds from a client's close to its handler's cancellation, by server.
LATENCIES: dict[str, list[float]] = {}
TESTS = Path(__file__).parent

# How each server is started by its users, on the app target given as {app}.
COMMANDS: dict[str, list[str]] = {
    "uvicorn-httptools": [
        "uvicorn", "--host", HOST, "--port", "{port}", "--http", "httptools", "--loop", "asyncio",
        "--no-access-log", "{app}",
    ],
    "uvicorn-h11": [
        "uvicorn", "--host", HOST, "--port", "{port}", "--http", "h11", "--loop", "asyncio",
        "--no-access-log", "{app}",
    ],
    "hypercorn-asyncio": [
        "hypercorn", "--bind", f"{HOST}:{{port}}", "--worker-class", "asyncio", "{app}",
    ],
    "hypercorn-trio": [
        "hypercorn", "--bind", f"{HOST}:{{port}}", "--worker-class", "trio", "{app}",
    ],
    "daphne": ["daphne", "--bind", HOST, "--port", "{port}", "{app}"],
    "granian": ["granian", "--interface", "asgi", "--host", HOST, "--port", "{port}", "{app}"],
    "gunicorn": ["gunicorn", "-k", "asgi", "--bind", f"{HOST}:{{port}}", "--workers", "1", "{app}"],
}  # fmt: skip

# The same servers started for HTTP/2, as their documentation says. All but daphne take it in
# cleartext from a client that knows (h2c, prior knowledge); daphne only over TLS, where
# {tls} is a directory holding a certificate of the test's own.
H2_COMMANDS: dict[str, list[str]] = {
    "uvicorn-zttp-h2": [
        "uvicorn", "--host", HOST, "--port", "{port}", "--http", "zttp", "--http2",
        "--no-access-log", "{app}",
    ],
    "hypercorn-asyncio-h2": COMMANDS["hypercorn-asyncio"],
    "hypercorn-trio-h2": COMMANDS["hypercorn-trio"],
    "daphne-h2-tls": [
        "daphne", "-e",
        f"ssl:{{port}}:privateKey={{tls}}/key.pem:certKey={{tls}}/cert.pem:interface={HOST}",
        "{app}",
    ],
    "granian-h2": [
        "granian", "--interface", "asgi", "--host", HOST, "--port", "{port}", "--http", "2",
        "{app}",
    ],
    "gunicorn-h2": [
        "gunicorn", "-k", "asgi", "--bind", f"{HOST}:{{port}}", "--workers", "1",
        "--http-protocols", "h2,h1", "--http2-cleartext", "prior-knowledge", "{app}",
    ],
}  # fmt: skip

# What a server prints when something went wrong: its own errors and the app's tracebacks.
ERROR_LINE = re.compile(r"Traceback|\bERROR\b|\bCRITICAL\b|\[error\]|Exception in ")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    name: str
    app: str
    env: Mapping[str, str]
    log: Path
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def tls(self) -> bool:
        return self.name.endswith("-tls")

    def start(self, python: str = sys.executable, timeout: float = 60.0) -> None:
        if self.tls:
            write_certificate(self.log.parent)
        command = [
            part.format(port=self.port, app=self.app, tls=self.log.parent)
            for part in {**COMMANDS, **H2_COMMANDS}[self.name]
        ]
        with self.log.open("wb") as log:
            self.process = subprocess.Popen(
                [python, "-m", *command],
                cwd=TESTS,
                env={**os.environ, **self.env},
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited at start:\n{self.output()}")
            try:
                socket.create_connection((HOST, self.port), timeout=1).close()
                return
            except OSError:
                if time.monotonic() > deadline:
                    self.stop()
                    raise RuntimeError(f"{self.name} did not listen:\n{self.output()}") from None
                time.sleep(0.05)

    def stop(self) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        os.killpg(self.process.pid, signal.SIGTERM)
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, signal.SIGKILL)
            self.process.wait(timeout=15)

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def errors(self) -> list[str]:
        return [line for line in self.output().splitlines() if ERROR_LINE.search(line)]


@contextmanager
def process(command: list[str], log: Path, port: int, **env: str) -> Iterator[None]:
    """Run ``command`` in the tests' directory until it listens on ``port``; stop it after."""
    with log.open("wb") as out:
        server = subprocess.Popen(
            command,
            cwd=TESTS,
            stdout=out,
            stderr=subprocess.STDOUT,
            env={**os.environ, **env},
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            assert server.poll() is None, log.read_text()
            try:
                socket.create_connection((HOST, port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
        yield
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


class Events:
    """Reads what the served apps wrote to the side channel."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.touch()

    def lines(self) -> list[str]:
        """The whole lines written so far.

        A reader can catch an app's line half written (the file's size may grow before all
        of one write is visible), so whatever follows the last newline is left for the next
        read.
        """
        return self.path.read_text().split("\n")[:-1]

    def of(self, rid: str) -> dict[str, float]:
        seen: dict[str, float] = {}
        for line in self.lines():
            who, event, at = line.split(" ")
            if who == rid:
                seen.setdefault(event, float(at))
        return seen

    def count(self, event: str) -> int:
        return sum(line.split(" ")[1] == event for line in self.lines())

    def wait(self, rid: str, *events: str, timeout: float = 15.0) -> tuple[str, float]:
        """Wait for the first of ``events`` for request ``rid``; return it and its time."""
        deadline = time.monotonic() + timeout
        while True:
            seen = self.of(rid)
            for event in events:
                if event in seen:
                    return event, seen[event]
            if time.monotonic() > deadline:
                raise AssertionError(f"request {rid}: none of {events} within {timeout} s: {seen}")
            time.sleep(0.005)


_ids = iter(range(1, 1_000_000))


def new_id(label: str) -> str:
    return f"{label}-{os.getpid()}-{next(_ids)}"


def http_request(
    method: str,
    target: str,
    body: bytes = b"",
    *,
    headers: tuple[tuple[str, str], ...] = (),
    content_length: int | None = None,
) -> bytes:
    lines = [f"{method} {target} HTTP/1.1", f"Host: {HOST}", "Connection: close"]
    if method in ("POST", "PUT") or body:
        lines.append(f"Content-Length: {len(body) if content_length is None else content_length}")
    lines += [f"{name}: {value}" for name, value in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


@contextmanager
def connection(port: int) -> Iterator[socket.socket]:
    sock = socket.create_connection((HOST, port), timeout=15)
    try:
        yield sock
    finally:
        sock.close()


def fetch(port: int, request: bytes) -> bytes:
    """Send a request, read the whole response (the server closes: ``Connection: close``)."""
    with connection(port) as sock:
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def read_until(sock: socket.socket, marker: bytes) -> bytes:
    received = b""
    while marker not in received:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before {marker!r}: {received!r}")
        received += chunk
    return received


def without_date(response: bytes) -> bytes:
    head, _, body = response.partition(b"\r\n\r\n")
    kept = [line for line in head.split(b"\r\n") if not line.lower().startswith(b"date:")]
    return b"\r\n".join(kept) + b"\r\n\r\n" + body


def write_certificate(directory: Path) -> None:
    """A key and a self-signed certificate for 127.0.0.1, as ``key.pem`` and ``cert.pem``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, HOST)])
    now = datetime.datetime.now(datetime.timezone.utc)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(hours=1))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(HOST))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    (directory / "key.pem").write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    (directory / "cert.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


class H2Connection:
    """One HTTP/2 connection from a client, over a socket that the caller owns.

    Streams are opened with :meth:`request`, fed with :meth:`send`, abandoned with
    :meth:`reset`; :meth:`response` reads until a stream has ended and gives its response in
    HTTP/1.1's shape (pseudo-header ``:status`` first), so that ``without_date`` applies.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        # Frames go out at once, as browsers send them: with Nagle's algorithm a small
        # RST_STREAM waits up to 40 ms for the server's delayed ACK of the previous frame.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Imported here: the Django suites run this module in environments without h2.
        import h2.config
        import h2.connection

        config = h2.config.H2Configuration(client_side=True, header_encoding=None)
        self.h2: h2.connection.H2Connection = h2.connection.H2Connection(config)
        self.h2.initiate_connection()
        self.heads: dict[int, list[tuple[bytes, bytes]]] = {}
        self.bodies: dict[int, bytes] = {}
        self.ended: set[int] = set()
        self._flush()

    @classmethod
    @contextmanager
    def open(cls, server: Server, *, abrupt: bool = False) -> Iterator[H2Connection]:
        """A connection, closed as browsers close one (``GOAWAY``) unless ``abrupt``."""
        with connection(server.port) as sock:
            if not server.tls:
                c = cls(sock)
                yield c
                if not abrupt:
                    c.go_away()
                return
            context = ssl.create_default_context(cafile=server.log.parent / "cert.pem")
            context.set_alpn_protocols(["h2"])
            with context.wrap_socket(sock, server_hostname=HOST) as tls:
                assert tls.selected_alpn_protocol() == "h2"
                c = cls(tls)
                yield c
                if not abrupt:
                    c.go_away()

    def go_away(self, linger: float = 0.2) -> None:
        # A socket closed the moment the last frame arrived can fail a server's write that
        # is still draining (gunicorn then raises from the app's send(), with or without the
        # middleware): say goodbye, and give the server a moment to finish its writes.
        self.h2.close_connection()
        try:
            self._flush()
        except OSError:
            return  # the server has closed the connection first: nothing more to say
        deadline = time.monotonic() + linger
        try:
            while (left := deadline - time.monotonic()) > 0:
                self.sock.settimeout(left)
                if not self.sock.recv(65536):
                    return
        except (TimeoutError, OSError):
            return

    def request(
        self,
        method: str,
        target: str,
        body: bytes = b"",
        *,
        end: bool = True,
        content_length: int | None = None,
        flush: bool = True,
    ) -> int:
        """Open a stream; with ``end=False`` its body goes on with :meth:`send`.

        ``flush=False`` holds the frames back for the next write: headers and the DATA frame
        that ends them, sent apart, can meet a response already complete, and hypercorn's
        HTTP/2 then fails the whole connection on a DATA frame for a stream it has closed
        (``KeyError`` in its ``_handle_events``), with or without the middleware.
        """
        stream = self.h2.get_next_available_stream_id()
        headers = [
            (b":method", method.encode()),
            (b":scheme", b"https" if isinstance(self.sock, ssl.SSLSocket) else b"http"),
            (b":authority", HOST.encode()),
            (b":path", target.encode()),
        ]
        if content_length is not None:
            headers.append((b"content-length", b"%d" % content_length))
        self.h2.send_headers(stream, headers, end_stream=end and not body)
        if body:
            self.h2.send_data(stream, body, end_stream=end)
        if flush:
            self._flush()
        return stream

    def send(self, stream: int, data: bytes, *, end: bool = True) -> None:
        self.h2.send_data(stream, data, end_stream=end)
        self._flush()

    def reset(self, stream: int) -> None:
        from h2.errors import ErrorCodes

        self.h2.reset_stream(stream, ErrorCodes.CANCEL)
        self._flush()

    def response(self, stream: int, timeout: float = 15.0) -> bytes:
        import h2.events

        deadline = time.monotonic() + timeout
        while stream not in self.ended:
            self.sock.settimeout(max(deadline - time.monotonic(), 0.001))
            data = self.sock.recv(65536)
            if not data:
                raise AssertionError(f"connection closed before stream {stream} ended")
            for event in self.h2.receive_data(data):
                if isinstance(event, h2.events.ResponseReceived):
                    self.heads[event.stream_id] = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    self.bodies[event.stream_id] = (
                        self.bodies.get(event.stream_id, b"") + event.data
                    )
                    self.h2.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
                elif isinstance(event, h2.events.StreamEnded):
                    self.ended.add(event.stream_id)
                elif isinstance(event, h2.events.StreamReset):
                    raise AssertionError(f"the server reset stream {event.stream_id}")
            self._flush()
        head = b"\r\n".join(name + b": " + value for name, value in self.heads[stream])
        return head + b"\r\n\r\n" + self.bodies.get(stream, b"")

    def _flush(self) -> None:
        self.sock.sendall(self.h2.data_to_send())
