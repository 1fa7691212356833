"""A steady publisher through the REST API, and the accounting of what became of its events, for
the load and fault proofs (``test_load_faults.py``, ``test_failover_load.py``)."""

import itertools
import multiprocessing
import multiprocessing.synchronize
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx

from .crowd import StreamClient
from .services import Daphne


def id_key(event_id: str) -> tuple[int, int]:
    """An event id's order: Redis stream ids are ``<milliseconds>-<sequence>``."""
    milliseconds, _, sequence = event_id.partition("-")
    return int(milliseconds), int(sequence)


@dataclass
class Outcome:
    status: int  # of the last attempt; 0: no HTTP answer at all
    event_id: str | None
    answered_at: float  # time.monotonic(): one clock for every process of the machine
    attempts: int = 1

    @property
    def acknowledged(self) -> bool:
        # 200: a retry whose first attempt had published the event (Idempotent-Replayed).
        return self.status in (200, 201)

    @property
    def published_id(self) -> str:
        """The id of the event it published (an acknowledged publish has one)."""
        assert self.event_id is not None, self
        return self.event_id


class Publisher:
    """Publishes broadcast events through the REST API at a steady rate and records every answer:
    the event's id, or the failure (503 while Redis is down).

    It runs in a process of its own: in the test's process it would share one interpreter lock
    with hundreds of clients, and publish at whatever pace they leave it. A few requests may be in
    flight at once, so that the rate holds while a busy server answers slowly. With several
    servers, it takes them in turn. With ``retry_for``, each event carries an ``Idempotency-Key``
    and a 503 or a lost answer is retried with it, as a careful client does, for up to that many
    seconds: the outcome is the last attempt's.
    """

    def __init__(
        self, servers: list[Daphne], token: str, per_second: float, retry_for: float = 0.0
    ) -> None:
        context = multiprocessing.get_context("spawn")
        self._done = context.Event()
        self._outcomes = context.Queue()
        self._process = context.Process(
            target=_publish_steadily,
            args=(
                [server.url for server in servers],
                token,
                1 / per_second,
                retry_for,
                self._done,
                self._outcomes,
            ),
            name="publisher",
        )
        self.outcomes: list[Outcome] = []

    def start(self) -> None:
        self._process.start()

    def stop(self) -> None:
        self._done.set()
        self.outcomes = sorted(self._outcomes.get(timeout=60), key=lambda o: o.answered_at)
        self._process.join(timeout=10)

    def ok(self) -> list[Outcome]:
        return [outcome for outcome in self.outcomes if outcome.acknowledged]


_PUBLISHES_IN_FLIGHT = 8
_RETRY_INTERVAL_SECONDS = 0.1


def _publish_steadily(
    urls: list[str],
    token: str,
    interval: float,
    retry_for: float,
    done: multiprocessing.synchronize.Event,
    outcomes: "multiprocessing.Queue[list[Outcome]]",
) -> None:
    slots = threading.BoundedSemaphore(_PUBLISHES_IN_FLIGHT)

    def attempt(client: httpx.Client, headers: dict[str, str]) -> Outcome:
        try:
            response = client.post(
                "/api/events/", json={"type": "tick", "data": None}, headers=headers
            )
        except httpx.HTTPError:
            return Outcome(0, None, time.monotonic())
        event_id = response.json()["id"] if response.status_code in (200, 201) else None
        return Outcome(response.status_code, event_id, time.monotonic())

    def publish_one(client: httpx.Client) -> Outcome:
        try:
            headers = {"Idempotency-Key": str(uuid.uuid4())} if retry_for else {}
            deadline = time.monotonic() + retry_for
            outcome = attempt(client, headers)
            attempts = 1
            while outcome.status in (0, 503) and time.monotonic() < deadline:
                time.sleep(_RETRY_INTERVAL_SECONDS)
                outcome = attempt(client, headers)
                attempts += 1
            outcome.attempts = attempts
            return outcome
        finally:
            slots.release()

    headers = {"Authorization": f"Token {token}"}
    limits = httpx.Limits(max_connections=_PUBLISHES_IN_FLIGHT)
    clients = [
        httpx.Client(base_url=url, headers=headers, timeout=10, limits=limits) for url in urls
    ]
    with ThreadPoolExecutor(_PUBLISHES_IN_FLIGHT) as pool:
        sent = []
        next_at = time.monotonic()
        for client in itertools.cycle(clients):
            if done.is_set():
                break
            slots.acquire()
            sent.append(pool.submit(publish_one, client))
            # A late tick is not made up for with a burst.
            next_at = max(next_at + interval, time.monotonic())
            done.wait(next_at - time.monotonic())
        outcomes.put([future.result() for future in sent])
    for client in clients:
        client.close()


@dataclass
class Accounting:
    """What became of the acknowledged events, for one client."""

    delivered: int = 0
    covered_by_reset: int = 0
    lost: int = 0
    out_of_order: int = 0  # repeated or going backwards


def account(client: StreamClient, ok_ids: list[str], old_ids: set[str]) -> Accounting:
    """An acknowledged event is lost for a client that neither received it nor got a ``reset``
    covering it: a reset covers the events of a Redis history that was lost (``old_ids``), and
    those with an id up to its own (an empty id covers only the former: history was empty then)."""
    result = Accounting()
    ids = [message.id for message in client.events if message.event != "reset"]
    keys = [id_key(event_id) for event_id in ids if event_id]
    result.out_of_order = sum(later <= earlier for earlier, later in itertools.pairwise(keys))
    received = set(ids)
    reset_keys = [id_key(reset.id) for reset in client.resets if reset.id]
    for event_id in ok_ids:
        if event_id in received:
            result.delivered += 1
        elif client.resets and (
            event_id in old_ids or any(id_key(event_id) <= key for key in reset_keys)
        ):
            result.covered_by_reset += 1
        else:
            result.lost += 1
    return result
