"""The mutual-recognition registry (检查检验结果互认): recognised results, QC status, lookups, re-test overrides.

    registry = Registry(database, config)     # syncs the config's QC passes (recognition.qc) into the store
    outcome = registry.record(report)         # recorded, already recorded, revoked or not eligible (and why)
    found = registry.lookup(national_id=..., item=("http://loinc.org", "58410-2"), who="12330112473455672X")
    found.reason                              # found, expired, not eligible or none found
    registry.override(national_id=..., item=..., reason="emergency", detail=..., clinician=..., institution=...)

Recording. A report becomes a recognised result when it is final or amended, its service (code and
system) is in the catalogue (``recognition.items``), its patient has a valid national id, and the
performing centre's QC for the item is valid on the day the report was issued. The performing
centre is ``report.performer_institution``; a report that names none was read by the lead
hospital's shared centre, so the lead's QC counts. The result holds the person, the item, the
values (observations), references to images and data (attachments, less any PDF or text rendering
of the report, which carries the conclusion), the mark, its window and the source report. It never
holds the findings or conclusion text: the 2022 rules (国卫医发〔2022〕6号) recognise images, data
and values, not the physician's conclusion. ``valid_from`` is the day the report was issued, in
China Standard Time (the day the result became known); ``valid_until`` is valid_from + the item's
valid_days, and the result is valid on both days.

Every report is recorded once, by report id: a copy seen again gives the same outcome. An amended
report supersedes the current result of its exam (a new result; the old one keeps
``superseded_by``); a cancelled report, and an amended one that is not eligible, revoke it. Each
report's outcome is kept, so a lookup can say "not eligible" where a catalogue item was reported
but not recognised.

Lookup reasons: ``found`` (results valid on as_of), ``expired`` (current results, none valid on
as_of), ``not eligible`` (the item is not in the catalogue, or its reports were not recognisable),
``none found``. Superseded and revoked results are never returned. Every lookup writes an audit
row: who, via what, when, the item, as of when, the reason and how many results, and whom. Whom is
the person id, never the ID number: the index holds the number already, so the audit adds no copy
of it. A number the index does not know is kept as its SHA-256, so that "was this number looked
up?" can still be answered from the audit; 18-digit numbers can be found from such a hash by
trying them all, so the audit table needs the same protection as the index.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, timedelta, timezone
from typing import Any, Literal, TypeVar

from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from sqlalchemy import JSON, CheckConstraint, Date, ForeignKey, Index, Integer, String, func, insert, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from hub.config import Config, RecognitionItem
from hub.envelope import Attachment, Centre, Coding, Observation, Report
from hub.store.db import Base, Database, UtcDateTime
from hub.store.identity import Conflict, Person, PersonIndex, unit_of_work

__all__ = [
    "CHINA_TZ",
    "RETEST_REASONS",
    "AuditEntry",
    "LookupReason",
    "LookupResult",
    "Override",
    "QcStatus",
    "RecognisedResult",
    "RecordOutcome",
    "RecordStatus",
    "Registry",
    "recognised_result_id",
    "recognition_day",
]

T = TypeVar("T")
CHINA_TZ = timezone(timedelta(hours=8), "Asia/Shanghai")
RecordStatus = Literal["recorded", "already recorded", "revoked", "not eligible"]
LookupReason = Literal["found", "expired", "not eligible", "none found"]
ResultState = Literal["current", "superseded", "revoked"]
# The re-test reasons the rules allow (a clinician who re-tests anyway records one), with their labels.
RETEST_REASONS: Mapping[str, str] = {
    "emergency": "急诊、急救",
    "condition-changed": "病情变化",
    "fast-changing-value": "检验指标变化快",
    "pre-surgery-or-transfusion": "手术或输血前",
    "forensic-assessment": "司法鉴定",
    "other": "其他",
}
# Renderings of the whole report (they carry its conclusion), left out of a recognised result.
_REPORT_RENDERINGS = ("application/pdf", "text/", "application/msword", "application/rtf", "application/vnd.")


class ResultRow(Base):
    __tablename__ = "recognised_results"
    __table_args__ = (Index("ix_recognised_results_lookup", "person_id", "item_code", "item_system"),)

    id: Mapped[str] = mapped_column(String(35), primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    item_system: Mapped[str] = mapped_column(String(255))
    item_code: Mapped[str] = mapped_column(String(64))
    item_display: Mapped[str] = mapped_column(String(200))
    centre: Mapped[str] = mapped_column(String(16))
    mark: Mapped[str] = mapped_column(String(32))
    observations: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    attachments: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    valid_from: Mapped[date] = mapped_column(Date)
    valid_until: Mapped[date] = mapped_column(Date)
    exam_id: Mapped[str] = mapped_column(String(64), index=True)
    source_report_id: Mapped[str] = mapped_column(String(64), unique=True)
    source_status: Mapped[str] = mapped_column(String(16))
    origin: Mapped[str] = mapped_column(String(64))
    performer_institution: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UtcDateTime)
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)
    state: Mapped[str] = mapped_column(String(12))
    superseded_by: Mapped[str | None] = mapped_column(String(35))
    revoked_by: Mapped[str | None] = mapped_column(String(64), index=True)  # the report that revoked it
    revoked_at: Mapped[datetime | None] = mapped_column(UtcDateTime)


class ReportOutcomeRow(Base):
    """What the registry made of each report it was given: the idempotency key, and why not."""

    __tablename__ = "recognition_reports"
    __table_args__ = (Index("ix_recognition_reports_lookup", "person_id", "item_code", "item_system"),)

    report_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    exam_id: Mapped[str] = mapped_column(String(64))
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"))
    item_system: Mapped[str | None] = mapped_column(String(255))
    item_code: Mapped[str | None] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    result_id: Mapped[str | None] = mapped_column(String(35))
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class QcRow(Base):
    __tablename__ = "recognition_qc"
    __table_args__ = (
        Index("ix_recognition_qc_institution_item", "institution", "item_code", "valid_until", unique=True),
    )

    id: Mapped[int] = mapped_column(primary_key=True)
    institution: Mapped[str] = mapped_column(String(64))
    item_code: Mapped[str] = mapped_column(String(64))
    valid_until: Mapped[date] = mapped_column(Date)
    source: Mapped[str] = mapped_column(String(8))  # "config" (synced from recognition.qc) or "api"
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class AuditRow(Base):
    __tablename__ = "recognition_lookups"

    id: Mapped[int] = mapped_column(primary_key=True)
    at: Mapped[datetime] = mapped_column(UtcDateTime, index=True)
    who: Mapped[str] = mapped_column(String(128))
    via: Mapped[str] = mapped_column(String(16))
    person_id: Mapped[int | None] = mapped_column(Integer, index=True)  # no foreign key: the audit outlives merges
    national_id_sha256: Mapped[str | None] = mapped_column(String(64))  # only for a number the index lacks
    item_system: Mapped[str] = mapped_column(String(255))
    item_code: Mapped[str] = mapped_column(String(64))
    as_of: Mapped[date] = mapped_column(Date)
    reason: Mapped[str] = mapped_column(String(16))
    results: Mapped[int] = mapped_column(Integer)


class OverrideRow(Base):
    __tablename__ = "recognition_overrides"
    __table_args__ = (CheckConstraint("reason IN ({})".format(", ".join(f"'{r}'" for r in RETEST_REASONS)), "reason"),)

    id: Mapped[int] = mapped_column(primary_key=True)
    person_id: Mapped[int] = mapped_column(ForeignKey("persons.id"), index=True)
    item_system: Mapped[str] = mapped_column(String(255))
    item_code: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str] = mapped_column(String(32))
    detail: Mapped[str | None] = mapped_column(String(1000))
    clinician: Mapped[str] = mapped_column(String(128))
    institution: Mapped[str] = mapped_column(String(64))
    at: Mapped[datetime] = mapped_column(UtcDateTime)
    overridden: Mapped[list[str]] = mapped_column(JSON)  # the results that were valid and re-tested anyway
    recorded_at: Mapped[datetime] = mapped_column(UtcDateTime)


class RecognisedResult(BaseModel):
    """A recognised result as members receive it on ``hub.recognition``, and as lookups return it."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    result_id: str
    state: ResultState
    person_id: int
    national_id: str = Field(repr=False)
    item: Coding
    centre: Centre
    mark: str
    observations: tuple[Observation, ...] = ()
    attachments: tuple[Attachment, ...] = ()
    valid_from: date
    valid_until: date
    exam_id: str
    source_report_id: str
    source_status: Literal["final", "amended"]
    origin: str
    performer_institution: str
    issued_at: AwareDatetime
    supersedes: tuple[str, ...] = ()  # results of the same exam this one replaced
    superseded_by: str | None = None
    revoked_at: AwareDatetime | None = None

    def encode(self) -> bytes:
        return self.__pydantic_serializer__.to_json(self)


@dataclass(frozen=True, slots=True)
class RecordOutcome:
    status: RecordStatus
    reason: str | None  # why not eligible: not final, cancelled, not in the catalogue, no national id, QC ...
    person_id: int
    result: RecognisedResult | None = None
    revoked: tuple[RecognisedResult, ...] = ()
    conflicts: tuple[Conflict, ...] = ()

    @property
    def broadcasts(self) -> tuple[RecognisedResult, ...]:
        """What members must hear of: the new (or still current) result, and every result revoked."""
        current = (self.result,) if self.result is not None and self.result.state == "current" else ()
        return current + self.revoked


@dataclass(frozen=True, slots=True)
class LookupResult:
    results: tuple[RecognisedResult, ...]
    reason: LookupReason
    detail: str | None = None  # for expired: the last day valid; for not eligible: why
    person: Person | None = None


@dataclass(frozen=True, slots=True)
class QcStatus:
    institution: str
    item: str
    valid_until: date
    source: str


@dataclass(frozen=True, slots=True)
class Override:
    id: int
    person_id: int
    item: tuple[str, str]
    reason: str
    detail: str | None
    clinician: str
    institution: str
    at: datetime
    overridden: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class AuditEntry:
    at: datetime
    who: str
    via: str
    person_id: int | None
    national_id_sha256: str | None = dataclasses.field(repr=False)
    item: tuple[str, str]
    as_of: date
    reason: str
    results: int


def recognised_result_id(report_id: str) -> str:
    return "rr-" + hashlib.sha256(report_id.encode()).hexdigest()[:32]


def recognition_day(when: date | datetime | None = None) -> date:
    """The calendar day in China Standard Time; today when ``when`` is None."""
    if when is None:
        when = datetime.now(UTC)
    if isinstance(when, datetime):
        if when.tzinfo is None:
            raise ValueError("give an aware datetime, or a date")
        return when.astimezone(CHINA_TZ).date()
    return when


class Registry:
    def __init__(self, database: Database, config: Config, *, persons: PersonIndex | None = None) -> None:
        self.database = database
        self.config = config
        self.persons = persons or PersonIndex(database)
        self.sync_qc()

    def _work(self, fn: Callable[[Session], T]) -> T:
        return unit_of_work(self.database, fn)

    def item(self, system: str, code: str) -> RecognitionItem | None:
        return self.config.recognition_item(code, system)

    # -- QC status

    def sync_qc(self) -> None:
        """Make the store's config-sourced QC passes those of ``recognition.qc``; API passes stay."""
        wanted = {(p.institution, p.item, p.valid_until) for p in self.config.recognition.qc}

        def sync(s: Session) -> None:
            held = {(r.institution, r.item_code, r.valid_until): r for r in s.scalars(select(QcRow))}
            for key, row in held.items():
                if row.source == "config" and key not in wanted:
                    s.delete(row)
            now = datetime.now(UTC)
            for institution, item, until in wanted - held.keys():
                s.add(
                    QcRow(institution=institution, item_code=item, valid_until=until, source="config", recorded_at=now)
                )

        self._work(sync)

    def record_qc_pass(self, institution: str, item: str, valid_until: date) -> None:
        """``institution`` has passed QC (EQA) for catalogue item ``item`` until ``valid_until``."""
        if self.config.institution(institution) is None:
            raise ValueError(f"{institution} is not an institution of {self.config.consortium.name}")
        if not any(i.code == item for i in self.config.recognition.items):
            raise ValueError(f"{item} is not in the recognition catalogue")

        def add(s: Session) -> None:
            key = (QcRow.institution == institution, QcRow.item_code == item, QcRow.valid_until == valid_until)
            if s.scalar(select(QcRow).where(*key)) is None:
                s.add(
                    QcRow(
                        institution=institution,
                        item_code=item,
                        valid_until=valid_until,
                        source="api",
                        recorded_at=datetime.now(UTC),
                    )
                )

        self._work(add)

    def qc_passes(self) -> list[QcStatus]:
        with self.database.session() as s:
            rows = s.scalars(select(QcRow).order_by(QcRow.institution, QcRow.item_code, QcRow.valid_until))
            return [QcStatus(r.institution, r.item_code, r.valid_until, r.source) for r in rows]

    def qc_valid_until(self, institution: str, item: str, *, session: Session | None = None) -> date | None:
        """The last day ``institution``'s QC for ``item`` is valid; None when it never passed."""
        query = select(func.max(QcRow.valid_until)).where(QcRow.institution == institution, QcRow.item_code == item)
        if session is not None:
            return session.scalar(query)
        with self.database.session() as s:
            return s.scalar(query)

    # -- recording

    def record(self, report: Report) -> RecordOutcome:
        return self._work(lambda s: self._record(s, report, datetime.now(UTC)))

    def outcome(self, report_id: str) -> RecordOutcome | None:
        """What the registry made of a report (its result, or why there is none); None before it has seen it."""
        with self.database.session() as s:
            seen = s.get(ReportOutcomeRow, report_id)
            return self._seen(s, seen, seen.status) if seen is not None else None  # type: ignore[arg-type]

    def _seen(self, s: Session, seen: ReportOutcomeRow, status: RecordStatus) -> RecordOutcome:
        kept = s.get(ResultRow, seen.result_id) if seen.result_id else None
        return RecordOutcome(
            status,
            seen.reason,
            seen.person_id,
            self._result(s, kept) if kept else None,
            self._revoked_by(s, seen.report_id),
        )

    def _record(self, s: Session, report: Report, now: datetime) -> RecordOutcome:
        seen = s.get(ReportOutcomeRow, report.report_id)
        if seen is not None:
            return self._seen(s, seen, "already recorded")
        resolution = self.persons.resolve(report.patient, report.origin, session=s)
        item = self.item(report.service.system or "", report.service.code)
        reason = self._ineligible(s, report, item)
        query = select(ResultRow).where(ResultRow.exam_id == report.exam_id, ResultRow.state == "current")
        previous = s.scalars(query).all()
        result: ResultRow | None = None
        status: RecordStatus = "not eligible"
        if reason is None:
            assert item is not None
            result = self._new_result(report, item, resolution.person_id, now)
            s.add(result)
            for old in previous:
                old.state, old.superseded_by = "superseded", result.id
            status = "recorded"
        elif report.status in ("amended", "cancelled") and previous:
            for old in previous:
                old.state, old.revoked_by, old.revoked_at = "revoked", report.report_id, now
            status = "revoked" if report.status == "cancelled" else status
        s.add(
            ReportOutcomeRow(
                report_id=report.report_id,
                exam_id=report.exam_id,
                person_id=resolution.person_id,
                item_system=item.system if item else None,
                item_code=item.code if item else None,
                status=status,
                reason=reason,
                result_id=result.id if result else None,
                recorded_at=now,
            )
        )
        s.flush()
        return RecordOutcome(
            status,
            reason,
            resolution.person_id,
            self._result(s, result) if result else None,
            self._revoked_by(s, report.report_id),
            resolution.conflicts,
        )

    def _ineligible(self, s: Session, report: Report, item: RecognitionItem | None) -> str | None:
        if report.status in ("preliminary", "cancelled"):
            return "not final" if report.status == "preliminary" else "cancelled"
        if item is None:
            return "not in the catalogue"
        if report.patient.national_id is None:
            return "no national id"
        centre = report.performer_institution or self.config.consortium.lead
        until = self.qc_valid_until(centre, item.code, session=s)
        if until is None:
            return "QC missing"
        return "QC lapsed" if until < recognition_day(report.issued_at) else None

    def _new_result(self, report: Report, item: RecognitionItem, person_id: int, now: datetime) -> ResultRow:
        valid_from = recognition_day(report.issued_at)
        attachments = [a for a in report.attachments if not a.media_type.lower().startswith(_REPORT_RENDERINGS)]
        return ResultRow(
            id=recognised_result_id(report.report_id),
            person_id=person_id,
            item_system=item.system,
            item_code=item.code,
            item_display=item.display,
            centre=report.centre,
            mark=item.mark or self.config.recognition.mark,
            observations=[o.model_dump(mode="json", exclude_none=True) for o in report.observations],
            attachments=[a.model_dump(mode="json", exclude_none=True) for a in attachments],
            valid_from=valid_from,
            valid_until=valid_from + timedelta(days=item.valid_days),
            exam_id=report.exam_id,
            source_report_id=report.report_id,
            source_status=report.status,
            origin=report.origin,
            performer_institution=report.performer_institution or self.config.consortium.lead,
            issued_at=report.issued_at,
            recorded_at=now,
            state="current",
        )

    def _revoked_by(self, s: Session, report_id: str) -> tuple[RecognisedResult, ...]:
        rows = s.scalars(select(ResultRow).where(ResultRow.revoked_by == report_id).order_by(ResultRow.id))
        return tuple(self._result(s, row) for row in rows)

    def _result(self, s: Session, row: ResultRow, person: Person | None = None) -> RecognisedResult:
        """``row`` as a RecognisedResult; a lookup gives its person, and leaves ``supersedes`` out."""
        supersedes: Sequence[str] = ()
        if person is None:  # recording: what members hear of says what it replaces
            person = self.persons.person(row.person_id, session=s, local_ids=False)
            supersedes = s.scalars(select(ResultRow.id).where(ResultRow.superseded_by == row.id)).all()
        assert person is not None and person.national_id is not None  # only such persons have results
        return RecognisedResult.model_validate(
            {
                "result_id": row.id,
                "state": row.state,
                "person_id": row.person_id,
                "national_id": person.national_id,
                "item": {"system": row.item_system, "code": row.item_code, "display": row.item_display},
                "centre": row.centre,
                "mark": row.mark,
                "observations": row.observations,
                "attachments": row.attachments,
                "valid_from": row.valid_from,
                "valid_until": row.valid_until,
                "exam_id": row.exam_id,
                "source_report_id": row.source_report_id,
                "source_status": row.source_status,
                "origin": row.origin,
                "performer_institution": row.performer_institution,
                "issued_at": row.issued_at,
                "supersedes": tuple(supersedes),
                "superseded_by": row.superseded_by,
                "revoked_at": row.revoked_at,
            }
        )

    # -- lookup

    def lookup(
        self,
        *,
        national_id: str | None = None,
        person_id: int | None = None,
        item: tuple[str, str],
        as_of: date | datetime | None = None,
        who: str,
        via: str = "api",
    ) -> LookupResult:
        """The results of ``item`` (system, code) valid on ``as_of`` (default today), or why there are none."""
        if (national_id is None) == (person_id is None):
            raise ValueError("look up by national_id or by person_id")
        day = recognition_day(as_of)
        with self.database.session() as s:
            if national_id is not None:
                person = self.persons.by_national_id(national_id, session=s, local_ids=False)
            else:
                assert person_id is not None
                person = self.persons.person(person_id, session=s, local_ids=False)
            found = self._find(s, person, item, day)
            audit = {
                "at": datetime.now(UTC),
                "who": who,
                "via": via,
                "person_id": person.id if person else None,
                "national_id_sha256": _sha256(national_id) if person is None else None,
                "item_system": item[0],
                "item_code": item[1],
                "as_of": day,
                "reason": found.reason,
                "results": len(found.results),
            }
            s.execute(insert(AuditRow), audit)  # a plain INSERT: the unit of work would cost a millisecond more
            return found

    def _find(self, s: Session, person: Person | None, item: tuple[str, str], day: date) -> LookupResult:
        system, code = item
        if self.item(system, code) is None:
            return LookupResult((), "not eligible", "not in the catalogue", person)
        if person is None:
            return LookupResult((), "none found", None, None)
        rows = self._current(s, person.id, system, code)
        valid = [r for r in rows if r.valid_from <= day <= r.valid_until]
        if valid:
            results = tuple(self._result(s, r, person) for r in sorted(valid, key=lambda r: r.issued_at))
            return LookupResult(results, "found", None, person)
        expired = [r.valid_until for r in rows if r.valid_until < day]
        if expired:
            return LookupResult((), "expired", f"valid until {max(expired).isoformat()}", person)
        refused = s.scalar(
            select(ReportOutcomeRow.reason)
            .where(
                ReportOutcomeRow.person_id == person.id,
                ReportOutcomeRow.item_code == code,
                ReportOutcomeRow.item_system == system,
                ReportOutcomeRow.status == "not eligible",
                ReportOutcomeRow.reason.not_in(("not final", "cancelled")),
            )
            .order_by(ReportOutcomeRow.recorded_at.desc())
            .limit(1)
        )
        if refused is not None:
            return LookupResult((), "not eligible", refused, person)
        return LookupResult((), "none found", None, person)

    def _current(self, s: Session, person_id: int, system: str, code: str) -> Sequence[ResultRow]:
        query = select(ResultRow).where(
            ResultRow.person_id == person_id,
            ResultRow.item_code == code,
            ResultRow.item_system == system,
            ResultRow.state == "current",
        )
        return s.scalars(query).all()

    def audit(self, *, person_id: int | None = None) -> list[AuditEntry]:
        """The lookup audit trail, oldest first."""
        with self.database.session() as s:
            query = select(AuditRow).order_by(AuditRow.id)
            if person_id is not None:
                query = query.where(AuditRow.person_id == person_id)
            return [
                AuditEntry(
                    r.at,
                    r.who,
                    r.via,
                    r.person_id,
                    r.national_id_sha256,
                    (r.item_system, r.item_code),
                    r.as_of,
                    r.reason,
                    r.results,
                )
                for r in s.scalars(query)
            ]

    # -- re-test overrides

    def override(
        self,
        *,
        national_id: str | None = None,
        person_id: int | None = None,
        item: tuple[str, str],
        reason: str,
        detail: str | None = None,
        clinician: str,
        institution: str,
        at: datetime | None = None,
    ) -> Override:
        """Record that ``clinician`` re-tests ``item`` anyway, for one of the ``RETEST_REASONS``."""
        if reason not in RETEST_REASONS:
            raise ValueError(f"re-test reason {reason!r} is not one of {', '.join(RETEST_REASONS)}")
        if reason == "other" and not (detail and detail.strip()):
            raise ValueError("a re-test for another reason needs the reason in detail")
        if self.item(*item) is None:
            raise ValueError(f"{item[0]}|{item[1]} is not in the recognition catalogue")
        if (national_id is None) == (person_id is None):
            raise ValueError("name the patient by national_id or by person_id")
        when = at or datetime.now(UTC)

        def add(s: Session) -> Override:
            if national_id is not None:
                person = self.persons.by_national_id(national_id, session=s)
            else:
                assert person_id is not None
                person = self.persons.person(person_id, session=s)
            if person is None:
                raise ValueError("the person index does not know that patient")
            day = recognition_day(when)
            rows = self._current(s, person.id, *item)
            overridden = [r.id for r in rows if r.valid_from <= day <= r.valid_until]
            row = OverrideRow(
                person_id=person.id,
                item_system=item[0],
                item_code=item[1],
                reason=reason,
                detail=detail,
                clinician=clinician,
                institution=institution,
                at=when,
                overridden=overridden,
                recorded_at=datetime.now(UTC),
            )
            s.add(row)
            s.flush()
            return _override(row)

        return self._work(add)

    def overrides(self, *, person_id: int | None = None) -> list[Override]:
        with self.database.session() as s:
            query = select(OverrideRow).order_by(OverrideRow.id)
            if person_id is not None:
                query = query.where(OverrideRow.person_id == person_id)
            return [_override(row) for row in s.scalars(query)]


def _sha256(national_id: str | None) -> str | None:
    return hashlib.sha256(national_id.encode()).hexdigest() if national_id else None


def _override(row: OverrideRow) -> Override:
    return Override(
        row.id,
        row.person_id,
        (row.item_system, row.item_code),
        row.reason,
        row.detail,
        row.clinician,
        row.institution,
        row.at,
        tuple(row.overridden),
    )
