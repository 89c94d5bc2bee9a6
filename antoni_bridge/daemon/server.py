"""The daemon: one process that owns the models and answers front ends over ZeroMQ (protocol v1).

The socket loop (main thread) never runs model code: it checks each message, answers `hello`,
`status`, `cancel` and `shutdown` at once, and queues `ask` jobs for the single worker thread. The
worker's events (progress, tokens, one terminal message per job) go through an outbox that the loop
drains between polls, because ZeroMQ sockets must stay on one thread.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import zmq

from antoni_bridge import __version__
from antoni_bridge.daemon.jobs import Busy, Cancelled, Job, JobQueue
from antoni_bridge.daemon.protocol import MAX_MESSAGE_BYTES, VERSION, ConnectionInfo, Message, ProtocolError, Session
from antoni_bridge.errors import BridgeError

log = logging.getLogger("antoni_bridge.daemon")
POLL_MS = 10
CLIENT_DEAD_S = 3.0  # a client silent this long (no request, no heartbeat) has its jobs cancelled


@dataclass
class ModelSources:
    """Where the daemon's models come from (demo or real), loaded by the worker on first use."""

    tile_encoder: str
    slide_encoder: str
    weights: Path
    llm: str | None = None
    device: str = "cpu"
    quant: str = "auto"
    demo: bool = False


class Runtime:
    """The loaded models and the feature cache; touched only by the worker thread."""

    def __init__(self, sources: ModelSources, cache_dir: Path) -> None:
        self.sources, self.cache_dir = sources, cache_dir
        self.encoders: Any = None
        self.model: Any = None

    def ensure_loaded(self) -> None:
        from antoni_bridge.encoders.pipeline import Encoders
        from antoni_bridge.model.antoni import AntoniModel

        if self.encoders is None:
            s = self.sources
            self.encoders = Encoders.load(s.tile_encoder, s.slide_encoder, device=s.device)
        if self.model is None:
            self.model = AntoniModel.load(
                self.sources.weights, self.sources.llm, self.sources.device, self.sources.quant
            )


class Daemon:
    def __init__(
        self,
        address: str,
        runtime: Runtime,
        connection_file: Path,
        capacity: int = 16,
        client_dead_s: float = CLIENT_DEAD_S,
    ) -> None:
        self.address, self.runtime, self.connection_file = address, runtime, connection_file
        self.client_dead_s = client_dead_s
        self.jobs = JobQueue(capacity)
        self.outbox: queue.Queue[tuple[bytes, Message]] = queue.Queue()
        self.stopping = threading.Event()
        self.info: ConnectionInfo | None = None
        self.session: Session | None = None
        self.last_seen: dict[bytes, float] = {}

    # ------------------------------------------------------------------ socket loop

    def serve(self) -> None:
        context = zmq.Context()
        socket = context.socket(zmq.ROUTER)
        socket.linger = 0
        socket.setsockopt(zmq.MAXMSGSIZE, MAX_MESSAGE_BYTES)
        socket.setsockopt(zmq.ROUTER_MANDATORY, 1)
        try:
            socket.bind(self.address)
        except zmq.ZMQError as exc:
            raise BridgeError(f"Cannot listen on {self.address} ({exc}).", "another daemon may be running") from exc
        endpoint = socket.getsockopt_string(zmq.LAST_ENDPOINT)
        self.info = ConnectionInfo.new(endpoint)
        self.session = Session(self.info.key_bytes)
        self.info.write(self.connection_file)
        worker = threading.Thread(target=self._work, name="gpu-worker", daemon=True)
        worker.start()
        log.info("listening on %s (protocol %s)", endpoint, VERSION)
        try:
            while not self.stopping.is_set():
                if socket.poll(POLL_MS, zmq.POLLIN):
                    self._receive(socket)
                self._drain(socket)
                self._cancel_jobs_of_silent_clients()
        finally:
            self._drain(socket)
            self.connection_file.unlink(missing_ok=True)
            socket.close()
            context.term()

    def _receive(self, socket: zmq.Socket) -> None:
        while True:
            try:
                identity, *frames = socket.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            self.last_seen[identity] = time.monotonic()
            try:
                self._handle(identity, self.session.parse(frames))
            except ProtocolError as exc:
                log.warning("refused a message: %s", exc.message)
                self._send_error(identity, None, exc.code, exc.message, exc.hint)

    def _drain(self, socket: zmq.Socket) -> None:
        while True:
            try:
                identity, message = self.outbox.get_nowait()
            except queue.Empty:
                return
            try:
                socket.send_multipart([identity, *self.session.frames(message)])
            except zmq.ZMQError:  # the client is gone (ROUTER_MANDATORY): its job's events are dropped
                log.info("client went away; dropping %s", message.type)

    def _reply(self, identity: bytes, parent: Message | None, type_: str, content: dict[str, Any]) -> None:
        self.outbox.put((identity, self.session.message(type_, content, parent)))

    def _send_error(self, identity: bytes, parent: Message | None, code: str, message: str, hint: str = "") -> None:
        self._reply(identity, parent, "error", {"code": code, "message": message, "hint": hint})

    def _cancel_jobs_of_silent_clients(self) -> None:
        """A client that stopped heartbeating is gone: its jobs would only keep the GPU busy."""
        now = time.monotonic()
        for job in self.jobs.jobs():
            if now - self.last_seen.get(job.client, now) > self.client_dead_s and not job.cancel.is_set():
                log.info("client of job %s is silent; cancelling", job.id)
                self.jobs.cancel(job.id)

    # ------------------------------------------------------------------ requests

    def _handle(self, identity: bytes, message: Message) -> None:
        handlers = {
            "hello": self._hello,
            "status": self._status,
            "ask": self._ask,
            "cancel": self._cancel,
            "shutdown": self._shutdown,
        }
        handler = handlers.get(message.type)
        if handler is None:
            self._send_error(
                identity,
                message,
                "unknown-type",
                f"Unknown request type {message.type!r}.",
                f"known types: {', '.join(handlers)}",
            )
            return
        handler(identity, message)

    def _hello(self, identity: bytes, message: Message) -> None:
        self._reply(
            identity,
            message,
            "hello",
            {
                "protocol": VERSION,
                "server": f"antoni-bridge {__version__}",
                "demo": self.runtime.sources.demo,
                "capabilities": ["ask", "status", "cancel", "shutdown", "heartbeat"],
                "heartbeat_s": 1.0,
                "client_dead_s": CLIENT_DEAD_S,
            },
        )

    def _status(self, identity: bytes, message: Message) -> None:
        from antoni_bridge.gpu import gpu_memory

        self._reply(identity, message, "status", {"queue": self.jobs.snapshot(), "gpu": gpu_memory()})

    def _ask(self, identity: bytes, message: Message) -> None:
        problem = _check_ask(message.content)
        if problem:
            self._send_error(identity, message, "bad-request", problem, "see docs/protocol.md")
            return
        job = Job("ask", identity, message.msg_id, message.content)
        try:
            position = self.jobs.submit(job)
        except Busy:
            self._reply(identity, message, "busy", {"message": "The queue is full.", "capacity": self.jobs.capacity})
            return
        self._reply(identity, message, "accepted", {"job_id": job.id, "position": position})

    def _cancel(self, identity: bytes, message: Message) -> None:
        job = self.jobs.cancel(str(message.content.get("job_id", "")))
        if job is None:
            self._send_error(identity, message, "unknown-job", "No such job is queued or running.", "check the id")
            return
        if job is not self.jobs.running:  # a waiting job never starts: it ends here
            self._event(job, "cancelled", {})
        self._reply(identity, message, "cancel", {"job_id": job.id})

    def _shutdown(self, identity: bytes, message: Message) -> None:
        self._reply(identity, message, "shutdown", {})
        if self.jobs.running:
            self.jobs.running.cancel.set()
        self.stopping.set()

    # ------------------------------------------------------------------ the worker

    def _work(self) -> None:
        while not self.stopping.is_set():
            job = self.jobs.take(timeout=0.1)
            if job is not None:
                self.jobs.finish(job, self._run_to_one_end(job))

    def _run_to_one_end(self, job: Job) -> str:
        """Run a job and send exactly one terminal message; return how it ended."""
        try:
            self._run(job)
            return "done"
        except Cancelled:
            self._event(job, "cancelled", {})
            return "cancelled"
        except BridgeError as exc:
            self._event(job, "error", {"code": "bad-input", "message": exc.message, "hint": exc.hint})
        except Exception as exc:  # a bug must end the job, not the daemon
            log.exception("job %s failed", job.id)
            message = f"{type(exc).__name__}: {exc}"
            self._event(job, "error", {"code": "internal", "message": message, "hint": "see the daemon's log"})
        return "error"

    def _event(self, job: Job, type_: str, content: dict[str, Any]) -> None:
        parent = Message("ask", {}, job.request_id, "")
        self._reply(job.client, parent, type_, {"job_id": job.id, **content})

    def _run(self, job: Job) -> None:
        import torch

        from antoni_bridge.features.h5 import read_latents
        from antoni_bridge.model.generation import GenerationOptions

        start = time.perf_counter()
        self._progress(job, "loading", 0, 1)
        self.runtime.ensure_loaded()
        content = job.content
        cache_hit, key = False, None
        if "features" in content:
            latents = torch.from_numpy(read_latents(content["features"]))
            key = f"features:{content['features']}"
        else:
            latents, cache_hit, key = self._embed(job)
        job.check()
        self._progress(job, "generating", 0, 1)
        options = GenerationOptions(**content.get("options", {}))
        result = self.runtime.model.answer(
            latents,
            content["conversation"],
            options,
            on_text=lambda text: self._event(job, "token", {"text": text}),
            cancelled=job.cancel.is_set,
            prefix_key=key,
        )
        if result.stop_reason == "cancelled":
            raise Cancelled
        self._event(
            job,
            "done",
            {
                "answer": result.text,
                "stop_reason": result.stop_reason,
                "cache_hit": cache_hit,
                "demo": self.runtime.sources.demo,
                "token_ids": result.token_ids,
                "timings": {
                    "first_token_s": result.first_token_s,
                    "generation_s": result.total_s,
                    "tokens_per_s": result.tokens_per_s,
                    "total_s": time.perf_counter() - start,
                    "reused_tokens": result.reused_tokens,
                },
            },
        )

    def _embed(self, job: Job) -> tuple[Any, bool, str]:
        import torch

        from antoni_bridge.encoders.pipeline import embed_slide
        from antoni_bridge.features.cache import FeatureCache
        from antoni_bridge.slides.planning import SlideRequest
        from antoni_bridge.slides.regions import Region

        content = job.content
        region = Region.from_geojson_dict(content["region"]) if content.get("region") else None
        request = SlideRequest(Path(content["slide"]), region=region, slide_mpp=content.get("slide_mpp"))

        def progress(p) -> None:  # p: planning.Progress; also the place a cancel is seen between batches
            job.check()
            self._progress(job, p.stage, p.done, p.total, p.rate)

        result = embed_slide(request, self.runtime.encoders, FeatureCache(self.runtime.cache_dir), progress)
        key = f"{result.data.attrs['slide_fingerprint']}:{region.key() if region else ''}"
        return torch.from_numpy(result.data.latents), result.cache_hit, key

    def _progress(self, job: Job, stage: str, done: int, total: int, rate: float = 0.0) -> None:
        job.stage, job.done, job.total = stage, done, total
        self._event(job, "progress", {"stage": stage, "done": done, "total": total, "rate": rate})


def _check_ask(content: dict[str, Any]) -> str | None:
    """A quick shape check in the socket loop; the worker checks the rest (files, geometry, latents)."""
    if ("slide" in content) == ("features" in content):
        return "An ask names either a slide or a features file."
    for name in ("slide", "features"):
        if name in content and not isinstance(content[name], str):
            return f"'{name}' must be a path string."
    conversation = content.get("conversation")
    if not isinstance(conversation, list) or not conversation:
        return "An ask carries a non-empty conversation (a list of {role, content} turns)."
    options = content.get("options", {})
    allowed = {"max_new_tokens", "greedy", "temperature", "top_p", "top_k", "seed"}
    if not isinstance(options, dict) or not set(options) <= allowed:
        return f"Generation options must be an object with keys among {sorted(allowed)}."
    numbers = {k: v for k, v in options.items() if k not in ("greedy", "seed")}
    if any(isinstance(v, bool) or not isinstance(v, int | float) for v in numbers.values()):
        return "Generation options max_new_tokens, temperature, top_p and top_k must be numbers."
    if not isinstance(options.get("greedy", True), bool) or not isinstance(options.get("seed", 0), int | None):
        return "Generation option greedy must be true or false, and seed an integer or null."
    if content.get("region") is not None and not isinstance(content["region"], dict):
        return "'region' must be a GeoJSON geometry object in level-0 pixels."
    return None
