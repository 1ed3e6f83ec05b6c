"""Lab reviewer: flags out-of-range values and critical values (危急值), then signs the report.

    hub worker lab --config examples/consortium.toml --handler examples/workers/lab.py:review_lab

A value is compared with its reference range ("3.5-9.5", "<5", ">60") where the
sender gave none or only "N"; critical limits are the lead hospital's list by
LOINC code. The report is marked critical with the items named, so the member
and the ledger see it as a critical value.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime

from hub.envelope import Exam, Observation, Performer, Report

__all__ = ["CRITICAL_LIMITS", "flag_of", "review_lab"]

LEAD_CENTRE = "12330112470101234B"  # 临安区人民医院检验中心
# LOINC code -> (critical low, critical high), in the units the consortium reports.
CRITICAL_LIMITS: dict[str, tuple[float | None, float | None]] = {
    "6690-2": (1.0, 30.0),  # 白细胞 10^9/L
    "718-7": (50.0, None),  # 血红蛋白 g/L
    "777-3": (20.0, 1000.0),  # 血小板 10^9/L
    "2823-3": (2.5, 6.5),  # 钾 mmol/L
    "2951-2": (120.0, 160.0),  # 钠 mmol/L
    "2345-7": (2.5, 25.0),  # 葡萄糖 mmol/L
    "14682-9": (None, 707.0),  # 肌酐 µmol/L
}
_RANGE = re.compile(r"^\s*([<>]=?)?\s*(-?\d+(?:\.\d+)?)\s*(?:[-~–]\s*(-?\d+(?:\.\d+)?))?\s*$")


def flag_of(observation: Observation) -> str | None:
    """HL7 table 0078 flag: the sender's when it gave one, else from the value and its range."""
    if observation.flag and observation.flag != "N":
        return observation.flag
    value = observation.value
    limits = CRITICAL_LIMITS.get(observation.code.code, (None, None))
    if not isinstance(value, float):
        return observation.flag
    if limits[0] is not None and value < limits[0]:
        return "LL"
    if limits[1] is not None and value > limits[1]:
        return "HH"
    match = _RANGE.match(observation.reference_range or "")
    if match is None:
        return observation.flag
    sign, low, high = match.groups()
    if high is not None:
        return "L" if value < float(low) else "H" if value > float(high) else "N"
    if sign and sign.startswith("<"):
        return "H" if value >= float(low) else "N"
    if sign and sign.startswith(">"):
        return "L" if value <= float(low) else "N"
    return observation.flag


def review_lab(exam: Exam) -> Report:
    reviewed = tuple(o.model_copy(update={"flag": flag_of(o)}) for o in exam.observations)
    abnormal = [o for o in reviewed if o.flag not in (None, "N")]
    critical = [o for o in reviewed if o.flag in ("LL", "HH")]
    if not reviewed:
        conclusion = "未收到检验结果，待检验中心复核"
    elif abnormal:
        listed = "；".join(f"{o.code.display or o.code.code} {_value(o)} {o.flag}" for o in abnormal)
        conclusion = f"异常结果：{listed}" + ("。含危急值" if critical else "")
    else:
        conclusion = "各项结果均在参考范围内"
    return Report.answering(
        exam,
        status="final",
        issued_at=datetime.now(UTC),
        conclusion=conclusion,
        observations=reviewed,
        performer=Performer(name="检验审核（示例）", id="LAB-REVIEW"),
        performer_institution=LEAD_CENTRE,
        critical=bool(critical),
        critical_items=tuple(f"{o.code.display or o.code.code} {_value(o)}" for o in critical),
    )


def _value(observation: Observation) -> str:
    value = observation.value
    text = f"{value:g}" if isinstance(value, float) else str(value)
    return f"{text} {observation.unit}" if observation.unit else text
