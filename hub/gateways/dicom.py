"""The DICOM gateway: a C-STORE and C-ECHO SCP that keeps each instance before it answers.

    listener = start_dicom(intake, config, config.gateways.dicom)   # from any thread but the broker's loop
    listener.port                                                   # settings.port may be 0
    listener.close()

A small file that binds pynetdicom handlers, as pynetdicom's storescp app does:

- Association: a calling AE title that no institution in the config has is refused with
  A-ASSOCIATE-RJ (rejected-permanent, service user, calling AE title not recognised); with
  ``check_called_ae`` so is a called AE title other than the gateway's (called AE title not recognised).
- C-STORE, for each instance:
  1. the Part 10 file as received (preamble, meta, data set) goes to the blob store, fsync'd, the data
     set straight from pynetdicom's buffer (an instance in flight takes its own size in memory, once);
  2. ``adapters.dicom.read`` of that file, with the institution's code as origin, its fallback charset
     and the request's Affected SOP Class and Instance UIDs;
  3. an ECG waveform is an exam at once (Intake: the exam and its ledger event); any other instance goes
     to ``hub.studies``, where the StudyAssembler makes one exam of each study;
  4. success only once the broker has confirmed.
- C-ECHO: pynetdicom's own handler, success.

Failure statuses, each with an Error Comment (at most 64 ASCII characters, never patient data):

    0xA700  out of resources: the broker did not confirm, or the disk failed; the modality retries
    0xA900  the data set does not match its SOP class: a class no centre reads, sent under another's
            context, or a SOP Class or Instance UID that is not the request's
    0xC000  cannot understand: the adapter's first problem, tag first ("(0010,0010): non-ASCII ...")
    0xC211  the gateway itself failed (pynetdicom's status for a failing handler)

All but 0xA700 park the input on ``hub.parked.intake`` with its blob URI and the problems. No
exception leaves a handler, so a bad instance never takes the listener down.

TCP: pynetdicom 3.0.4 leaves Nagle's algorithm on, and a sender that does the same (most modalities)
meets the receiver's delayed ACK. Every accepted socket gets TCP_NODELAY, and on Linux TCP_QUICKACK
after every read (the kernel leaves quick-ACK mode again by itself, so it is set each time), which ACKs
the sender's data at once. bench/dicom_ingest.py, storescu without TCP_NODELAY: 17 images/s without
QUICKACK, 50 with it (Orthanc: 19); re-arming after sends as well measured no better.
"""

from __future__ import annotations

import logging
import socket
import socketserver
import threading
from dataclasses import dataclass
from typing import Any, cast

from pydicom.dataset import Dataset
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)
from pynetdicom import (
    AE,
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
    evt,
)
from pynetdicom.presentation import PresentationContext, build_context
from pynetdicom.transport import ThreadedAssociationServer

from adapters import dicom
from adapters.dicom._classes import centre_for
from hub.config import Config, DicomGateway, Institution
from hub.envelope import Exam
from hub.errors import AdapterError, BrokerError, NotAsDeclared, UnsupportedMessage
from hub.gateways.studies import instance_message, stored_instance
from hub.intake import Intake, parked_input_message
from hub.store.blobs import Blob

__all__ = ["TRANSFER_SYNTAXES", "DicomListener", "start_dicom"]

log = logging.getLogger("hub.gateways.dicom")

# Uncompressed, deflated and the common compressed syntaxes: the hub never decodes pixel data.
TRANSFER_SYNTAXES: list[str | UID] = [
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    JPEGBaseline8Bit,
    JPEGExtended12Bit,
    JPEGLossless,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    JPEG2000Lossless,
    JPEG2000,
    RLELossless,
]

SUCCESS = 0x0000
OUT_OF_RESOURCES = 0xA700
DATA_SET_MISMATCH = 0xA900
CANNOT_UNDERSTAND = 0xC000
HANDLER_FAILED = 0xC211
_PREAMBLE = b"\x00" * 128 + b"DICM"
_COMMENT_LIMIT = 64  # Error Comment (0000,0902) is LO
_TCP_QUICKACK: int | None = getattr(socket, "TCP_QUICKACK", None)  # Linux only


class _QuickAckSocket(socket.socket):
    """A socket that ACKs at once after every read: TCP_QUICKACK does not stick on Linux."""

    def recv(self, bufsize: int, flags: int = 0, /) -> bytes:
        data = super().recv(bufsize, flags)
        if data and _TCP_QUICKACK is not None:
            self.setsockopt(socket.IPPROTO_TCP, _TCP_QUICKACK, 1)
        return data


class _Server(ThreadedAssociationServer):
    def get_request(self) -> tuple[socket.socket, Any]:
        connection, address = super().get_request()
        connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if _TCP_QUICKACK is None:
            return connection, address
        return _QuickAckSocket(connection.family, connection.type, connection.proto, connection.detach()), address

    def shutdown(self) -> None:
        # pynetdicom's own shutdown expects a server that AE.start_server made and listed.
        socketserver.BaseServer.shutdown(self)
        self.server_close()


class DicomListener:
    """A running SCP: ``port`` is where it listens, ``close`` stops it."""

    def __init__(self, server: _Server, thread: threading.Thread) -> None:
        self._server = server
        self._thread = thread
        self.host: str = server.server_address[0]
        self.port: int = server.server_address[1]

    def close(self) -> None:
        """Abort associations in progress (their senders retry what was unanswered), then stop listening."""
        if not self._thread.is_alive():
            return
        for association in self._server.active_associations:
            association.abort()
        self._server.shutdown()
        self._thread.join(10)

    def __enter__(self) -> DicomListener:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass(frozen=True, slots=True)
class _Instance:
    """One C-STORE request as received, and from whom."""

    uid: str  # the request's Affected SOP Instance UID
    sop_class: str  # the request's Affected SOP Class UID
    institution: Institution
    peer: str


class _Handlers:
    def __init__(self, intake: Intake, config: Config, settings: DicomGateway) -> None:
        if intake.blobs is None:
            raise ValueError("the DICOM gateway needs an Intake with a blob store")
        self.intake = intake
        self.blobs = intake.blobs
        self.by_title = {title: i for i in config.institutions for title in i.ae_titles}
        self.own_title = settings.ae_title if settings.check_called_ae else None

    def requested(self, event: Any) -> None:
        association = event.assoc
        primitive = association.requestor.primitive
        title = str(primitive.calling_ae_title).strip()
        called = str(primitive.called_ae_title).strip()
        if title not in self.by_title:
            log.warning("refused association from %s: calling AE title %r is no institution's", _peer(event), title)
            reason = 0x03  # calling AE title not recognised
        elif self.own_title is not None and called != self.own_title:
            log.warning("refused association from %s: called AE title %r is not %r", _peer(event), called,
                        self.own_title)  # fmt: skip
            reason = 0x07  # called AE title not recognised
        else:
            return
        association.acse.send_reject(0x01, 0x01, reason)  # rejected-permanent, service user
        association.kill()

    def store(self, event: Any) -> Dataset:
        instance = _Instance(
            str(event.request.AffectedSOPInstanceUID),
            str(event.request.AffectedSOPClassUID),
            self.by_title[str(event.assoc.requestor.ae_title).strip()],  # checked at association
            _peer(event),
        )
        try:
            # Durable before anything is published. The data set goes from pynetdicom's buffer to the
            # file without a copy: a joined Part 10 file would double the memory an instance takes.
            with event.request.DataSet.getbuffer() as data_set:
                blob = self.blobs.put(_file_meta(event), data_set)
        except OSError as exc:
            log.error("cannot store instance %s: %s", instance.uid, type(exc).__name__)
            return _status(OUT_OF_RESOURCES, "the hub cannot store instances now; send again later")
        try:
            return self._take(instance, blob)
        except BrokerError as exc:
            log.warning("instance %s not confirmed: %s", instance.uid, type(exc).__name__)
            return _status(OUT_OF_RESOURCES, "the hub's broker did not confirm; send again later")
        except Exception as exc:
            # The class only: an exception's text might quote the data set. The traceback is at DEBUG.
            log.error("gateway failed on instance %s: %s", instance.uid, type(exc).__name__)
            log.debug("gateway failure", exc_info=True)
            self._park_after_failure(instance, blob, exc)
            return _status(HANDLER_FAILED, f"the hub failed on this instance ({type(exc).__name__}); it is kept")

    def _take(self, instance: _Instance, blob: Blob) -> Dataset:
        institution = instance.institution
        try:
            exam = dicom.read(blob.path, origin=institution.code, charset=institution.charset,
                              affected_sop_class=instance.sop_class, affected_sop_instance=instance.uid)  # fmt: skip
        except AdapterError as error:
            # Only classes a centre reads are negotiated, so an unsupported one came under another's context.
            unsupported = isinstance(error, UnsupportedMessage) and error.location == "(0008,0016)"
            mismatch = unsupported or isinstance(error, NotAsDeclared)
            return self._refuse(instance, blob, error, DATA_SET_MISMATCH if mismatch else CANNOT_UNDERSTAND)
        self._publish(instance, stored_instance(exam, blob))
        return _status(SUCCESS)

    def _refuse(self, instance: _Instance, blob: Blob, error: AdapterError, code: int) -> Dataset:
        """Park the instance with its problems, then answer ``code`` naming the first of them."""
        self._park(instance, blob, error)
        log.warning("parked instance %s from %s: %s at %s", instance.uid, instance.institution.code,
                    type(error).__name__, error.location)  # fmt: skip
        problem = error.problems[0]
        status = _status(code, str(problem))
        tag = _tag(problem.location)
        if tag is not None:
            status.OffendingElement = [tag]
        return status

    def _publish(self, instance: _Instance, exam: Exam) -> None:
        if exam.centre == "ecg":  # read at once: its own exam, with its ledger event
            self.intake.accept_blocking([exam])
        else:  # one exam per study, once the study is complete: the StudyAssembler's
            self.intake.publish_blocking([instance_message(exam)])
        log.debug("instance %s of exam %s from %s stored as %s", instance.uid, exam.exam_id,
                  instance.institution.code, exam.source.uri)  # fmt: skip

    def _park(self, instance: _Instance, blob: Blob, error: AdapterError | str) -> None:
        institution = instance.institution
        message = parked_input_message(blob, error, format="dicom", origin=institution.code, peer=instance.peer,
                                       charset=institution.charset)  # fmt: skip
        self.intake.publish_blocking([message])

    def _park_after_failure(self, instance: _Instance, blob: Blob, exc: Exception) -> None:
        try:
            self._park(instance, blob, f"the gateway failed: {type(exc).__name__}")
        except Exception as park_error:  # the sender was told of the failure; the blob is kept either way
            log.error("could not park instance %s: %s", blob.uri, type(park_error).__name__)


def start_dicom(intake: Intake, config: Config, settings: DicomGateway) -> DicomListener:
    """Listen for C-STORE and C-ECHO at ``settings.host``:``settings.port`` as ``settings.ae_title``."""
    handlers = _Handlers(intake, config, settings)
    ae = AE(ae_title=settings.ae_title)
    ae.maximum_associations = settings.max_associations
    server = cast(_Server, ae.make_server((settings.host, settings.port), contexts=_contexts(), server_class=_Server))
    # pynetdicom's default handlers log every PDU: cost on each read, and DEBUG would show data sets.
    for event in (evt.EVT_PDU_RECV, evt.EVT_PDU_SENT, evt.EVT_DIMSE_RECV, evt.EVT_DIMSE_SENT):
        for handler, _args in cast(list[tuple[Any, Any]], list(server.get_handlers(event))):
            server.unbind(event, handler)
    server.bind(evt.EVT_REQUESTED, handlers.requested)
    server.bind(evt.EVT_C_STORE, handlers.store)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.1}, name="hub-dicom-scp")
    thread.daemon = True
    thread.start()
    listener = DicomListener(server, thread)
    log.info("DICOM gateway %s listening on %s:%d", settings.ae_title, listener.host, listener.port)
    return listener


def _contexts() -> list[PresentationContext]:
    """C-ECHO, and every storage SOP class that a centre reads (adapters.dicom decides which)."""
    storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return [*VerificationPresentationContexts] + [
        build_context(sop_class, TRANSFER_SYNTAXES) for sop_class in storage if centre_for(sop_class) is not None
    ]


def _peer(event: Any) -> str:
    requestor = event.assoc.requestor
    return f"{requestor.address}:{requestor.port}"


def _file_meta(event: Any) -> bytes:
    """What comes before the data set in the instance's Part 10 file: preamble, File Meta Information as
    pynetdicom writes it.

    pynetdicom's ``encoded_dataset`` builds and encodes a pydicom FileMetaDataset: 440 us of each
    instance's ~10 ms here. These seven explicit VR little endian elements take about 10 us.
    """
    request = event.request
    elements = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _uid(request.AffectedSOPClassUID)),
        _element(0x0003, b"UI", _uid(request.AffectedSOPInstanceUID)),
        _element(0x0010, b"UI", _uid(event.context.transfer_syntax)),
        _element(0x0012, b"UI", _uid(PYNETDICOM_IMPLEMENTATION_UID)),
        _element(0x0013, b"SH", _padded(PYNETDICOM_IMPLEMENTATION_VERSION.encode("ascii"), b" ")),
    ))  # fmt: skip
    group_length = _element(0x0000, b"UL", len(elements).to_bytes(4, "little"))
    return b"".join((_PREAMBLE, group_length, elements))


def _element(element: int, vr: bytes, value: bytes) -> bytes:
    """One group 0002 element, explicit VR little endian (OB has a reserved field and a 4-byte length)."""
    tag = b"\x02\x00" + element.to_bytes(2, "little")
    if vr == b"OB":
        return tag + vr + b"\x00\x00" + len(value).to_bytes(4, "little") + value
    return tag + vr + len(value).to_bytes(2, "little") + value


def _uid(uid: str) -> bytes:
    # A UID is ASCII; one that is not must not fail here, before the instance is kept: the adapter
    # then finds the data set's UID unlike the request's and the instance is parked.
    return _padded(str(uid).encode("ascii", "replace"), b"\x00")


def _padded(value: bytes, pad: bytes) -> bytes:
    return value + pad if len(value) % 2 else value


def _status(code: int, comment: str | None = None) -> Dataset:
    status = Dataset()
    status.Status = code
    if comment:
        status.ErrorComment = comment.encode("ascii", "replace").decode("ascii")[:_COMMENT_LIMIT]
    return status


def _tag(location: str | None) -> int | None:
    """The first tag of a location such as ``(0040,0275)[0](0040,2016)``."""
    if location is None or len(location) < 11 or location[0] != "(" or location[5] != "," or location[10] != ")":
        return None
    try:
        return int(location[1:5] + location[6:10], 16)
    except ValueError:
        return None
