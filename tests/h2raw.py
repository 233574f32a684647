"""A bare HTTP/2 client (h2) on a TCP socket, for gRPC requests no gRPC library sends:
malformed frames, connections that vanish mid-stream, and a look at which frames carry
the status."""

from __future__ import annotations

import struct

import anyio
import anyio.abc
import h2.config
import h2.connection
import h2.events

TVIX = "/tvix.castore.v1.BlobService/"


def frame(message: bytes, *, compressed: bool = False, length: int | None = None) -> bytes:
    """A gRPC length-prefixed message (the prefix may lie about the length)."""
    n = len(message) if length is None else length
    return struct.pack(">?I", compressed, n) + message


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


class H2:
    """One HTTP/2 client connection."""

    def __init__(self, sock: anyio.abc.SocketStream) -> None:
        self.sock = sock
        self.conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))

    @classmethod
    async def connect(cls, port: int) -> H2:
        self = cls(await anyio.connect_tcp("127.0.0.1", port))
        self.conn.initiate_connection()
        await self.flush()
        return self

    async def flush(self) -> None:
        data = self.conn.data_to_send()
        if data:
            await self.sock.send(data)

    async def start(self, method: str) -> int:
        """Open a stream calling ``method`` of the tvix service; its stream id."""
        sid: int = self.conn.get_next_available_stream_id()
        self.conn.send_headers(
            sid,
            [
                (":method", "POST"),
                (":scheme", "http"),
                (":path", TVIX + method),
                (":authority", "127.0.0.1"),
                ("content-type", "application/grpc"),
                ("te", "trailers"),
            ],
        )
        await self.flush()
        return sid

    async def send(self, sid: int, data: bytes, *, end: bool) -> None:
        view = memoryview(data)
        size = self.conn.max_outbound_frame_size
        for i in range(0, max(len(view), 1), size):
            self.conn.send_data(
                sid, bytes(view[i : i + size]), end_stream=end and i + size >= len(view)
            )
        await self.flush()

    async def events(self) -> list[h2.events.Event]:
        """The events of the next bytes received (flow control acknowledged)."""
        events = self.conn.receive_data(await self.sock.receive())
        for event in events:
            if isinstance(event, h2.events.DataReceived):
                self.conn.acknowledge_received_data(event.flow_controlled_length, event.stream_id)
        await self.flush()
        return events

    async def status(self, sid: int) -> str:
        """The call's ``grpc-status`` (from the headers or the trailers)."""
        found: dict[str, str] = {}
        with anyio.fail_after(10):
            while True:
                for event in await self.events():
                    if isinstance(event, h2.events.ResponseReceived | h2.events.TrailersReceived):
                        for name, value in event.headers:
                            found[_text(name)] = _text(value)
                    if "grpc-status" in found:
                        return found["grpc-status"]
                    if isinstance(event, h2.events.StreamReset | h2.events.ConnectionTerminated):
                        return f"reset ({event})"

    async def aclose(self) -> None:
        await self.sock.aclose()


def headers_of(event: h2.events.ResponseReceived) -> dict[str, str]:
    return {_text(name): _text(value) for name, value in event.headers}


async def call(port: int, method: str, body: bytes, *, end: bool = True) -> str:
    """One call on a connection of its own; its ``grpc-status``."""
    h = await H2.connect(port)
    try:
        sid = await h.start(method)
        await h.send(sid, body, end=end)
        return await h.status(sid)
    finally:
        await h.aclose()


async def closed_by_server(port: int, garbage: bytes, *, preface: bool) -> bool:
    """Send garbage (after a valid preface if asked); True once the server hangs up."""
    async with await anyio.connect_tcp("127.0.0.1", port) as sock:
        if preface:
            conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
            conn.initiate_connection()
            await sock.send(conn.data_to_send())
        await sock.send(garbage)
        with anyio.fail_after(10):
            while True:
                try:
                    await sock.receive()
                except (anyio.EndOfStream, anyio.BrokenResourceError, ConnectionError):
                    return True
