"""Whatever the bytes, read returns exams or raises an AdapterError, and ack returns an ACK."""

from __future__ import annotations

from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import hl7v2
from hub.envelope import Exam
from hub.errors import AdapterError

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages" / "hl7v2"
RAW = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7"))]
GOOD = [p.read_bytes() for p in sorted(SAMPLES.glob("*.hl7")) if not p.name.startswith("bad-")]
INTERESTING = [
    b"|",
    b"^",
    b"~",
    b"\\",
    b"&",
    b"\r",
    b"\n",
    b"\xff",
    b"\x81",
    b"\\X",
    b"\\.br\\",
    b"MSH|",
    b"OBR|",
    b"ORC|",
]


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    """A good sample broken the way real senders break messages."""
    raw = draw(st.sampled_from(GOOD))
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(["truncate", "flip", "delete field", "delete segment", "insert", "swap"]))
        if not raw:
            break
        at = draw(st.integers(0, len(raw) - 1))
        if kind == "truncate":
            raw = raw[:at]
        elif kind == "flip":
            raw = raw[:at] + bytes([raw[at] ^ draw(st.integers(1, 255))]) + raw[at + 1 :]
        elif kind == "delete field":
            start = raw.rfind(b"|", 0, at)
            end = raw.find(b"|", at)
            if start != -1 and end != -1:
                raw = raw[:start] + raw[end:]
        elif kind == "delete segment":
            segments = raw.replace(b"\r\n", b"\r").replace(b"\n", b"\r").split(b"\r")
            del segments[draw(st.integers(0, len(segments) - 1))]
            raw = b"\r".join(segments)
        elif kind == "insert":
            raw = raw[:at] + draw(st.sampled_from(INTERESTING)) + raw[at:]
        else:
            segments = raw.split(b"\r")
            i, j = draw(st.integers(0, len(segments) - 1)), draw(st.integers(0, len(segments) - 1))
            segments[i], segments[j] = segments[j], segments[i]
            raw = b"\r".join(segments)
    return raw


def read_or_adapter_error(raw: bytes, **options: object) -> None:
    try:
        exams = hl7v2.read(raw, **options)  # type: ignore[arg-type]
    except AdapterError as exc:
        assert exc.problems
        return
    assert exams
    assert all(isinstance(exam, Exam) for exam in exams)
    for exam in exams:
        assert Exam.decode(exam.encode()) == exam


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=600))
def test_random_bytes(raw: bytes) -> None:
    read_or_adapter_error(raw)
    read_or_adapter_error(b"MSH|^~\\&|" + raw)


@settings(max_examples=600, suppress_health_check=[HealthCheck.too_slow])
@given(mutated(), st.sampled_from([None, "GBK", "UTF-8"]))
def test_mutated_samples(raw: bytes, charset: str | None) -> None:
    read_or_adapter_error(raw, charset=charset)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(mutated())
def test_mutated_samples_in_strict_mode(raw: bytes) -> None:
    read_or_adapter_error(raw, strict=True)


@settings(max_examples=400, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.one_of(st.binary(max_size=400), mutated(), st.sampled_from(RAW)),
    st.sampled_from(["AA", "AE", "AR"]),
    st.one_of(
        st.none(), st.text(max_size=40), st.builds(AdapterError, st.text(max_size=40), location=st.text(max_size=12))
    ),
    st.sampled_from([None, "GB18030", "nonsense"]),
)
def test_ack_never_raises(raw: bytes, code: str, error: AdapterError | str | None, charset: str | None) -> None:
    reply = hl7v2.ack(raw, code, error, charset=charset)  # type: ignore[arg-type]
    assert reply.startswith(b"MSH")
    assert reply.endswith(b"\r")
    assert b"\rMSA" in reply
