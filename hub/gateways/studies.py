"""Study assembly: the DICOM instances on ``hub.studies`` become one imaging exam per study.

    assembler = StudyAssembler(broker, intake, stable_seconds=10)
    assembler.start()        # from a thread other than the broker's loop
    assembler.stop()         # instances not yet assembled go back to hub.studies

The DICOM gateway stores every instance that is not an ECG waveform in the blob
store and publishes it here (``instance_message``). The assembler holds those
deliveries unacked, grouped by the exam_id in their headers. Once a study has
had no new instance for ``stable_seconds`` (or its oldest instance has been
held for ``max_hold_seconds``, which keeps a trickling study clear of
RabbitMQ's consumer timeout), it publishes ONE Exam through Intake (exam and
ledger event): the first instance's exam, at the highest priority any instance
asked for, carrying every instance as an Attachment (the blob's URI, size and
sha256; one per SOP Instance UID, the latest copy; in series, then instance,
order). Only after the broker has confirmed it are the deliveries acked. A
crash before then leaves them unacked, RabbitMQ redelivers them and the study
is assembled again: a duplicate exam with the same exam_id, never a lost one.
Envelopes are decoded, and the order read from the blobs, only when the study
is sent: holding an instance costs the ingest path nothing but a dict entry.

Instances arriving after their study was sent make a follow-up exam, with the
same exam_id, carrying only the new instances (or corrected ones: the same SOP
Instance UID with other bytes) and a Notice saying how many were sent before;
a resent copy of an instance already sent is acked and dropped. That memory
covers the last ``remember`` studies of this process; after a restart a late
instance is a study of its own. ``prefetch`` bounds the instances held at
once: a study larger than it is sent as an exam and follow-ups, never lost.
"""

from __future__ import annotations

import logging
import re
import struct
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_partial
from pydicom.tag import BaseTag

from hub.broker import Broker, Delivery, Message, Subscription
from hub.envelope import SCHEMA_VERSION, Attachment, Exam, Notice, Priority
from hub.errors import BrokerError, EnvelopeError
from hub.intake import Intake, parked_input_message
from hub.store.blobs import Blob, BlobNotFound, BlobStore
from hub.topology import STUDIES

__all__ = ["DEFAULT_PREFETCH", "StudyAssembler", "instance_message", "stored_instance"]

log = logging.getLogger("hub.gateways.studies")

DEFAULT_PREFETCH = 10_000  # instances held unacked at once: a 1000-image CT study is far inside it
_RANK: dict[Priority, int] = {"routine": 0, "urgent": 1, "stat": 2}
_SHA256_URI = re.compile(r"urn:sha256:([0-9a-f]{64})")
_SERIES_TAGS: list[BaseTag | int] = [0x0020000E, 0x00200011, 0x00200013]  # Series UID, Series Number, Instance Number
_LAST_SERIES_TAG = 0x00200013
_PYDICOM_ERRORS = (OSError, ValueError, TypeError, KeyError, AttributeError, EOFError, OverflowError, struct.error)


def stored_instance(exam: Exam, blob: Blob) -> Exam:
    """``exam`` of one instance, pointing at its Part 10 file in the blob store."""
    instance_uri = f"urn:oid:{exam.source.message_id}"
    attachments = tuple(
        a.model_copy(update={"uri": blob.uri, "size": blob.size, "sha256": blob.sha256}) if a.uri == instance_uri else a
        for a in exam.attachments
    )
    return exam.model_copy(
        update={"source": exam.source.model_copy(update={"uri": blob.uri}), "attachments": attachments}
    )


def instance_message(exam: Exam) -> Message:
    """The ``hub.studies`` message for one stored instance (see ``stored_instance``)."""
    if exam.source.uri is None:
        raise ValueError("an instance goes to hub.studies only once it is in the blob store (source.uri)")
    stored = next((a for a in exam.attachments if a.uri == exam.source.uri), None)
    headers: dict[str, Any] = {
        "schema-version": SCHEMA_VERSION,
        "origin": exam.origin,
        "centre": exam.centre,
        "exam-id": exam.exam_id,
        "study-uid": exam.study_uid,
        "sop-instance-uid": exam.source.message_id,
        "blob": exam.source.uri,
        "size": stored.size if stored else None,
        "sha256": stored.sha256 if stored else None,
    }
    return Message(
        STUDIES,
        exam.origin,
        exam.encode(),
        message_id=exam.source.message_id or exam.source.uri,
        headers={k: v for k, v in headers.items() if v is not None},
    )


@dataclass
class _Study:
    held: dict[str, tuple[Delivery, str]] = field(default_factory=dict)  # SOP Instance UID -> copy, blob URI
    deliveries: list[Delivery] = field(default_factory=list)  # every copy, acked together
    first_seen: float = 0.0
    last_seen: float = 0.0
    retry_at: float = 0.0


@dataclass
class _Instance:
    exam: Exam
    order: tuple[Any, ...]  # see _order


class StudyAssembler:
    def __init__(
        self,
        broker: Broker,
        intake: Intake,
        *,
        stable_seconds: float,
        prefetch: int = DEFAULT_PREFETCH,
        max_hold_seconds: float = 600.0,
        retry_seconds: float = 5.0,
        remember: int = 10_000,
    ) -> None:
        self.broker = broker
        self.intake = intake
        self.stable_seconds = stable_seconds
        self.prefetch = prefetch
        self.max_hold_seconds = max_hold_seconds
        self.retry_seconds = retry_seconds  # after the broker did not confirm a study exam
        self.remember = remember
        self._lock = threading.Condition()
        self._inbox: list[Delivery] = []  # filled on the broker's thread, emptied on ours
        self._studies: dict[str, _Study] = {}  # by exam_id
        self._sent: OrderedDict[str, dict[str, str]] = OrderedDict()  # exam_id -> SOP Instance UID -> blob sent
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._subscription: Subscription | None = None

    # -- lifecycle

    def start(self) -> None:
        if self._thread is not None:
            raise RuntimeError("the study assembler is already running")
        self._stopping = False
        self._thread = threading.Thread(target=self._run, name="hub-studies", daemon=True)
        self._thread.start()
        self._subscription = self.broker.consume(STUDIES, self._receive, prefetch=self.prefetch)

    def stop(self, timeout: float = 30.0) -> None:
        """Finish a study exam being sent, then stop; instances held go back to hub.studies."""
        with self._lock:
            self._stopping = True
            self._lock.notify_all()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._subscription is not None:
            self._subscription.cancel()
            self._subscription = None

    @property
    def pending(self) -> int:
        """Instance deliveries received and not yet settled."""
        with self._lock:
            return len(self._inbox) + sum(len(s.deliveries) for s in self._studies.values())

    # -- on the broker's thread: hand on at once

    def _receive(self, delivery: Delivery) -> None:
        with self._lock:
            self._inbox.append(delivery)
            self._lock.notify_all()

    # -- on the assembler's thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopping and not self._inbox and not self._due(time.monotonic()):
                    self._lock.wait(self._next_due(time.monotonic()))
                if self._stopping:
                    return
                received, self._inbox = self._inbox, []
            for delivery in received:
                self._hold(delivery)
            for exam_id in self._due(time.monotonic()):
                self._send(exam_id)

    def _due(self, now: float) -> list[str]:
        return [exam_id for exam_id, study in self._studies.items() if self._due_at(study) <= now]

    def _due_at(self, study: _Study) -> float:
        settled = min(study.last_seen + self.stable_seconds, study.first_seen + self.max_hold_seconds)
        return max(settled, study.retry_at)

    def _next_due(self, now: float) -> float | None:
        due = [self._due_at(study) for study in self._studies.values()]
        return max(0.0, min(due) - now) if due else None

    def _hold(self, delivery: Delivery) -> None:
        """Group by the gateway's headers; decoding waits until the study is sent, off the ingest path."""
        headers = delivery.headers
        exam_id, sop_uid, blob = headers.get("exam-id"), headers.get("sop-instance-uid"), headers.get("blob")
        if not (exam_id and sop_uid and blob):
            try:
                exam = _decode(delivery)
            except EnvelopeError as exc:
                self._park(delivery, exc)
                return
            exam_id, sop_uid, blob = exam.exam_id, exam.source.message_id or exam.source.uri, exam.source.uri
        exam_id, sop_uid, blob = str(exam_id), str(sop_uid), str(blob)
        if self._sent.get(exam_id, {}).get(sop_uid) == blob:
            log.debug("instance %s of exam %s was sent already; dropped", sop_uid, exam_id)
            delivery.ack()
            return
        now = time.monotonic()
        with self._lock:
            study = self._studies.get(exam_id)
            if study is None:
                study = self._studies[exam_id] = _Study(first_seen=now)
            study.held[sop_uid] = (delivery, blob)  # a corrected copy (other bytes) replaces the first
            study.deliveries.append(delivery)
            study.last_seen = now

    def _send(self, exam_id: str) -> None:
        study = self._studies[exam_id]
        instances = self._instances(study)
        if instances:
            sent_before = len(self._sent.get(exam_id, ()))
            exam = _study_exam(instances, sent_before=sent_before)
            try:
                self.intake.accept_blocking([exam])
            except BrokerError as exc:
                log.warning("study exam %s not confirmed (%s); trying again", exam_id, type(exc).__name__)
                study.retry_at = time.monotonic() + self.retry_seconds
                return
            follow_up = " (follow-up)" if sent_before else ""
            log.info("study exam %s from %s sent: %d instances%s", exam_id, exam.origin, len(instances), follow_up)
        with self._lock:
            del self._studies[exam_id]
        for delivery in study.deliveries:
            delivery.ack()
        self._sent.setdefault(exam_id, {}).update((uid, blob) for uid, (_delivery, blob) in study.held.items())
        self._sent.move_to_end(exam_id)
        while len(self._sent) > self.remember:
            self._sent.popitem(last=False)

    def _instances(self, study: _Study) -> list[_Instance]:
        """The held instances, decoded in arrival order; one that is no instance envelope is parked instead."""
        instances = []
        for arrival, (sop_uid, (delivery, _blob)) in enumerate(list(study.held.items())):
            try:
                exam = _decode(delivery)
            except EnvelopeError as exc:
                with self._lock:
                    del study.held[sop_uid]
                    study.deliveries = [d for d in study.deliveries if d is not delivery]
                self._park(delivery, exc)  # settles the delivery itself
                continue
            instances.append(_Instance(exam, _order(self.intake.blobs, exam.source.uri, arrival)))
        return instances

    def _park(self, delivery: Delivery, error: EnvelopeError) -> None:
        reason = f"not a stored DICOM instance envelope: {error}"[:500]
        message = parked_input_message(
            delivery.body, reason, format="dicom", origin=delivery.headers.get("origin"), peer=STUDIES
        )
        try:
            self.intake.publish_blocking([message])
        except BrokerError:
            delivery.reject(requeue=True)
            return
        log.warning("parked message %s from hub.studies: not an instance envelope", delivery.message_id)
        delivery.ack()


def _decode(delivery: Delivery) -> Exam:
    exam = Exam.decode(delivery.body)
    if exam.source.uri is None:
        raise EnvelopeError("the instance has no source.uri: it is not in the blob store")
    return exam


def _study_exam(instances: list[_Instance], *, sent_before: int) -> Exam:
    """One exam of the study: the first instance's, carrying every instance in series and instance order."""
    first = instances[0].exam
    ordered = [instance.exam for instance in sorted(instances, key=lambda instance: instance.order)]
    notices: dict[tuple[str | None, str], Notice] = {}
    for exam in ordered:
        for notice in exam.notices:
            notices.setdefault((notice.location, notice.message), notice)
    if sent_before:
        follow_up = Notice(
            message=f"follow-up: {len(ordered)} more instances of a study already sent with {sent_before}"
        )
        notices[(None, follow_up.message)] = follow_up
    return first.model_copy(
        update={
            "priority": max((exam.priority for exam in ordered), key=_RANK.__getitem__),
            "attachments": tuple(_attachment(exam) for exam in ordered),
            "notices": tuple(notices.values()),
            "source": first.source.model_copy(update={"message_id": first.study_uid or first.exam_id, "uri": None}),
        }
    )


def _attachment(exam: Exam) -> Attachment:
    uri = str(exam.source.uri)
    stored = next((a for a in exam.attachments if a.uri == uri), None)
    match = _SHA256_URI.fullmatch(uri)
    return Attachment(
        uri=uri,
        media_type="application/dicom",
        size=stored.size if stored else None,
        sha256=stored.sha256 if stored and stored.sha256 else (match.group(1) if match else None),
        title=stored.title if stored else None,
    )


def _order(blobs: BlobStore | None, uri: str | None, arrival: int) -> tuple[Any, ...]:
    """Sort key of a stored instance: Series Number, Series Instance UID, Instance Number, arrival.

    Read from the blob when the study is sent (the adapter's Exam does not carry them), so that the
    cost falls after the modality's association rather than on it. A number that is missing or
    unreadable sorts last.
    """
    values: list[Any] = [None, None, None]
    if blobs is not None and uri is not None:
        try:
            with blobs.path(uri).open("rb") as file:
                dataset = read_partial(file, stop_when=_after_series_tags, specific_tags=_SERIES_TAGS)
            for n, tag in enumerate(_SERIES_TAGS):
                element = dataset.get(tag)
                values[n] = element.value if element is not None else None
        except (BlobNotFound, InvalidDicomError, *_PYDICOM_ERRORS):
            pass  # only the ordering is lost
    series_uid, series_number, instance_number = str(values[0] or ""), _integer(values[1]), _integer(values[2])
    return (
        series_number is None,
        series_number or 0,
        series_uid,
        instance_number is None,
        instance_number or 0,
        arrival,
    )


def _after_series_tags(tag: BaseTag, _vr: str | None, _length: int) -> bool:
    return int(tag) > _LAST_SERIES_TAG


def _integer(value: Any) -> int | None:
    try:
        return int(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None
