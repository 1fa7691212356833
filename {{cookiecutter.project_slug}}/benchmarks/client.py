"""The load client: streams read as EventSource reads them, spread over worker processes.

Each worker process runs an asyncio loop holding its share of the streams (one raw socket each,
one ``GET`` with ``Accept: text/event-stream``); it decodes the chunked body and parses the events
itself, and records when each one arrived. Publish and receipt times come from the same clock
(``time.perf_counter()``, CLOCK_MONOTONIC, shared by every process on the machine), so latencies
are measured across processes. The coordinator drives the workers through pipes.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import re
import time
from array import array
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from typing import Any, cast

from .launcher import raise_open_file_limit
from .procfs import own_cpu_seconds

# Events carry {"seq": n, ...}: compact from the project and the bare callable, with a space from
# the article's json.dumps().
SEQ = re.compile(rb'\ndata: \{"seq": ?(\d+)')


class StreamError(Exception):
    pass


class Receipts:
    """What arrived when, in this worker, for the phase being measured."""

    def __init__(self) -> None:
        self.seqs = array("q")
        self.times = array("d")
        self.first_seq = 0
        self.expected = 0
        self.unexpected = 0  # duplicates, out of order, or from before the phase
        self.on_complete: asyncio.Future[None] | None = None

    def start_phase(self, first_seq: int, expected: int, done: asyncio.Future[None]) -> None:
        self.seqs, self.times = array("q"), array("d")
        self.first_seq, self.expected, self.on_complete = first_seq, expected, done
        if expected == 0:
            done.set_result(None)

    def record(self, seq: int, received_at: float) -> None:
        if seq < self.first_seq:
            self.unexpected += 1
            return
        self.seqs.append(seq)
        self.times.append(received_at)
        done = self.on_complete
        if len(self.seqs) == self.expected and done is not None and not done.done():
            done.set_result(None)


class StreamClient(asyncio.Protocol):
    """One stream: sends the GET, checks the response head, de-chunks the body, finds events."""

    def __init__(self, request: bytes, receipts: Receipts) -> None:
        self._request = request
        self._receipts = receipts
        self._head = bytearray()
        self._raw = bytearray()  # chunked body not yet decoded
        self._text = bytearray()  # decoded body not yet split into complete records
        self._chunk_left = 0
        self._crlf_left = 0
        self._in_body = False
        self.last_seq = -1
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self._head[:end]), bytes(self._head[end + 4 :])
            self._in_body = True
            self._check_head(head)
        self._raw += data
        body = self._dechunk()
        if body:
            self._text += body
            self._read_records(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(StreamError(f"stream closed before it started ({exc})"))
        if not self.closed.done():
            self.closed.set_result(None)

    def _check_head(self, head: bytes) -> None:
        status_line, _, headers = head.partition(b"\r\n")
        lowered = headers.lower()
        problem = None
        if not status_line.startswith(b"HTTP/1.1 200"):
            problem = f"answered {status_line.decode(errors='replace')}"
        elif b"content-type: text/event-stream" not in lowered:
            problem = "answered 200 without Content-Type: text/event-stream"
        elif b"transfer-encoding: chunked" not in lowered:
            problem = "answered without chunked transfer encoding"
        if problem is not None:
            if not self.ready.done():
                self.ready.set_exception(StreamError(f"the stream URL {problem}"))
            assert self.transport is not None
            self.transport.close()

    def _dechunk(self) -> bytes:
        """Decode what is complete of the chunked body (chunk sizes in hex, CRLF-terminated)."""
        raw, position, body = self._raw, 0, bytearray()
        while position < len(raw):
            if self._chunk_left:
                taken = raw[position : position + self._chunk_left]
                body += taken
                position += len(taken)
                self._chunk_left -= len(taken)
                if not self._chunk_left:
                    self._crlf_left = 2
            elif self._crlf_left:
                skipped = min(self._crlf_left, len(raw) - position)
                position += skipped
                self._crlf_left -= skipped
            else:
                end = raw.find(b"\r\n", position)
                if end < 0:
                    break
                size = int(bytes(raw[position:end]).split(b";")[0], 16)
                position = end + 2
                if size == 0:  # the server ended the stream
                    break
                self._chunk_left = size
        del raw[:position]
        return bytes(body)

    def _read_records(self, now: float) -> None:
        end = self._text.rfind(b"\n\n")
        if end < 0:
            return
        # A leading newline lets every "data:" line, even the first, match "\ndata: ".
        records = b"\n" + bytes(self._text[: end + 2])
        del self._text[: end + 2]
        if not self.ready.done():
            if b"\n: connected\n" in records:
                self.ready.set_result(None)  # the server has subscribed it: nothing is missed
            elif b"\n: " in records and b"\nretry:" not in records:
                self.ready.set_exception(StreamError(f"stream said {records.strip()[:200]!r}"))
        for match in SEQ.finditer(records):
            seq = int(match.group(1))
            if seq <= self.last_seq:
                self._receipts.unexpected += 1
                continue
            self.last_seq = seq
            self._receipts.record(seq, now)


def stream_request(port: int, path: str, token: str | None) -> bytes:
    authorization = f"Authorization: Token {token}\r\n" if token else ""
    return (
        f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n{authorization}"
        "Accept: text/event-stream\r\nCache-Control: no-cache\r\n\r\n"
    ).encode()


# --------------------------------------------------------------------------------------------
# In each worker process


class _Worker:
    def __init__(self, conn: Connection) -> None:
        self.conn = conn
        self.receipts = Receipts()
        self.clients: list[StreamClient] = []
        self.phase_cpu = 0.0

    async def serve(self) -> None:
        """Run each command as a task, so that ``close`` can cut an ``open`` short."""
        loop = asyncio.get_running_loop()
        finished = loop.create_future()
        tasks: set[asyncio.Task[None]] = set()

        async def run(command: str, *args: Any) -> None:
            with contextlib.suppress(asyncio.CancelledError):
                self.conn.send(await getattr(self, command)(*args))

        def read_command() -> None:
            try:
                command, *args = self.conn.recv()
            except EOFError:  # the coordinator is gone
                command, args = "exit", []
            if command == "exit":
                loop.remove_reader(self.conn.fileno())
                if not finished.done():
                    finished.set_result(None)
                return
            if command == "close":
                for task in tasks:
                    task.cancel()
            task = loop.create_task(run(command, *args))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

        loop.add_reader(self.conn.fileno(), read_command)
        await finished
        for task in tasks:
            task.cancel()
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()

    async def open(self, port: int, requests: list[bytes], concurrency: int, seconds: float):
        loop = asyncio.get_running_loop()
        semaphore = asyncio.Semaphore(concurrency)
        failed: list[BaseException] = []

        async def open_one(request: bytes) -> StreamClient:
            async with semaphore:
                if failed:  # fail fast: a server that refused one stream gets no more
                    raise StreamError("not attempted after a failure")
                try:
                    _, client = await loop.create_connection(
                        lambda: StreamClient(request, self.receipts), "127.0.0.1", port
                    )
                    self.clients.append(client)
                    async with asyncio.timeout(seconds):
                        await client.ready
                except Exception as error:
                    failed.append(error)
                    raise
            return client

        outcomes = await asyncio.gather(*map(open_one, requests), return_exceptions=True)
        errors = [outcome for outcome in outcomes if isinstance(outcome, BaseException)]
        first = [repr(error) for error in failed[:3]]
        return ("opened", len(requests) - len(errors), first)

    async def phase(self, first_seq: int, events: int):
        live = sum(1 for client in self.clients if not client.closed.done())
        done = asyncio.get_running_loop().create_future()
        done.add_done_callback(lambda _: self.conn.send(("done",)))
        self.receipts.start_phase(first_seq, live * events, done)
        self.phase_cpu = own_cpu_seconds()
        return ("phase", live * events)

    async def collect(self, published: dict[int, float]):
        receipts = self.receipts
        latencies = array(
            "d",
            (at - published[seq] for seq, at in zip(receipts.seqs, receipts.times, strict=True)),
        )
        dropped = sum(1 for client in self.clients if client.closed.done())
        last = max(receipts.times, default=0.0)
        cpu = own_cpu_seconds() - self.phase_cpu
        return ("collected", latencies.tobytes(), receipts.unexpected, last, cpu, dropped)

    async def close(self, seconds: float):
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()
        pending = [client.closed for client in self.clients]
        if pending:
            await asyncio.wait(pending, timeout=seconds)
        self.clients = []
        self.receipts = Receipts()
        return ("closed",)


def _worker_main(conn: Connection) -> None:
    raise_open_file_limit()
    asyncio.run(_Worker(conn).serve())


# --------------------------------------------------------------------------------------------
# In the coordinator


@dataclass
class PhaseReceipts:
    latencies: array
    unexpected: int
    last_receipt: float
    client_cpu_seconds: float
    dropped_streams: int


REPLIES = {"open": "opened", "phase": "phase", "collect": "collected", "close": "closed"}


class ClientPool:
    """Worker processes holding the streams; every call waits for all of them to answer."""

    def __init__(self, workers: int) -> None:
        context = multiprocessing.get_context("spawn")
        self.conns: list[Connection] = []
        self.processes = []
        for index in range(workers):
            parent, child = context.Pipe()
            process = context.Process(
                target=_worker_main, args=(child,), name=f"stream-client-{index}", daemon=True
            )
            process.start()
            child.close()
            self.conns.append(parent)
            self.processes.append(process)
        self.phase_done = [False] * workers

    def _ask(self, conns: list[Connection], command: str, *args: Any) -> list[tuple[Any, ...]]:
        for conn in conns:
            conn.send((command, *args))
        return [self._reply(conn, REPLIES[command]) for conn in conns]

    def _reply(self, conn: Connection, kind: str) -> tuple[Any, ...]:
        while True:
            reply = conn.recv()
            if reply[0] == kind:
                return reply
            # A phase that ended after the coordinator stopped waiting for it, or streams opened
            # after it gave up on them: nothing to do.
            if reply[0] == "done":
                self.phase_done[self.conns.index(conn)] = True

    def open(
        self, port: int, requests: list[bytes], concurrency: int, timeout: float
    ) -> tuple[int, list[str]]:
        """Open the streams, dealt round-robin to the workers; (accepted, first errors)."""
        workers = min(len(self.conns), len(requests))
        shares = [requests[index::workers] for index in range(workers)]
        per_worker = max(1, concurrency // workers)
        for conn, share in zip(self.conns, shares, strict=False):
            conn.send(("open", port, share, per_worker, timeout))
        replies = [self._reply(conn, "opened") for conn in self.conns[:workers]]
        return sum(reply[1] for reply in replies), [e for reply in replies for e in reply[2]]

    def start_phase(self, first_seq: int, events: int) -> int:
        """Expect ``events`` events from ``first_seq`` on every live stream; returns deliveries
        expected."""
        self.phase_done = [False] * len(self.conns)
        return sum(reply[1] for reply in self._ask(self.conns, "phase", first_seq, events))

    def wait_phase(self, timeout: float) -> bool:
        """Whether every worker received every event of the phase within ``timeout``."""
        deadline = time.monotonic() + timeout
        while not all(self.phase_done):
            waiting = [c for c, done in zip(self.conns, self.phase_done, strict=True) if not done]
            for ready in wait(waiting, timeout=max(0.0, deadline - time.monotonic())):
                conn = cast(Connection, ready)  # wait() returns what it was given
                if conn.recv()[0] == "done":
                    self.phase_done[self.conns.index(conn)] = True
            if time.monotonic() >= deadline:
                return all(self.phase_done)
        return True

    def collect(self, published: dict[int, float]) -> PhaseReceipts:
        latencies = array("d")
        unexpected = dropped = 0
        last = cpu = 0.0
        for _, data, worker_unexpected, worker_last, worker_cpu, worker_dropped in self._ask(
            self.conns, "collect", published
        ):
            latencies.frombytes(data)
            unexpected += worker_unexpected
            last = max(last, worker_last)
            cpu += worker_cpu
            dropped += worker_dropped
        return PhaseReceipts(latencies, unexpected, last, cpu, dropped)

    def close_streams(self, timeout: float) -> None:
        self._ask(self.conns, "close", timeout)

    def shutdown(self) -> None:
        for conn in self.conns:
            with contextlib.suppress(OSError):
                conn.send(("exit",))
        for process in self.processes:
            process.join(timeout=10)
            if process.is_alive():
                process.terminate()
                process.join()
