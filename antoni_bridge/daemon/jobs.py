"""Jobs and their queue: what the socket loop hands to the one GPU worker.

The socket loop only validates, enqueues and answers; the worker takes jobs in order. A job's cancel
flag is checked between tile batches and between tokens, so a cancel takes effect within one step.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any

from antoni_bridge.engine import Cancelled

REMEMBERED_IDS = 10_000  # msg_ids of accepted jobs, to refuse a reused one (about 1 MB)


class Busy(Exception):
    """The queue is full; the request is answered with `busy`."""


class DuplicateId(Exception):
    """A job request reuses the msg_id of an accepted one: its events could not be told apart."""


@dataclass
class Job:
    kind: str  # ask
    client: bytes  # ROUTER routing id of the client that asked
    request_id: str  # msg_id of the request, the parent of every event
    content: dict[str, Any]
    id: str = field(default_factory=lambda: uuid.uuid4().hex[:12])
    cancel: threading.Event = field(default_factory=threading.Event)
    stage: str = "queued"  # until the worker takes it
    reason: str = ""  # why it was cancelled: request, client-gone or shutdown
    done: int = 0
    total: int = 0
    created: float = field(default_factory=time.time)

    def request_cancel(self, reason: str) -> None:
        """Flag the job; the first reason given is the one its `cancelled` carries."""
        if not self.cancel.is_set():
            self.reason = reason
            self.cancel.set()

    def check(self) -> None:
        if self.cancel.is_set():
            raise Cancelled

    def summary(self) -> dict[str, Any]:
        return {"job_id": self.id, "kind": self.kind, "stage": self.stage, "done": self.done, "total": self.total}


class JobQueue:
    """Waiting jobs in order, bounded; the running one is kept aside for `status` and `cancel`."""

    def __init__(self, capacity: int = 16) -> None:
        self.capacity = capacity
        self.waiting: deque[Job] = deque()
        self.running: Job | None = None
        self.recent: deque[dict[str, Any]] = deque(maxlen=20)  # how the last jobs ended, for `status`
        self.ids: OrderedDict[str, None] = OrderedDict()
        self.lock = threading.Condition()

    def submit(self, job: Job) -> int:
        """Enqueue; returns the job's position: how many jobs run before it (the running one included)."""
        with self.lock:
            if job.request_id in self.ids:
                raise DuplicateId
            if len(self.waiting) >= self.capacity:
                raise Busy
            self.ids[job.request_id] = None
            while len(self.ids) > REMEMBERED_IDS:
                self.ids.popitem(last=False)
            self.waiting.append(job)
            self.lock.notify()
            return len(self.waiting) - 1 + (self.running is not None)

    def take(self, timeout: float) -> Job | None:
        with self.lock:
            if not self.waiting:
                self.lock.wait(timeout)
            if not self.waiting:
                return None
            self.running = self.waiting.popleft()
            return self.running

    def finish(self, job: Job, end: str) -> None:
        """Record how a job ended (done, cancelled, error) and free the worker's slot; called before its
        terminal message goes out, so a client that reads it and asks again is not told a job is ahead."""
        with self.lock:
            self._record(job, end)
            if self.running is job:
                self.running = None

    def _record(self, job: Job, end: str) -> None:
        self.recent.append({"job_id": job.id, "end": end, "seconds": round(time.time() - job.created, 3)})

    def cancel(self, job_id: str, reason: str) -> tuple[Job | None, bool]:
        """Flag a job (running or waiting); a waiting one is dropped from the queue and recorded as
        ended. Also says, decided under the lock, whether it was waiting: then no worker will ever end
        it, and the caller sends its `cancelled`."""
        with self.lock:
            if self.running is not None and self.running.id == job_id:
                self.running.request_cancel(reason)
                return self.running, False
            for job in self.waiting:
                if job.id == job_id:
                    job.request_cancel(reason)
                    self.waiting.remove(job)
                    self._record(job, "cancelled")
                    return job, True
        return None, False

    def stop(self) -> list[Job]:
        """Flag the running job and drop every waiting one; return those dropped (their ends are the
        caller's to send, as no worker will take them)."""
        with self.lock:
            if self.running is not None:
                self.running.request_cancel("shutdown")
            dropped = list(self.waiting)
            self.waiting.clear()
            for job in dropped:
                job.request_cancel("shutdown")
                self._record(job, "cancelled")
        return dropped

    def jobs(self) -> list[Job]:
        """The running job, then the waiting ones."""
        with self.lock:
            return ([self.running] if self.running else []) + list(self.waiting)

    def snapshot(self) -> dict[str, Any]:
        with self.lock:
            return {
                "running": self.running.summary() if self.running else None,
                "waiting": [{**job.summary(), "position": i + 1} for i, job in enumerate(self.waiting)],
                "capacity": self.capacity,
                "recent": list(self.recent),
            }
