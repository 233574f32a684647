"""The client's connection: one grpc.aio channel, built in one place, and the three calls.

:func:`open_channel` turns an :class:`~castore.grpc._address.Endpoint` and the TLS options
into a channel; :class:`Calls` binds ``Stat``, ``Read`` and ``Put`` of one protobuf package
on it, with castore's strict decoding as every response's deserializer. Everything about
how the client reaches a server (target syntax, credentials, channel options) lives here,
including a channel to several servers: grpc's round-robin policy spreads the calls
over them and leaves out one that cannot be reached.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import anyio
import grpc
import grpc.aio

from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
)
from castore.errors import MalformedMessageError
from castore.grpc._address import Endpoint
from castore.grpc._runtime import hold_engine
from castore.grpc._wire import deserializer, encode, encode_blob_chunk

__all__ = [
    "CLIENT_MAX_RECEIVE",
    "Calls",
    "ChannelConfig",
    "channel_target",
    "open_channel",
    "target",
]

#: The largest message the client accepts: a ``Stat`` answer listing the chunks of a blob
#: of several TiB fits; grpc's default of 4 MiB would refuse blobs of more than ~25 GiB.
CLIENT_MAX_RECEIVE = 256 * 1024 * 1024

#: The first and the longest wait before reconnecting to a server that could not be reached.
RECONNECT_BACKOFF_MS = (200, 2000)

Payload = bytes | bytearray | memoryview

#: How many times grpc tries a ``Stat`` or a ``Read`` that met an unreachable server, when
#: the channel has several: each try goes to the next server the balancer picks. A
#: ``Read`` is retried only until its first message arrived, a ``Put`` never (its caller
#: sees the failure and may write the blob again).
MULTI_ATTEMPTS = 4


def multi_service_config() -> str:
    """grpc's service config for a channel to several servers: round-robin balancing, and
    ``Stat``/``Read`` retried on ``UNAVAILABLE`` (both packages' method names)."""
    names = [
        {"service": f"{package}.BlobService", "method": method}
        for package in ("tvix.castore.v1", "snix.castore.v1")
        for method in ("Stat", "Read")
    ]
    retry = {
        "maxAttempts": MULTI_ATTEMPTS,
        "initialBackoff": "0.05s",
        "maxBackoff": "0.5s",
        "backoffMultiplier": 2,
        "retryableStatusCodes": ["UNAVAILABLE"],
    }
    return json.dumps(
        {
            "loadBalancingConfig": [{"round_robin": {}}],
            "methodConfig": [{"name": names, "retryPolicy": retry}],
        }
    )


@dataclass(frozen=True, slots=True)
class ChannelConfig:
    """Where and how to connect: the endpoints (one, or several of one scheme), and for
    TLS the trusted certificates (``ca_file``, PEM; grpc's own root certificates
    otherwise), the name the servers' certificates must carry when it differs from the
    (first) host (``server_name``), or ready-made ``credentials``."""

    endpoints: tuple[Endpoint, ...]
    ca_file: str | None = None
    server_name: str | None = None
    credentials: grpc.ChannelCredentials | None = None


def target(endpoint: Endpoint) -> str:
    """The endpoint in grpc's target syntax: ``host:port``, ``[::1]:port``, ``unix:/path``."""
    if endpoint.path is not None:
        return f"unix:{endpoint.path}"
    return endpoint.hostport


def channel_target(endpoints: tuple[Endpoint, ...]) -> str:
    """One endpoint as :func:`target` gives it; several (IP addresses of one family, as
    :func:`~castore.grpc._address.parse_endpoints` checks) as grpc's address list,
    ``ipv4:10.0.0.1:8000,10.0.0.2:8000`` or ``ipv6:[::1]:8000,[::1]:8001``."""
    if len(endpoints) == 1:
        return target(endpoints[0])
    family = "ipv6" if any(":" in (e.host or "") for e in endpoints) else "ipv4"
    return f"{family}:" + ",".join(target(e) for e in endpoints)


async def open_channel(config: ChannelConfig) -> grpc.aio.Channel:
    """A channel to ``config.endpoints``, bound to the running event loop.

    Reads the CA file in a worker thread. The channel connects lazily, at its first call.
    """
    hold_engine()
    options: list[tuple[str, str | int]] = [
        ("grpc.max_receive_message_length", CLIENT_MAX_RECEIVE),
        ("grpc.max_send_message_length", -1),
        # After a failed connection attempt, calls fail at once until the next attempt
        # succeeds; grpc's default backoff lets that wait grow to two minutes.
        ("grpc.initial_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[0]),
        ("grpc.max_reconnect_backoff_ms", RECONNECT_BACKOFF_MS[1]),
    ]
    first = config.endpoints[0]
    if len(config.endpoints) > 1:
        options.append(("grpc.service_config", multi_service_config()))
        options.append(("grpc.enable_retries", 1))
        # The name TLS checks and the ``:authority`` header: the first server's.
        options.append(("grpc.default_authority", target(first)))
    where = channel_target(config.endpoints)
    if not first.tls:
        return grpc.aio.insecure_channel(where, options=options)
    credentials = config.credentials
    if credentials is None:
        roots = None
        if config.ca_file is not None:
            roots = await anyio.Path(config.ca_file).read_bytes()
        credentials = grpc.ssl_channel_credentials(root_certificates=roots)
    if config.server_name is not None:
        options.append(("grpc.ssl_target_name_override", config.server_name))
    return grpc.aio.secure_channel(where, credentials, options=options)


class Calls:
    """``Stat``, ``Read`` and ``Put`` of ``package`` (``tvix.castore.v1`` or
    ``snix.castore.v1``) on ``channel``.

    Responses arrive decoded by :func:`castore.grpc._wire.decode`, or as the
    :class:`MalformedMessageError` saying why they do not decode. ``Put`` sends
    ``BlobChunk`` payloads (bytes-like), encoded with one copy.
    """

    def __init__(self, channel: grpc.aio.Channel, package: str) -> None:
        self.channel = channel
        self.package = package
        self.stat: grpc.aio.UnaryUnaryMultiCallable[
            StatBlobRequest, StatBlobResponse | MalformedMessageError
        ] = channel.unary_unary(
            self.path("Stat"),
            request_serializer=encode,
            response_deserializer=deserializer(StatBlobResponse),
        )
        self.read: grpc.aio.UnaryStreamMultiCallable[
            ReadBlobRequest, BlobChunk | MalformedMessageError
        ] = channel.unary_stream(
            self.path("Read"),
            request_serializer=encode,
            response_deserializer=deserializer(BlobChunk),
        )
        self.put: grpc.aio.StreamUnaryMultiCallable[
            Payload, PutBlobResponse | MalformedMessageError
        ] = channel.stream_unary(
            self.path("Put"),
            request_serializer=encode_blob_chunk,
            response_deserializer=deserializer(PutBlobResponse),
        )

    def path(self, method: str) -> str:
        """The method's path, ``/tvix.castore.v1.BlobService/Stat`` and so on."""
        return f"/{self.package}.BlobService/{method}"
