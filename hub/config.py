"""The consortium config: who the members are, how they connect, what each centre promises.

    config = load_config("examples/consortium.toml")
    config.institution_by_ae_title("YQ_CT01").code
    config.sla("ecg", "stat")            # timedelta(minutes=10)

A TOML file validated with pydantic. Every error is a ConfigError that names
the file, the key path (``institutions[2].egress``) and what is wrong.
"""

from __future__ import annotations

import codecs
import hashlib
import hmac
import os
import tomllib
from datetime import date, timedelta
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from hub.envelope import Centre, Priority
from hub.errors import ConfigError, DecodeError
from hub.ids import valid_uscc

__all__ = [
    "DEFAULT_SLA_MINUTES",
    "AlertSettings",
    "CentreConfig",
    "Config",
    "DicomGateway",
    "Egress",
    "FhirGateway",
    "HubSettings",
    "Institution",
    "MllpGateway",
    "QcPass",
    "RecognitionItem",
    "RecognitionSettings",
    "default_data_dir",
    "load_config",
    "parse_config",
]

# Turnaround targets when the config names none (minutes): the chest-pain ECG within 10.
DEFAULT_SLA_MINUTES: dict[Centre, dict[Priority, int]] = {
    "ecg": {"stat": 10, "urgent": 15, "routine": 30},
    "imaging": {"stat": 30, "urgent": 45, "routine": 60},
    "lab": {"stat": 30, "urgent": 60, "routine": 120},
    "pathology": {"stat": 60, "urgent": 1440, "routine": 4320},
}

AETitle = Annotated[str, Field(min_length=1, max_length=16, pattern=r"^[ -~]*[!-~][ -~]*$")]
Port = Annotated[int, Field(ge=0, le=65535)]


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class Egress(_Section):
    """Where a member's reports go: ``mllp://host:port``, ``fhir+http(s)://base`` or ``pull``."""

    kind: Literal["mllp", "fhir", "pull"]
    url: str | None = None  # mllp://host:port or the FHIR base as http(s)://

    @classmethod
    def parse(cls, value: str) -> Egress:
        if value == "pull":
            return cls(kind="pull")
        parts = urlsplit(value)
        if parts.scheme == "mllp":
            if not parts.hostname or parts.port is None:
                raise ValueError(f"an MLLP endpoint needs a host and a port: mllp://host:port, not {value!r}")
            return cls(kind="mllp", url=value)
        if parts.scheme in ("fhir+http", "fhir+https"):
            if not parts.hostname:
                raise ValueError(f"a FHIR endpoint needs a host: fhir+https://host/base, not {value!r}")
            return cls(kind="fhir", url=value.removeprefix("fhir+"))
        raise ValueError(f"egress is mllp://host:port, fhir+http(s)://base or pull, not {value!r}")

    @property
    def host_port(self) -> tuple[str, int]:
        """The MLLP endpoint's host and port."""
        parts = urlsplit(self.url or "")
        return parts.hostname or "127.0.0.1", parts.port or 0

    def __str__(self) -> str:
        return "pull" if self.kind == "pull" else (f"fhir+{self.url}" if self.kind == "fhir" else str(self.url))


class Institution(_Section):
    code: str  # unified social credit code (GB 32100), as MSH-4 and FHIR identifiers carry it
    name: str = Field(min_length=1)
    kind: Literal["lead", "hospital", "township", "community"] = "township"
    ae_titles: tuple[AETitle, ...] = ()
    hl7_facilities: tuple[str, ...] = ()  # further MSH-4 names this member sends under, beside its code
    broker_user: str | None = None  # when the member publishes with a broker login of its own
    charset: str | None = None  # the fallback when a message names no charset (MSH-18, SpecificCharacterSet)
    fhir_token: str | None = Field(default=None, repr=False)
    fhir_token_env: str | None = None  # or the name of an environment variable holding it
    egress: Egress = Egress(kind="pull")
    egress_connections: Annotated[int, Field(ge=1, le=16)] = (
        1  # MLLP/FHIR connections for its reports, if it takes several
    )

    @field_validator("code")
    @classmethod
    def _code_is_a_uscc(cls, value: str) -> str:
        if not valid_uscc(value):
            raise ValueError(f"{value!r} is not a valid unified social credit code (GB 32100 check character)")
        return value

    @field_validator("charset")
    @classmethod
    def _charset_is_known(cls, value: str | None) -> str | None:
        problem = _charset_problem(value) if value is not None else None
        if problem is not None:
            raise ValueError(problem)
        return value

    @field_validator("egress", mode="before")
    @classmethod
    def _egress_from_text(cls, value: object) -> object:
        return Egress.parse(value) if isinstance(value, str) else value

    @field_validator("ae_titles")
    @classmethod
    def _ae_titles_trimmed(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(title.strip() for title in value)

    def token(self) -> str | None:
        """The member's FHIR bearer token, from the config or its environment variable."""
        if self.fhir_token_env:
            return os.environ.get(self.fhir_token_env) or None
        return self.fhir_token


class CentreConfig(_Section):
    name: str | None = None
    sla_minutes: dict[Priority, Annotated[int, Field(gt=0)]] = {}


class MllpGateway(_Section):
    host: str = "127.0.0.1"
    port: Port = 2575
    max_frame_bytes: Annotated[int, Field(gt=0)] = 16 * 1024 * 1024
    idle_timeout: Annotated[float, Field(gt=0)] = 300.0
    tls_cert: Path | None = None
    tls_key: Path | None = None

    @model_validator(mode="after")
    def _tls_pair(self) -> MllpGateway:
        if (self.tls_cert is None) != (self.tls_key is None):
            raise ValueError("TLS needs both tls_cert and tls_key")
        return self


class DicomGateway(_Section):
    host: str = "127.0.0.1"
    port: Port = 11112
    ae_title: AETitle = "CONSORTIUM_HUB"
    check_called_ae: bool = False  # refuse associations addressed to another AE title (Orthanc: DicomCheckCalledAet)
    study_stable_seconds: Annotated[float, Field(gt=0)] = 10.0
    # More at once are refused (A-ASSOCIATE-RJ rejected-transient, local limit exceeded); the sender retries.
    # Each holds its instance in flight in memory, so this bounds the gateway's memory too.
    max_associations: Annotated[int, Field(gt=0)] = 10
    # A larger instance is answered 0xA700 (out of resources) and not held: with max_associations, the bound.
    max_instance_mib: Annotated[int, Field(gt=0)] = 2048


class FhirGateway(_Section):
    host: str = "127.0.0.1"
    port: Port = 8080
    max_body_bytes: Annotated[int, Field(gt=0)] = 32 * 1024 * 1024
    body_timeout: Annotated[float, Field(gt=0)] = 60.0  # seconds a request's body may take to arrive


class AlertSettings(_Section):
    """Critical values (危急值) and SLA breaches: who must acknowledge, and when it escalates."""

    escalate_after_minutes: Annotated[int, Field(gt=0)] = 15  # unacknowledged this long: escalate
    escalate_to: str | None = None  # an institution code; default the lead hospital


class RecognitionItem(_Section):
    """One item of the mutual-recognition catalogue (检查检验结果互认项目)."""

    code: str = Field(min_length=1)
    system: str = Field(min_length=1)  # as the envelope carries it: http://loinc.org, or a local system
    display: str = Field(min_length=1)
    centre: Centre
    valid_days: Annotated[int, Field(gt=0)]
    mark: str | None = None  # printed on the result, e.g. 浙HR; default recognition.mark


class QcPass(_Section):
    """An institution has passed quality control (EQA) for an item, until a date."""

    institution: str
    item: str  # a catalogue item's code
    valid_until: date


class RecognitionSettings(_Section):
    mark: str = "HR"
    items: tuple[RecognitionItem, ...] = ()
    qc: tuple[QcPass, ...] = ()


class HubSettings(_Section):
    # Blobs and (later) the ledger. Relative paths start at the config file; unset, $HUB_DATA_DIR,
    # else $XDG_DATA_HOME/consortium-hub, else ~/.local/share/consortium-hub.
    data_dir: Path | None = None
    broker: str | None = None  # the CLI's --broker and $HUB_BROKER_URL come first
    database: str | None = None  # SQLAlchemy URL of the ledger and registry; default sqlite in data_dir
    fsync: bool = True  # blobs reach the disk before a sender hears success
    events: bool = True  # publish ledger events (hub.events)


class Gateways(_Section):
    mllp: MllpGateway | None = None
    dicom: DicomGateway | None = None
    fhir: FhirGateway | None = None


class Consortium(_Section):
    name: str = Field(min_length=1)
    lead: str  # the lead hospital's institution code


class Config(_Section):
    consortium: Consortium
    hub: HubSettings = HubSettings()
    gateways: Gateways = Gateways()
    centres: dict[Centre, CentreConfig] = {}
    institutions: tuple[Institution, ...] = Field(min_length=1)
    routing: dict[str, Centre] = {}  # order code (OBR-4.1, ServiceRequest.code) -> centre
    alerts: AlertSettings = AlertSettings()
    recognition: RecognitionSettings = RecognitionSettings()

    @model_validator(mode="after")
    def _consistent(self) -> Config:
        codes = [i.code for i in self.institutions]
        for n, code in enumerate(codes):
            if code in codes[:n]:
                raise ValueError(f"institution {code} appears twice (institutions[{n}])")
        facilities = {code: n for n, code in enumerate(codes)}  # an MSH-4 value -> the institution it names
        for n, institution in enumerate(self.institutions):
            for alias in institution.hl7_facilities:
                owner = facilities.setdefault(alias, n)
                if owner != n:
                    raise ValueError(
                        f"institutions[{n}].hl7_facilities {alias!r} already names {codes[owner]}"
                        f" (institutions[{owner}]); each MSH-4 value must name one institution"
                    )
        if self.consortium.lead not in codes:
            raise ValueError(f"consortium.lead {self.consortium.lead} is not among the institutions")
        seen: dict[str, str] = {}
        for institution in self.institutions:
            for title in institution.ae_titles:
                if title in seen:
                    raise ValueError(f"AE title {title!r} belongs to both {seen[title]} and {institution.code}")
                seen[title] = institution.code
        if self.alerts.escalate_to is not None and self.alerts.escalate_to not in codes:
            raise ValueError(f"alerts.escalate_to {self.alerts.escalate_to} is not among the institutions")
        items = {item.code for item in self.recognition.items}
        for n, passed in enumerate(self.recognition.qc):
            if passed.institution not in codes:
                raise ValueError(f"recognition.qc[{n}].institution {passed.institution} is not among the institutions")
            if passed.item not in items:
                raise ValueError(f"recognition.qc[{n}].item {passed.item} is not in recognition.items")
        tokens = [t for t in (i.token() for i in self.institutions) if t]
        if len(tokens) != len(set(tokens)):
            raise ValueError("two institutions share a FHIR token; each member needs its own")
        return self

    @property
    def data_dir(self) -> Path:
        return self.hub.data_dir or default_data_dir()  # parse_config has made it absolute

    @property
    def database_url(self) -> str:
        """The store's SQLAlchemy URL: hub.database, else a SQLite file in the data directory."""
        return self.hub.database or f"sqlite:///{self.data_dir / 'hub.db'}"

    def recognition_item(self, code: str, system: str | None = None) -> RecognitionItem | None:
        return next((i for i in self.recognition.items if i.code == code and system in (None, i.system)), None)

    # -- lookups the gateways use

    @property
    def members(self) -> tuple[Institution, ...]:
        """Every institution but the lead hospital."""
        return tuple(i for i in self.institutions if i.code != self.consortium.lead)

    def institution(self, code: str) -> Institution | None:
        return next((i for i in self.institutions if i.code == code), None)

    def institution_by_ae_title(self, title: str) -> Institution | None:
        title = title.strip()
        return next((i for i in self.institutions if title in i.ae_titles), None)

    def institution_by_facility(self, facility: str) -> Institution | None:
        """The member an HL7 MSH-4 names, by its code or one of its hl7_facilities."""
        return next((i for i in self.institutions if facility == i.code or facility in i.hl7_facilities), None)

    def institution_by_token(self, token: str) -> Institution | None:
        """The member whose FHIR token this is, compared with every member's in constant time."""
        # Digests are compared, so that neither the tokens' lengths nor where they differ leak.
        given = hashlib.sha256(token.encode()).digest()
        matches = [
            institution
            for institution in self.institutions
            if (expected := institution.token())
            and hmac.compare_digest(given, hashlib.sha256(expected.encode()).digest())
        ]
        return matches[0] if token and matches else None

    def sla(self, centre: Centre, priority: Priority) -> timedelta:
        minutes = self.centres.get(centre, CentreConfig()).sla_minutes.get(priority)
        return timedelta(minutes=minutes or DEFAULT_SLA_MINUTES[centre][priority])


def parse_config(text: str, *, source: str = "<config>", base: Path | None = None) -> Config:
    """A Config from TOML text; ``base`` is where a relative data_dir is resolved from."""
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from exc
    try:
        config = Config.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(
            "\n".join(f"{source}: {_where(e['loc'])}: {_message(e['msg'])}" for e in exc.errors())
        ) from exc
    data_dir = config.hub.data_dir or default_data_dir()
    if not data_dir.is_absolute():
        data_dir = ((base or Path.cwd()) / data_dir).resolve()
    return config.model_copy(update={"hub": config.hub.model_copy(update={"data_dir": data_dir})})


def default_data_dir() -> Path:
    if os.environ.get("HUB_DATA_DIR"):
        return Path(os.environ["HUB_DATA_DIR"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    return (Path(xdg).expanduser() if xdg else Path.home() / ".local" / "share") / "consortium-hub"


def load_config(path: str | os.PathLike[str]) -> Config:
    file = Path(path)
    try:
        text = file.read_text("utf-8")
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read the config: {exc.strerror}") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{file}: the config must be UTF-8 ({exc.reason} at byte {exc.start})") from exc
    return parse_config(text, source=str(file), base=file.resolve().parent)


def _charset_problem(charset: str) -> str | None:
    """Why the HL7 v2 reader, the DICOM reader or the report writer cannot use ``charset``; None if all can."""
    from adapters.dicom._text import resolve_fallback_charset  # noqa: PLC0415  (lazy: it brings pydicom)
    from adapters.hl7v2._charset import codec_for  # noqa: PLC0415

    try:
        resolve_fallback_charset(charset)
        codecs.lookup(charset)  # hub.gateways.egress picks the reports' charset with it
        others_take_it = True
    except (DecodeError, LookupError):
        others_take_it = False
    codec = codec_for(charset)
    if codec is not None and others_take_it:
        return None
    hint = f"; write {codec.upper()}" if codec else ""
    return (
        f"unknown character set {charset!r}: the HL7 v2 and DICOM readers and the report writer all take"
        f" GB18030, GBK, GB2312, UTF-8, ASCII, ISO-8859-1 or BIG5{hint}"
    )


def _message(text: str) -> str:
    return text.removeprefix("Value error, ")


def _where(loc: tuple[Any, ...]) -> str:
    path = ""
    for part in loc:
        if isinstance(part, int):
            path += f"[{part}]"
        elif part not in ("function-after", "function-before") and not str(part).startswith("function-"):
            path += f".{part}" if path else str(part)
    return path or "(top level)"
