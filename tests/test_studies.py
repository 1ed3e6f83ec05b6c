"""Study assembly on both brokers: instances on hub.studies become one imaging exam per study.

The instances are real ones: copies of the GBK head CT sample with their own SOP Instance UIDs and
instance numbers, read by the adapter and stored in the blob store, as the DICOM gateway does. The
assembled exam must carry each instance once, in series and instance order, and only once it is
confirmed may the instance deliveries be acked: an assembler stopped before then leaves them for the
next one.
"""

from __future__ import annotations

import io
import random
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from brokers import broker_urls, declared_empty, take_all
from pydicom import dcmread
from pydicom.uid import generate_uid
from test_gateway_dicom import CONFIG, SAMPLES, TOPOLOGY, dcmtk

from adapters import dicom
from hub.broker import Broker, Message
from hub.config import DicomGateway
from hub.envelope import Exam
from hub.errors import BrokerUnavailable
from hub.gateways.dicom import start_dicom
from hub.gateways.studies import StudyAssembler, instance_message, stored_instance
from hub.intake import Intake
from hub.store.blobs import BlobStore
from hub.topology import LEDGER, STUDIES, exam_queue, parked_queue, stat_queue

YUQIAN = "12330112472334561L"  # 於潜镇中心卫生院: its CT writes GBK without Specific Character Set
STABLE = 0.3
WAIT = 20.0


def wait_for(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)


class Study:
    """Instances of one CT study, made from the GBK sample, stored as the gateway stores them."""

    def __init__(self, blobs: BlobStore, *, order: str | None = None) -> None:
        self.blobs = blobs
        self.template = dcmread(SAMPLES / "ct-gbk-no-charset.dcm")
        if order is not None:  # another order: its own exam_id
            self.template.StudyInstanceUID = generate_uid()
            self.template.PlacerOrderNumberImagingServiceRequest = self.template.AccessionNumber = order

    def instance(self, series: int, number: int, *, priority: str | None = None) -> Exam:
        dataset = self.template
        dataset.SOPInstanceUID = generate_uid()
        dataset.file_meta.MediaStorageSOPInstanceUID = dataset.SOPInstanceUID
        dataset.SeriesNumber, dataset.InstanceNumber = series, number
        dataset.SeriesInstanceUID = f"2.25.{series}"
        if priority is not None:
            dataset.RequestedProcedurePriority = priority
        out = io.BytesIO()
        dataset.save_as(out)
        raw = out.getvalue()
        return stored_instance(dicom.read(raw, origin=YUQIAN, charset="GBK"), self.blobs.put(raw))


def publish(intake: Intake, exams: list[Exam]) -> None:
    intake.publish_blocking([instance_message(exam) for exam in exams])


def assembled(broker: Broker, count: int = 1) -> list[Exam]:
    wait_for(lambda: broker.message_count(exam_queue("imaging")) >= count, f"{count} study exams")
    return [Exam.decode(d.body) for d in take_all(broker, exam_queue("imaging"))]


# The fixtures of test_gateway_dicom (pytest sees fixtures per module): one vhost for the module.
@pytest.fixture(scope="module", params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    yield from broker_urls(request.param)


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    return declared_empty(broker, TOPOLOGY)  # a shared vhost: drained of an earlier test's


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", fsync=False)


@pytest.fixture
def intake(hub_broker: Broker, blobs: BlobStore) -> Intake:
    return Intake(hub_broker, blobs)


@pytest.fixture
def assemble(hub_broker: Broker, intake: Intake) -> Iterator[Callable[..., StudyAssembler]]:
    """Start an assembler: ``assemble(stable_seconds=STABLE, **options)``; stopped at the end."""
    started: list[StudyAssembler] = []

    def start(stable_seconds: float = STABLE, **options: Any) -> StudyAssembler:
        assembler = StudyAssembler(hub_broker, intake, stable_seconds=stable_seconds, **options)
        assembler.start()
        started.append(assembler)
        return assembler

    yield start
    for assembler in started:
        assembler.stop()


def test_instances_of_a_study_become_one_exam_in_series_and_instance_order(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore
) -> None:
    study = Study(blobs)
    instances = [study.instance(series, number) for series in (2, 1) for number in (3, 1, 2)]
    instances[4] = Study(blobs).instance(1, 1, priority="HIGH")  # one instance asks for urgent
    resent = instances[0]
    shuffled = [*random.Random(7).sample(instances, len(instances)), resent]  # a modality resending one
    publish(intake, shuffled)
    assemble()
    (exam,) = assembled(hub_broker)
    first = shuffled[0]
    assert (exam.exam_id, exam.origin, exam.study_uid) == (first.exam_id, YUQIAN, first.study_uid)
    assert (exam.patient.name, exam.centre, exam.priority) == ("刘建国", "imaging", "urgent")
    assert exam.source.message_id == exam.study_uid and exam.source.uri is None
    order = sorted(instances, key=lambda e: dcmread(blobs.path(str(e.source.uri))).InstanceNumber)
    order.sort(key=lambda e: dcmread(blobs.path(str(e.source.uri))).SeriesNumber)
    assert [a.uri for a in exam.attachments] == [str(e.source.uri) for e in order]
    for attachment in exam.attachments:
        blob = blobs.read(attachment.uri)
        assert attachment.media_type == "application/dicom"
        assert (attachment.size, f"urn:sha256:{attachment.sha256}") == (len(blob), attachment.uri)
        assert attachment.title == "HEAD 5mm"
    (event,) = take_all(hub_broker, LEDGER)
    assert event.headers == {"kind": "exam.accepted", "exam-id": exam.exam_id}
    wait_for(lambda: hub_broker.message_count(STUDIES) == 0, "instance deliveries acked")


def test_a_study_of_1200_instances_fits_the_default_prefetch(hub_broker: Broker, blobs: BlobStore) -> None:
    instance = Study(blobs).instance(1, 1)
    # One stored instance under 1200 SOP Instance UIDs, and an assembler without the blob store (so in
    # arrival order): what counts here is that all 1200 are held at once, not how they sort.
    copies = [
        instance.model_copy(update={"source": instance.source.model_copy(update={"message_id": f"2.25.{n}"})})
        for n in range(1200)
    ]
    intake = Intake(hub_broker)
    publish(intake, copies)
    assembler = StudyAssembler(hub_broker, intake, stable_seconds=STABLE)
    assembler.start()
    try:
        (exam,) = assembled(hub_broker)
    finally:
        assembler.stop()
    assert len(exam.attachments) == 1200 and {a.uri for a in exam.attachments} == {instance.source.uri}


def test_an_assembler_stopped_before_it_publishes_leaves_the_study_to_the_next(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore
) -> None:
    study = Study(blobs)
    instances = [study.instance(1, n) for n in range(1, 6)]
    publish(intake, instances)
    crashed = assemble(stable_seconds=3600)
    wait_for(lambda: crashed.pending == len(instances), "the first assembler to hold every instance")
    crashed.stop()  # as a crash would: nothing published, nothing acked
    assert hub_broker.message_count(exam_queue("imaging")) == 0
    wait_for(lambda: hub_broker.message_count(STUDIES) == len(instances), "the instances back on hub.studies")
    successor = assemble()
    (exam,) = assembled(hub_broker)
    assert sorted(a.uri for a in exam.attachments) == sorted(str(e.source.uri) for e in instances)
    wait_for(lambda: successor.pending == 0, "the deliveries to be acked")
    successor.stop()
    assert hub_broker.message_count(STUDIES) == 0  # acked, so nothing came back on stop


def test_a_study_exam_the_broker_refuses_is_sent_again_and_nothing_is_acked_before(
    hub_broker: Broker, blobs: BlobStore
) -> None:
    held_at_refusal: list[int] = []

    class RefusingFirst(Intake):
        def accept_blocking(self, exams: Any, raw: bytes | None = None, *, user_id: str | None = None) -> list[Exam]:
            if not held_at_refusal:
                held_at_refusal.append(assembler.pending)
                raise BrokerUnavailable("test: the broker dropped before the confirm")
            return super().accept_blocking(exams, raw, user_id=user_id)

    intake = RefusingFirst(hub_broker, blobs)
    study = Study(blobs)
    publish(intake, [study.instance(1, 1), study.instance(1, 2)])
    assembler = StudyAssembler(hub_broker, intake, stable_seconds=STABLE, retry_seconds=0.2)
    assembler.start()
    try:
        (exam,) = assembled(hub_broker)  # after the assembler's own retry delay
        assert len(exam.attachments) == 2
        assert held_at_refusal == [2]  # when the broker refused, both deliveries were still unacked
        wait_for(lambda: assembler.pending == 0, "the deliveries to be acked")
    finally:
        assembler.stop()
    assert hub_broker.message_count(STUDIES) == 0


def test_late_instances_make_a_follow_up_and_resent_ones_nothing(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore
) -> None:
    study = Study(blobs)
    early = [study.instance(1, 1), study.instance(1, 2)]
    publish(intake, early)
    assembler = assemble()
    (first,) = assembled(hub_broker)
    late = study.instance(1, 3)
    publish(intake, [early[1], late])  # one resent, one new
    (follow_up,) = assembled(hub_broker)
    assert follow_up.exam_id == first.exam_id
    assert [a.uri for a in follow_up.attachments] == [late.source.uri]
    assert [n.message for n in follow_up.notices] == ["follow-up: 1 more instances of a study already sent with 2"]
    publish(intake, [early[0]])  # a resend of what both exams carry: acked, no exam
    wait_for(lambda: assembler.pending == 0 and hub_broker.message_count(STUDIES) == 0, "the resend acked")
    assert hub_broker.message_count(exam_queue("imaging")) == 0
    # A corrected copy (same SOP Instance UID, other bytes) is no resend: it goes out as a follow-up.
    corrected = study.instance(1, 2)
    corrected = corrected.model_copy(
        update={"source": corrected.source.model_copy(update={"message_id": early[1].source.message_id})}
    )
    publish(intake, [corrected])
    (update,) = assembled(hub_broker)
    assert [a.uri for a in update.attachments] == [corrected.source.uri] != [early[1].source.uri]


def test_separate_studies_are_separate_exams(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore
) -> None:
    one, two = Study(blobs, order="YQO2403180043"), Study(blobs, order="YQO2403180044")
    publish(intake, [one.instance(1, 1), two.instance(1, 1), one.instance(1, 2)])
    assemble()
    exams = {e.study_uid: e for e in assembled(hub_broker, 2)}
    assert {uid: len(e.attachments) for uid, e in exams.items()} == {
        one.template.StudyInstanceUID: 2,
        two.template.StudyInstanceUID: 1,
    }
    assert len({e.exam_id for e in exams.values()}) == 2


def test_a_message_that_is_no_stored_instance_is_parked_not_dropped(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore
) -> None:
    good = Study(blobs).instance(1, 1)
    unstored = dicom.read((SAMPLES / "ct-gbk-no-charset.dcm").read_bytes(), origin=YUQIAN, charset="GBK")
    bad = [
        Message(STUDIES, YUQIAN, b"{not json", message_id="m1", headers={"origin": YUQIAN}),
        Message(STUDIES, YUQIAN, unstored.encode(), message_id="m2"),  # no source.uri
        # Headers that place it in the good instance's study, a body that is no envelope: found when sent.
        Message(STUDIES, YUQIAN, b"[]", message_id="m3", headers={"exam-id": good.exam_id, "sop-instance-uid": "9"}),
    ]
    intake.publish_blocking([*bad, instance_message(good)])
    assembler = assemble()
    (exam,) = assembled(hub_broker)
    assert [a.uri for a in exam.attachments] == [good.source.uri]
    parked = take_all(hub_broker, parked_queue("intake"))
    assert sorted(p.body for p in parked) == sorted(m.body for m in bad)
    assert all(p.headers["x-hub-error"].startswith("not a stored DICOM instance envelope") for p in parked)
    wait_for(lambda: assembler.pending == 0, "every delivery settled")
    assembler.stop()
    assert hub_broker.message_count(STUDIES) == 0


def test_through_the_gateway_an_ecg_goes_at_once_and_a_study_once_stable(
    assemble: Callable[..., StudyAssembler], hub_broker: Broker, intake: Intake, blobs: BlobStore, tmp_path: Path
) -> None:
    listener = start_dicom(intake, CONFIG, DicomGateway(port=0, ae_title="LAHUB"))
    try:
        assembler = assemble(stable_seconds=3600)  # the study stays open while the ECG goes through
        assert dcmtk("storescu", listener.port, "CH_ECG01", SAMPLES / "ecg-12lead.dcm").returncode == 0
        files = []
        template = dcmread(SAMPLES / "ct-gbk-no-charset.dcm")
        for number in (2, 1):
            template.SOPInstanceUID = generate_uid()
            template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
            template.InstanceNumber = number
            files.append(tmp_path / f"{number}.dcm")
            template.save_as(files[-1])
        assert dcmtk("storescu", listener.port, "YQ_CT01", *files).returncode == 0
        (ecg,) = [Exam.decode(d.body) for d in take_all(hub_broker, stat_queue("ecg"))]
        assert (ecg.centre, ecg.priority, ecg.patient.name) == ("ecg", "stat", "张伟")
        wait_for(lambda: assembler.pending == 2, "the study's instances to be held")
        assert hub_broker.message_count(exam_queue("imaging")) == 0
        assembler.stop()
        assemble()
        (exam,) = assembled(hub_broker)
        assert exam.patient.name == "刘建国" and exam.origin == YUQIAN
        assert [dcmread(blobs.path(a.uri)).InstanceNumber for a in exam.attachments] == [1, 2]
    finally:
        listener.close()
