"""The suite's own guards (tests/conftest.py) filter exactly what they say."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest
from helpers import StallWatcher, is_late_grpc_completion


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


def _run_one_step(watcher: StallWatcher, step: Callable[[], None]) -> None:
    """Run ``step`` as one step of a fresh, watched event loop."""
    logger = logging.getLogger("asyncio")
    logger.addHandler(watcher)
    loop = asyncio.new_event_loop()
    try:
        watcher.watch(loop)

        async def main() -> None:
            await asyncio.sleep(3 * watcher.beat)  # a few heartbeats first
            step()

        loop.run_until_complete(main())
    finally:
        loop.close()
        logger.removeHandler(watcher)


def _spin(seconds: float) -> None:
    end = time.thread_time() + seconds
    while time.thread_time() < end:
        pass


def test_a_step_that_keeps_the_cpu_is_a_stall() -> None:
    watcher = StallWatcher(0.2)
    _run_one_step(watcher, lambda: _spin(0.4))
    assert len(watcher.stalls) == 1
    assert "CPU of the loop's thread" in watcher.stalls[0]


def test_a_slow_step_that_used_no_cpu_is_not_a_stall() -> None:
    # What a step looks like on a loaded machine: long on the wall clock, short on the CPU.
    watcher = StallWatcher(0.2, wall_factor=10)
    _run_one_step(watcher, lambda: time.sleep(0.4))
    assert watcher.stalls == []


def test_a_step_far_over_the_limit_is_a_stall_whatever_its_cpu() -> None:
    watcher = StallWatcher(0.1, wall_factor=3)
    _run_one_step(watcher, lambda: time.sleep(0.4))
    assert len(watcher.stalls) == 1


def test_the_stall_rule() -> None:
    watcher = StallWatcher(1.0)
    assert not watcher.is_stall(0.9, 0.9)
    assert watcher.is_stall(1.2, 0.6)
    assert not watcher.is_stall(1.2, 0.1)
    assert watcher.is_stall(1.2, None)
    assert watcher.is_stall(5.0, 0.0)
