"""FHIR search of recognised results: real uvicorn on the broker's loop, real HTTP, on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import test_recognition
from fhir.resources.R4B.bundle import Bundle
from fhir.resources.R4B.capabilitystatement import CapabilityStatement
from fhir.resources.R4B.operationoutcome import OperationOutcome
from test_recognition import CBC, CHANGHUA, CONCLUSION, CONFIG, CT, DICOM, ECG, FINDINGS, LI, ZHANG, lab_report

from hub.broker import Broker, connect
from hub.config import FhirGateway
from hub.gateways.fhir_search import MARK_SYSTEM, VALIDITY_EXTENSION
from hub.gateways.http import FhirListener, start_fhir
from hub.intake import Intake
from hub.store.db import Database
from hub.store.recognition import Registry, recognition_day

migrated_store, database = test_recognition.migrated_store, test_recognition.database
RESIDENT = "urn:oid:2.16.156.10011.1.3"
TOKEN = CONFIG.institution(CHANGHUA).token()  # type: ignore[union-attr]


@pytest.fixture
def registry(database: Database) -> Registry:
    return Registry(database, CONFIG)


@pytest.fixture
def listener(registry: Registry, tmp_path: Path) -> Iterator[FhirListener]:
    with connect("memory://guest@") as broker:
        opened = on_loop(broker, start_fhir(Intake(broker), CONFIG, FhirGateway(port=0), registry=registry))
        yield opened
        on_loop(broker, opened.close())


def on_loop(broker: Broker, coroutine: Any) -> Any:
    return asyncio.run_coroutine_threadsafe(coroutine, broker.loop).result(30)


def search(
    listener: FhirListener, national_id: str, item: tuple[str, str], *, token: str | None = TOKEN, **params: str
) -> httpx.Response:
    query = {"patient.identifier": f"{RESIDENT}|{national_id}", "code": "|".join(item)} | params
    headers = {"authorization": f"Bearer {token}"} if token else {}
    return httpx.get(f"{listener.url}/DiagnosticReport", params=query, headers=headers, timeout=30)


def searchset(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("application/fhir+json")
    body: dict[str, Any] = response.json()
    Bundle.model_validate(body)  # a valid R4 (R4B) searchset, contained resources and all
    assert (body["resourceType"], body["type"]) == ("Bundle", "searchset")
    return body


def test_the_search_returns_the_recognised_result_with_its_mark_and_window(
    listener: FhirListener, registry: Registry
) -> None:
    now = datetime.now(UTC)
    recorded = registry.record(lab_report(issued=now))
    assert recorded.result is not None
    response = search(listener, ZHANG, CBC)
    body = searchset(response)
    assert body["total"] == 1
    [entry] = body["entry"]
    assert entry["search"] == {"mode": "match"}
    report = entry["resource"]
    assert (report["resourceType"], report["id"], report["status"]) == (
        "DiagnosticReport",
        recorded.result.result_id,
        "final",
    )
    assert report["meta"]["tag"] == [{"system": MARK_SYSTEM, "code": "浙HR", "display": "检查检验结果互认"}]
    today = recognition_day(now)
    period = {"start": today.isoformat(), "end": (today + timedelta(days=7)).isoformat()}
    assert report["extension"] == [{"url": VALIDITY_EXTENSION, "valuePeriod": period}]
    assert report["code"]["coding"] == [{"system": "http://loinc.org", "code": "58410-2", "display": "血常规"}]
    assert report["identifier"][0]["value"] == recorded.result.source_report_id
    observations = [r for r in report["contained"] if r["resourceType"] == "Observation"]
    assert [(o["code"]["coding"][0]["code"], o["valueQuantity"]["value"]) for o in observations] == [("6690-2", 18.5)]
    assert report["presentedForm"] == [{"contentType": "application/dicom", "url": DICOM.uri, "title": DICOM.title}]
    [patient] = [r for r in report["contained"] if r["resourceType"] == "Patient"]
    assert {"system": RESIDENT, "value": ZHANG} in [
        {k: i[k] for k in ("system", "value")} for i in patient["identifier"]
    ]
    assert patient["name"] == [{"text": "张伟"}]
    assert "conclusion" not in report
    assert CONCLUSION not in response.text and FINDINGS not in response.text
    assert body["link"][0]["relation"] == "self" and "DiagnosticReport?patient.identifier=" in body["link"][0]["url"]


@pytest.mark.parametrize(
    ("item", "national_id", "why"),
    [
        (ECG, ZHANG, "expired: valid until"),
        (CT, ZHANG, "not eligible: QC lapsed"),
        (CBC, LI, "none found"),
        (("http://loinc.org", "2345-7"), ZHANG, "not eligible: not in the catalogue"),
    ],
    ids=["expired", "qc-lapsed", "none-found", "not-catalogued"],
)
def test_with_no_result_the_bundle_says_why(
    listener: FhirListener, registry: Registry, item: tuple[str, str], national_id: str, why: str
) -> None:
    now = datetime.now(UTC)
    registry.record(lab_report(ECG, order="ECG-1", issued=now - timedelta(days=40)))  # valid 30 days
    registry.record(lab_report(CT, order="CT-1", issued=now))  # the CT centre's QC lapsed
    body = searchset(search(listener, national_id, item))
    assert body["total"] == 0
    [entry] = body["entry"]
    assert entry["search"] == {"mode": "outcome"}
    OperationOutcome.model_validate(entry["resource"])
    assert entry["resource"]["issue"][0]["diagnostics"].startswith(why)


def test_every_search_is_audited_as_the_tokens_institution(listener: FhirListener, registry: Registry) -> None:
    registry.record(lab_report(issued=datetime.now(UTC)))
    searchset(search(listener, ZHANG, CBC))
    searchset(search(listener, LI, CBC))
    trail = registry.audit()
    assert [(e.who, e.via, e.item, e.reason, e.results) for e in trail] == [
        (CHANGHUA, "fhir", CBC, "found", 1),
        (CHANGHUA, "fhir", CBC, "none found", 0),
    ]


@pytest.mark.parametrize(
    ("params", "token", "status", "code"),
    [
        ({}, None, 401, "login"),
        ({}, "not-a-member", 401, "security"),
        ({"patient.identifier": f"{RESIDENT}|330112198003151238"}, TOKEN, 400, "value"),  # fails its check digit
        ({"patient.identifier": f"urn:oid:2.16.156.10011.1.2|{ZHANG}"}, TOKEN, 400, "not-supported"),
        ({"code": "58410-2"}, TOKEN, 400, "value"),  # no system
    ],
    ids=["no-token", "unknown-token", "bad-number", "other-system", "no-system"],
)
def test_a_search_the_hub_cannot_answer_gets_an_operation_outcome(
    listener: FhirListener, registry: Registry, params: dict[str, str], token: str | None, status: int, code: str
) -> None:
    response = search(listener, ZHANG, CBC, token=token, **params)
    assert response.status_code == status, response.text
    OperationOutcome.model_validate(response.json())
    assert response.json()["issue"][0]["code"] == code
    assert registry.audit() == []  # refused before any lookup


def test_the_capability_statement_lists_the_search_and_its_required_parameters(listener: FhirListener) -> None:
    statement = httpx.get(f"{listener.url}/metadata", timeout=30).json()
    CapabilityStatement.model_validate(statement)
    [resource] = statement["rest"][0]["resource"]
    assert resource["type"] == "DiagnosticReport"
    assert {p["name"] for p in resource["searchParam"]} == {"patient.identifier", "code"}
    posted = httpx.post(f"{listener.url}/DiagnosticReport", content=json.dumps({}), timeout=30)
    assert posted.status_code == 405
    missing = httpx.get(f"{listener.url}/DiagnosticReport", headers={"authorization": f"Bearer {TOKEN}"}, timeout=30)
    assert (missing.status_code, missing.json()["issue"][0]["code"]) == (400, "required")
