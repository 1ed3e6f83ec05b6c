"""The `hub` command: read, schemas, demo (on both brokers); and format detection behind them."""

import json
import logging
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from benches import run_bench
from brokers import AMQP_URL, require_rabbitmq
from pydicom.charset import convert_encodings

import adapters
from hub.cli import _logging, main
from hub.errors import DecodeError

REPO = Path(__file__).resolve().parents[1]
MESSAGES = REPO / "examples" / "messages"


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7", "hl7v2"),
        (MESSAGES / "fhir" / "ecg-message-bundle.json", "fhir"),
        (MESSAGES / "dicom" / "ct-chest-gb18030.dcm", "dicom"),
    ],
)
def test_detect_format_of_samples(path: Path, expected: str) -> None:
    assert adapters.detect_format(path.read_bytes()) == expected


def test_detect_format_handles_bom_and_leading_whitespace() -> None:
    assert adapters.detect_format(b"\xef\xbb\xbfMSH|^~\\&|") == "hl7v2"
    assert adapters.detect_format(b"\r\n  {}") == "fhir"
    assert adapters.detect_format(b"MSH") is None
    assert adapters.detect_format("患者".encode()) is None


def test_read_refuses_unknown_formats_with_a_located_error() -> None:
    with pytest.raises(DecodeError) as caught:
        adapters.read(b"PID|1||123")
    assert caught.value.location == "$"


def test_hub_read_prints_envelopes(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["read", str(MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7")]) == 0
    exam = json.loads(capsys.readouterr().out)
    assert exam["centre"] == "lab"
    assert exam["source"]["charset"] == "gb18030"


def test_hub_read_reports_problems_and_fails(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    bad = tmp_path / "adt.hl7"
    bad.write_bytes(b"MSH|^~\\&|HIS|QSH|HUB|LEAD|20261122083000||ADT^A01|M1|P|2.5.1\rPID|1||123\r")
    assert main(["read", str(bad)]) == 1
    err = capsys.readouterr().err
    assert "UnsupportedMessage" in err
    assert "MSH-9" in err


def test_hub_schemas_check_passes_on_the_repo_and_fails_on_drift(tmp_path: Path) -> None:
    assert main(["schemas", "check", "--dir", str(REPO / "schemas")]) == 0
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 1
    assert main(["schemas", "write", "--dir", str(tmp_path)]) == 0
    assert main(["schemas", "check", "--dir", str(tmp_path)]) == 0


def test_the_logging_set_up_keeps_pydicoms_warnings_which_quote_input_out(caplog: pytest.LogCaptureFixture) -> None:
    pydicom_logger = logging.getLogger("pydicom")
    level = pydicom_logger.level
    try:
        with warnings.catch_warnings(record=True) as shown:
            _logging()
            assert convert_encodings(["GE MEDICAL SYSTEMS"]) == [
                "iso8859"
            ]  # a corrupt (0008,0005), as pydicom reads it
        assert pydicom_logger.getEffectiveLevel() == logging.ERROR
        assert "GE MEDICAL SYSTEMS" not in caplog.text and shown == []
    finally:
        pydicom_logger.setLevel(level)


def run_demo(*args: str, broker: str = "memory://") -> subprocess.CompletedProcess[str]:
    env = os.environ | {"HUB_BROKER_URL": broker}
    return subprocess.run(
        [sys.executable, "-m", "hub", "demo", *args], capture_output=True, text=True, check=False, env=env, timeout=300
    )


@pytest.mark.parametrize("broker", ["memory", "rabbitmq"])
def test_hub_demo_delivers_every_good_sample_and_refuses_every_bad_one(broker: str) -> None:
    if broker == "rabbitmq":
        require_rabbitmq()
    result = run_demo("--messages", str(MESSAGES), broker="memory://" if broker == "memory" else AMQP_URL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert ("RabbitMQ at" if broker == "rabbitmq" else "in-process broker") in result.stdout
    samples = [p for p in MESSAGES.rglob("*") if p.is_file() and p.suffix not in {".md", ".toml", ".py"}]
    bad = [p for p in samples if p.name.startswith("bad-")]
    assert f"{len(samples)} samples: {len(samples) - len(bad)} accepted, {len(bad)} rejected" in result.stdout
    assert " 0 unexpected" in result.stdout
    assert "!! " not in result.stdout
    # Each good sample's report reached its member over its own egress: MLLP AA, FHIR 201, or a pull.
    assert "AA in" in result.stdout and "HTTP 201 in" in result.stdout and "pull" in result.stdout
    assert "危急值" in result.stdout  # the CBC's WBC of 35.2 is a critical value
    # Issue 5's end of the demo: the registry, a lookup that saves a re-test, one that has expired,
    # the critical value's alert acknowledged at its origin, and the SLA table.
    assert "血常规: [浙HR] recognised, valid" in result.stdout
    assert "胸部CT平扫: not recognised: QC lapsed" in result.stdout
    assert "血常规: found, 1 recognised result(s)" in result.stdout
    assert "-> recognised: no re-test, the result is reused" in result.stdout
    assert "血常规: expired (valid until" in result.stdout and "-> the patient is re-tested" in result.stdout
    assert "to 於潜镇中心卫生院: acknowledged" in result.stdout
    assert "(hub sla report)" in result.stdout and "昌化镇卫生院" in result.stdout
    if broker == "rabbitmq":
        listed = subprocess.run(
            ["rabbitmqctl", "-q", "list_queues", "name"], capture_output=True, text=True, check=True
        ).stdout
        assert "demo-" not in listed, "the demo's namespace is deleted afterwards"


def test_hub_demo_says_when_no_rabbitmq_is_reachable() -> None:
    result = run_demo("--messages", str(MESSAGES / "hl7v2"), broker="amqp://guest:guest@127.0.0.1:1/%2F")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "in-process broker: no RabbitMQ reachable at 127.0.0.1:1" in result.stdout


def test_hub_demo_output_has_no_patient_names_or_ids() -> None:
    result = run_demo("--messages", str(MESSAGES))
    exams = [e for p in MESSAGES.glob("hl7v2/[!b]*.hl7") for e in adapters.read(p.read_bytes(), charset="GBK")]
    assert exams
    for exam in exams:
        if exam.patient.name:
            assert exam.patient.name not in result.stdout + result.stderr
        if exam.patient.national_id:
            assert exam.patient.national_id not in result.stdout + result.stderr


def test_demo_flags_a_bad_sample_that_is_accepted(tmp_path: Path) -> None:
    good = MESSAGES / "hl7v2" / "lab-cbc-gb18030.hl7"
    (tmp_path / "bad-not-really.hl7").write_bytes(good.read_bytes())
    result = run_demo("--messages", str(tmp_path))
    assert result.returncode == 1
    assert "!! bad-not-really.hl7" in result.stdout


def test_bench_script_runs(tmp_path: Path) -> None:
    # Not a timing test: the bench must keep working as the adapters change.
    result = run_bench("adapters.py", "--rounds", "1", "--seconds", "0.01", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    for figure in ("adapters.hl7v2.read", "adapters.fhir.read", "adapters.dicom.read", "hl7.parse", "dcmread"):
        assert figure in result.stdout
