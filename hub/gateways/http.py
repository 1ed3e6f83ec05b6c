"""The FHIR gateway: members POST Bundles over HTTP; the answer comes once the broker has them.

    listener = await start_fhir(intake, config, config.gateways.fhir)   # on intake.broker.loop
    listener.port
    await listener.close()                                              # graceful

    POST /fhir                    a transaction, batch, collection or message Bundle (or a lone
                                  ServiceRequest or DiagnosticReport, which the adapter also reads)
    POST /fhir/$process-message   a message Bundle
    GET  /fhir/metadata           the CapabilityStatement (no token needed)
    GET  /fhir/DiagnosticReport?patient.identifier=urn:oid:2.16.156.10011.1.3|<id>&code=<system>|<code>
                                  the patient's recognised results of that item (when given a registry)

``FhirApp`` is a plain ASGI application with no web framework: it has a few routes and answers
everything with an OperationOutcome, which a framework would not write for us. It runs on
uvicorn, on the broker's own loop, so that a publish costs no thread hop.

Every request needs ``Authorization: Bearer <token>``; the token's institution is the sender, and
its code overrides whatever sender the Bundle names. Answers:

    202  every exam confirmed by the broker; the outcome lists each exam id, and adapter notices
         (a resident ID that fails its check digit) as warnings with their expression
    400  not readable FHIR JSON (structure), or not a message the hub takes (not-supported)
    422  a supported message that breaks a rule (invalid; required for a missing element)
    401  no bearer token (login) or an unknown one (security)
    404, 405, 413, 415  the wrong path, method, size or content type
    408  the body did not arrive within ``body_timeout`` seconds
    503  the broker did not confirm, so nothing was taken: try again after Retry-After
    500  a fault of the hub's own; the body is parked all the same

A member's input that the hub refuses (400, 408, 413, 415, 422) is parked on ``hub.parked.intake`` with
its problems before the sender hears why; when parking fails too, the answer is 503, so the sender
keeps its copy. Of a body over ``max_body_bytes`` only that many bytes are read and parked, with a
reason that says where it was cut. Requests without a member's token, and wrong paths or methods,
are refused with nothing parked.

The search answers a searchset Bundle built by ``hub.gateways.fhir_search``; the token's
institution is who looked, in the registry's audit trail.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
from collections.abc import Awaitable, Callable, Iterator, Mapping, MutableMapping
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from typing import Any
from urllib.parse import parse_qs

import uvicorn

from adapters import fhir
from adapters._common import RESIDENT_ID_SYSTEM
from hub.broker import CONFIRM_TIMEOUT
from hub.config import Config, FhirGateway, Institution
from hub.envelope import Exam
from hub.errors import (
    AdapterError,
    BrokerError,
    DecodeError,
    InvalidMessage,
    MissingField,
    UnsupportedMessage,
    raised_at,
)
from hub.gateways.fhir_search import searchset
from hub.ids import valid_resident_id
from hub.intake import Intake
from hub.store.recognition import Registry

__all__ = [
    "DIAGNOSTIC_REPORT",
    "METADATA",
    "PROCESS_MESSAGE",
    "RETRY_AFTER_SECONDS",
    "ROOT",
    "FhirApp",
    "FhirListener",
    "start_fhir",
]

log = logging.getLogger("hub.gateways.http")

ROOT = "/fhir"
PROCESS_MESSAGE = "/fhir/$process-message"
METADATA = "/fhir/metadata"
DIAGNOSTIC_REPORT = "/fhir/DiagnosticReport"
RETRY_AFTER_SECONDS = 10  # the RabbitMQ broker reconnects with backoff of up to 8 s
_ROUTES: Mapping[str, str] = {ROOT: "POST", PROCESS_MESSAGE: "POST", METADATA: "GET"}
_MEDIA_TYPES = frozenset({"application/fhir+json", "application/json"})
_FHIR_JSON = b"application/fhir+json; charset=utf-8"
_OFF_LOOP_BYTES = 256 * 1024  # larger bodies are read in a worker thread, so one upload does not stall the loop

ASGIMessage = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[ASGIMessage]]
Send = Callable[[ASGIMessage], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class _Cut:
    """The first ``max_body_bytes`` of a body over the limit; ``declared`` is its Content-Length, if given."""

    head: bytes
    declared: int | None


@dataclass(frozen=True, slots=True)
class _Late:
    """What came of a body that did not arrive in whole within ``body_timeout``."""

    head: bytes


@dataclass(frozen=True, slots=True)
class _Answer:
    status: int
    resource: Mapping[str, Any]
    headers: tuple[tuple[str, str], ...] = ()


class _Refused(Exception):
    """Ends a request early with ``answer``: a refusal that involves no input worth parking."""

    def __init__(self, answer: _Answer) -> None:
        super().__init__(answer.status)
        self.answer = answer


class FhirApp:
    """The ASGI application; uvicorn (or any ASGI server) calls it once per request."""

    def __init__(
        self,
        intake: Intake,
        config: Config,
        *,
        max_body_bytes: int,
        body_timeout: float = 60.0,
        registry: Registry | None = None,
    ) -> None:
        self.intake = intake
        self.config = config
        self.max_body_bytes = max_body_bytes
        self.body_timeout = body_timeout
        self.registry = registry
        self._routes = {**_ROUTES, DIAGNOSTIC_REPORT: "GET"} if registry is not None else _ROUTES
        self.capability = _capability_statement(datetime.now(UTC), search=registry is not None)

    async def __call__(self, scope: Mapping[str, Any], receive: Receive, send: Send) -> None:
        if scope["type"] != "http":  # lifespan is off and websockets are disabled: nothing else is served
            return
        try:
            answer = await self._answer(scope, receive)
        except _Refused as refused:
            answer = refused.answer
        except Exception as exc:  # never up to the server: a sender always gets an OperationOutcome
            log.error("fhir: unexpected %s at %s", type(exc).__name__, raised_at(exc))
            answer = _outcome(500, "error", "exception", "the hub failed on this request; it was not accepted")
        if answer is not None:
            await _send(send, answer)

    async def _answer(self, scope: Mapping[str, Any], receive: Receive) -> _Answer | None:
        path = scope["path"].rstrip("/") or "/"
        method = self._routes.get(path)
        if method is None:
            return _outcome(404, "error", "not-found", f"POST Bundles to {ROOT} or {PROCESS_MESSAGE}; no {path}")
        if scope["method"] != method:
            text = f"{path} takes {method}, not {scope['method']}"
            return _outcome(405, "error", "not-supported", text, headers=(("allow", method),))
        if path == METADATA:
            return _Answer(200, self.capability)
        headers = {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else None
        institution = self._sender(headers.get("authorization"), peer)
        if path == DIAGNOSTIC_REPORT:
            return await self._search(scope, headers.get("host"), institution.code)
        raw = await self._body(headers.get("content-length"), receive)
        if raw is None:
            log.info("fhir: %s disconnected before its body arrived", institution.code)
            return None
        if isinstance(raw, _Late):
            log.warning("fhir: refused input from %s: its body did not arrive in time", institution.code)
            late = f"the body did not arrive within {self.body_timeout:g} s (gateways.fhir.body_timeout)"
            refused = _outcome(408, "error", "timeout", f"{late}; send it again")
            return await self._park(raw.head, f"{late}; {len(raw.head)} bytes came", institution.code, peer) or refused
        if isinstance(raw, _Cut):
            log.warning("fhir: refused input from %s: over the size limit", institution.code)
            return await self._park(raw.head, self._cut_reason(raw), institution.code, peer) or self._too_large()
        unsupported = _content_type_problem(headers.get("content-type"))
        if unsupported is not None:
            log.warning("fhir: refused input from %s: not FHIR JSON by its Content-Type", institution.code)
            refused = _outcome(415, "error", "not-supported", unsupported)
            return await self._park(raw, unsupported, institution.code, peer) or refused
        return await self._take(raw, institution.code, peer, messages_only=path == PROCESS_MESSAGE)

    def _sender(self, authorization: str | None, peer: str | None) -> Institution:
        scheme, _, token = (authorization or "").strip().partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            log.warning("fhir: a request from %s without a bearer token", peer)
            text = "send Authorization: Bearer <token>, with the token the consortium gave your institution"
            raise _Refused(_outcome(401, "error", "login", text, headers=(("www-authenticate", "Bearer"),)))
        institution = self.config.institution_by_token(token.strip())
        if institution is None:
            log.warning("fhir: a request from %s with an unknown token", peer)
            challenge = 'Bearer error="invalid_token"'
            text = "the bearer token belongs to no institution of this consortium"
            raise _Refused(_outcome(401, "error", "security", text, headers=(("www-authenticate", challenge),)))
        return institution

    async def _body(self, declared: str | None, receive: Receive) -> bytes | _Cut | _Late | None:
        """The request body, or its first ``max_body_bytes`` once it is known to exceed them; None on disconnect.

        A body still incomplete after ``body_timeout`` is _Late: a sender that stalls holds no
        connection for longer than that.
        """
        limit = self.max_body_bytes
        length = int(declared) if declared is not None and declared.isdigit() else None
        over = length is not None and length > limit
        body = bytearray()
        size = 0
        deadline = asyncio.get_running_loop().time() + self.body_timeout
        while True:
            try:
                async with asyncio.timeout_at(deadline):
                    message = await receive()
            except TimeoutError:
                return _Late(bytes(body))
            if message["type"] == "http.disconnect":
                return None
            chunk = message.get("body", b"")
            size += len(chunk)
            body += chunk[: limit - len(body)]
            over = over or size > limit
            if (over and len(body) == limit) or not message.get("more_body", False):
                return _Cut(bytes(body), length) if over else bytes(body)

    async def _search(self, scope: Mapping[str, Any], host: str | None, who: str) -> _Answer:
        """The searchset of recognised results; the registry's blocking I/O runs off the loop."""
        assert self.registry is not None
        query = scope.get("query_string", b"").decode("latin-1")
        national_id, item = _search_terms(parse_qs(query, keep_blank_values=True))
        link = f"{scope.get('scheme', 'http')}://{host or 'localhost'}{DIAGNOSTIC_REPORT}" + (
            f"?{query}" if query else ""
        )
        search = partial(searchset, self.registry, national_id, item, who, link)
        return _Answer(200, await asyncio.get_running_loop().run_in_executor(None, search))

    def _too_large(self) -> _Answer:
        return _outcome(413, "error", "too-costly", f"the body is over this hub's limit of {self.max_body_bytes} bytes")

    def _cut_reason(self, cut: _Cut) -> str:
        size = f" ({cut.declared} bytes by its Content-Length)" if cut.declared is not None else ""
        return (
            f"the body is over this hub's limit of {self.max_body_bytes} bytes{size}"
            f" (gateways.fhir.max_body_bytes); it was cut at {len(cut.head)} bytes"
        )

    async def _take(self, raw: bytes, origin: str, peer: str | None, *, messages_only: bool) -> _Answer:
        """Read, then publish the exams or park the input; the answer says which, once it is confirmed."""
        try:
            if len(raw) > _OFF_LOOP_BYTES:
                exams = await asyncio.to_thread(self._read, raw, origin, messages_only)
            else:
                exams = self._read(raw, origin, messages_only)
        except AdapterError as exc:
            places = ", ".join(p.location or "-" for p in exc.problems[:10])
            log.warning("fhir: refused input from %s: %s at %s", origin, type(exc).__name__, places)
            return await self._park(raw, exc, origin, peer) or _refused_outcome(exc)
        except Exception as exc:  # a fault in the adapter: keep the input, answer 500
            log.error("fhir: the adapter failed on input from %s: %s at %s", origin, type(exc).__name__, raised_at(exc))
            fault = f"the hub's FHIR adapter failed ({type(exc).__name__})"
            return await self._kept_for_repair(raw, fault, origin, peer)
        try:
            accepted = await self.intake.accept(exams, raw)
        except (BrokerError, OSError) as exc:  # OSError: the blob store could not keep the source
            log.warning("fhir: %d exam(s) from %s not confirmed: %s", len(exams), origin, type(exc).__name__)
            return _retry_later("the hub could not store the exams")
        except Exception as exc:  # a fault of the hub's own: keep the input, answer 500
            log.error("fhir: intake failed on input from %s: %s at %s", origin, type(exc).__name__, raised_at(exc))
            fault = f"the hub failed to take the exams ({type(exc).__name__})"
            return await self._kept_for_repair(raw, fault, origin, peer)
        log.info("fhir: accepted %s from %s", " ".join(e.exam_id for e in accepted), origin)
        return _Answer(202, _accepted_outcome(accepted))

    def _read(self, raw: bytes, origin: str, messages_only: bool) -> list[Exam]:
        if messages_only:
            _require_message_bundle(raw)
        return fhir.read(raw, origin=origin, centres=self.config.routing)

    async def _kept_for_repair(self, raw: bytes, fault: str, origin: str, peer: str | None) -> _Answer:
        """The 500 for a fault of the hub's own, once the input is parked (the 503 when the broker cannot park it)."""
        text = f"{fault}; the message is kept for repair, not accepted"
        return await self._park(raw, fault, origin, peer) or _outcome(500, "error", "exception", text)

    async def _park(self, raw: bytes, error: AdapterError | str, origin: str, peer: str | None) -> _Answer | None:
        """Keep refused input with its reason: None once the broker has it, else the 503 to answer."""
        try:
            await self.intake.park(raw, error, format="fhir", origin=origin, peer=peer)
        except (BrokerError, OSError) as exc:
            log.warning("fhir: input from %s could not be parked: %s", origin, type(exc).__name__)
            return _retry_later("the hub could not keep the message to tell you what is wrong with it")
        return None


def _content_type_problem(value: str | None) -> str | None:
    """Why the hub does not read a body of this Content-Type, or None if it does."""
    media, *parameters = (value or "").split(";")
    options = {k.strip().lower(): v.strip().strip('"').lower() for k, _, v in (p.partition("=") for p in parameters)}
    if (
        media.strip().lower() in _MEDIA_TYPES
        and options.get("charset", "utf-8") in ("utf-8", "utf8")
        and options.get("fhirversion", "4.0").startswith("4.0")
    ):
        return None
    return f"send FHIR R4 JSON as application/fhir+json; charset=utf-8, not {value or 'no Content-Type'}"


def _require_message_bundle(raw: bytes) -> None:
    try:
        data = json.loads(raw)
    except ValueError:
        return  # the adapter says what is wrong with it, and where
    if isinstance(data, dict) and data.get("resourceType") == "Bundle" and data.get("type") == "message":
        return
    where = "Bundle.type" if isinstance(data, dict) and data.get("resourceType") == "Bundle" else "resourceType"
    raise UnsupportedMessage(f"$process-message takes a message Bundle; POST other Bundles to {ROOT}", location=where)


# -- the search of recognised results


def _search_terms(query: Mapping[str, list[str]]) -> tuple[str, tuple[str, str]]:
    """The resident ID number and the item (system, code) a search names; 400 when it names them wrongly."""
    identifier = _token(query, "patient.identifier")
    code = _token(query, "code")
    if identifier[0] != RESIDENT_ID_SYSTEM:
        text = f"search by resident ID number: patient.identifier={RESIDENT_ID_SYSTEM}|<number>"
        raise _Refused(_outcome(400, "error", "not-supported", text))
    if not valid_resident_id(identifier[1]):
        raise _Refused(
            _outcome(400, "error", "value", "patient.identifier is not a valid resident ID number (GB 11643)")
        )
    return identifier[1].upper(), code


def _token(query: Mapping[str, list[str]], name: str) -> tuple[str, str]:
    values = query.get(name, [])
    system, bar, value = values[0].partition("|") if len(values) == 1 else ("", "", "")
    if not (bar and system and value):
        text = f"give {name} once, as system|value"
        raise _Refused(_outcome(400, "error", "value" if values else "required", text))
    return system, value


# -- OperationOutcomes


def _issue(severity: str, code: str, text: str, location: str | None = None) -> dict[str, Any]:
    issue: dict[str, Any] = {"severity": severity, "code": code, "diagnostics": text}
    if location and location != "$":  # "$" is the whole body, which an issue without expression means
        issue["expression"] = [location]
    return issue


def _outcome(status: int, severity: str, code: str, text: str, *, headers: tuple[tuple[str, str], ...] = ()) -> _Answer:
    return _Answer(status, {"resourceType": "OperationOutcome", "issue": [_issue(severity, code, text)]}, headers)


def _retry_later(text: str) -> _Answer:
    return _outcome(
        503,
        "error",
        "transient",
        f"{text}; nothing was accepted: send it again in {RETRY_AFTER_SECONDS} s",
        headers=(("retry-after", str(RETRY_AFTER_SECONDS)),),
    )


def _error_code(error: AdapterError) -> tuple[int, str]:
    if isinstance(error, MissingField):
        return 422, "required"
    if isinstance(error, InvalidMessage):
        return 422, "invalid"
    if isinstance(error, UnsupportedMessage):
        return 400, "not-supported"
    if isinstance(error, DecodeError):
        return 400, "structure"
    return 400, "invalid"


def _refused_outcome(error: AdapterError) -> _Answer:
    """400 or 422 with one error issue per problem the adapter found, each with its FHIR path."""
    status, code = _error_code(error)
    issues = [_issue("error", code, p.message, p.location) for p in error.problems]
    return _Answer(status, {"resourceType": "OperationOutcome", "issue": issues})


def _accepted_outcome(exams: list[Exam]) -> dict[str, Any]:
    """One information issue per accepted exam, then each distinct adapter notice as a warning."""
    issues = [
        _issue("information", "informational", f"exam {e.exam_id} accepted for the {e.centre} centre ({e.priority})")
        for e in exams
    ]
    notices = dict.fromkeys((n.location, n.message) for e in exams for n in e.notices)
    issues += [_issue("warning", "value", message, location) for location, message in notices]
    return {"resourceType": "OperationOutcome", "issue": issues}


def _capability_statement(date: datetime, *, search: bool = False) -> dict[str, Any]:
    statement: dict[str, Any] = {
        "resourceType": "CapabilityStatement",
        "status": "active",
        "date": date.isoformat(timespec="seconds"),
        "kind": "instance",
        "software": {"name": "consortium-hub"},
        "implementation": {"description": "exam intake of the consortium hub (医共体共享诊断中心)"},
        "fhirVersion": "4.0.1",
        "format": sorted(_MEDIA_TYPES),
        "rest": [
            {
                "mode": "server",
                "documentation": "POST a Bundle to the base; each ServiceRequest becomes an exam for a centre",
                "security": {"description": "Authorization: Bearer <token>; the token names the sending institution"},
                "interaction": [{"code": "transaction"}, {"code": "batch"}],
                "operation": [
                    {
                        "name": "process-message",
                        "definition": "http://hl7.org/fhir/OperationDefinition/MessageHeader-process-message",
                    }
                ],
            }
        ],
    }
    if search:
        parameters = [{"name": "patient.identifier", "type": "token"}, {"name": "code", "type": "token"}]
        resource = {"type": "DiagnosticReport", "interaction": [{"code": "search-type"}], "searchParam": parameters}
        statement["rest"][0]["resource"] = [resource]
    return statement


async def _send(send: Send, answer: _Answer) -> None:
    body = json.dumps(answer.resource, ensure_ascii=False, separators=(",", ":")).encode()
    headers = [(b"content-type", _FHIR_JSON), (b"content-length", str(len(body)).encode())]
    headers += [(name.encode("latin-1"), value.encode("latin-1")) for name, value in answer.headers]
    try:
        await send({"type": "http.response.start", "status": answer.status, "headers": headers})
        await send({"type": "http.response.body", "body": body})
    except Exception as exc:  # the sender went away; it will send again
        log.info("fhir: the answer %d was not delivered: %s", answer.status, type(exc).__name__)


# -- uvicorn on the broker's loop


class _EmbeddedServer(uvicorn.Server):
    """uvicorn on a loop it does not own: the hub keeps its signals, and startup can be awaited."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = asyncio.Event()

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # uvicorn would take SIGINT/SIGTERM (on the main thread) from the hub, which stops in order

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets=sockets)
        self.ready.set()


class FhirListener:
    """A running FHIR gateway; ``close`` finishes the requests in hand, then stops."""

    def __init__(self, server: _EmbeddedServer, task: asyncio.Task[None], host: str, port: int) -> None:
        self._server = server
        self._task = task
        self.host = host
        self.port = port

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}{ROOT}"

    async def close(self) -> None:
        self._server.should_exit = True
        with contextlib.suppress(Exception):  # a server that failed has logged why
            await asyncio.shield(self._task)


async def start_fhir(
    intake: Intake, config: Config, settings: FhirGateway, *, registry: Registry | None = None
) -> FhirListener:
    """Serve the gateway on the running loop, which must be ``intake.broker.loop``; ``registry`` adds the search."""
    loop = asyncio.get_running_loop()
    if loop is not intake.broker.loop:
        raise RuntimeError("start_fhir runs on the broker's loop: asyncio.run_coroutine_threadsafe(..., broker.loop)")
    app = FhirApp(
        intake, config, max_body_bytes=settings.max_body_bytes, body_timeout=settings.body_timeout, registry=registry
    )
    uvicorn_config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        lifespan="off",
        log_level="warning",
        log_config=None,  # leave the process's logging alone
        access_log=False,
        ws="none",
        interface="asgi3",
        server_header=False,
        timeout_graceful_shutdown=int(CONFIRM_TIMEOUT) + 5,  # a request in hand may wait that long for its confirm
    )
    server = _EmbeddedServer(uvicorn_config)
    # Bound here, not by uvicorn: a port in use is then an OSError for the caller, where uvicorn
    # would call sys.exit() inside a task on the broker's loop.
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    sock = socket.create_server((settings.host, settings.port), family=family, backlog=uvicorn_config.backlog)
    task = loop.create_task(_serve(server, sock), name="hub-fhir-gateway")
    ready = loop.create_task(server.ready.wait())
    await asyncio.wait({task, ready}, return_when=asyncio.FIRST_COMPLETED)
    if not server.ready.is_set():
        ready.cancel()
        sock.close()
        task.result()  # raises why it stopped
        raise RuntimeError("the FHIR gateway stopped before it started")
    port = sock.getsockname()[1]
    log.info("fhir: listening on %s:%d", settings.host, port)
    return FhirListener(server, task, settings.host, port)


async def _serve(server: _EmbeddedServer, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn exits on some startup failures; that must not stop the broker's loop
        log.error("fhir: uvicorn stopped (exit status %s)", exc.code)
        raise RuntimeError(f"uvicorn stopped with exit status {exc.code}") from exc
    except Exception as exc:
        log.error("fhir: the gateway stopped: %s at %s", type(exc).__name__, raised_at(exc))
        raise
