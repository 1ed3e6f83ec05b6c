"""What every gateway does with what it received: publish the exams, or park the input.

    intake = Intake(broker, blobs)
    exams = await intake.accept(exams, raw)           # on broker.loop: returns once all are confirmed
    await intake.park(raw, error, format="hl7v2", origin=..., peer=...)

A gateway answers its sender only after one of these has returned: success
after ``accept``, a protocol error after ``park``. Either raises BrokerError when
the broker did not confirm, and the gateway then tells the sender to try again
(HL7 AR, HTTP 503, DICOM 0xA700): nothing is lost either way.

The source message goes to the blob store first when an exam refers into it
(an ECG's SampledData, an embedded PDF), so that its ``#fragment`` attachments
resolve. Parked input keeps its raw bytes (inline, or in the blob store when
large) and the located problems the adapter gave.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime

from hub.broker import CONFIRM_TIMEOUT, Broker, Message, wait
from hub.envelope import Exam
from hub.errors import AdapterError, BrokerUnavailable
from hub.events import event_message, exam_event
from hub.publish import exam_message
from hub.store.blobs import Blob, BlobStore
from hub.topology import INTAKE, PARKED

__all__ = ["INLINE_PARK_LIMIT", "Intake", "parked_input_message", "refers_into_source"]

INLINE_PARK_LIMIT = 1024 * 1024  # larger parked input goes to the blob store, the message carries its URI


def refers_into_source(exam: Exam) -> bool:
    """Whether an attachment or the waveform of ``exam`` points inside its source message."""
    uris = [a.uri for a in exam.attachments]
    if exam.waveform is not None and exam.waveform.data is not None:
        uris.append(exam.waveform.data.uri)
    return any(uri.startswith("#") for uri in uris)


def parked_input_message(
    raw: bytes | Blob,
    error: AdapterError | str,
    *,
    format: str | None,
    origin: str | None,
    peer: str | None,
    charset: str | None = None,
) -> Message:
    """``raw`` parked with its problems: inline, or when it is the Blob it was stored as, by its URI."""
    if isinstance(raw, Blob):
        size, digest, body, blob_uri = raw.size, raw.sha256, b"", raw.uri
    else:
        size, digest, body, blob_uri = len(raw), hashlib.sha256(raw).hexdigest(), raw, None
    problems = [str(p) for p in error.problems] if isinstance(error, AdapterError) else [str(error)]
    headers: dict[str, object] = {
        "x-hub-park-reason": type(error).__name__ if isinstance(error, AdapterError) else "refused",
        "x-hub-error": problems[0][:500],
        "x-hub-problems": [p[:500] for p in problems[:50]],
        "x-hub-parked-at": datetime.now(UTC).isoformat(),
        "x-hub-format": format or "unknown",
        "x-hub-size": size,
    }
    optional = {"x-hub-origin": origin, "x-hub-peer": peer, "x-hub-charset": charset, "x-hub-blob": blob_uri}
    headers.update({k: v for k, v in optional.items() if v})
    return Message(
        PARKED,
        INTAKE,
        body,
        message_id="parked-" + digest[:32],
        headers=headers,
        content_type="application/octet-stream",
    )


class Intake:
    def __init__(self, broker: Broker, blobs: BlobStore | None = None, *, events: bool = True) -> None:
        self.broker = broker
        self.blobs = blobs
        self.events = events

    # -- the messages

    def _store_source(self, exams: Sequence[Exam], raw: bytes | None) -> list[Exam]:
        if raw is None or self.blobs is None or not any(refers_into_source(e) for e in exams):
            return list(exams)
        uri = self.blobs.put(raw).uri
        return [e.model_copy(update={"source": e.source.model_copy(update={"uri": uri})}) for e in exams]

    def _messages(self, exams: Sequence[Exam], user_id: str | None) -> list[Message]:
        messages = [exam_message(exam, user_id=user_id) for exam in exams]
        if self.events:
            now = datetime.now(UTC)
            messages += [event_message(exam_event("exam.accepted", exam, now)) for exam in exams]
        return messages

    def _park_blobs(self, raw: bytes) -> BlobStore | None:
        """The blob store that parked ``raw`` goes to when it is too large to go inline; else None."""
        return self.blobs if len(raw) > INLINE_PARK_LIMIT else None

    def _parked(self, raw: bytes, error: AdapterError | str, **where: str | None) -> Message:
        blobs = self._park_blobs(raw)
        return parked_input_message(raw if blobs is None else blobs.put(raw), error, **where)

    # -- on the broker's loop (the MLLP, FHIR and DICOM gateways)

    async def accept(
        self, exams: Sequence[Exam], raw: bytes | None = None, *, user_id: str | None = None
    ) -> list[Exam]:
        """Publish ``exams`` (their source stored first when they refer into it); all confirmed on return."""
        if raw is not None and self.blobs is not None and any(refers_into_source(e) for e in exams):
            exams = await asyncio.get_running_loop().run_in_executor(None, self._store_source, exams, raw)
        await _confirmed(self.broker, self._messages(exams, user_id))
        return list(exams)

    async def publish(self, messages: Sequence[Message]) -> None:
        """Publish ``messages`` as they are; all confirmed on return."""
        await _confirmed(self.broker, list(messages))

    async def park(
        self,
        raw: bytes,
        error: AdapterError | str,
        *,
        format: str | None,
        origin: str | None = None,
        peer: str | None = None,
        charset: str | None = None,
    ) -> None:
        """Keep ``raw`` on ``hub.parked.intake`` with its problems; confirmed on return."""
        parked = functools.partial(self._parked, raw, error, format=format, origin=origin, peer=peer, charset=charset)
        if self._park_blobs(raw) is None:
            message = parked()
        else:  # writing and fsyncing the blob on the loop would stall every connection and the broker's I/O
            message = await asyncio.get_running_loop().run_in_executor(None, parked)
        await _confirmed(self.broker, [message])

    # -- from other threads (the study assembler, replay)

    def accept_blocking(
        self, exams: Sequence[Exam], raw: bytes | None = None, *, user_id: str | None = None
    ) -> list[Exam]:
        stored = self._store_source(exams, raw)
        for future in [self.broker.publish(m) for m in self._messages(stored, user_id)]:
            wait(future)
        return stored

    def publish_blocking(self, messages: Sequence[Message]) -> None:
        for future in [self.broker.publish(m) for m in messages]:
            wait(future)

    def park_blocking(
        self,
        raw: bytes,
        error: AdapterError | str,
        *,
        format: str | None,
        origin: str | None = None,
        peer: str | None = None,
        charset: str | None = None,
    ) -> None:
        wait(self.broker.publish(self._parked(raw, error, format=format, origin=origin, peer=peer, charset=charset)))


async def _confirmed(broker: Broker, messages: list[Message]) -> None:
    futures = [broker.publish_on_loop(m) for m in messages]
    try:
        async with asyncio.timeout(CONFIRM_TIMEOUT):
            for future in futures:
                await future
    except TimeoutError as exc:
        raise BrokerUnavailable(f"the broker did not confirm within {CONFIRM_TIMEOUT:g} s") from exc
    finally:
        for future in futures:  # after a failure the rest go unawaited: read their outcome, so none warns
            future.add_done_callback(_read_outcome)


def _read_outcome(future: asyncio.Future[None]) -> None:
    if not future.cancelled():
        future.exception()
