"""One change watcher per process: it learns of job changes from the database and fans them out.

Status streams, `/run` waiters and idle workers subscribe here instead of each polling the store.
On PostgreSQL the watcher LISTENs to the NOTIFY the store sends in every changing transaction, so a
worker starts a job a few milliseconds after it is queued; on SQLite (one host, no NOTIFY) it polls
one cheap query pair for the whole process. Notifications can be missed (a dropped connection), so
after reconnecting the watcher tells every subscriber to look again (`RESYNC`), and subscribers keep
a slow fallback timer of their own.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Callable

from sqlalchemy.engine import make_url

from motionserve.database import log_failure
from motionserve.jobs.models import JobState
from motionserve.jobs.store import NOTIFY_CHANGE_KINDS, NOTIFY_CHANNEL, ChangeKind, Store

log = logging.getLogger(__name__)

RESYNC = "resync"  # kind of a change that may hide others: every subscriber should look again
POLL_INTERVAL_S = 0.2  # SQLite
MADE_HERE_KEPT_S = 5.0  # the poll looks back 1 s: a change it has not matched by then, it never will
LISTEN_TIMEOUT_S = 1.0  # how often the listener looks at its stop flag
RECONNECT_DELAYS_S = (0.5, 1.0, 2.0, 5.0)


@dataclass(frozen=True)
class Change:
    kind: str  # a ChangeKind value, or RESYNC (job_id is then "")
    job_id: str


Subscriber = Callable[[Change], None]


class ChangeWatcher:
    """Run `run_forever` on one thread; `subscribe` from anywhere. Callbacks run on the watcher's
    thread and must be quick (set an event, schedule onto a loop)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._subscribers: list[Subscriber] = []
        self._lock = threading.Lock()
        # SQLite: changes `made_here` published (when), not to be repeated by the poll. One the poll never
        # matches (the job moved on before it looked) is forgotten after MADE_HERE_KEPT_S.
        self._made_here: dict[Change, float] = {}
        self.running = threading.Event()

    def subscribe(self, callback: Subscriber) -> Callable[[], None]:
        """Start calling `callback` for every change; returns the function that stops it."""
        with self._lock:
            self._subscribers.append(callback)

        def unsubscribe() -> None:
            with self._lock:
                if callback in self._subscribers:
                    self._subscribers.remove(callback)

        return unsubscribe

    def publish(self, change: Change) -> None:
        with self._lock:
            subscribers = list(self._subscribers)
        for callback in subscribers:
            try:
                callback(change)
            except Exception:  # one broken subscriber must not deafen the others
                log.exception("change subscriber failed")

    def made_here(self, change: Change) -> None:
        """A change this process made (a submit): on SQLite its subscribers hear of it now rather than at
        the next poll, up to POLL_INTERVAL_S later, which an idle in-process worker would otherwise wait
        before starting the job. On PostgreSQL the NOTIFY brings it within milliseconds anyway."""
        if self._store.is_postgres:
            return
        with self._lock:
            self._made_here[change] = time.monotonic()
        self.publish(change)

    def _published_already(self, change: Change) -> bool:
        with self._lock:
            return self._made_here.pop(change, None) is not None

    def _forget_old_made_here(self) -> None:
        cutoff = time.monotonic() - MADE_HERE_KEPT_S
        with self._lock:
            for change in [c for c, at in self._made_here.items() if at < cutoff]:
                del self._made_here[change]

    def run_forever(self, stop: threading.Event) -> None:
        self.running.set()
        try:
            if self._store.is_postgres:
                self._listen(stop)
            else:
                self._poll(stop)
        finally:
            self.running.clear()

    # -- PostgreSQL: LISTEN ------------------------------------------------------------------------

    def _listen(self, stop: threading.Event) -> None:
        import psycopg

        conninfo = make_url(self._store.url).set(drivername="postgresql").render_as_string(hide_password=False)
        failures = 0
        while not stop.is_set():
            try:
                with psycopg.connect(conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
                    failures = 0
                    self.publish(Change(RESYNC, ""))  # what changed while we were not listening
                    while not stop.is_set():
                        for notify in conn.notifies(timeout=LISTEN_TIMEOUT_S):
                            self._publish_payload(notify.payload)
            except psycopg.Error as exc:
                delay = RECONNECT_DELAYS_S[min(failures, len(RECONNECT_DELAYS_S) - 1)]
                failures += 1
                log.warning("change listener lost the database (%s); reconnecting in %.1f s", exc, delay)
                stop.wait(delay)

    def _publish_payload(self, payload: str) -> None:
        kind, _, job_id = payload.partition(" ")
        if kind in NOTIFY_CHANGE_KINDS and job_id:
            self.publish(Change(kind, job_id))

    # -- SQLite: one poll for the whole process ----------------------------------------------------

    def _poll(self, stop: threading.Event) -> None:
        watermark: tuple[float, int] | None = None
        seen: dict[str, float] = {}  # job id -> changed_at already published (the query rewinds 1 s)
        while not stop.is_set():
            try:
                if watermark is None:
                    watermark = self._store.change_watermark()
                    self.publish(Change(RESYNC, ""))
                changes = self._store.recent_changes(*watermark)
            except Exception:
                log_failure(log, "change watcher: store unavailable; retrying")
                stop.wait(1.0)
                continue
            for job_id, state, changed_at in changes.changed:
                kind = ChangeKind.QUEUED if state == JobState.QUEUED.value else ChangeKind.STATE
                if seen.get(job_id) != changed_at and not self._published_already(Change(kind, job_id)):
                    self.publish(Change(kind, job_id))
            for job_id in changes.with_logs:
                self.publish(Change(ChangeKind.LOGS, job_id))
            seen = {job_id: changed_at for job_id, _, changed_at in changes.changed}
            self._forget_old_made_here()
            watermark = (changes.changed_at, changes.log_id)
            stop.wait(POLL_INTERVAL_S)
