"""Report egress: each member's reports, from its queue to its own system, in queue order.

    egress = Egress(broker, config, retry_delays=(1, 5, 30, 60, 300))
    egress.start()      # from any thread but the broker's loop
    egress.stop()       # finishes the delivery in hand; the rest stays queued

Every institution whose egress is ``mllp://host:port`` gets its reports as ORU^R01
in its own charset, over one persistent MLLP connection, and must answer AA with
MSA-2 = our MSH-10. One whose egress is ``fhir+http(s)://base`` gets each report
POSTed to ``{base}/DiagnosticReport`` and must answer 2xx. Anything else (AE, AR,
a wrong MSA-2, no answer, no connection, HTTP 4xx/5xx) is retried in hand after
each of ``retry_delays``, with the member's queue waiting behind it, and then
parked on ``hub.parked.egress``. Members do not wait for each other.

The ack policy lives in ``_settle``: a report is acked only once its
``report.delivered`` event (or its parked copy and ``report.parked`` event) is
confirmed. While the broker does not confirm, the report stays unacked; if its
channel dies RabbitMQ redelivers it, so a member may see one report twice (same
report_id, same MSH-10), never none.

A lane sends its reports strictly one after another, and takes the next as
soon as the member has answered: the confirm of the delivery event and the ack
run meanwhile, so a member's rate is set by its own round trip, not the
broker's. Prefetch is ``PIPELINE`` reports per lane, which bounds what waits
unacked behind a report being retried (RabbitMQ's ``consumer_timeout`` counts
from delivery). A member gets ``egress_connections`` lanes (config, default 1);
reports go to a lane by exam id, so the reports of one exam keep their order.
"""

from __future__ import annotations

import asyncio
import codecs
import itertools
import json
import logging
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Protocol

import httpx

from adapters import fhir, hl7v2
from hub.broker import CONFIRM_TIMEOUT, Broker, Delivery, Message, Subscription
from hub.config import Config, Institution
from hub.envelope import Report
from hub.errors import AdapterError, BrokerError, BrokerUnavailable, EnvelopeError, raised_at
from hub.events import event_message, report_event
from hub.mllp import MllpClient, MllpError
from hub.topology import EGRESS, PARKED, report_queue

__all__ = ["DEFAULT_RETRY_DELAYS", "Egress", "egress_parked_message", "report_charset"]

log = logging.getLogger("hub.egress")

DEFAULT_RETRY_DELAYS: tuple[float, ...] = (1, 5, 30, 60, 300)  # seconds before each retry; ~6.6 min in all
_GB_CODECS = frozenset({"gb18030", "gbk", "gb2312"})
_PAUSE = 1.0  # seconds before trying again to have an outcome confirmed, or a report after a bug
PIPELINE = 4  # reports held per lane: the one being sent, and those whose outcome is being confirmed


def report_charset(institution: Institution) -> str:
    """The charset a member's ORU^R01 is written in: GB 18030 for GBK/GB2312/GB18030 members, else UTF-8."""
    if institution.charset and codecs.lookup(institution.charset).name in _GB_CODECS:
        return "gb18030"
    return "utf-8"


def egress_parked_message(
    delivery: Delivery, reason: str, error: str, *, attempts: int, endpoint: str, institution: str
) -> Message:
    """``delivery``'s report for ``hub.parked.egress``, with why, how often and where it failed."""
    headers = {k: v for k, v in delivery.headers.items() if k not in ("x-delivery-count", "x-death")}
    headers |= {
        "x-hub-park-reason": reason,
        "x-hub-error": error[:500],
        "x-hub-attempts": attempts,
        "x-hub-endpoint": endpoint,
        "x-hub-institution": institution,
        "x-hub-parked-at": datetime.now(UTC).isoformat(),
        "x-hub-routing-key": delivery.routing_key,
    }
    return Message(PARKED, EGRESS, delivery.body, message_id=delivery.message_id, headers=headers)


@dataclass(frozen=True, slots=True)
class _Outcome:
    ok: bool
    code: str  # short and free of patient data, for logs and events: AA, AE, HTTP 500, MllpError
    error: str = ""  # the longer explanation, kept in the parked message's headers


class _Endpoint(Protocol):
    def render(self, report: Report) -> bytes: ...  # on an executor thread: the loop never waits for an adapter

    async def send(self, report: Report, payload: bytes) -> _Outcome: ...

    async def close(self) -> None: ...


class _MllpEndpoint:
    def __init__(self, institution: Institution, timeout: float) -> None:
        host, port = institution.egress.host_port
        self.client = MllpClient(host, port, timeout=timeout)
        self.charset = report_charset(institution)
        self._warm = False  # the connection has carried a report: the member may have closed it while idle

    def render(self, report: Report) -> bytes:
        return hl7v2.write_report(report, charset=self.charset)

    async def send(self, report: Report, payload: bytes) -> _Outcome:
        try:
            reply = await self.client.send(payload)
        except MllpError as exc:
            if not self._warm:
                return _Outcome(False, "no answer", str(exc))
            self._warm = False  # one fresh connection at once, before counting an attempt
            return await self.send(report, payload)
        try:
            ack = hl7v2.read_ack(reply, charset=self.charset)
        except AdapterError as exc:
            return await self._in_doubt(_Outcome(False, "unreadable ACK", str(exc)))
        sent = hl7v2.control_id(payload) or ""
        if ack.control_id != sent:
            return await self._in_doubt(
                _Outcome(False, "wrong MSA-2", f"MSA-2 {ack.control_id!r} does not answer MSH-10 {sent!r}")
            )
        self._warm = True  # AE and AR are answers too: the session is sound
        return _Outcome(ack.accepted, ack.code, f"{ack.code}: {ack.text}" if ack.text else ack.code)

    async def _in_doubt(self, outcome: _Outcome) -> _Outcome:
        """A reply that is not an ACK to this message: the next attempt starts on a new connection."""
        self._warm = False
        await self.client.close()
        return outcome

    async def close(self) -> None:
        await self.client.close()


class _FhirEndpoint:
    def __init__(self, institution: Institution, timeout: float) -> None:
        self.url = f"{(institution.egress.url or '').rstrip('/')}/DiagnosticReport"
        self.timeout = timeout
        self._client: httpx.AsyncClient | None = None  # made on the loop, at first use

    def render(self, report: Report) -> bytes:
        return json.dumps(fhir.write_report(report), ensure_ascii=False).encode("utf-8")

    async def send(self, report: Report, payload: bytes) -> _Outcome:
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        headers = {
            "Content-Type": "application/fhir+json",
            "Accept": "application/fhir+json",
            "If-None-Exist": f"identifier={report.report_id}",  # a redelivered report is not created twice
        }
        try:
            response = await self._client.post(self.url, content=payload, headers=headers)
        except httpx.HTTPError as exc:
            return _Outcome(False, type(exc).__name__, f"{type(exc).__name__}: {exc}")
        code = f"HTTP {response.status_code}"
        return _Outcome(response.is_success, code, code if response.is_success else f"{code}: {response.text[:400]}")

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            await client.aclose()


def _endpoint(institution: Institution, timeout: float) -> _Endpoint:
    if institution.egress.kind == "mllp":
        return _MllpEndpoint(institution, timeout)
    return _FhirEndpoint(institution, timeout)


@dataclass(eq=False)
class _Lane:
    """One delivery sequence for one member: its connection and its reports in hand, one at a time."""

    institution: Institution
    endpoint: _Endpoint
    inbox: asyncio.Queue[Delivery]
    task: asyncio.Task[None] | None = None
    busy: bool = False

    @property
    def where(self) -> str:
        return str(self.institution.egress)


class Egress:
    def __init__(
        self,
        broker: Broker,
        config: Config,
        *,
        retry_delays: Sequence[float] = DEFAULT_RETRY_DELAYS,
        timeout: float = 30.0,
        events: bool = True,
        connections: int | None = None,
    ) -> None:
        if connections is not None and connections < 1:
            raise ValueError("a member needs at least one connection")
        self.broker = broker
        self.config = config
        self.retry_delays = tuple(retry_delays)
        self.timeout = timeout
        self.events = events
        self.connections = connections
        self.members = tuple(i for i in config.institutions if i.egress.kind in ("mllp", "fhir"))
        self._lanes: dict[str, list[_Lane]] = {}
        self._subscriptions: list[Subscription] = []
        self._stopping: asyncio.Event | None = None
        self._settling: set[asyncio.Task[None]] = set()

    def lanes_for(self, member: Institution) -> int:
        """Connections to ``member``: the constructor's, else the member's ``egress_connections``."""
        return self.connections or member.egress_connections

    # -- lifecycle, from any thread but the loop

    def start(self) -> None:
        asyncio.run_coroutine_threadsafe(self._open_lanes(), self.broker.loop).result(CONFIRM_TIMEOUT)
        try:
            for member in self.members:
                subscription = self.broker.consume(
                    report_queue(member.code),
                    self._dispatcher(self._lanes[member.code]),
                    prefetch=PIPELINE * self.lanes_for(member),
                )
                self._subscriptions.append(subscription)
                log.info("egress to %s at %s started", member.code, member.egress)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Finish the delivery in hand (a report waiting for its next retry goes back), then cancel."""
        loop = self.broker.loop
        if self._stopping is not None:
            asyncio.run_coroutine_threadsafe(self._finish_lanes(), loop).result()
        for subscription in self._subscriptions:
            subscription.cancel()  # whatever was not settled goes back to its queue, in order
        self._subscriptions.clear()
        if self._lanes:
            asyncio.run_coroutine_threadsafe(self._close_endpoints(), loop).result(CONFIRM_TIMEOUT)

    async def _open_lanes(self) -> None:
        self._stopping = asyncio.Event()
        for member in self.members:
            count = self.lanes_for(member)
            lanes = [_Lane(member, _endpoint(member, self.timeout), asyncio.Queue()) for _ in range(count)]
            for lane in lanes:
                lane.task = asyncio.create_task(self._run(lane), name=f"hub-egress-{member.code}")
            self._lanes[member.code] = lanes

    def _dispatcher(self, lanes: list[_Lane]) -> Callable[[Delivery], None]:
        loop = self.broker.loop

        def on_delivery(delivery: Delivery) -> None:
            exam_id = str(delivery.headers.get("exam-id") or delivery.message_id)
            lane = lanes[zlib.crc32(exam_id.encode()) % len(lanes)]
            loop.call_soon_threadsafe(lane.inbox.put_nowait, delivery)

        return on_delivery

    async def _finish_lanes(self) -> None:
        assert self._stopping is not None
        self._stopping.set()
        lanes = [lane for member in self._lanes.values() for lane in member]
        for lane in lanes:
            if not lane.busy and lane.task is not None:
                lane.task.cancel()  # waiting for a report, holding none
        await asyncio.gather(*(lane.task for lane in lanes if lane.task is not None), return_exceptions=True)
        await asyncio.gather(*self._settling, return_exceptions=True)

    async def _close_endpoints(self) -> None:
        for lanes in self._lanes.values():
            for lane in lanes:
                await lane.endpoint.close()
        self._lanes.clear()

    # -- on the loop

    def _live(self) -> bool:
        return self._stopping is not None and not self._stopping.is_set()

    async def _pause(self, seconds: float) -> bool:
        """Wait ``seconds``; False when egress is stopping meanwhile."""
        assert self._stopping is not None
        try:
            await asyncio.wait_for(self._stopping.wait(), seconds)
        except TimeoutError:
            return True
        return False

    async def _run(self, lane: _Lane) -> None:
        while self._live():
            lane.busy = False
            delivery = await lane.inbox.get()
            lane.busy = True
            if delivery.live:  # else its channel is gone and RabbitMQ redelivers it
                try:
                    await self._deliver(lane, delivery)
                except Exception as exc:  # a bug must not silence the member's egress; the report goes back
                    # The class only: an exception's text might quote the report. The traceback is at DEBUG.
                    log.error("egress to %s failed on report %s: %s at %s", lane.institution.code,
                              delivery.message_id, type(exc).__name__, raised_at(exc))  # fmt: skip
                    log.debug("egress failure", exc_info=True)
                    if await self._pause(_PAUSE):
                        delivery.reject(requeue=True)

    async def _deliver(self, lane: _Lane, delivery: Delivery) -> None:
        try:
            report = Report.decode(delivery.body)
        except EnvelopeError as exc:
            await self._park(lane, delivery, None, "undecodable report", str(exc), attempts=0)
            return
        try:
            payload = lane.endpoint.render(report)  # ~0.2 ms: cheaper on the loop than a hop to a thread and back
        except Exception as exc:  # the adapter cannot write it: retrying will not help
            await self._park(lane, delivery, report, "unwritable report", f"{type(exc).__name__}: {exc}", attempts=0)
            return
        for attempt in itertools.count(1):
            outcome = await lane.endpoint.send(report, payload)
            if outcome.ok:
                log.debug("report %s delivered to %s at %s: %s (attempt %d)", report.report_id,
                         lane.institution.code, lane.where, outcome.code, attempt)  # fmt: skip
                event = report_event("report.delivered", report, datetime.now(UTC), endpoint=lane.where,
                                     attempts=attempt, detail=outcome.code)  # fmt: skip
                # The lane goes on to the next report while this outcome is confirmed and acked.
                settling = asyncio.create_task(self._settle(delivery, [event_message(event)] if self.events else []))
                self._settling.add(settling)
                settling.add_done_callback(self._settling.discard)
                return
            if attempt > len(self.retry_delays):
                reason = f"undeliverable after {attempt} attempts ({outcome.code})"
                await self._park(lane, delivery, report, reason, outcome.error, attempts=attempt)
                return
            delay = self.retry_delays[attempt - 1]
            log.warning("report %s to %s at %s: %s; retry %d in %gs", report.report_id, lane.institution.code,
                        lane.where, outcome.code, attempt, delay)  # fmt: skip
            if not await self._pause(delay):
                return  # stopping: unacked, so it goes back to the queue at its place
            if not delivery.live:
                return  # its channel died meanwhile: RabbitMQ redelivers it, first in the queue

    async def _park(
        self, lane: _Lane, delivery: Delivery, report: Report | None, reason: str, error: str, *, attempts: int
    ) -> None:
        log.warning("parking report %s for %s at %s: %s", delivery.message_id, lane.institution.code, lane.where,
                    reason)  # fmt: skip
        messages = [egress_parked_message(delivery, reason, error, attempts=attempts, endpoint=lane.where,
                                          institution=lane.institution.code)]  # fmt: skip
        if report is not None and self.events:
            event = report_event("report.parked", report, datetime.now(UTC), endpoint=lane.where,
                                 attempts=attempts, detail=reason)  # fmt: skip
            messages.append(event_message(event))
        await self._settle(delivery, messages)

    async def _settle(self, delivery: Delivery, messages: list[Message]) -> None:
        """Ack ``delivery`` once ``messages`` are confirmed; until then it stays unacked, in hand."""
        while True:
            try:
                await _confirmed(self.broker, messages)
            except BrokerError as exc:
                log.warning("outcome of report %s not confirmed (%s); it stays unacked", delivery.message_id, exc)
                if not delivery.live or not await self._pause(_PAUSE):
                    return  # redelivered: after a reconnect, or once the subscription is cancelled
                continue
            delivery.ack()
            return


async def _confirmed(broker: Broker, messages: list[Message]) -> None:
    futures = [broker.publish_on_loop(m) for m in messages]
    try:
        async with asyncio.timeout(CONFIRM_TIMEOUT):
            await asyncio.gather(*futures)
    except TimeoutError as exc:
        raise BrokerUnavailable(f"the broker did not confirm within {CONFIRM_TIMEOUT:g} s") from exc
    finally:
        for future in futures:  # after a failure the rest go unawaited: read their outcome, so none warns
            future.add_done_callback(lambda f: f.cancelled() or f.exception())
