"""The DICOM gateway, driven by DCMTK's storescu and echoscu (and pynetdicom where they cannot go), on both brokers.

Every sample instance must be in the blob store, as a valid Part 10 file holding the data set as
sent, before its message is on the broker; only then does the modality hear success. Bad input gets a
failure status naming the tag, and is parked with its blob URI; a broker that does not take the
message gives 0xA700 and keeps nothing; an unknown calling AE title never gets an association.
"""

from __future__ import annotations

import asyncio
import dataclasses
import io
import logging
import os
import socket
import subprocess
import threading
import time
import tomllib
import tracemalloc
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
from brokers import broker_urls, declared_empty, take_all
from pydicom import dcmread
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_file_meta_info
from pydicom.uid import (
    UID,
    CTImageStorage,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEGBaseline8Bit,
    generate_uid,
)
from pynetdicom import AE, _config
from pynetdicom.dsutils import create_file_meta, encode_file_meta, split_dataset

import hub.gateways.dicom as gateway
from hub.broker import Broker
from hub.config import DicomGateway, load_config
from hub.envelope import Exam
from hub.gateways.dicom import DicomListener, _file_meta, start_dicom
from hub.gateways.dicom_ul import Association, StoreRequest
from hub.intake import INLINE_PARK_LIMIT, Intake
from hub.store.blobs import Blob, BlobStore
from hub.topology import LEDGER, STUDIES, Topology, exam_queue, parked_queue, stat_queue

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "examples" / "messages" / "dicom"
EXPECTED: dict[str, Any] = tomllib.loads((SAMPLES / "EXPECTED.toml").read_text("utf-8"))
CONFIG = load_config(ROOT / "examples" / "consortium.toml")
TOPOLOGY = Topology(institutions=[i.code for i in CONFIG.institutions], retry_delays=(1,))
PARKED = parked_queue("intake")
HUB_AE = "LAHUB"
WAIT = 15.0
# The calling AE title each sample's institution sends with (examples/consortium.toml).
SENDERS = {
    "ct-gbk-no-charset.dcm": "YQ_CT01",  # 於潜镇中心卫生院: fallback charset GBK
    "ct-chest-gb18030.dcm": "THY_CT01",  # 太湖源镇卫生院
    "mr-iso2022-ir58.dcm": "QSH_DR01",  # 青山湖街道社区卫生服务中心
    "ecg-12lead.dcm": "CH_ECG01",  # 昌化镇卫生院
}
QUEUES = [STUDIES, PARKED, LEDGER, exam_queue("ecg"), stat_queue("ecg"), exam_queue("imaging")]


def need(tool: str) -> str:
    """DCMTK's ``tool`` on PATH; pynetdicom installs Python apps of the same names, which are skipped."""
    folders = os.environ.get("PATH", "").split(os.pathsep)
    found = next((str(c) for f in folders if f and _is_binary(c := Path(f) / tool)), None)
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail(f"{tool} is missing; CI needs DCMTK (see .ci/services)")
        pytest.skip(f"{tool} is missing (Debian package dcmtk)")
    return found


def _is_binary(path: Path) -> bool:
    """An executable that is not a script (DCMTK's tools are ELF files; pynetdicom's start with #!)."""
    if not (path.is_file() and os.access(path, os.X_OK)):
        return False
    with path.open("rb") as file:
        return file.read(2) != b"#!"


def dcmtk(
    tool: str, port: int, calling: str, *args: str | Path, nodelay: bool = True, called: str = HUB_AE
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TCP_NODELAY": "1"} if nodelay else {k: v for k, v in os.environ.items() if k != "TCP_NODELAY"}
    command = [need(tool), "-d", "-aet", calling, "-aec", called, "127.0.0.1", str(port), *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=60, env=env, check=False)


def nothing_queued(broker: Broker) -> bool:
    return all(broker.message_count(name) == 0 for name in QUEUES)


def data_set_bytes(path: Path) -> bytes:
    """The data set of a Part 10 file, without its preamble and File Meta Information."""
    _meta, offset = split_dataset(path)
    return path.read_bytes()[offset:]


def as_dcmtk_sends(path: Path) -> Dataset:
    """The data set of a sample as storescu sends it: less its Data Set Trailing Padding."""
    dataset = dcmread(path)
    dataset.pop(0xFFFCFFFC, None)
    return dataset


def part10(data_set: bytes, instance: str | None = None) -> bytes:
    """A Part 10 file whose meta says CT Image Storage and ``instance`` (else a new one), around ``data_set``."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = instance or generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    out = DicomBytesIO()
    out.write(b"\x00" * 128 + b"DICM")
    write_file_meta_info(out, meta)
    return out.getvalue() + data_set


def pynetdicom_store(port: int, calling: str, file: Path, monkeypatch: pytest.MonkeyPatch) -> Dataset:
    """Send ``file``'s data set as it is, with the meta's SOP class and instance UID: a modality gone wrong."""
    monkeypatch.setattr(_config, "STORE_SEND_CHUNKED_DATASET", True)  # no decoding: the bytes go as they are
    ae = AE(ae_title=calling)
    ae.add_requested_context(CTImageStorage, ExplicitVRLittleEndian)
    association = ae.associate("127.0.0.1", port, ae_title=HUB_AE)
    assert association.is_established
    try:
        status = association.send_c_store(file)
    finally:
        association.release()
    assert status is not None and "Status" in status
    return status


@pytest.fixture(scope="module", params=["memory", "rabbitmq"])
def broker_url(request: pytest.FixtureRequest) -> Iterator[str]:
    """conftest's broker_url with one RabbitMQ vhost per module: rabbitmqctl takes seconds a vhost."""
    yield from broker_urls(request.param)


@pytest.fixture
def hub_broker(broker: Broker) -> Broker:
    return declared_empty(broker, TOPOLOGY)  # a shared vhost: drained of an earlier test's


@pytest.fixture
def blobs(tmp_path: Path) -> BlobStore:
    return BlobStore(tmp_path / "blobs", fsync=False)


@pytest.fixture
def listen(hub_broker: Broker, blobs: BlobStore) -> Iterator[Callable[..., DicomListener]]:
    """Start an SCP on port 0: ``listen(intake=None)``."""
    started: list[DicomListener] = []

    def start(intake: Intake | None = None, **settings: Any) -> DicomListener:
        gateway = DicomGateway(port=0, ae_title=HUB_AE, **settings)
        listener = start_dicom(intake or Intake(hub_broker, blobs), CONFIG, gateway)
        started.append(listener)
        return listener

    yield start
    for listener in started:
        listener.close()


# -- association


def test_echo_succeeds_and_the_listener_binds_loopback(listen: Callable[..., DicomListener]) -> None:
    listener = listen()
    assert listener.host == "127.0.0.1" and listener.port > 0
    result = dcmtk("echoscu", listener.port, "YQ_CT01")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "Received Echo Response (Success)" in result.stdout + result.stderr


def test_an_unknown_calling_ae_title_is_refused_at_association(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore
) -> None:
    listener = listen()
    for tool, args in (("echoscu", ()), ("storescu", (SAMPLES / "ct-gbk-no-charset.dcm",))):
        result = dcmtk(tool, listener.port, "NOT_A_MEMBER", *args)
        output = result.stdout + result.stderr
        assert result.returncode != 0
        assert "Association Rejected" in output
        assert "Rejected Permanent, Source: Service User" in output
        assert "Calling AE Title Not Recognized" in output
    assert nothing_queued(hub_broker)
    assert not (blobs.root / "sha256").exists()
    # The listener goes on taking members.
    assert dcmtk("echoscu", listener.port, "YQ_CT01").returncode == 0


def test_the_called_ae_title_is_checked_when_configured(listen: Callable[..., DicomListener]) -> None:
    lenient, strict = listen(), listen(check_called_ae=True)
    assert dcmtk("echoscu", lenient.port, "YQ_CT01", called="ANY_TITLE").returncode == 0  # the default, as Orthanc's
    result = dcmtk("echoscu", strict.port, "YQ_CT01", called="ANY_TITLE")
    output = result.stdout + result.stderr
    assert result.returncode != 0 and "Association Rejected" in output
    assert "Rejected Permanent, Source: Service User" in output and "Called AE Title Not Recognized" in output
    assert dcmtk("echoscu", strict.port, "YQ_CT01").returncode == 0  # addressed to the gateway's own title
    refused = dcmtk("echoscu", strict.port, "NOT_A_MEMBER")  # the calling title is still checked first
    assert "Calling AE Title Not Recognized" in refused.stdout + refused.stderr


def test_associations_past_the_limit_are_refused_for_now(listen: Callable[..., DicomListener]) -> None:
    listener = listen(max_associations=1)
    ae = AE(ae_title="YQ_CT01")
    ae.add_requested_context(CTImageStorage)
    held = ae.associate("127.0.0.1", listener.port, ae_title=HUB_AE)
    assert held.is_established
    try:
        result = dcmtk("echoscu", listener.port, "THY_CT01")
        output = result.stdout + result.stderr
        assert result.returncode != 0 and "Association Rejected" in output
        assert "Rejected Transient" in output and "Local Limit Exceeded" in output
    finally:
        held.release()
    deadline = time.monotonic() + WAIT
    while listener.server.associations and time.monotonic() < deadline:
        time.sleep(0.05)
    assert dcmtk("echoscu", listener.port, "THY_CT01").returncode == 0  # a free slot takes the next sender


def test_accepted_sockets_get_tcp_nodelay(listen: Callable[..., DicomListener]) -> None:
    listener = listen()
    ae = AE(ae_title="YQ_CT01")
    ae.add_requested_context(CTImageStorage)
    association = ae.associate("127.0.0.1", listener.port, ae_title=HUB_AE)
    assert association.is_established
    try:
        (acceptor,) = listener.server.associations  # the hub's side of this association
        accepted = acceptor._transport.get_extra_info("socket")
        assert accepted.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 1
    finally:
        association.release()


# -- instances


def test_samples_are_in_the_blob_store_and_on_the_broker_before_success(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="hub")
    published: list[str] = []

    class BlobFirst(Intake):
        """Notes, as each message goes out, that the blob it names is already whole in the store."""

        async def publish(self, messages: Any) -> None:
            published.extend(blobs.read(m.headers["blob"])[128:132].decode() for m in messages)
            await super().publish(messages)

        async def accept(self, exams: Any, raw: bytes | None = None, *, user_id: str | None = None) -> list[Exam]:
            published.extend(blobs.read(str(e.source.uri))[128:132].decode() for e in exams)
            return await super().accept(exams, raw, user_id=user_id)

    listener = listen(BlobFirst(hub_broker, blobs))
    for name, calling in SENDERS.items():
        result = dcmtk("storescu", listener.port, calling, SAMPLES / name)
        assert result.returncode == 0, result.stdout + result.stderr
    assert published == ["DICM"] * 4
    instances = {Exam.decode(d.body).source.message_id: d for d in take_all(hub_broker, STUDIES)}
    (ecg,) = take_all(hub_broker, stat_queue("ecg"))  # a STAT ECG is an exam at once, on the STAT lane
    exams = {**{uid: Exam.decode(d.body) for uid, d in instances.items()}, "ecg": Exam.decode(ecg.body)}
    assert len(exams) == 4
    for name, calling in SENDERS.items():
        expected = EXPECTED[name]["exams"][0]
        institution = CONFIG.institution_by_ae_title(calling)
        assert institution is not None
        exam = next(e for e in exams.values() if e.study_uid == expected["study_uid"])
        assert exam.origin == institution.code == expected["origin"], name
        assert (exam.patient.name, exam.source.charset) == (expected["patient_name"], expected["charset"]), name
        assert exam.centre == expected["centre"]
        # The blob is a Part 10 file of the data set storescu sent: the sample's, less its trailing padding.
        blob_bytes = blobs.read(str(exam.source.uri))
        assert dcmread(io.BytesIO(blob_bytes)) == as_dcmtk_sends(SAMPLES / name), name
        stored = next(a for a in exam.attachments if a.media_type == "application/dicom")
        assert stored.uri == exam.source.uri and stored.size == len(blob_bytes) and stored.sha256
        assert exam.source.uri == f"urn:sha256:{stored.sha256}"
        if exam.centre == "ecg":
            assert exam.waveform is not None and exam.waveform.data is not None
            assert exam.waveform.data.uri.startswith("#(5400,0100)")  # resolves inside the stored source
            continue
        headers = instances[exam.source.message_id].headers
        assert headers["exam-id"] == exam.exam_id and headers["study-uid"] == exam.study_uid
        assert headers["sop-instance-uid"] == exam.source.message_id
        assert (headers["blob"], headers["size"], headers["sha256"]) == (stored.uri, stored.size, stored.sha256)
    ledger = [d.headers["exam-id"] for d in take_all(hub_broker, LEDGER)]
    assert ledger == [exams["ecg"].exam_id]  # imaging exams are accepted once their study is assembled
    assert "刘建国" not in caplog.text and "330112195305090175" not in caplog.text


def test_the_blob_holds_the_data_set_byte_for_byte_as_sent(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    sample = SAMPLES / "ct-gbk-no-charset.dcm"
    answer = pynetdicom_store(listen().port, "YQ_CT01", sample, monkeypatch)
    assert answer.Status == 0x0000
    (instance,) = take_all(hub_broker, STUDIES)
    blob = blobs.read(instance.headers["blob"])
    assert blob[128:132] == b"DICM" and blob.endswith(data_set_bytes(sample))  # trailing padding and all
    assert split_dataset(blobs.path(instance.headers["blob"]))[0].TransferSyntaxUID == ExplicitVRLittleEndian
    sent = dcmread(sample)
    assert blob == pynetdicom_part10(
        sent.SOPClassUID, sent.SOPInstanceUID, ExplicitVRLittleEndian, data_set_bytes(sample)
    )


def large_ct(folder: Path, side: int) -> tuple[Path, str]:
    """A CT sample with ``side`` x ``side`` 16-bit pixels of zeros and a new SOP Instance UID, saved in ``folder``."""
    large = dcmread(SAMPLES / "ct-gbk-no-charset.dcm")
    large.Rows = large.Columns = side
    large.PixelData = bytes(side * side * 2)
    large.SOPInstanceUID = large.file_meta.MediaStorageSOPInstanceUID = uid = generate_uid()
    path = folder / "large.dcm"
    large.save_as(path)
    return path, uid


def test_an_instance_in_flight_takes_its_size_in_memory_once(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore, tmp_path: Path
) -> None:
    # pynetdicom holds the received data set in one buffer; the blob is written from it, and the adapter
    # reads the blob's file, so no second copy of the instance is made (joined, the peak was 2x).
    path, uid = large_ct(tmp_path, 2048)  # 8 MiB of pixels
    size = path.stat().st_size
    listener = listen()
    tracemalloc.start()
    try:
        result = dcmtk("storescu", listener.port, "YQ_CT01", path)  # another process: only the SCP is traced
        _now, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.returncode == 0, result.stdout + result.stderr
    (instance,) = take_all(hub_broker, STUDIES)
    stored = dcmread(blobs.path(instance.headers["blob"]))
    assert stored.SOPInstanceUID == uid and stored.PixelData == bytes(2048 * 2048 * 2)
    assert size < peak < 1.5 * size, f"peak {peak:,} bytes traced for an instance of {size:,}"


def test_an_instance_over_max_instance_mib_is_0xa700_and_not_kept(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore, tmp_path: Path
) -> None:
    path, _uid = large_ct(tmp_path, 1024)  # 2 MiB of pixels, over the 1 MiB set below
    listener = listen(max_instance_mib=1)
    result = dcmtk("storescu", listener.port, "YQ_CT01", path)
    output = result.stdout + result.stderr
    assert "DIMSE Status                  : 0xa700" in output and "over the hub's limit of 1048576" in output
    assert nothing_queued(hub_broker) and not (blobs.root / "sha256").exists()
    assert dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm").returncode == 0
    assert len(take_all(hub_broker, STUDIES)) == 1


def pynetdicom_part10(sop_class: str, sop_instance: str, syntax: str, data_set: bytes) -> bytes:
    """What pynetdicom's Event.encoded_dataset() returns for a C-STORE of ``data_set``."""
    meta = create_file_meta(
        sop_class_uid=UID(sop_class), sop_instance_uid=UID(sop_instance), transfer_syntax=UID(syntax)
    )
    return b"\x00" * 128 + b"DICM" + encode_file_meta(meta) + data_set


@pytest.mark.parametrize(
    ("sop_instance", "syntax"),
    [
        ("1.2.826.0.1.3680043.8.498.1", ImplicitVRLittleEndian),  # odd lengths: both padded with NUL
        ("1.2.826.0.1.3680043.8.498.12", JPEGBaseline8Bit),  # even lengths
        (generate_uid(), DeflatedExplicitVRLittleEndian),
    ],
)
def test_the_part10_file_meta_is_byte_for_byte_pynetdicoms(sop_instance: str, syntax: str) -> None:
    data_set = b"\x08\x00\x16\x00UI\x1a\x00" + CTImageStorage.encode() + b"\x00"
    association = Association("YQ_CT01", HUB_AE, "127.0.0.1:1")
    request = StoreRequest(association, CTImageStorage, sop_instance, syntax, bytearray(data_set))
    assert _file_meta(request) + data_set == pynetdicom_part10(CTImageStorage, sop_instance, syntax, data_set)
    not_a_uid = dataclasses.replace(request, sop_instance="1.2.826.0.1.3680043.8.498.王")  # but no crash
    assert b"\x02\x00\x03\x00UI\x1c\x001.2.826.0.1.3680043.8.498.?\x00" in _file_meta(not_a_uid)


def test_many_instances_on_one_association_without_tcp_nodelay(
    listen: Callable[..., DicomListener], hub_broker: Broker, tmp_path: Path
) -> None:
    listener = listen()
    template = dcmread(SAMPLES / "ct-gbk-no-charset.dcm")
    files = []
    for n in range(12):
        template.SOPInstanceUID = generate_uid()
        template.file_meta.MediaStorageSOPInstanceUID = template.SOPInstanceUID
        files.append(tmp_path / f"{n}.dcm")
        template.save_as(files[-1])
    result = dcmtk("storescu", listener.port, "YQ_CT01", *files, nodelay=False)  # Nagle on, as modalities send
    assert result.returncode == 0, result.stdout + result.stderr
    sent = {dcmread(f).SOPInstanceUID for f in files}
    assert {Exam.decode(d.body).source.message_id for d in take_all(hub_broker, STUDIES)} == sent


# -- bad input


def test_a_data_set_in_the_wrong_charset_is_cannot_understand_and_parked(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore
) -> None:
    # 青山湖's fallback is UTF-8: the GBK CT without Specific Character Set cannot be read for it.
    result = dcmtk("storescu", listen().port, "QSH_DR01", SAMPLES / "ct-gbk-no-charset.dcm")
    output = result.stdout + result.stderr
    assert "DIMSE Status                  : 0xc000" in output
    assert "(0000,0901) AT (0010,0010)" in output  # Offending Element
    assert "ErrorComment" in output and "[(0010,0010): the bytes are not valid utf-8 text" in output
    (parked,) = take_all(hub_broker, PARKED)
    assert parked.body == b""  # the instance is in the blob store; the message carries its URI
    parked_file = dcmread(blobs.path(parked.headers["x-hub-blob"]))
    assert parked_file == as_dcmtk_sends(SAMPLES / "ct-gbk-no-charset.dcm")
    assert parked.headers["x-hub-park-reason"] == "DecodeError"
    assert parked.headers["x-hub-problems"][0].startswith("(0010,0010): ")
    assert parked.headers["x-hub-origin"] == "12330112471213450B"
    assert parked.headers["x-hub-format"] == "dicom" and parked.headers["x-hub-charset"] == "UTF-8"
    assert take_all(hub_broker, STUDIES) == []


def test_an_instance_read_from_memory_during_its_fsync_is_read_as_from_its_blob(
    listen: Callable[..., DicomListener], hub_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Up to 256 KiB the adapter reads a copy while the blob is fsync'd, above that the blob's file: alike."""

    def store_all() -> tuple[list[dict[str, Any]], list[str]]:
        listener = listen()
        outputs = [dcmtk("storescu", listener.port, calling, SAMPLES / name) for name, calling in SENDERS.items()]
        bad = dcmtk("storescu", listener.port, "QSH_DR01", SAMPLES / "ct-gbk-no-charset.dcm")  # GBK read as UTF-8
        assert all(o.returncode == 0 for o in outputs)
        exams = [Exam.decode(d.body) for q in (STUDIES, stat_queue("ecg")) for d in take_all(hub_broker, q)]
        parked = [p.headers["x-hub-problems"][0] for p in take_all(hub_broker, PARKED)]
        assert "DIMSE Status                  : 0xc000" in bad.stdout + bad.stderr
        return sorted((e.model_dump(exclude={"source": {"received_at"}}) for e in exams), key=str), parked

    in_memory = store_all()
    monkeypatch.setattr(gateway, "_READ_AT_ONCE", 0)
    from_blob = store_all()
    assert len(in_memory[0]) == len(SENDERS) and len(in_memory[1]) == 1
    assert in_memory == from_blob


@pytest.mark.filterwarnings("ignore:Expected explicit VR:UserWarning")  # pydicom, on the text file
@pytest.mark.parametrize(
    ("name", "status", "comment", "offending"),
    [
        ("bad-not-dicom.dcm", 0xC000, "(", None),  # wherever the text stops parsing as elements
        ("bad-truncated.dcm", 0xC000, "(7FE0,0010): the input is truncated", 0x7FE00010),
        ("bad-sr-unsupported.dcm", 0xA900, "(0008,0016): SOP class 1.2.840.10008.5.1.4.1.1.88.11", 0x00080016),
        ("instance-uid-mismatch", 0xA900, "(0008,0018): the data set's SOP Instance UID is not", 0x00080018),
        ("class-uid-mismatch", 0xA900, "(0008,0016): the data set's SOP Class UID is not", 0x00080016),
    ],
)
def test_bad_instances_get_a_failure_status_and_are_parked_with_their_blob(
    listen: Callable[..., DicomListener],
    hub_broker: Broker,
    blobs: BlobStore,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    name: str,
    status: int,
    comment: str,
    offending: int | None,
) -> None:
    if name == "bad-truncated.dcm":  # a valid meta, a data set cut off in its pixel data
        raw = (SAMPLES / name).read_bytes()
    elif name == "instance-uid-mismatch":  # the request names another instance than the data set
        raw = part10(data_set_bytes(SAMPLES / "ct-gbk-no-charset.dcm"))
    elif name == "class-uid-mismatch":  # an MR data set, its own instance UID, sent as CT Image Storage
        mr = SAMPLES / "mr-iso2022-ir58.dcm"
        raw = part10(data_set_bytes(mr), dcmread(mr).SOPInstanceUID)
    else:  # a text file, and an SR, sent under the CT context
        raw = part10((SAMPLES / name).read_bytes() if name == "bad-not-dicom.dcm" else data_set_bytes(SAMPLES / name))
    file = tmp_path / "sent.dcm"
    file.write_bytes(raw)
    listener = listen()
    answer = pynetdicom_store(listener.port, "YQ_CT01", file, monkeypatch)
    assert answer.Status == status
    assert answer.ErrorComment.startswith(comment) and len(answer.ErrorComment) <= 64
    tag = answer.OffendingElement  # the element the comment names first
    assert answer.ErrorComment.startswith(f"({tag.group:04X},{tag.element:04X}): ")
    assert offending is None or tag == offending
    (parked,) = take_all(hub_broker, PARKED)
    _meta, offset = split_dataset(file)
    assert blobs.read(parked.headers["x-hub-blob"]).endswith(raw[offset:])
    assert parked.headers["x-hub-error"].startswith(answer.ErrorComment.rstrip(". "))
    assert parked.headers["x-hub-origin"] == "12330112472334561L" and parked.headers["x-hub-format"] == "dicom"
    assert nothing_queued(hub_broker)
    # A bad instance does not stop the listener.
    assert dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm").returncode == 0
    assert len(take_all(hub_broker, STUDIES)) == 1


def test_an_internal_failure_is_0xc211_parked_and_the_listener_goes_on(
    listen: Callable[..., DicomListener], hub_broker: Broker, blobs: BlobStore, caplog: pytest.LogCaptureFixture
) -> None:
    class FailingOnce(Intake):
        failed = False

        async def publish(self, messages: Any) -> None:
            if not self.failed and messages[0].exchange == STUDIES:
                self.failed = True
                raise RuntimeError(f"boom with {Exam.decode(messages[0].body).patient.name}")
            await super().publish(messages)

    listener = listen(FailingOnce(hub_broker, blobs))
    first = dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm")
    assert "DIMSE Status                  : 0xc211" in first.stdout + first.stderr
    (parked,) = take_all(hub_broker, PARKED)
    assert parked.headers["x-hub-error"] == "the gateway failed: RuntimeError" and parked.headers["x-hub-blob"]
    assert dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm").returncode == 0
    assert len(take_all(hub_broker, STUDIES)) == 1
    assert "RuntimeError" in caplog.text and "刘建国" not in caplog.text


# -- the broker not taking the message


def test_a_broker_that_takes_nothing_gives_0xa700_and_nothing_is_published(
    listen: Callable[..., DicomListener], hub_broker: Broker, monkeypatch: pytest.MonkeyPatch
) -> None:
    listener = listen()
    hub_broker.delete(TOPOLOGY)  # no exchanges or queues: every publish fails, parking too
    for name in ("ct-gbk-no-charset.dcm", "ecg-12lead.dcm"):
        result = dcmtk("storescu", listener.port, SENDERS[name], SAMPLES / name)
        assert "DIMSE Status                  : 0xa700" in result.stdout + result.stderr, name
        assert "send again later" in result.stdout + result.stderr
    bad = pynetdicom_store(listener.port, "YQ_CT01", SAMPLES / "bad-truncated.dcm", monkeypatch)
    assert bad.Status == 0xA700  # not parked, so the modality must send it again
    hub_broker.declare(TOPOLOGY)
    assert nothing_queued(hub_broker)
    # The modality sends again once the broker takes messages.
    for name in ("ct-gbk-no-charset.dcm", "ecg-12lead.dcm"):
        assert dcmtk("storescu", listener.port, SENDERS[name], SAMPLES / name).returncode == 0
    assert len(take_all(hub_broker, STUDIES)) == len(take_all(hub_broker, stat_queue("ecg"))) == 1


def _ctl(*args: str) -> None:
    subprocess.run(["rabbitmqctl", "-q", *args], check=True, capture_output=True, timeout=60)


@pytest.mark.parametrize("broker_url", ["rabbitmq"], indirect=True)  # the in-process broker has no connection to lose
def test_rabbitmq_connection_lost_gives_0xa700_then_the_retry_is_stored(
    broker_url: str, listen: Callable[..., DicomListener], hub_broker: Broker
) -> None:
    vhost, user = unquote(urlsplit(broker_url).path.lstrip("/")), urlsplit(broker_url).username or "guest"
    listener = listen()
    _ctl("clear_permissions", "-p", vhost, user)  # the hub cannot get back in until this is fixed
    try:
        _ctl("close_all_connections", "-p", vhost, "test: the network dropped")
        result = dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm")
        assert "DIMSE Status                  : 0xa700" in result.stdout + result.stderr
    finally:
        _ctl("set_permissions", "-p", vhost, user, ".*", ".*", ".*")
    deadline = time.monotonic() + 30
    while dcmtk("storescu", listener.port, "YQ_CT01", SAMPLES / "ct-gbk-no-charset.dcm").returncode != 0:
        assert time.monotonic() < deadline, "the hub never took the instance again"
        time.sleep(0.2)  # a modality's pause between retries
    (instance,) = take_all(hub_broker, STUDIES)
    assert Exam.decode(instance.body).patient.name == "刘建国"


def test_close_refuses_new_associations(listen: Callable[..., DicomListener]) -> None:
    listener = listen()
    listener.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", listener.port), timeout=WAIT)


def test_starting_on_the_brokers_own_loop_is_refused_not_a_deadlock(hub_broker: Broker, blobs: BlobStore) -> None:
    async def on_the_loop() -> DicomListener:
        return start_dicom(Intake(hub_broker, blobs), CONFIG, DicomGateway(port=0, ae_title=HUB_AE))

    with pytest.raises(RuntimeError, match="must not run on the broker's loop"):
        asyncio.run_coroutine_threadsafe(on_the_loop(), hub_broker.loop).result(WAIT)


# -- the Intake the gateways share


def test_a_large_input_is_parked_with_its_blob_written_off_the_brokers_loop(hub_broker: Broker, tmp_path: Path) -> None:
    writers: list[threading.Thread] = []

    class Recording(BlobStore):
        def put(self, data: bytes | bytearray | memoryview) -> Blob:
            writers.append(threading.current_thread())
            return super().put(data)

    intake = Intake(hub_broker, Recording(tmp_path / "blobs", fsync=False))

    async def park() -> threading.Thread:  # as the MLLP and FHIR gateways do, on the broker's loop
        await intake.park(b"x" * (INLINE_PARK_LIMIT + 1), "refused", format="hl7v2")
        return threading.current_thread()

    loop_thread = asyncio.run_coroutine_threadsafe(park(), hub_broker.loop).result(WAIT)
    assert len(writers) == 1 and writers[0] is not loop_thread
    (parked,) = take_all(hub_broker, PARKED)
    assert parked.body == b"" and parked.headers["x-hub-blob"]
