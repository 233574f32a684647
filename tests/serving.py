"""``castore serve`` as a real process, for the tests that run it (gRPC and HTTP)."""

from __future__ import annotations

import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator

import anyio
import anyio.abc
from anyio.streams.buffered import BufferedByteReceiveStream

LISTENING = "castore serve: listening on "


class Served:
    """A ``python -m castore serve …`` process and the stderr lines it printed so far."""

    def __init__(self, process: anyio.abc.Process) -> None:
        self.process = process
        self.lines: list[str] = []
        self.changed = anyio.Event()

    async def collect(self) -> None:
        assert self.process.stderr is not None
        buffered = BufferedByteReceiveStream(self.process.stderr)
        while True:
            try:
                line = await buffered.receive_until(b"\n", 1 << 16)
            except (anyio.EndOfStream, anyio.IncompleteRead):
                break
            self.lines.append(line.decode())
            self.changed.set()
            self.changed = anyio.Event()
        self.changed.set()

    async def wait_for(self, prefix: str) -> str:
        """The rest of the first stderr line starting with ``prefix``."""
        with anyio.fail_after(30):
            while True:
                for line in self.lines:
                    if line.startswith(prefix):
                        return line[len(prefix) :].strip()
                if self.process.returncode is not None:
                    raise AssertionError("castore serve exited:\n" + "\n".join(self.lines))
                await self.changed.wait()

    async def url(self) -> str:
        return await self.wait_for(LISTENING)


@contextlib.asynccontextmanager
async def castore_serve(*args: str) -> AsyncIterator[Served]:
    command = [sys.executable, "-m", "castore", "serve", *args]
    env = {k: v for k, v in os.environ.items() if not k.startswith("CASTORE_")}
    async with await anyio.open_process(command, env=env) as process:
        served = Served(process)
        async with anyio.create_task_group() as tg:
            tg.start_soon(served.collect)
            try:
                yield served
            finally:
                if process.returncode is None:
                    process.send_signal(signal.SIGTERM)
                with anyio.fail_after(30):
                    await process.wait()
