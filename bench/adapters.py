"""Adapter figures against library baselines measured in the same run.

    python bench/adapters.py [--rounds N] [--seconds S]

Figures (issue 2):
- HL7 v2 read of a 16-segment ORU^R01: >= 3,000 msg/s on one core and >= 3x python-hl7's hl7.parse.
- FHIR read: >= 0.8x the bare fhir.resources R4B Bundle parse of the same input.
- DICOM header -> Exam: >= 0.8x bare pydicom.dcmread(stop_before_pixels=True).
- HL7 v2 write_report (ER7 writer): >= 1,000 reports/s and faster than the hl7apy build of the same report
  (write_report(strict=True)); both write the same bytes, which tests/test_hl7v2_write.py checks.
Also printed, for the choices they back: the ACK writer against an hl7apy-built ACK, and hl7apy's own parse.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import io
import json
import sys
from datetime import UTC, datetime
from pathlib import Path

# Run as a script, this folder is sys.path[0], and this file's name would shadow the adapters package.
BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

import hl7
import pydicom
from _timing import pin_to_one_core, rates, verdict
from fhir.resources.R4B.bundle import Bundle
from hl7apy.parser import parse_message

from adapters import dicom, fhir, hl7v2
from hub.envelope import Performer, Report

SAMPLES = Path(__file__).resolve().parents[1] / "examples" / "messages"


def _line(
    name: str, rate: float, baseline_name: str, baseline: float, goal: str, ok: bool | None, ratio: float | None = None
) -> None:
    ratio = rate / baseline if ratio is None else ratio
    print(f"  {name:<58} {rate:>9,.0f}/s   {baseline_name:<34} {baseline:>9,.0f}/s   "
          f"{ratio:>5.2f}x   {goal:<20} {'' if ok is None else verdict(ok)}")  # fmt: skip


def bench_hl7v2(rounds: int, seconds: float) -> None:
    raw = (SAMPLES / "hl7v2" / "lab-cbc-gb18030.hl7").read_bytes()
    segments = len([s for s in raw.replace(b"\n", b"\r").split(b"\r") if s.strip()])
    text = raw.decode("gb18030")
    er7 = text.replace("\n", "\r")
    got = rates(
        {
            "ours": lambda: hl7v2.read(raw),
            "python-hl7": lambda: hl7.parse(raw.decode("gb18030")),
        },
        rounds=rounds,
        seconds=seconds,
    )
    print(f"HL7 v2 read, {segments}-segment ORU^R01 in GB18030 (bytes in, Exam out; baseline decodes too)")
    ratio = got.ratio("ours", "python-hl7")
    ok = got["ours"] >= 3000 and ratio >= 3
    _line("adapters.hl7v2.read", got["ours"], "hl7.parse", got["python-hl7"], ">=3000/s and >=3x", ok, ratio)
    slow = rates(
        {"hl7apy": lambda: parse_message(er7, find_groups=True), "strict": lambda: hl7v2.read(raw, strict=True)},
        rounds=1,
        seconds=seconds,
    )
    _line("hl7apy parse_message (find_groups)", slow["hl7apy"], "hl7.parse", got["python-hl7"], "reference", None)
    _line("adapters.hl7v2.read(strict=True)", slow["strict"], "hl7.parse", got["python-hl7"], "reference", None)

    exam = hl7v2.read(raw)[0]
    report = Report.answering(
        exam, status="final", issued_at=datetime.now(UTC), conclusion="血象提示感染，请结合临床",
        findings="白细胞显著升高，中性粒细胞比例升高\n淋巴细胞比例降低",
        performer=Performer(name="李建国"), performer_institution="12330112470101234B",
        observations=exam.observations, critical=True, critical_items=("WBC",),
    )  # fmt: skip
    build = rates(
        {
            "ack": lambda: hl7v2.ack(raw, "AA"),
            "hl7apy ack": lambda: _hl7apy_ack(er7),
            "report": lambda: hl7v2.write_report(report, charset="gb18030"),
            "hl7apy report": lambda: hl7v2.write_report(report, charset="gb18030", strict=True),
        },
        rounds=rounds,
        seconds=seconds,
    )
    written = hl7v2.write_report(report, charset="gb18030")
    assert written == hl7v2.write_report(report, charset="gb18030", strict=True)  # the same report, byte for byte
    segments = written.count(b"\r")
    print(f"HL7 v2 writing (report: {segments}-segment ORU^R01 in GB 18030)")
    _line("adapters.hl7v2.ack (ER7 writer)", build["ack"], "ACK built with hl7apy", build["hl7apy ack"],
          "ACK: ours faster", build["ack"] > build["hl7apy ack"])  # fmt: skip
    ratio = build.ratio("report", "hl7apy report")
    _line("adapters.hl7v2.write_report (ER7 writer)", build["report"], "write_report(strict=True), hl7apy",
          build["hl7apy report"], ">=1000/s and faster", build["report"] >= 1000 and ratio > 1, ratio)  # fmt: skip


def _hl7apy_ack(er7: str) -> bytes:
    from hl7apy.core import Message

    incoming = parse_message(er7.split("\r", 1)[0] + "\r")
    ack = Message("ACK", version="2.5.1")
    ack.msh.msh_3 = incoming.msh.msh_5.to_er7()
    ack.msh.msh_4 = incoming.msh.msh_6.to_er7()
    ack.msh.msh_5 = incoming.msh.msh_3.to_er7()
    ack.msh.msh_6 = incoming.msh.msh_4.to_er7()
    ack.msh.msh_9 = "ACK^R01^ACK"
    ack.msh.msh_10 = "ACK" + incoming.msh.msh_10.to_er7()
    ack.msh.msh_11 = "P"
    ack.msa.msa_1 = "AA"
    ack.msa.msa_2 = incoming.msh.msh_10.to_er7()
    return str(ack.to_er7()).encode("utf-8")


def bench_fhir(rounds: int, seconds: float) -> None:
    print("FHIR read (bytes in, Exams out) against the bare R4B Bundle parse of the same bytes")
    for name in ("ecg-message-bundle.json", "lab-panel-transaction.json"):
        raw = (SAMPLES / "fhir" / name).read_bytes()
        got = rates(
            {
                "ours": lambda raw=raw: fhir.read(raw),
                "json": lambda raw=raw: Bundle.model_validate_json(raw),
                "dict": lambda raw=raw: Bundle.model_validate(json.loads(raw)),
            },
            rounds=rounds,
            seconds=seconds,
        )
        ratio = got.ratio("ours", "json")
        _line(f"adapters.fhir.read {name} ({len(raw) // 1024} KiB)", got["ours"], "R4B Bundle.model_validate_json",
              got["json"], ">=0.8x", ratio >= 0.8, ratio)  # fmt: skip
        _line("  (R4B Bundle.model_validate(json.loads))", got["dict"], "R4B Bundle.model_validate_json", got["json"],
              "reference", None)  # fmt: skip


def bench_dicom(rounds: int, seconds: float) -> None:
    print("DICOM header -> Exam (bytes in) against bare dcmread(stop_before_pixels=True) of the same bytes")
    for name in ("ct-chest-gb18030.dcm", "ecg-12lead.dcm"):
        raw = (SAMPLES / "dicom" / name).read_bytes()
        got = rates(
            {
                "ours": lambda raw=raw: dicom.read(raw),
                "pydicom": lambda raw=raw: pydicom.dcmread(io.BytesIO(raw), stop_before_pixels=True),
            },
            rounds=rounds,
            seconds=seconds,
        )
        ratio = got.ratio("ours", "pydicom")
        _line(f"adapters.dicom.read {name} ({len(raw) // 1024} KiB)", got["ours"], "pydicom.dcmread", got["pydicom"],
              ">=0.8x", ratio >= 0.8, ratio)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--seconds", type=float, default=0.3, help="length of one timed round per candidate")
    args = parser.parse_args()
    print(f"bench/adapters.py: Python {sys.version.split()[0]}, {pin_to_one_core()}, {args.rounds} interleaved "
          f"rounds x {args.seconds}s; rates are medians, ratios the median of per-round ratios")  # fmt: skip
    bench_hl7v2(args.rounds, args.seconds)
    bench_fhir(args.rounds, args.seconds)
    bench_dicom(args.rounds, args.seconds)


if __name__ == "__main__":
    main()
