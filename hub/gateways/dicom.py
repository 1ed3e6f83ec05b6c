"""The DICOM gateway: a C-STORE and C-ECHO SCP that keeps each instance before it answers.

    listener = start_dicom(intake, config, config.gateways.dicom)   # from any thread but the broker's loop
    listener.port                                                   # settings.port may be 0
    listener.close()

The services of the SCP whose Upper Layer is ``hub.gateways.dicom_ul``, on the broker's loop:

- Association: a calling AE title that no institution in the config has is refused with
  A-ASSOCIATE-RJ (rejected-permanent, service user, calling AE title not recognised); with
  ``check_called_ae`` so is a called AE title other than the gateway's (called AE title not recognised).
- C-STORE, for each instance:
  1. the Part 10 file as received (preamble, meta, data set) goes to the blob store, fsync'd on a worker
     thread, the data set straight from the receive buffer (an instance in flight takes its size once);
  2. ``adapters.dicom.read`` with the institution's code as origin, its fallback charset and the
     request's Affected SOP Class and Instance UIDs: of a copy while the fsync waits, for a data set of
     up to 256 KiB; else of the blob's file once it is written;
  3. an ECG waveform is an exam at once (Intake: the exam and its ledger event); any other instance goes
     to ``hub.studies``, where the StudyAssembler makes one exam of each study;
  4. success only once the broker has confirmed.
- C-ECHO: success, from the Upper Layer.

Failure statuses, each with an Error Comment (at most 64 ASCII characters, never patient data):

    0xA700  out of resources: the broker did not confirm, or the disk failed; the modality retries
    0xA900  the data set does not match its SOP class: a class no centre reads, sent under another's
            context, or a SOP Class or Instance UID that is not the request's
    0xC000  cannot understand: the adapter's first problem, tag first ("(0010,0010): non-ASCII ...")
    0xC211  the gateway itself failed (pynetdicom's status for a failing handler)

All but 0xA700 park the input on ``hub.parked.intake`` with its blob URI and the problems. No
exception leaves a handler, so a bad instance never takes the listener down.

TCP: a sender that leaves Nagle's algorithm on (most modalities) meets the receiver's delayed ACK.
asyncio sets TCP_NODELAY on every accepted socket, and the Upper Layer re-arms TCP_QUICKACK after every
read on Linux, which ACKs the sender's data at once. bench/dicom_ingest.py, storescu without TCP_NODELAY:
17 images/s without QUICKACK, 50 with it (Orthanc: 19), with pynetdicom's association.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from pathlib import Path

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
    PYNETDICOM_IMPLEMENTATION_UID,
    PYNETDICOM_IMPLEMENTATION_VERSION,
    AllStoragePresentationContexts,
    VerificationPresentationContexts,
)
from pynetdicom.presentation import PresentationContext, build_context

from adapters import dicom
from adapters.dicom._classes import centre_for
from hub.config import Config, DicomGateway, Institution
from hub.envelope import Exam
from hub.errors import AdapterError, BrokerError, NotAsDeclared, UnsupportedMessage
from hub.gateways.dicom_ul import (
    CALLED_AE_NOT_RECOGNISED,
    CALLING_AE_NOT_RECOGNISED,
    Association,
    DicomServer,
    Rejection,
    Status,
    StoreRequest,
    serve_dicom,
)
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
_READ_AT_ONCE = 256 * 1024  # bytes of data set read from memory while its blob is fsync'd (MLLP's limit too)


class DicomListener:
    """A running SCP: ``port`` is where it listens, ``close`` stops it."""

    def __init__(self, server: DicomServer, loop: asyncio.AbstractEventLoop) -> None:
        self.server = server
        self._loop = loop
        self.host: str = server.host
        self.port: int = server.port

    def close(self) -> None:
        """Abort associations in progress (their senders retry what was unanswered), then stop listening."""
        if self._loop.is_closed():
            return
        asyncio.run_coroutine_threadsafe(self.server.close(), self._loop).result(10)

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


class _Services:
    def __init__(self, intake: Intake, config: Config, settings: DicomGateway) -> None:
        if intake.blobs is None:
            raise ValueError("the DICOM gateway needs an Intake with a blob store")
        self.intake = intake
        self.blobs = intake.blobs
        self.by_title = {title: i for i in config.institutions for title in i.ae_titles}
        self.own_title = settings.ae_title if settings.check_called_ae else None

    def associate(self, association: Association) -> Rejection | None:
        if association.calling_ae not in self.by_title:
            log.warning("refused association from %s: calling AE title %r is no institution's", association.peer,
                        association.calling_ae)  # fmt: skip
            return CALLING_AE_NOT_RECOGNISED
        if self.own_title is not None and association.called_ae != self.own_title:
            log.warning("refused association from %s: called AE title %r is not %r", association.peer,
                        association.called_ae, self.own_title)  # fmt: skip
            return CALLED_AE_NOT_RECOGNISED
        return None

    async def store(self, request: StoreRequest) -> Status:
        association = request.association
        instance = _Instance(request.sop_instance, request.sop_class, self.by_title[association.calling_ae],
                             association.peer)  # fmt: skip
        meta = _file_meta(request)
        loop = asyncio.get_running_loop()
        # The blob is written and fsync'd on a worker thread: an fsync (up to 20 ms on a busy disk) would
        # stall every connection and the broker's I/O. A small instance is read here, from a copy, which
        # measured faster than reading it from the blob's file afterwards (the worker thread mostly starts
        # its write once this read lets go of the GIL, so the two overlap little). A larger one is read
        # from the blob's file on a worker thread (the adapter maps the file), so it is held in memory once.
        kept = loop.run_in_executor(None, self.blobs.put, meta, request.data_set)  # from the receive buffer
        read = self._read(instance, meta + request.data_set) if len(request.data_set) <= _READ_AT_ONCE else None
        try:
            blob = await kept  # durable before anything is published
        except OSError as exc:
            log.error("cannot store instance %s: %s", instance.uid, type(exc).__name__)
            return Status(OUT_OF_RESOURCES, "the hub cannot store instances now; send again later")
        try:
            if read is None:
                read = await loop.run_in_executor(None, self._read, instance, blob.path)
            return await self._take(instance, blob, read)
        except BrokerError as exc:
            log.warning("instance %s not confirmed: %s", instance.uid, type(exc).__name__)
            return Status(OUT_OF_RESOURCES, "the hub's broker did not confirm; send again later")
        except Exception as exc:
            # The class only: an exception's text might quote the data set. The traceback is at DEBUG.
            log.error("gateway failed on instance %s: %s", instance.uid, type(exc).__name__)
            log.debug("gateway failure", exc_info=True)
            await self._park_after_failure(instance, blob, exc)
            return Status(HANDLER_FAILED, f"the hub failed on this instance ({type(exc).__name__}); it is kept")

    @staticmethod
    def _read(instance: _Instance, source: bytes | Path) -> Exam | Exception:
        """What the adapter makes of the instance: its exam, or why not (handled where it is parked)."""
        member = instance.institution
        try:
            return dicom.read(source, origin=member.code, charset=member.charset,
                              affected_sop_class=instance.sop_class, affected_sop_instance=instance.uid)  # fmt: skip
        except Exception as exc:
            return exc

    async def _take(self, instance: _Instance, blob: Blob, read: Exam | Exception) -> Status:
        if isinstance(read, AdapterError):
            # Only classes a centre reads are negotiated, so an unsupported one came under another's context.
            unsupported = isinstance(read, UnsupportedMessage) and read.location == "(0008,0016)"
            mismatch = unsupported or isinstance(read, NotAsDeclared)
            return await self._refuse(instance, blob, read, DATA_SET_MISMATCH if mismatch else CANNOT_UNDERSTAND)
        if isinstance(read, Exception):
            raise read
        await self._publish(instance, stored_instance(read, blob))
        return Status(SUCCESS)

    async def _refuse(self, instance: _Instance, blob: Blob, error: AdapterError, code: int) -> Status:
        """Park the instance with its problems, then answer ``code`` naming the first of them."""
        await self._park(instance, blob, error)
        log.warning("parked instance %s from %s: %s at %s", instance.uid, instance.institution.code,
                    type(error).__name__, error.location)  # fmt: skip
        problem = error.problems[0]
        return Status(code, str(problem), _tag(problem.location))

    async def _publish(self, instance: _Instance, exam: Exam) -> None:
        if exam.centre == "ecg":  # read at once: its own exam, with its ledger event
            await self.intake.accept([exam])
        else:  # one exam per study, once the study is complete: the StudyAssembler's
            await self.intake.publish([instance_message(exam)])
        log.debug("instance %s of exam %s from %s stored as %s", instance.uid, exam.exam_id,
                  instance.institution.code, exam.source.uri)  # fmt: skip

    async def _park(self, instance: _Instance, blob: Blob, error: AdapterError | str) -> None:
        institution = instance.institution
        message = parked_input_message(blob, error, format="dicom", origin=institution.code, peer=instance.peer,
                                       charset=institution.charset)  # fmt: skip
        await self.intake.publish([message])

    async def _park_after_failure(self, instance: _Instance, blob: Blob, exc: Exception) -> None:
        try:
            await self._park(instance, blob, f"the gateway failed: {type(exc).__name__}")
        except Exception as park_error:  # the sender was told of the failure; the blob is kept either way
            log.error("could not park instance %s: %s", blob.uri, type(park_error).__name__)


def start_dicom(intake: Intake, config: Config, settings: DicomGateway) -> DicomListener:
    """Listen for C-STORE and C-ECHO at ``settings.host``:``settings.port`` as ``settings.ae_title``."""
    loop = intake.broker.loop
    if _running_loop() is loop:  # it would wait on the loop for the loop
        raise RuntimeError("start_dicom must not run on the broker's loop; call it from another thread")
    serving = serve_dicom(_Services(intake, config, settings), settings.host, settings.port, contexts=_contexts(),
                          max_associations=settings.max_associations,
                          max_instance=settings.max_instance_mib * 1024 * 1024)  # fmt: skip
    listener = DicomListener(asyncio.run_coroutine_threadsafe(serving, loop).result(30), loop)
    log.info("DICOM gateway %s listening on %s:%d", settings.ae_title, listener.host, listener.port)
    return listener


def _running_loop() -> asyncio.AbstractEventLoop | None:
    try:
        return asyncio.get_running_loop()
    except RuntimeError:
        return None


def _contexts() -> list[PresentationContext]:
    """C-ECHO, and every storage SOP class that a centre reads (adapters.dicom decides which)."""
    storage = [str(cx.abstract_syntax) for cx in AllStoragePresentationContexts]
    return [*VerificationPresentationContexts] + [
        build_context(sop_class, TRANSFER_SYNTAXES) for sop_class in storage if centre_for(sop_class) is not None
    ]


def _file_meta(request: StoreRequest) -> bytes:
    """What comes before the data set in the instance's Part 10 file: preamble, File Meta Information as
    pynetdicom writes it.

    pynetdicom's ``encoded_dataset`` builds and encodes a pydicom FileMetaDataset: 440 us of each
    instance's ~10 ms here. These seven explicit VR little endian elements take about 10 us.
    """
    elements = b"".join((
        _element(0x0001, b"OB", b"\x00\x01"),  # File Meta Information Version
        _element(0x0002, b"UI", _uid(request.sop_class)),
        _element(0x0003, b"UI", _uid(request.sop_instance)),
        _element(0x0010, b"UI", _uid(request.transfer_syntax)),
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


def _tag(location: str | None) -> int | None:
    """The first tag of a location such as ``(0040,0275)[0](0040,2016)``."""
    if location is None or len(location) < 11 or location[0] != "(" or location[5] != "," or location[10] != ")":
        return None
    try:
        return int(location[1:5] + location[6:10], 16)
    except ValueError:
        return None
