"""`localguard serve`: an OpenAI-compatible HTTP server with the Guard on every request.

One model in memory, one worker thread that runs the requests in arrival order (a model has
one KV cache); each HTTP connection has its own thread that parses the request, queues it and
writes what the worker releases. The Guard's held-back streaming decides what is released, so
no token that a rewind takes back is ever sent. A client that goes away is noticed while it
waits and while it streams: its request leaves the queue, or its reply ends at the next
token. SIGINT and SIGTERM stop the server: queued requests are cancelled, the running one
ends, the model is closed.

Standard library only (http.server): the API is small and the model is the bottleneck.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import queue
import select
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from localguard.backends.base import GuardBackend
from localguard.errors import InputError
from localguard.guard import GuardResult, GuardSettings, chat_tokens, generate_tokens
from localguard.recipe import default, schema_field
from localguard.serve import protocol
from localguard.serve.protocol import APIError, Limits, Request

POLL_SECONDS = 0.05  # how often a waiting connection checks whether its client went away
SHUTDOWN_SECONDS = 10.0  # how long a stop waits for the running reply to end


@dataclass
class Job:
    """One request on its way through the worker. events: ("text", piece), then ("done",
    Outcome) or ("error", APIError)."""

    request: Request
    events: queue.Queue = field(default_factory=queue.Queue)
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Outcome:
    text: str
    finish: str
    refusal: str | None
    result: GuardResult

    @property
    def counts(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens), for usage."""
        return self.result.prompt_tokens, len(self.result.tokens)


class StopSequences:
    """Cuts released text at the first stop sequence. Text is passed on as soon as no stop
    sequence could still begin in it, so nothing past a stop is ever sent."""

    def __init__(self, stops: list[str], emit: Callable[[str], None]) -> None:
        self.stops, self.emit = stops, emit
        self.keep = max((len(s) for s in stops), default=1) - 1
        self.text = ""  # everything passed on or held
        self.sent = 0
        self.hit = False

    def add(self, piece: str) -> None:
        if self.hit:
            return
        self.text += piece
        start = max(0, self.sent - self.keep)  # a stop may begin in the held tail
        found = [i for i in (self.text.find(s, start) for s in self.stops) if i >= 0]
        if found:
            self.text, self.hit = self.text[: min(found)], True
            self._send(len(self.text))
        else:
            self._send(len(self.text) - self.keep)

    def close(self) -> str:
        """The whole text, the held tail sent."""
        self._send(len(self.text))
        return self.text

    def _send(self, upto: int) -> None:
        if upto > self.sent:
            self.emit(self.text[self.sent : upto])
            self.sent = upto


class Engine:
    """The model and its worker thread. The worker opens the model itself (open_backend) and
    closes it when the engine stops: MLX keeps its streams per thread, so the thread that runs
    the model must be the one that loaded it."""

    def __init__(
        self,
        open_backend: Callable[[], GuardBackend],
        settings: GuardSettings,
        limits: Limits,
        max_queue: int = default("serve", "max_queue"),
        log: Callable[[str], None] | None = None,
    ) -> None:
        self.settings, self.limits = settings, limits
        self.jobs: queue.Queue = queue.Queue(max_queue)
        self.current: Job | None = None
        self.counts = {"served": 0, "cancelled": 0, "failed": 0}  # for /health
        self.log = log or (lambda line: None)
        self.backend: GuardBackend
        self._failure: BaseException | None = None
        ready = threading.Event()
        self.worker = threading.Thread(
            target=self._work, args=(open_backend, ready), name="localguard-model", daemon=True
        )
        self.worker.start()
        ready.wait()
        if self._failure is not None:
            self.worker.join()
            raise self._failure

    def submit(self, job: Job) -> None:
        try:
            self.jobs.put_nowait(job)
        except queue.Full:
            raise APIError(
                "the server is busy: too many requests are waiting; retry later",
                status=429,
                code="server_busy",
                kind="rate_limit_error",
            ) from None

    def stop(self) -> None:
        """Cancel every queued request and the running one, and let the worker end."""
        while True:
            try:
                job = self.jobs.get_nowait()
            except queue.Empty:
                break
            if job is not None:
                job.cancelled.set()
                job.events.put(("error", APIError("the server is stopping", 503)))
        if self.current is not None:
            self.current.cancelled.set()
        self.jobs.put(None)
        self.worker.join(SHUTDOWN_SECONDS)

    def _work(self, open_backend: Callable[[], GuardBackend], ready: threading.Event) -> None:
        backend = None
        try:
            backend = self.backend = open_backend()
            self.settings.resolve(backend.head)  # a headless model with the guard on fails
        except BaseException as e:
            self._failure = e
            if backend is not None:
                backend.close()
            return
        finally:
            ready.set()
        try:
            self._serve_jobs()
        finally:
            self.backend.close()

    def _serve_jobs(self) -> None:
        while True:
            job = self.jobs.get()
            if job is None:
                return
            if job.cancelled.is_set():  # its client left while it waited
                self.counts["cancelled"] += 1
                continue
            self.current = job
            try:
                job.events.put(("done", self._answer(job)))
                self.counts["cancelled" if job.cancelled.is_set() else "served"] += 1
            except APIError as e:
                job.events.put(("error", e))
                self.counts["failed"] += 1
            except InputError as e:
                job.events.put(("error", APIError(str(e))))
                self.counts["failed"] += 1
            except Exception:  # one request's failure must not end the server
                self.log(traceback.format_exc())
                error = APIError("internal error", 500, kind="server_error")
                job.events.put(("error", error))
                self.counts["failed"] += 1
            finally:
                self.current = None

    def prompt_tokens(self, request: Request) -> tuple[list[int], list[int]]:
        """(prompt ids, forced reply start ids): the chat through the model's template, message
        text tokenized with special-token parsing off; a plain completion's text likewise."""
        if request.kind == "chat":
            prompt, forced = chat_tokens(self.backend, request.messages)
        else:
            prompt, forced = self.backend.encode_text(request.prompt), []
        room = self.limits.context - request.sampling.max_tokens
        if len(prompt) + len(forced) > room:
            raise APIError(
                f"the prompt has {len(prompt) + len(forced)} tokens; with max_tokens "
                f"{request.sampling.max_tokens} at most {room} fit the context of "
                f"{self.limits.context}",
                param="messages" if request.kind == "chat" else "prompt",
                code="context_length_exceeded",
            )
        return prompt, forced

    def _answer(self, job: Job) -> Outcome:
        request = job.request
        prompt, forced = self.prompt_tokens(request)
        settings = self.settings
        if request.guard_mode is not None:
            settings = dataclasses.replace(settings, mode=request.guard_mode)
        stops = StopSequences(request.stop, lambda piece: job.events.put(("text", piece)))
        result = generate_tokens(
            self.backend,
            prompt,
            forced,
            settings,
            request.sampling,
            stops.add,
            halt=lambda: stops.hit or job.cancelled.is_set(),
        )
        text = stops.close()
        return Outcome(
            text=text,
            finish=protocol.finish_reason(result, stops.hit),
            refusal=protocol.refusal_text(result, self.backend.decode),
            result=result,
        )


@dataclass(frozen=True)
class ServeOptions:
    host: str = schema_field("serve", "host")
    port: int = schema_field("serve", "port")
    name: str = "localguard"
    strict_openai: bool = schema_field("serve", "strict_openai")  # no localguard object
    allow_client_guard_mode: bool = schema_field("serve", "allow_client_guard_mode")


class Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, engine: Engine, options: ServeOptions) -> None:
        self.engine, self.options = engine, options
        super().__init__((options.host, options.port), Handler)


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Server
    server_version = "localguard"

    def handle(self) -> None:
        with contextlib.suppress(ConnectionResetError, BrokenPipeError):
            super().handle()  # a client may leave between requests: nothing to answer then

    # --- routes ---

    def do_GET(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        if path == "/health":
            engine = self.server.engine
            waiting = engine.jobs.qsize()
            self._json(200, {"status": "ok", "waiting": waiting, **engine.counts})
        elif path == "/v1/models":
            model = {"id": self.server.options.name, "object": "model", "created": 0}
            self._json(200, {"object": "list", "data": [{**model, "owned_by": "localguard"}]})
        else:
            self._error(APIError(f"no route GET {path}", 404, code="not_found"))

    def do_POST(self) -> None:
        path = self.path.split("?")[0].rstrip("/")
        kinds = {"/v1/chat/completions": "chat", "/v1/completions": "completion"}
        started = time.perf_counter()
        try:
            if path not in kinds:
                raise APIError(f"no route POST {path}", 404, code="not_found")
            limits, allow = self.server.engine.limits, self.server.options.allow_client_guard_mode
            body = self._body(limits)
            request = protocol.parse(kinds[path], body, limits, allow)
        except APIError as e:
            self._error(e)
            return
        self._serve(request, started)

    def _serve(self, request: Request, started: float) -> None:
        job = Job(request)
        try:
            self.server.engine.submit(job)
        except APIError as e:
            self._error(e)
            return
        rid = protocol.new_id(request.kind)
        try:
            outcome = self._stream(job, rid) if request.stream else self._whole(job, rid)
        except (BrokenPipeError, ConnectionResetError, ClientGone):
            job.cancelled.set()
            self.close_connection = True
            self.log_message("client went away; its request was cancelled")
            return
        if outcome is not None:
            ms = (time.perf_counter() - started) * 1000
            action = protocol.extension(outcome.result)["action"]
            self.log_message(
                f"{request.kind}: {outcome.counts[1]} tokens, {outcome.finish}, "
                f"guard {action}, {ms:.0f} ms"
            )

    def _events(self, job: Job):
        """The job's events, watching the connection while it waits."""
        while True:
            try:
                yield job.events.get(timeout=POLL_SECONDS)
            except queue.Empty:
                if self._client_gone():
                    raise ClientGone() from None

    def _whole(self, job: Job, rid: str) -> Outcome | None:
        for kind, value in self._events(job):
            if kind == "error":
                self._error(value)
                return None
            if kind == "done":
                self._json(200, self._completion(job.request, rid, value))
                return value
        return None

    def _stream(self, job: Job, rid: str) -> Outcome | None:
        request, name = job.request, self.server.options.name
        started = False
        for kind, value in self._events(job):
            if kind == "error":
                if not started:
                    self._error(value)
                    return None
                self._chunk(protocol.sse({"error": value.body()["error"]}))
                self._end_stream()
                return None
            if not started:
                self._start_stream()
                started = True
                if request.kind == "chat":
                    delta = {"role": "assistant", "content": ""}
                    self._chunk(protocol.sse(protocol.chunk(request, rid, name, delta)))
            if kind == "text":
                delta = {"content": value}
                self._chunk(protocol.sse(protocol.chunk(request, rid, name, delta)))
                continue
            outcome: Outcome = value
            delta = {"refusal": outcome.refusal} if outcome.refusal else {}
            ext = self._extension(outcome)
            last = protocol.chunk(request, rid, name, delta, outcome.finish, ext)
            self._chunk(protocol.sse(last))
            if request.include_usage:
                chunk = protocol.chunk(request, rid, name, counts=outcome.counts)
                self._chunk(protocol.sse(chunk))
            self._chunk(protocol.sse("[DONE]"))
            self._end_stream()
            return outcome
        return None

    # --- what is written ---

    def _completion(self, request: Request, rid: str, outcome: Outcome) -> dict:
        return protocol.completion(
            request,
            rid,
            self.server.options.name,
            outcome.text,
            outcome.finish,
            outcome.refusal,
            self._extension(outcome),
            outcome.counts,
        )

    def _extension(self, outcome: Outcome) -> dict | None:
        return None if self.server.options.strict_openai else protocol.extension(outcome.result)

    def _body(self, limits: Limits) -> bytes:
        length = self.headers.get("Content-Length")
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked" or length is None:
            self.close_connection = True
            raise APIError("send the body with a Content-Length", 411, code="length_required")
        try:
            size = int(length)
        except ValueError:
            self.close_connection = True
            raise APIError("Content-Length is not a number") from None
        if size < 0:
            self.close_connection = True
            raise APIError("Content-Length is negative")
        try:
            protocol.check_body_size(size, limits)
        except APIError:
            self.close_connection = True  # the unread body must not be taken for a request
            raise
        return self.rfile.read(size)

    def _json(self, status: int, data: dict) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        if self.close_connection:
            self.send_header("Connection", "close")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, error: APIError) -> None:
        self._json(error.status, error.body())

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Cache-Control", "no-cache")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _chunk(self, data: bytes) -> None:
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _client_gone(self) -> bool:
        """Whether the peer closed the connection (readable with nothing to read)."""
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            if not readable:
                return False
            return sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    def log_message(self, format: str, *args) -> None:  # noqa: A002 (the base class's name)
        line = format % args if args else format
        self.server.engine.log(f"{self.address_string()} {self.command} {self.path} {line}")

    def log_request(self, code="-", size="-") -> None:
        if isinstance(code, HTTPStatus):
            code = code.value
        if code != 200:  # successes get their own line with the guard's action
            self.log_message(f"-> {code}")


class ClientGone(Exception):
    """The client closed its connection while its request waited or ran."""


def serve(engine: Engine, options: ServeOptions, announce: Callable[[str], None]) -> None:
    """Serve until SIGINT or SIGTERM, then stop cleanly: no new connections, queued requests
    cancelled, the running reply ended, the model closed by the caller."""
    server = Server(engine, options)
    stop = threading.Event()
    previous = {sig: signal.signal(sig, lambda *_: stop.set()) for sig in STOP_SIGNALS}
    thread = threading.Thread(target=server.serve_forever, name="localguard-http", daemon=True)
    thread.start()
    host, port = server.server_address[:2]
    announce(f"serving {options.name} at http://{host}:{port}/v1 (Ctrl-C stops)")
    try:
        while not stop.wait(0.2) and thread.is_alive():
            pass
    finally:
        announce("stopping")
        server.shutdown()
        server.server_close()
        engine.stop()
        for sig, handler in previous.items():
            signal.signal(sig, handler)


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
