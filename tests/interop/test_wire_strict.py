"""Strict decoding of the gRPC messages, held against google.protobuf.

castore decodes every ``BlobService`` message it receives with its own strict decoder
(``castore.grpc._wire``). For any bytes, that decoder and google.protobuf (the stubs
generated at test time) must agree: both reject, or both accept with equal values. Over
real sockets, a truncated ``Put`` message is refused with INVALID_ARGUMENT and stores
nothing, and a malformed answer from a server raises castore's error in the client.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import blake3
import grpc
import pytest
from google.protobuf.message import DecodeError
from grpcio_support import CastoreServe, Stubs
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from castore import B3Digest, from_addr
from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
)
from castore.errors import MalformedMessageError, StoreError
from castore.grpc._wire import blob_chunk_payload, decode

MESSAGES = {
    "BlobChunk": BlobChunk,
    "ReadBlobRequest": ReadBlobRequest,
    "PutBlobResponse": PutBlobResponse,
    "StatBlobRequest": StatBlobRequest,
    "StatBlobResponse": StatBlobResponse,
}


def _values(message: Any) -> dict[str, Any]:
    """The fields of a message of either library, as plain values."""
    out: dict[str, Any] = {}
    for name in ("data", "digest", "send_chunks", "send_bao", "bao"):
        if hasattr(message, name) and (
            not hasattr(message, "DESCRIPTOR") or name in message.DESCRIPTOR.fields_by_name
        ):
            out[name] = getattr(message, name)
    if hasattr(message, "chunks"):
        out["chunks"] = [(c.digest, c.size) for c in message.chunks]
    return out


def _agree(stubs: Stubs, data: bytes) -> None:
    for name, ours in MESSAGES.items():
        theirs = getattr(stubs.pb2, name)
        try:
            expected: dict[str, Any] | None = _values(theirs.FromString(data))
        except DecodeError:
            expected = None
        try:
            got: dict[str, Any] | None = _values(decode(ours, data))
        except MalformedMessageError:
            got = None
        assert got == expected, f"{name} on {data.hex()}: castore {got}, protobuf {expected}"


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


# Pieces of wire format: tags of every wire type on known, unknown and invalid field
# numbers, varints of every length, and a few shapes near the limits.
_tags = st.builds(
    lambda number, wire: _varint((number << 3) | wire),
    st.sampled_from([0, 1, 2, 3, 4, 100, 2**29 - 1, 2**29, 2**32]),
    st.integers(0, 7),
)
_pieces = st.one_of(
    _tags,
    st.binary(max_size=6),
    st.integers(0, 2**71).map(_varint),
    st.sampled_from([b"\x80" * 9 + b"\x00", b"\xff" * 10 + b"\x01", b"\x0a\x20" + b"d" * 32]),
)
_structured = st.lists(_pieces, max_size=12).map(b"".join)
# A StatBlobResponse whose chunk entries hold arbitrary pieces.
_nested = st.lists(
    st.one_of(_structured.map(lambda b: b"\x12" + _varint(len(b)) + b), _pieces), max_size=6
).map(b"".join)

_SETTINGS = settings(max_examples=1500, deadline=None, suppress_health_check=list(HealthCheck))


@_SETTINGS
@given(data=st.one_of(st.binary(max_size=64), _structured, _nested))
def test_decoding_agrees_with_google_protobuf(stubs: Stubs, data: bytes) -> None:
    _agree(stubs, data)


# Put payloads as the server reads them: a view of the received message, read directly
# when the message is field 1 alone, else through decode().
_put_shapes = st.one_of(
    st.binary(max_size=300).map(lambda b: b"\x0a" + _varint(len(b)) + b),
    st.builds(
        lambda b, cut: (b"\x0a" + _varint(len(b)) + b)[:cut],
        st.binary(max_size=40),
        st.integers(0, 45),
    ),
    st.builds(
        lambda b, tail: b"\x0a" + _varint(len(b)) + b + tail, st.binary(max_size=40), _structured
    ),
    st.builds(
        lambda head, b: head + b"\x0a" + _varint(len(b)) + b, _structured, st.binary(max_size=40)
    ),
    st.binary(max_size=64),
    _structured,
)


@_SETTINGS
@given(data=_put_shapes)
def test_put_payload_views_agree_with_decode(stubs: Stubs, data: bytes) -> None:
    try:
        expected: bytes | None = decode(BlobChunk, data).data
    except MalformedMessageError:
        expected = None
    got = blob_chunk_payload(data)
    assert (None if isinstance(got, MalformedMessageError) else bytes(got)) == expected
    try:
        theirs: bytes | None = stubs.pb2.BlobChunk.FromString(data).data
    except DecodeError:
        theirs = None
    assert theirs == expected


def test_put_payload_is_a_view_of_the_message() -> None:
    message = b"\x0a\x83\x80\x01" + b"p" * 16387  # a length in three bytes
    view = blob_chunk_payload(message)
    assert isinstance(view, memoryview)
    assert view.obj is message and view.readonly and bytes(view) == b"p" * 16387


@pytest.mark.parametrize(
    "data",
    [
        b"\x0a\x05ab",  # five bytes announced, two follow
        b"\x0f",  # wire type 7
        b"\x02\x00",  # field number 0
        b"\x0e",  # wire type 6
        b"\x0c",  # end of group 1 with no start
        b"\x13\x08\x01",  # a group never ended
        b"\x13\x1c",  # group 2 ended as group 3
        b"\x0a" + b"\x80" * 9 + b"\x00",  # a length of more than 5 bytes
        b"\x08" + b"\xff" * 10 + b"\x01",  # a varint of 11 bytes
        b"\x13" * 101 + b"\x14" * 101,  # groups nested too deep
    ],
)
def test_malformed_messages_are_rejected(stubs: Stubs, data: bytes) -> None:
    with pytest.raises(MalformedMessageError):
        decode(BlobChunk, data)
    assert isinstance(blob_chunk_payload(data), MalformedMessageError)
    with pytest.raises(DecodeError):
        stubs.pb2.BlobChunk.FromString(data)


def test_rules_google_protobuf_applies(stubs: Stubs) -> None:
    for data in (
        b"\x0a\x01a\x0a\x01b",  # the last value of a singular field wins
        b"\x08\x05",  # a varint on a bytes field is an unknown field
        b"\x13\x08\x01\x14",  # an unknown group is skipped
        b"\x13" * 100 + b"\x14" * 100,  # at the nesting limit
        b"\x8a\x00\x02ab",  # a tag in two bytes
    ):
        _agree(stubs, data)
    assert decode(BlobChunk, b"\x0a\x01a\x0a\x01b").data == b"b"
    assert decode(StatBlobRequest, b"\x10\x02").send_chunks is True
    assert decode(StatBlobRequest, b"\x10" + b"\x80" * 9 + b"\x02").send_chunks is False


# --- over real sockets --------------------------------------------------------------------


def _raw_put(target: str, messages: list[bytes]) -> grpc.RpcError | bytes:
    """Send ``messages`` as raw bytes in one Put, with grpcio; the error or the answer."""
    with grpc.insecure_channel(target) as channel:
        put = channel.stream_unary(
            "/tvix.castore.v1.BlobService/Put",
            request_serializer=lambda b: b,
            response_deserializer=lambda b: b,
        )
        try:
            answer: bytes = put(iter(messages), timeout=30)
        except grpc.RpcError as e:
            return e
        return answer


async def test_server_refuses_a_truncated_put_and_stores_nothing(
    castore_server: CastoreServe,
) -> None:
    import anyio.to_thread

    target = castore_server.grpcio_target
    for messages in ([b"\x0a\x05ab"], [b"\x0a\x02ab", b"\x0f"], [b"\x0a\x02ab", b"\x02\x00"]):
        result = await anyio.to_thread.run_sync(_raw_put, target, messages)
        assert isinstance(result, grpc.RpcError), result
        assert result.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "undecodable" in (result.details() or "")
    async with from_addr(castore_server.url) as client:
        assert not await client.has(B3Digest.of(b"ab"))
        assert not await client.has(B3Digest.of(b""))
    # A well-formed message on the same path is stored, so the refusal was the message's.
    good = await anyio.to_thread.run_sync(_raw_put, target, [b"\x0a\x02ab"])
    assert good == b"\x0a\x20" + blake3.blake3(b"ab").digest()


@pytest.fixture
def lying_server() -> Iterator[tuple[str, dict[str, bytes]]]:
    """A grpcio server whose three methods answer with raw bytes chosen by the test."""
    answers: dict[str, bytes] = {}

    def handler(name: str) -> Callable[..., Any]:
        if name == "Read":
            return grpc.unary_stream_rpc_method_handler(
                lambda request, context: iter([answers[name]]),
                request_deserializer=lambda b: b,
                response_serializer=lambda b: b,
            )
        if name == "Put":
            return grpc.stream_unary_rpc_method_handler(
                lambda requests, context: (list(requests), answers[name])[1],
                request_deserializer=lambda b: b,
                response_serializer=lambda b: b,
            )
        return grpc.unary_unary_rpc_method_handler(
            lambda request, context: answers[name],
            request_deserializer=lambda b: b,
            response_serializer=lambda b: b,
        )

    generic = grpc.method_handlers_generic_handler(
        "tvix.castore.v1.BlobService", {n: handler(n) for n in ("Stat", "Read", "Put")}
    )
    server = grpc.server(ThreadPoolExecutor(max_workers=4))
    server.add_generic_rpc_handlers((generic,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield f"grpc+http://127.0.0.1:{port}", answers
    finally:
        server.stop(grace=None).wait()


async def test_client_raises_on_malformed_answers(
    lying_server: tuple[str, dict[str, bytes]],
) -> None:
    url, answers = lying_server
    digest = B3Digest.of(b"ab")
    truncated = b"\x0a\x05ab"
    answers.update(Stat=b"\x12\x05\x0a\x20", Read=truncated, Put=b"\x0a\x20" + b"\x00" * 5)
    async with from_addr(url) as client:
        with pytest.raises(MalformedMessageError):
            await client.chunks(digest)
        answers["Stat"] = b""  # present, stored whole: the reader streams Read
        with pytest.raises(MalformedMessageError):
            await client.get(digest)
        with pytest.raises(MalformedMessageError) as info:
            await client.put(b"ab")
        assert isinstance(info.value, StoreError)
