"""Shared test setup.

Every ``async def`` test runs under anyio's pytest plugin on asyncio (``anyio_mode =
"auto"`` in pyproject.toml). Two guards watch the event loop in every async test:
blockbuster fails a test when castore's code makes a blocking call (file, socket, sleep)
on the loop, and a slow-callback monitor fails it when one step of the loop runs longer
than ``CASTORE_MAX_LOOP_STALL`` seconds and spends at least half of that on the CPU
(work that belongs in a worker thread; see ``helpers.StallWatcher``).
A third keeps grpc.aio's late completions for an earlier test's closed loop out of the
running test's errors (and nothing else).
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import os
from collections.abc import Iterator
from typing import Any

import pytest
from blockbuster import blockbuster_ctx
from helpers import StallWatcher, is_late_grpc_completion, short_dir

MAX_LOOP_STALL = float(os.environ.get("CASTORE_MAX_LOOP_STALL", "1.0"))


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def no_blocking_in_castore(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail async tests in which castore blocks the event loop."""
    fn = getattr(request.node, "function", None)
    fn = getattr(getattr(fn, "hypothesis", None), "inner_test", fn)
    if fn is None or not inspect.iscoroutinefunction(fn) or "allow_blocking" in request.keywords:
        yield
        return
    watcher = StallWatcher(MAX_LOOP_STALL)
    logger = logging.getLogger("asyncio")
    logger.addHandler(watcher)
    policy = asyncio.get_event_loop_policy()
    original = policy.new_event_loop

    def new_loop() -> asyncio.AbstractEventLoop:
        loop = original()
        watcher.watch(loop)
        return loop

    policy.new_event_loop = new_loop  # type: ignore[method-assign]
    try:
        with blockbuster_ctx(["castore"], excluded_modules=["castore.testing"]):
            yield
    finally:
        policy.new_event_loop = original  # type: ignore[method-assign]
        logger.removeHandler(watcher)
    if watcher.stalls:
        pytest.fail("the event loop stalled:\n" + "\n".join(watcher.stalls[:5]))


@pytest.fixture(autouse=True)
def late_grpc_completions_ignored(request: pytest.FixtureRequest) -> Iterator[None]:
    """Keep another loop's late grpc.aio completions out of an async test's errors.

    anyio's test runner installs an exception handler that fails the test with every
    exception raised in a callback; each loop created during the test wraps that handler
    so that it passes on everything but :func:`is_late_grpc_completion`.
    """
    fn = getattr(request.node, "function", None)
    fn = getattr(getattr(fn, "hypothesis", None), "inner_test", fn)
    if fn is None or not inspect.iscoroutinefunction(fn):
        yield
        return
    policy = asyncio.get_event_loop_policy()
    original = policy.new_event_loop

    def new_loop() -> asyncio.AbstractEventLoop:
        loop = original()
        set_handler = loop.set_exception_handler

        def filtered(handler: Any) -> None:
            if handler is None:
                set_handler(None)
                return

            def handle(lp: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
                if not is_late_grpc_completion(context):
                    handler(lp, context)

            set_handler(handle)

        loop.set_exception_handler = filtered  # type: ignore[method-assign]
        return loop

    policy.new_event_loop = new_loop  # type: ignore[method-assign]
    try:
        yield
    finally:
        policy.new_event_loop = original  # type: ignore[method-assign]


@pytest.fixture
def short_tmp() -> Iterator[str]:
    """A folder with a short path, for unix sockets (their paths are limited to ~108 bytes)."""
    with short_dir() as path:
        yield path
