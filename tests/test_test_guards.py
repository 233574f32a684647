"""The suite's own guards (tests/conftest.py) filter exactly what they say."""

from __future__ import annotations

import asyncio

import pytest
from helpers import is_late_grpc_completion


class _Handle:
    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return f"<Handle {self.name}(<_UnixSelectorEventLoop>)()>"


def test_only_a_late_grpc_completion_is_recognised() -> None:
    late = RuntimeError("Event loop is closed")
    assert is_late_grpc_completion(
        {"exception": late, "handle": _Handle("PollerCompletionQueue._handle_events")}
    )
    assert not is_late_grpc_completion({"exception": late, "handle": _Handle("other")})
    assert not is_late_grpc_completion(
        {
            "exception": RuntimeError("something else"),
            "handle": _Handle("PollerCompletionQueue._handle_events"),
        }
    )
    assert not is_late_grpc_completion({"message": "no exception"})


async def test_a_late_grpc_completion_does_not_fail_the_running_test() -> None:
    asyncio.get_running_loop().call_exception_handler(
        {
            "message": "Exception in callback",
            "exception": RuntimeError("Event loop is closed"),
            "handle": _Handle("PollerCompletionQueue._handle_events"),
        }
    )


@pytest.mark.xfail(raises=ValueError, strict=True)
async def test_any_other_callback_error_still_fails_the_running_test() -> None:
    asyncio.get_running_loop().call_exception_handler(
        {
            "message": "Exception in callback",
            "exception": ValueError("a real failure"),
            "handle": _Handle("PollerCompletionQueue._handle_events"),
        }
    )
