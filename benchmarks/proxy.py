"""A TCP proxy on 127.0.0.1 that delays every request by a fixed time.

Latency on the network path, not a wrapper inside castore: the client (obstore's HTTP
stack) sees slow round trips exactly as it would over a long link, with its own
connection pool, retries and concurrency left as they are.

Each client connection gets its own connection upstream. In the client-to-server
direction, the first bytes that arrive after the server has answered (or the first
bytes of a connection) start a new request: they wait ``delay`` seconds before they are
forwarded, and the rest of that request follows right behind them. HTTP/1.1 sends the
next request on a connection only once the previous response has arrived, so every
request pays the delay once, as if one way of the path were ``delay`` long. Responses
pass at once.

Run as a program (``python -m benchmarks.proxy UPSTREAM_PORT DELAY_SECONDS``) it
prints ``listening <port>`` and runs until its standard input closes, then prints
``requests <n>`` (the requests it delayed) and exits. A separate process, so that its
own CPU does not take the GIL from the castore process it measures.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys

from benchmarks.child import module_command, module_env

__all__ = ["DelayProxy", "ProxyProcess"]

_BUF = 256 << 10


class DelayProxy:
    """The proxy, on the running event loop (see the module docstring)."""

    def __init__(self, upstream_host: str, upstream_port: int, delay: float) -> None:
        self.upstream = (upstream_host, upstream_port)
        self.delay = delay
        self.requests = 0
        self.port = 0
        self._server: asyncio.Server | None = None
        self._handlers: set[asyncio.Task[None]] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the port."""
        self._server = await asyncio.start_server(self._handle, host, port)
        self.port = self._server.sockets[0].getsockname()[1]
        return self.port

    async def close(self) -> None:
        """Stop listening and end the open connections."""
        if self._server is not None:
            self._server.close()
        for task in list(self._handlers):
            task.cancel()
        if self._handlers:
            await asyncio.wait(self._handlers, timeout=5)

    async def _handle(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        try:
            await self._pump(client_r, client_w)
        except asyncio.CancelledError:
            # Only close() cancels a connection; ending quietly keeps asyncio's stream
            # callback from reporting the cancellation as an error.
            pass
        finally:
            self._handlers.discard(task)
            client_w.close()

    async def _pump(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            up_r, up_w = await asyncio.open_connection(*self.upstream)
        except OSError:
            client_w.close()
            return
        answered = True  # no request in progress: the next bytes start one

        async def upstream() -> None:
            nonlocal answered
            try:
                while data := await client_r.read(_BUF):
                    if answered:
                        answered = False
                        self.requests += 1
                        if self.delay > 0:
                            await asyncio.sleep(self.delay)
                    up_w.write(data)
                    await up_w.drain()
                if up_w.can_write_eof():
                    up_w.write_eof()
            except (ConnectionError, OSError):
                pass

        async def downstream() -> None:
            nonlocal answered
            try:
                while data := await up_r.read(_BUF):
                    answered = True
                    client_w.write(data)
                    await client_w.drain()
            except (ConnectionError, OSError):
                pass
            finally:
                client_w.close()

        try:
            await asyncio.gather(upstream(), downstream())
        finally:
            up_w.close()
            client_w.close()


class ProxyProcess:
    """:class:`DelayProxy` in a child process: ``with ProxyProcess(port, 0.02) as p: p.port``."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.upstream_port = upstream_port
        self.delay = delay
        self.port = 0
        self.requests = 0
        self._proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> ProxyProcess:
        self._proc = subprocess.Popen(
            module_command("benchmarks.proxy", str(self.upstream_port), str(self.delay)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env=module_env(),
        )
        assert self._proc.stdout is not None
        line = self._proc.stdout.readline().split()
        if len(line) != 2 or line[0] != "listening":
            self._proc.kill()
            raise RuntimeError(f"the delay proxy did not start: {line!r}")
        self.port = int(line[1])
        return self

    def __exit__(self, *exc: object) -> None:
        proc = self._proc
        if proc is None:
            return
        assert proc.stdin is not None and proc.stdout is not None
        proc.stdin.close()
        try:
            out = proc.stdout.read()
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            return
        for line in out.splitlines():
            if line.startswith("requests "):
                self.requests = int(line.split()[1])


async def _serve(upstream_port: int, delay: float) -> None:
    proxy = DelayProxy("127.0.0.1", upstream_port, delay)
    port = await proxy.start()
    print(f"listening {port}", flush=True)
    loop = asyncio.get_running_loop()
    # Run until the parent closes our standard input.
    await loop.run_in_executor(None, sys.stdin.read)
    await proxy.close()
    print(f"requests {proxy.requests}", flush=True)


if __name__ == "__main__":
    asyncio.run(_serve(int(sys.argv[1]), float(sys.argv[2])))
