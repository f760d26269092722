"""A user-space WAN link: a TCP proxy that delays and rate-limits the byte stream.

The kernel on our benchmark machines has no `netem` qdisc, so the link between a hospital and
the body service is emulated here, in user space:

    python -m festa.simulations.netem --listen 127.0.0.1:7071 --target 127.0.0.1:7070 \\
        --rtt-ms 80 --rate-mbit 100

Every accepted connection gets its own connection to `target`; each direction is an
independent one-way link with

- propagation delay `rtt/2`;
- a serialization rate: a chunk of n bytes read at time t *departs* at
  `max(t, previous departure) + n*8/rate` and *arrives* (is written to the other side)
  `delay` later. Chunks wait in a FIFO release queue, so the reader keeps reading while earlier
  chunks are still "on the wire": the delay does not cut throughput (a copy loop that slept
  per chunk would pay the RTT per chunk), and a long transfer runs at `rate`;
- a bounded buffer: when more than `buffer_bytes` are queued in one direction the reader stops
  reading, and TCP flow control pushes back on the sender (no loss, like a deep router queue
  with back-pressure). The default holds several bandwidth-delay products.

It is a byte proxy: gRPC (HTTP/2) runs over it unchanged, TLS too. `WanLink` runs the proxy in
a background thread with a start/stop API (and as a context manager):

    with WanLink(("127.0.0.1", 7070), rtt_ms=80, rate_mbit=100) as wan:
        channel = grpc.insecure_channel(wan.address)

- optional loss (`loss`, a probability per chunk, seeded by `seed`): TCP below the proxy never
  loses bytes, so a lost chunk is what a reliable stream makes of it: it arrives one
  retransmission timeout (`rto_ms`) late, and the chunks behind it wait (head-of-line blocking).

Not modelled: jitter, reordering, TCP slow start of a real path (the proxy's own loopback
sockets never leave the host).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import random
import threading
from collections import deque
from dataclasses import dataclass
from typing import NotRequired, TypedDict, Unpack

log = logging.getLogger("festa.netem")

_CHUNK = 64 * 1024


@dataclass(frozen=True)
class LinkShape:
    """One direction of the emulated link: one-way delay (s), rate (bit/s, 0 = unlimited),
    loss (probability a chunk is retransmitted) and the retransmission timeout (s)."""

    delay_s: float
    rate_bps: float
    buffer_bytes: int
    loss: float = 0.0
    rto_s: float = 0.2

    @classmethod
    def of(
        cls,
        rtt_ms: float,
        rate_mbit: float,
        buffer_bytes: int | None = None,
        loss: float = 0.0,
        rto_ms: float = 200.0,
    ) -> LinkShape:
        """The shape of a link with round-trip time `rtt_ms` and rate `rate_mbit` (0: unlimited);
        the buffer defaults to 4 bandwidth-delay products, at least 4 MiB. A share `loss` of
        chunks arrives `rto_ms` late (a TCP retransmission)."""
        if rtt_ms < 0 or rate_mbit < 0 or rto_ms < 0:
            raise ValueError(
                f"rtt_ms, rate_mbit and rto_ms must be >= 0, got {rtt_ms}, {rate_mbit}, {rto_ms}"
            )
        if not 0.0 <= loss < 1.0:
            raise ValueError(f"loss must be in [0, 1), got {loss}")
        rate = rate_mbit * 1e6
        if buffer_bytes is None:
            buffer_bytes = max(4 << 20, int(4 * rate / 8 * rtt_ms / 1000))
        return cls(rtt_ms / 2000.0, rate, buffer_bytes, loss, rto_ms / 1000.0)

    def serialization_s(self, nbytes: int) -> float:
        return nbytes * 8 / self.rate_bps if self.rate_bps > 0 else 0.0


class LinkArgs(TypedDict):
    """Keyword arguments of `LinkShape.of`, as `WanProxy` and `WanLink` take them."""

    rtt_ms: float
    rate_mbit: float
    buffer_bytes: NotRequired[int | None]
    loss: NotRequired[float]
    rto_ms: NotRequired[float]


class _Direction:
    """Bytes from `reader` to `writer` through one `LinkShape` (reader task + release task)."""

    def __init__(
        self,
        shape: LinkShape,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        rng: random.Random | None = None,
    ):
        self.shape = shape
        self.rng = rng or random.Random(0)
        self.lost_chunks = 0
        self.reader = reader
        self.writer = writer
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival time, chunk); b"" = EOF
        self.queued_bytes = 0
        self.changed = asyncio.Event()
        self.last_departure = 0.0
        self.bytes_carried = 0

    async def run(self) -> None:
        """Carry bytes until EOF on the reader or an error on either side."""
        await _all_or_nothing(self._read(), self._release())

    async def _read(self) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                while self.queued_bytes > self.shape.buffer_bytes:
                    self.changed.clear()
                    await self.changed.wait()
                chunk = await self.reader.read(_CHUNK)
                now = loop.time()
                departure = max(now, self.last_departure) + self.shape.serialization_s(len(chunk))
                self.last_departure = departure
                arrival = departure + self.shape.delay_s
                if chunk and self.shape.loss and self.rng.random() < self.shape.loss:
                    arrival += self.shape.rto_s  # retransmitted; FIFO: later chunks wait too
                    self.lost_chunks += 1
                # FIFO release: a chunk never arrives before the one ahead of it
                arrival = max(arrival, self.queue[-1][0]) if self.queue else arrival
                self.queue.append((arrival, chunk))
                self.queued_bytes += len(chunk)
                self.changed.set()
                if not chunk:
                    return
        except (ConnectionError, OSError):
            self.queue.append((loop.time(), b""))
            self.changed.set()

    async def _release(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            while not self.queue:
                self.changed.clear()
                await self.changed.wait()
            arrival, chunk = self.queue[0]
            wait = arrival - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            self.queue.popleft()
            if not chunk:  # EOF: pass the half-close on
                with contextlib.suppress(OSError, RuntimeError):
                    if self.writer.can_write_eof():
                        self.writer.write_eof()
                return
            self.writer.write(chunk)
            await self.writer.drain()
            self.queued_bytes -= len(chunk)
            self.bytes_carried += len(chunk)
            self.changed.set()


class WanProxy:
    """The asyncio proxy: listen on (host, port), forward every connection to `target`."""

    def __init__(self, target: tuple[str, int], seed: int = 0, **link: Unpack[LinkArgs]):
        self.shape = LinkShape.of(**link)
        self.target = target
        self.rng = random.Random(seed)  # loss draws, shared by every connection in order
        self.connections = 0
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0
        self.lost_chunks = 0
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task] = set()

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> int:
        """Listen; returns the bound port."""
        self._server = await asyncio.start_server(self._serve, host, port)
        return self._server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop listening and cut every open connection."""
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None

    async def _serve(self, c_reader: asyncio.StreamReader, c_writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        t_writer = None
        try:
            t_reader, t_writer = await asyncio.open_connection(*self.target)
            self.connections += 1
            up = _Direction(self.shape, c_reader, t_writer, self.rng)
            down = _Direction(self.shape, t_reader, c_writer, self.rng)
            try:
                await _all_or_nothing(up.run(), down.run())
            finally:
                self.bytes_up += up.bytes_carried
                self.bytes_down += down.bytes_carried
                self.lost_chunks += up.lost_chunks + down.lost_chunks
        except (ConnectionError, OSError) as exc:
            log.debug("netem connection ended: %s", exc)
        except asyncio.CancelledError:
            pass
        finally:
            for writer in (c_writer, t_writer):
                if writer is not None:
                    writer.close()
                    with contextlib.suppress(Exception):
                        await writer.wait_closed()
            self._tasks.discard(task)


async def _all_or_nothing(*coros) -> None:
    """Run `coros` together; the first to fail cancels the others and its error propagates."""
    tasks = [asyncio.ensure_future(c) for c in coros]
    try:
        done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        for task in done:
            if task.exception() is not None:
                raise task.exception()  # type: ignore[misc]
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


class WanLink:
    """A `WanProxy` in a background thread: `start()` returns the port, `stop()` ends it."""

    def __init__(
        self,
        target: tuple[str, int],
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        seed: int = 0,
        **link: Unpack[LinkArgs],
    ):
        self.proxy = WanProxy(target, seed=seed, **link)
        self.host = host
        self.port = port
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None

    @property
    def address(self) -> str:
        """`host:port` clients dial instead of the target."""
        return f"{self.host}:{self.port}"

    def start(self) -> int:
        if self._thread is not None:
            raise RuntimeError("the WAN link is already running")
        loop = asyncio.new_event_loop()
        ready: list[int | BaseException] = []
        started = threading.Event()

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                ready.append(loop.run_until_complete(self.proxy.start(self.host, self.port)))
            except BaseException as exc:  # reported to the caller of start()
                ready.append(exc)
                started.set()
                return
            started.set()
            loop.run_forever()
            loop.run_until_complete(self.proxy.stop())
            loop.close()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="netem", daemon=True)
        self._thread.start()
        started.wait()
        if isinstance(ready[0], BaseException):
            self._thread.join()
            self._thread = None
            raise ready[0]
        self.port = ready[0]
        return self.port

    def stop(self) -> None:
        if self._thread is None or self._loop is None:
            return
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._thread = None

    def __enter__(self) -> WanLink:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    if not host or not port.isdigit():
        raise argparse.ArgumentTypeError(f"expected HOST:PORT, got {text!r}")
    return host, int(port)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--listen", type=_address, required=True, help="HOST:PORT to listen on")
    parser.add_argument("--target", type=_address, required=True, help="HOST:PORT to forward to")
    parser.add_argument("--rtt-ms", type=float, default=80.0)
    parser.add_argument("--rate-mbit", type=float, default=100.0, help="0: unlimited")
    parser.add_argument("--buffer-bytes", type=int, default=None)
    parser.add_argument("--loss", type=float, default=0.0, help="share of chunks retransmitted")
    parser.add_argument("--rto-ms", type=float, default=200.0, help="retransmission delay")
    parser.add_argument("--seed", type=int, default=0, help="seed of the loss draws")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)

    async def serve() -> None:
        proxy = WanProxy(
            args.target,
            rtt_ms=args.rtt_ms,
            rate_mbit=args.rate_mbit,
            buffer_bytes=args.buffer_bytes,
            loss=args.loss,
            rto_ms=args.rto_ms,
            seed=args.seed,
        )
        port = await proxy.start(*args.listen)
        log.info(
            "netem %s:%d -> %s:%d, RTT %g ms, %g Mbit/s",
            args.listen[0],
            port,
            *args.target,
            args.rtt_ms,
            args.rate_mbit,
        )
        try:
            await asyncio.Event().wait()
        finally:
            await proxy.stop()

    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(serve())


if __name__ == "__main__":
    main()
