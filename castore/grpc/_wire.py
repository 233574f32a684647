"""Strict protobuf decoding of the ``BlobService`` messages.

betterproto2's ``parse`` trusts its input: a length prefix that claims more bytes than
follow is cut short, and invalid wire types or field number 0 pass. A ``Put`` message
``0a 05 61 62`` (five bytes announced, two sent) would be stored as the blob ``ab``. Every
message castore receives is therefore decoded here, by the rules google.protobuf applies:

- a tag is a varint of at most 32 bits; field number 0 and wire types 6 and 7 are errors;
- a varint is at most 10 bytes and is taken modulo 2**64; a length is at most 32 bits
  and may not run past the end of its message;
- a field whose wire type differs from the schema's is an unknown field, skipped like
  any other (groups included, matched by field number, nested at most 100 deep);
- the last value of a singular field wins; ``bool`` is any non-zero varint.

The tests hold this decoder against google.protobuf on arbitrary bytes: both accept with
equal values, or both reject.

grpc.aio calls a method's deserializer on every received message, but a deserializer that
raises is not an error it reports: the server answers ``UNKNOWN`` with a logged traceback,
the client gets ``None`` in place of the message. So :func:`deserializer` returns the
:class:`MalformedMessageError` instead of raising it, and :func:`checked` raises it where
the message is used: the server answers ``INVALID_ARGUMENT``, the client raises.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import betterproto2

from castore._proto.tvix.castore.v1 import (
    BlobChunk,
    PutBlobResponse,
    ReadBlobRequest,
    StatBlobRequest,
    StatBlobResponse,
    StatBlobResponseChunkMeta,
)
from castore.errors import MalformedMessageError

__all__ = [
    "blob_chunk_payload",
    "checked",
    "decode",
    "deserializer",
    "encode",
    "encode_blob_chunk",
]

_M = TypeVar("_M", bound=betterproto2.Message)

# Wire types.
_VARINT, _I64, _LEN, _SGROUP, _EGROUP, _I32 = 0, 1, 2, 3, 4, 5
_MASK64 = (1 << 64) - 1
_MAX_DEPTH = 100

Kind = Literal["bytes", "bool", "uint64", "message"]
_WIRE_OF: dict[str, int] = {"bytes": _LEN, "message": _LEN, "bool": _VARINT, "uint64": _VARINT}


@dataclass(frozen=True, slots=True)
class _Field:
    name: str
    kind: Kind
    repeated: bool = False
    message: _Schema | None = None


@dataclass(frozen=True, slots=True)
class _Schema:
    build: Callable[..., Any]
    fields: dict[int, _Field] = field(default_factory=dict)


_CHUNK_META = _Schema(
    StatBlobResponseChunkMeta, {1: _Field("digest", "bytes"), 2: _Field("size", "uint64")}
)
_SCHEMAS: dict[type[betterproto2.Message], _Schema] = {
    BlobChunk: _Schema(BlobChunk, {1: _Field("data", "bytes")}),
    ReadBlobRequest: _Schema(ReadBlobRequest, {1: _Field("digest", "bytes")}),
    PutBlobResponse: _Schema(PutBlobResponse, {1: _Field("digest", "bytes")}),
    StatBlobRequest: _Schema(
        StatBlobRequest,
        {
            1: _Field("digest", "bytes"),
            2: _Field("send_chunks", "bool"),
            3: _Field("send_bao", "bool"),
        },
    ),
    StatBlobResponse: _Schema(
        StatBlobResponse,
        {
            2: _Field("chunks", "message", repeated=True, message=_CHUNK_META),
            3: _Field("bao", "bytes"),
        },
    ),
    StatBlobResponseChunkMeta: _CHUNK_META,
}


class _Bad(Exception):
    """Internal: the reason a message does not decode."""


def decode(message_type: type[_M], data: bytes | bytearray | memoryview) -> _M:
    """Decode ``data`` as ``message_type``, or raise :class:`MalformedMessageError`.

    Only the ``tvix.castore.v1`` blob messages are known here.
    """
    schema = _SCHEMAS[message_type]
    raw = bytes(data)
    try:
        message: _M = _message(raw, 0, len(raw), schema, 0)
    except _Bad as e:
        raise MalformedMessageError(f"{message_type.__name__}: {e}") from None
    return message


def _varint(data: bytes, pos: int, end: int) -> tuple[int, int]:
    result = 0
    for shift in range(0, 70, 7):
        if pos >= end:
            raise _Bad("truncated varint")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            return result & _MASK64, pos
    raise _Bad("varint longer than 10 bytes")


def _varint32(data: bytes, pos: int, end: int, what: str) -> tuple[int, int]:
    result = 0
    for shift in range(0, 35, 7):
        if pos >= end:
            raise _Bad(f"truncated {what}")
        b = data[pos]
        pos += 1
        result |= (b & 0x7F) << shift
        if b < 0x80:
            if result > 0xFFFFFFFF:
                raise _Bad(f"{what} exceeds 32 bits")
            return result, pos
    raise _Bad(f"{what} longer than 5 bytes")


def _tag(data: bytes, pos: int, end: int) -> tuple[int, int, int]:
    tag, pos = _varint32(data, pos, end, "tag")
    number, wire = tag >> 3, tag & 7
    if number == 0:
        raise _Bad("field number 0")
    if wire > _I32:
        raise _Bad(f"invalid wire type {wire}")
    return number, wire, pos


def _value_end(data: bytes, pos: int, end: int, number: int, wire: int, depth: int) -> int:
    """The end of a field's value (wire type not END_GROUP), checking it lies in bounds."""
    if wire == _VARINT:
        return _varint(data, pos, end)[1]
    if wire == _LEN:
        n, pos = _varint32(data, pos, end, "length")
        stop = pos + n
    elif wire == _I64:
        stop = pos + 8
    elif wire == _I32:
        stop = pos + 4
    elif wire == _SGROUP:
        return _skip_group(data, pos, end, number, depth + 1)
    else:
        raise _Bad(f"end of group {number} without its start")
    if stop > end:
        raise _Bad(f"field {number} runs past the end of the message")
    return stop


def _skip_group(data: bytes, pos: int, end: int, number: int, depth: int) -> int:
    if depth > _MAX_DEPTH:
        raise _Bad("groups nested too deep")
    while pos < end:
        inner, wire, pos = _tag(data, pos, end)
        if wire == _EGROUP:
            if inner != number:
                raise _Bad(f"group {number} ended by the end of group {inner}")
            return pos
        pos = _value_end(data, pos, end, inner, wire, depth)
    raise _Bad(f"group {number} is not ended")


def _message(data: bytes, pos: int, end: int, schema: _Schema, depth: int) -> Any:
    if depth > _MAX_DEPTH:
        raise _Bad("messages nested too deep")
    values: dict[str, Any] = {}
    fields = schema.fields
    while pos < end:
        number, wire, pos = _tag(data, pos, end)
        spec = fields.get(number)
        if spec is None or wire != _WIRE_OF[spec.kind]:
            pos = _value_end(data, pos, end, number, wire, depth)
            continue
        if wire == _VARINT:
            value, pos = _varint(data, pos, end)
            values[spec.name] = bool(value) if spec.kind == "bool" else value
            continue
        n, pos = _varint32(data, pos, end, "length")
        stop = pos + n
        if stop > end:
            raise _Bad(f"field {number} claims {n} bytes, {end - pos} remain")
        if spec.message is None:
            values[spec.name] = data[pos:stop]
        else:
            item = _message(data, pos, stop, spec.message, depth + 1)
            if spec.repeated:
                values.setdefault(spec.name, []).append(item)
            else:  # pragma: no cover - no singular message fields in this protocol
                values[spec.name] = item
        pos = stop
    return schema.build(**values)


def deserializer(message_type: type[_M]) -> Callable[[bytes], _M | MalformedMessageError]:
    """A grpc.aio deserializer that decodes strictly and returns, not raises, the error."""

    def parse(data: bytes) -> _M | MalformedMessageError:
        try:
            return decode(message_type, data)
        except MalformedMessageError as e:
            return e

    return parse


def blob_chunk_payload(data: bytes) -> memoryview | MalformedMessageError:
    """A ``BlobChunk``'s ``data`` as a view of the received ``data``, not a copy; or the
    :class:`MalformedMessageError` saying why it does not decode (returned, not raised,
    as :func:`deserializer` does).

    The deserializer of the server's ``Put``, whose payloads go to the store's writer as
    they are (a read-only view of ``bytes`` is kept without a copy by the stores that
    keep what they are given). A message that is exactly field 1 and its bytes, as every
    client sends it, is read here; any other shape is decoded by :func:`decode`, with the
    same result.
    """
    end = len(data)
    try:
        number, wire, pos = _tag(data, 0, end)
        if number == 1 and wire == _LEN:
            n, pos = _varint32(data, pos, end, "length")
            if pos + n == end:
                return memoryview(data)[pos:]
    except _Bad:
        pass  # decode() says why
    try:
        return memoryview(decode(BlobChunk, data).data)
    except MalformedMessageError as e:
        return e


def checked(received: _M | MalformedMessageError) -> _M:
    """The message a deserializer made, or its :class:`MalformedMessageError` raised."""
    if isinstance(received, MalformedMessageError):
        raise received
    return received


def encode(message: betterproto2.Message) -> bytes:
    """A message's wire bytes (the serializer of the calls that send whole messages)."""
    return bytes(message)


def encode_blob_chunk(data: bytes | bytearray | memoryview) -> bytes:
    """``BlobChunk(data=data)`` on the wire, with one copy of ``data``.

    The serializer of ``Put`` (client) and ``Read`` (server), which send payloads of
    256 KiB: encoding through the message class would copy each payload again.
    """
    n = len(data)
    if n == 0:
        return b""  # proto3 leaves a field at its default value out
    head = bytearray(b"\x0a")
    while n > 0x7F:
        head.append((n & 0x7F) | 0x80)
        n >>= 7
    head.append(n)
    return b"".join((head, data))
