"""Read Server-Sent Events from a streaming HTTP response in a background thread."""

from __future__ import annotations

import queue
import threading
from dataclasses import dataclass

import httpx


@dataclass
class Event:
    id: str | None
    event: str
    data: str


class StreamReader:
    """Opens a stream, then collects its events (comments skipped) into a queue."""

    def __init__(self, url: str, headers: dict[str, str]):
        self.events: queue.Queue[Event] = queue.Queue()
        self.connected = threading.Event()
        self.status: int | None = None
        self.content_type = ""
        self.error: BaseException | None = None
        self._client = httpx.Client(timeout=httpx.Timeout(10.0, read=60.0))
        self._thread = threading.Thread(target=self._read, args=(url, headers), daemon=True)
        self._thread.start()

    def _read(self, url: str, headers: dict[str, str]) -> None:
        try:
            with self._client.stream("GET", url, headers=headers) as response:
                self.status = response.status_code
                self.content_type = response.headers.get("content-type", "")
                self.connected.set()
                fields: dict[str, str] = {}
                data: list[str] = []
                for line in response.iter_lines():
                    if not line:
                        if data:
                            self.events.put(
                                Event(
                                    fields.get("id"),
                                    fields.get("event", "message"),
                                    "\n".join(data),
                                )
                            )
                        fields, data = {}, []
                        continue
                    name, _, value = line.partition(":")
                    value = value.removeprefix(" ")
                    if name == "data":
                        data.append(value)
                    elif name in ("id", "event"):
                        fields[name] = value
        except BaseException as error:
            self.error = error
            self.connected.set()

    def next_event(self, timeout: float) -> Event:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(
                f"no event within {timeout} s (reader error: {self.error!r})"
            ) from None

    def close(self) -> None:
        self._client.close()
        self._thread.join(timeout=5)
