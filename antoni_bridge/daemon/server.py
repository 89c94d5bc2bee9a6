"""The daemon: one process that owns the models and answers front ends over ZeroMQ (protocol v1).

The socket loop (main thread) never runs model code: it checks each message, answers `hello`,
`status`, `cancel`, `heartbeat` and `shutdown` at once, and queues jobs (`ask`, `score`, `view`,
`embed`, `forget`, `load`, `unload`) for the single worker thread. The worker's events (progress,
tokens, one terminal message per job) go through an outbox that the loop drains between polls, because
ZeroMQ sockets must stay on one thread.
"""

from __future__ import annotations

import logging
import queue
import signal
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge import __version__
from antoni_bridge.daemon.jobs import Busy, DuplicateId, Job, JobQueue
from antoni_bridge.daemon.logs import REFUSAL, shorten
from antoni_bridge.daemon.protocol import (
    MAX_MESSAGE_BYTES,
    VERSION,
    ConnectionInfo,
    Message,
    ProtocolError,
    Session,
    is_loopback,
)
from antoni_bridge.daemon.requests import JOB_CHECKS, check_job
from antoni_bridge.daemon.worker import RUNNERS
from antoni_bridge.engine import DEFAULT_DECODING, Cancelled, Engine
from antoni_bridge.engine.provenance import short
from antoni_bridge.errors import BridgeError
from antoni_bridge.platforms import STOP_SIGNALS, pid_alive, return_big_blocks

log = logging.getLogger("antoni_bridge.daemon")
POLL_MS = 10
CLIENT_DEAD_S = 3.0  # a client silent this long (no request, no heartbeat) has its jobs cancelled
SHUTDOWN_GRACE_S = 10.0  # how long a shutdown waits for the running job to end and say so


@dataclass(frozen=True)
class Curve:
    """CURVE encryption for a daemon reachable from other machines (ZAP checks the clients' keys)."""

    public_key: bytes
    secret_key: bytes
    authorized_keys: Path | None = None  # a folder of client public-key certificates; None: any client

    @classmethod
    def new(cls, authorized_keys: Path | None = None) -> Curve:
        public, secret = zmq.curve_keypair()
        return cls(public, secret, authorized_keys)


class Daemon:
    def __init__(
        self,
        address: str,
        engine: Engine,
        connection_file: Path,
        capacity: int = 16,
        client_dead_s: float = CLIENT_DEAD_S,
        curve: Curve | None = None,
    ) -> None:
        self.address, self.engine, self.connection_file = address, engine, connection_file
        self.client_dead_s, self.curve = client_dead_s, curve
        self.jobs = JobQueue(capacity)
        self.outbox: queue.Queue[tuple[bytes, list[bytes]]] = queue.Queue()
        self.authenticator: Any = None
        self.stopping = threading.Event()
        self.signalled = threading.Event()
        self.info: ConnectionInfo | None = None
        self.session: Session | None = None
        self.last_seen: dict[bytes, float] = {}
        self.last_pruned = time.monotonic()
        self.listened_at = time.monotonic()  # the socket was last found empty, or emptied, then
        self.cache_summary: dict[str, Any] = {}  # refreshed by the worker: `status` must not touch the disk

    # ------------------------------------------------------------------ socket loop

    def serve(self) -> None:
        _refuse_if_running(self.connection_file)
        return_big_blocks()
        context = zmq.Context()
        try:
            socket = self._bind(context)
        except BridgeError:
            self._stop_authenticator()
            context.term()
            raise
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.info = ConnectionInfo.new(endpoint, self.curve.public_key.decode("ascii") if self.curve else None)
        self.session = Session(self.info.key_bytes)
        self.info.write(self.connection_file)
        worker = threading.Thread(target=self._work, name="gpu-worker", daemon=True)
        worker.start()
        log.info("listening on %s (protocol %s%s)", endpoint, VERSION, ", CURVE" if self.curve else "")
        previous = self._stop_on_signals()
        try:
            while not self.stopping.is_set():
                ready = socket.poll(POLL_MS, zmq.POLLIN)
                self.listened_at = time.monotonic()  # what clients sent before now is read next
                if ready:
                    self._receive(socket)
                self._drain(socket)
                self._cancel_jobs_of_silent_clients()
                self._forget_silent_clients()
                if self.signalled.is_set():
                    log.info("stopping on a signal")
                    self._stop_jobs()
        finally:
            for signum, handler in previous.items():
                signal.signal(signum, handler)
            worker.join(timeout=SHUTDOWN_GRACE_S)  # the running job sees its cancel within a step, then ends
            self._drain(socket)
            self._remove_connection_file()
            socket.close()
            self._stop_authenticator()  # a running authenticator would keep context.term() waiting forever
            context.term()
            log.info("stopped")

    def _stop_on_signals(self) -> dict[int, Any]:
        """The stop signals (SIGINT, and SIGTERM or on Windows SIGBREAK) stop the daemon as `shutdown` does
        (the loop acts on the flag: a handler runs between any two bytecodes, maybe inside a held lock);
        returns the handlers to restore."""
        if threading.current_thread() is not threading.main_thread():
            return {}
        previous = {signum: signal.getsignal(signum) for signum in STOP_SIGNALS}
        for signum in STOP_SIGNALS:
            signal.signal(signum, lambda *_: self.signalled.set())
        return previous

    def _bind(self, context: zmq.Context) -> zmq.Socket:
        if self.curve is None and not is_loopback(self.address):  # unencrypted and reachable from elsewhere
            raise BridgeError(f"{self.address} is not a loopback address.", "listen on 127.0.0.1, or use CURVE")
        socket = context.socket(zmq.ROUTER)
        socket.linger = 0
        # A frame past twice the limit drops the connection (libzmq); between the two, it gets an error reply.
        socket.setsockopt(zmq.MAXMSGSIZE, 2 * MAX_MESSAGE_BYTES)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if self.curve:
            self._start_authenticator(context)
            socket.curve_secretkey, socket.curve_publickey = self.curve.secret_key, self.curve.public_key
            socket.curve_server = True
        try:
            socket.bind(self.address)
        except zmq.ZMQError as exc:
            socket.close()
            raise BridgeError(f"Cannot listen on {self.address} ({exc}).", "another daemon may be running") from exc
        return socket

    def _start_authenticator(self, context: zmq.Context) -> None:
        from zmq.auth import CURVE_ALLOW_ANY
        from zmq.auth.thread import ThreadAuthenticator

        self.authenticator = ThreadAuthenticator(context, log=logging.getLogger("antoni_bridge.daemon.zap"))
        self.authenticator.start()
        keys = self.curve.authorized_keys
        self.authenticator.configure_curve(domain="*", location=str(keys) if keys else CURVE_ALLOW_ANY)

    def _stop_authenticator(self) -> None:
        if self.authenticator is not None:
            self.authenticator.stop()
            self.authenticator = None

    def _remove_connection_file(self) -> None:
        """Only while it is still ours: another daemon may have started since with its own."""
        try:
            if ConnectionInfo.read(self.connection_file).key == self.info.key:
                self.connection_file.unlink(missing_ok=True)
        except BridgeError:
            pass

    def _receive(self, socket: zmq.Socket) -> None:
        while True:
            try:
                identity, *frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_seen[identity] = time.monotonic()
            try:
                message = self.session.parse(frames)
            except ProtocolError as exc:
                log.warning("refused a message from client %s: %s", identity.hex(), exc.message, extra=REFUSAL)
                parent = Message("", {}, exc.parent_id, "") if exc.parent_id else None
                self._send_error(identity, parent, exc.code, exc.message, exc.hint)
                continue
            try:
                self._handle(identity, message)
            except Exception:  # a request no check foresaw must not end the daemon for every client
                log.exception("request %s from client %s failed", message.type, identity.hex())
                self._send_error(identity, message, "bad-request", "The request could not be handled.", "see the log")

    def _drain(self, socket: zmq.Socket) -> None:
        while True:
            try:
                identity, frames = self.outbox.get_nowait()
            except queue.Empty:
                return
            try:  # never blocks: a client that stops reading must not stop the daemon for the others
                socket.send_multipart([identity, *frames], zmq.NOBLOCK)
            except zmq.ZMQError:  # gone (ROUTER_MANDATORY), or not reading (its queue is full): dropped
                log.debug("client %s is gone or not reading; a message is dropped", identity.hex())

    def _reply(self, identity: bytes, parent: Message | None, type_: str, content: dict[str, Any]) -> None:
        """Serialised here, in the sending thread: a value JSON cannot carry fails the job that made it."""
        self.outbox.put((identity, self.session.frames(self.session.message(type_, content, parent))))

    def _send_error(self, identity: bytes, parent: Message | None, code: str, message: str, hint: str = "") -> None:
        self._reply(identity, parent, "error", {"code": code, "message": shorten(message, 1000), "hint": hint})

    def _cancel_jobs_of_silent_clients(self) -> None:
        """A client that stopped heartbeating is gone: its jobs would only keep the GPU busy. Silence counts
        up to the last time this loop read the socket, not up to now: a loop held up (the process starved of
        CPU, or a C call holding the GIL) has the clients' heartbeats waiting unread."""
        now = self.listened_at
        for job in self.jobs.jobs():
            if now - self.last_seen.get(job.client, now) > self.client_dead_s and not job.cancel.is_set():
                log.info("client of job %s is silent; cancelling", job.id)
                self._cancel_job(job.id, "client-gone")

    def _forget_silent_clients(self) -> None:
        """Once a second, drop the clients silent past client_dead_s that own no job: one entry per
        connection ever made would grow for as long as the daemon runs."""
        now = time.monotonic()
        if now - self.last_pruned < 1.0:
            return
        self.last_pruned = now
        owners = {job.client for job in self.jobs.jobs()}
        cutoff = self.listened_at - self.client_dead_s
        self.last_seen = {who: seen for who, seen in self.last_seen.items() if seen > cutoff or who in owners}

    # ------------------------------------------------------------------ requests

    def _handle(self, identity: bytes, message: Message) -> None:
        handlers = {
            "hello": self._hello,
            "status": self._status,
            "cancel": self._cancel,
            "heartbeat": self._heartbeat,
            "shutdown": self._shutdown,
        }
        if message.type in JOB_CHECKS:
            self._submit(identity, message)
        elif message.type in handlers:
            handlers[message.type](identity, message)
        else:
            known = ", ".join([*handlers, *JOB_CHECKS])
            hint = f"known types: {known}"
            self._send_error(identity, message, "unknown-type", f"Unknown request type {message.type!r}.", hint)

    def _hello(self, identity: bytes, message: Message) -> None:
        self._reply(
            identity,
            message,
            "hello",
            {
                "protocol": VERSION,
                "server": f"antoni-bridge {__version__}",
                "demo": self.engine.choice.demo,
                "weights": Path(self.engine.choice.weights).name,  # which ANTONI weights answer
                "llm": self.engine.choice.llm,
                "capabilities": ["hello", "status", "cancel", "heartbeat", "shutdown", *JOB_CHECKS],
                "loaded": self.engine.loaded(),
                "provenance": self.engine.provenance(),
                "decoding": asdict(DEFAULT_DECODING),  # what a request's options are laid over
                "heartbeat_s": 0.25,
                "client_dead_s": self.client_dead_s,
            },
        )

    def _status(self, identity: bytes, message: Message) -> None:
        from antoni_bridge.gpu import gpu_memory

        content = {"queue": self.jobs.snapshot(), "gpu": gpu_memory(), "loaded": self.engine.loaded()}
        described = {"device": self.engine.choice.device, "provenance": self.engine.provenance()}
        self._reply(identity, message, "status", {**content, **described, "cache": self.cache_summary})

    def _submit(self, identity: bytes, message: Message) -> None:
        problem = check_job(message.type, message.content)
        if problem:
            log.info("refused a %s request: %s", message.type, problem, extra=REFUSAL)
            self._send_error(identity, message, "bad-request", problem, "see docs/protocol.md")
            return
        job = Job(message.type, identity, message.msg_id, message.content)
        with self.jobs.lock:  # `accepted` is queued before the worker can take the job and send progress
            try:
                position = self.jobs.submit(job)
            except Busy:
                busy = {"message": "The queue is full.", "capacity": self.jobs.capacity}
                self._reply(identity, message, "busy", busy)
                return
            except DuplicateId:
                hint = "give every message a new msg_id (a UUID)"
                self._send_error(identity, message, "bad-request", "This msg_id is already a job's.", hint)
                return
            self._reply(identity, message, "accepted", {"job_id": job.id, "position": position})
        log.info("job %s: %s from client %s, position %d", job.id, job.kind, identity.hex(), position)

    def _cancel(self, identity: bytes, message: Message) -> None:
        job = self._cancel_job(str(message.content.get("job_id", "")), "request")
        if job is None:
            self._send_error(identity, message, "unknown-job", "No such job is queued or running.", "check the id")
            return
        self._reply(identity, message, "cancel", {"job_id": job.id})

    def _cancel_job(self, job_id: str, reason: str) -> Job | None:
        job, was_waiting = self.jobs.cancel(job_id, reason)
        if was_waiting:  # a waiting job never starts: it ends here
            self._end(job, "cancelled", {"reason": job.reason})
        return job

    def _heartbeat(self, identity: bytes, message: Message) -> None:
        """Answered, so a client on another machine can tell a busy daemon from a dead one."""
        self._reply(identity, message, "heartbeat", {})

    def _shutdown(self, identity: bytes, message: Message) -> None:
        log.info("shutdown requested")
        self._reply(identity, message, "shutdown", {})
        self._stop_jobs()

    def _stop_jobs(self) -> None:
        """Waiting jobs end here; the running one sees its cancel and ends with its own terminal message."""
        for job in self.jobs.stop():
            self._end(job, "cancelled", {"reason": job.reason})
        self.stopping.set()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        self._refresh_cache_summary()
        while not self.stopping.is_set():
            job = self.jobs.take(timeout=0.1)
            if job is not None:
                end, content = self._run(job)
                if "provenance" in content:
                    log.info("job %s: %s (%s)", job.id, end, short(content["provenance"]))
                else:
                    log.info("job %s: %s", job.id, end)
                self.jobs.finish(job, end)
                self._end(job, end, content)
                self._refresh_cache_summary()

    def _refresh_cache_summary(self) -> None:
        try:
            self.cache_summary = self.engine.cache_usage()
        except OSError:  # a cache folder changing underneath: keep the last figures, keep working
            log.warning("could not read the cache's size", exc_info=True)

    def _run(self, job: Job) -> tuple[str, dict[str, Any]]:
        """Run a job; return its terminal message (done, cancelled or error). Never raises: the worker
        thread must outlive every job."""
        try:
            return "done", RUNNERS[job.kind](job, self.engine, lambda type_, content: self._event(job, type_, content))
        except Cancelled:
            return "cancelled", {"reason": job.reason or "request"}
        except BridgeError as exc:
            return "error", {"code": "bad-input", "message": shorten(exc.message, 1000), "hint": exc.hint}
        except Exception as exc:  # a bug must end the job, not the daemon
            if type(exc).__name__ == "OutOfMemoryError":  # torch's; imported only by the worker
                from antoni_bridge.gpu import release_unused

                release_unused()
                hint = "use --quant 4bit, a smaller region, or close other programs using the GPU"
                return "error", {"code": "out-of-memory", "message": "The GPU ran out of memory.", "hint": hint}
            log.exception("job %s failed", job.id)
            return "error", _internal(job)

    def _end(self, job: Job, type_: str, content: dict[str, Any]) -> None:
        """Send a job's one terminal message; one that cannot be serialised is replaced by `internal`."""
        for end in ((type_, content), ("error", _internal(job))):
            try:
                self._event(job, *end)
                return
            except Exception:  # ProtocolError, UnicodeEncodeError: text that JSON or UTF-8 cannot carry
                log.exception("the end of job %s could not be sent as %s", job.id, end[0])

    def _event(self, job: Job, type_: str, content: dict[str, Any]) -> None:
        parent = Message(job.kind, {}, job.request_id, "")
        self._reply(job.client, parent, type_, {"job_id": job.id, **content})


def _internal(job: Job) -> dict[str, Any]:
    """The end of a job that hit a bug: no Python error text, which means nothing to a user."""
    message = f"Job {job.id} failed on an unexpected error in the daemon."
    return {"code": "internal", "message": message, "hint": "the daemon's log has the details; please report it"}


def _refuse_if_running(connection_file: Path) -> None:
    """One daemon per connection file: a second would orphan the first, which `stop` could then not reach."""
    try:
        info = ConnectionInfo.read(connection_file)
    except BridgeError:  # none, or damaged
        return
    if not (isinstance(info.pid, int) and pid_alive(info.pid)):  # left by a daemon that died
        return
    raise BridgeError(
        f"A daemon (pid {info.pid}) is already running at {info.address}.",
        f"stop it with `antoni-bridge stop` (or delete {connection_file} if no daemon runs), or give this "
        "one another ANTONI_BRIDGE_CONNECTION_FILE",
    )
