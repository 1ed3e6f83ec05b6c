"""Whatever it is given, adapters.fhir.read returns exams or raises an AdapterError, nothing else."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import fhir
from hub.envelope import Exam
from hub.errors import AdapterError

SAMPLES = Path(__file__).resolve().parent.parent / "examples" / "messages" / "fhir"
VALID = {p.name: p.read_bytes() for p in sorted(SAMPLES.glob("*.json")) if not p.name.startswith("bad-")}
FUZZ = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_scalars = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4),
    max_leaves=20,
)
# Values that look like the FHIR they replace, so mutations get past the first checks more often.
fhir_like = json_values | st.sampled_from(
    [
        "Patient",
        "ServiceRequest",
        "Bundle",
        "#pat",
        "Patient/bq-p-0031",
        "urn:uuid:00000000-0000-4000-8000-000000000000",
        "2024-06-12",
        "2024-06",
        "2024-06-12T09:08:00+08:00",
        "2024-06-12T09:08:00",
        "2024-06-12T09:08",
        "330112198509190287",
        0,
        -1,
        1e308,
        "",
        " ",
        [],
        {},
        {"reference": "#missing"},
        {"coding": [{"code": "LAB"}]},
    ]
)


def _outcome(raw: bytes | dict[str, Any]) -> None:
    try:
        exams = fhir.read(raw)
    except AdapterError as exc:
        assert exc.problems
        assert all(isinstance(p.message, str) and p.message for p in exc.problems)
        return
    assert isinstance(exams, list)
    assert exams
    assert all(isinstance(e, Exam) for e in exams)


def _paths(node: Any, path: tuple[str | int, ...] = ()) -> list[tuple[str | int, ...]]:
    found = [path] if path else []
    if isinstance(node, dict):
        for key, value in node.items():
            found += _paths(value, (*path, key))
    elif isinstance(node, list):
        for index, value in enumerate(node):
            found += _paths(value, (*path, index))
    return found


DECODED = {name: json.loads(raw) for name, raw in VALID.items()}
PATHS = {name: _paths(message) for name, message in DECODED.items()}


def _parent(message: Any, path: tuple[str | int, ...]) -> Any:
    node = message
    for step in path[:-1]:
        node = node[step]
    return node


@FUZZ
@given(st.binary(max_size=3000))
def test_random_bytes(raw: bytes) -> None:
    _outcome(raw)


@FUZZ
@given(json_values)
def test_random_json_as_bytes_and_as_dict(value: Any) -> None:
    _outcome(json.dumps(value).encode())
    if isinstance(value, dict):
        _outcome(value)


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_truncated_samples(name: str, data: st.DataObject) -> None:
    raw = VALID[name]
    _outcome(raw[: data.draw(st.integers(0, len(raw) - 1))])


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_byte_flips(name: str, data: st.DataObject) -> None:
    raw = bytearray(VALID[name])
    for _ in range(data.draw(st.integers(1, 4))):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    _outcome(bytes(raw))


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_deleted_fields(name: str, data: st.DataObject) -> None:
    message = copy.deepcopy(DECODED[name])
    for _ in range(data.draw(st.integers(1, 3))):
        paths = _paths(message)
        if not paths:
            break
        path = data.draw(st.sampled_from(paths))
        del _parent(message, path)[path[-1]]
    _outcome(json.dumps(message, ensure_ascii=False).encode())


@FUZZ
@given(st.sampled_from(sorted(VALID)), st.data())
def test_replaced_values(name: str, data: st.DataObject) -> None:
    message = copy.deepcopy(DECODED[name])
    for _ in range(data.draw(st.integers(1, 3))):
        path = data.draw(st.sampled_from(PATHS[name]))
        try:
            _parent(message, path)[path[-1]] = data.draw(fhir_like)
        except (KeyError, IndexError, TypeError):
            continue  # an earlier replacement removed this path
    _outcome(message)
