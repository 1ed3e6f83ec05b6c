"""Recognition lookup latency with a million recognised results, on SQLite and PostgreSQL in one run.

    python bench/registry.py [--results N] [--lookups N] [--postgres URL | --no-postgres]

Loads N recognised results (default 1,000,000) for about 0.3 N persons, spread over the example
consortium's four catalogue items, issued over the past 400 days (so a share of them has expired),
with a report outcome row each, as the registry keeps one per report. Loading goes around the ORM
and takes shortcuts the hub never takes, to run in minutes: rows generated once as text for both
databases, executemany on SQLite and COPY on PostgreSQL without a sync at each commit, and the
secondary indexes built after the rows. Then it times ``Registry.lookup`` over random patients
(nine in ten known, one in ten a valid number nobody has) and items, each with its audit write, as
the API does. The baseline, measured in the same run on the same database, is the one indexed
SELECT of the person's results by national id that a lookup cannot do without. Figures only: no
goals are asserted.

SQLite goes to a scratch file; PostgreSQL (HUB_BENCH_POSTGRES_URL, default the local server) to a
scratch database, dropped afterwards.
"""

# ruff: noqa: E402  (the sys.path fix below must run before the imports)
from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != BENCH] + [str(BENCH)]

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from hub.config import load_config
from hub.ids import resident_id_check_digit
from hub.store.db import Database, open_database
from hub.store.recognition import RecognisedResult, Registry, ReportOutcomeRow, ResultRow

ROOT = BENCH.parent
POSTGRES = os.environ.get("HUB_BENCH_POSTGRES_URL", "postgresql+psycopg://postgres@localhost:5432/postgres")
CHUNK = 50_000
CST_OFFSET = timedelta(hours=8)  # a result's valid_from is its issue day in China
SURNAMES = "王李张刘陈杨黄赵吴周徐孙马朱胡郭何高林罗"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"
REGIONS = ("330112", "330106", "330185", "110105", "440524", "420106")
LOINC = "http://loinc.org"
PANELS = {  # the values each item's result carries
    "58410-2": [
        ("6690-2", "白细胞计数", "10*9/L", "3.5-9.5"),
        ("789-8", "红细胞计数", "10*12/L", "4.3-5.8"),
        ("718-7", "血红蛋白", "g/L", "130-175"),
        ("777-3", "血小板计数", "10*9/L", "125-350"),
    ],
    "24325-3": [
        ("1742-6", "丙氨酸氨基转移酶", "U/L", "9-50"),
        ("1920-8", "天门冬氨酸氨基转移酶", "U/L", "15-40"),
        ("1975-2", "总胆红素", "umol/L", "0-26"),
    ],
    "11524-6": [("8867-4", "心率", "/min", "60-100"), ("8625-6", "PR间期", "ms", "120-200")],
    "CT0201": [],
}


def national_ids(count: int, rng: random.Random) -> list[str]:
    numbers: set[str] = set()
    start = date(1930, 1, 1).toordinal()
    while len(numbers) < count:
        born = date.fromordinal(start + rng.randrange(365 * 90))
        body = f"{rng.choice(REGIONS)}{born:%Y%m%d}{rng.randrange(1000):03d}"
        numbers.add(body + resident_id_check_digit(body))
    return sorted(numbers, key=lambda _: rng.random())


PERSON_COLUMNS = ("id", "national_id", "name", "sex", "birth_date", "created_at")
RESULT_COLUMNS = (
    "id",
    "person_id",
    "item_system",
    "item_code",
    "item_display",
    "centre",
    "mark",
    "observations",
    "attachments",
    "valid_from",
    "valid_until",
    "exam_id",
    "source_report_id",
    "source_status",
    "origin",
    "performer_institution",
    "issued_at",
    "recorded_at",
    "state",
)
OUTCOME_COLUMNS = (
    "report_id",
    "exam_id",
    "person_id",
    "item_system",
    "item_code",
    "status",
    "result_id",
    "recorded_at",
)
Rows = list[tuple[Any, ...]]


def _utc_text(when: datetime) -> str:
    """How SQLAlchemy keeps a UTC datetime in SQLite; PostgreSQL reads it too, in a UTC session."""
    return when.strftime("%Y-%m-%d %H:%M:%S.%f")


def person_rows(numbers: list[str], rng: random.Random, now: datetime) -> Iterator[tuple[Any, ...]]:
    created = _utc_text(now)
    for n, number in enumerate(numbers, start=1):
        sex = "male" if int(number[16]) % 2 else "female"
        name = rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))
        yield n, number, name, sex, f"{number[6:10]}-{number[10:12]}-{number[12:14]}", created


def result_rows(
    results: int, persons: int, registry: Registry, rng: random.Random, now: datetime
) -> Iterator[tuple[tuple[Any, ...], tuple[Any, ...]]]:
    """(recognised result, report outcome) row pairs, as text; one result in twenty has been superseded."""
    config = registry.config
    items = []
    for item in config.recognition.items:
        panel = [
            json.dumps(
                {"code": {"code": c, "system": LOINC, "display": d}, "unit": u, "reference_range": r, "status": "final"}
            )[:-1]
            + ', "value": '
            for c, d, u, r in PANELS[item.code]
        ]
        constant = (item.system, item.code, item.display, item.centre, item.mark or config.recognition.mark)
        items.append((constant, panel, item.valid_days, item.centre in ("imaging", "ecg")))
    for n in range(results):
        (system, code, display, centre, mark), panel, valid_days, imaged = items[n % len(items)]
        issued = now - timedelta(seconds=rng.random() * 400 * 86400)
        valid_from = (issued + CST_OFFSET).date()
        values = "[" + ", ".join(f"{prefix}{rng.uniform(1, 200):.1f}}}" for prefix in panel) + "]"
        images = f'[{{"uri": "urn:sha256:{rng.getrandbits(256):064x}", "media_type": "application/dicom"}}]'
        person, at = 1 + rng.randrange(persons), _utc_text(issued)
        result_id, exam_id, report_id = f"rr-bench-{n:08d}", f"ex-bench-{n:08d}", f"rp-bench-{n:08d}"
        yield (
            (
                result_id,
                person,
                system,
                code,
                display,
                centre,
                mark,
                values,
                images if imaged else "[]",
                valid_from.isoformat(),
                (valid_from + timedelta(days=valid_days)).isoformat(),
                exam_id,
                report_id,
                "final",
                "12330112472334561L",
                config.consortium.lead,
                at,
                at,
                "superseded" if rng.random() < 0.05 else "current",
            ),
            (report_id, exam_id, person, system, code, "recorded", result_id, at),
        )


def chunks(rows: Iterator[Any], size: int = CHUNK) -> Iterator[list[Any]]:
    chunk: list[Any] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def load(databases: list[Database], registry: Registry, numbers: list[str], results: int, seed: int) -> list[float]:
    """Bulk-load persons and results into every database from one pass of generated rows; seconds each."""
    rng, now = random.Random(seed), datetime.now(UTC).replace(tzinfo=None)
    taken = [0.0] * len(databases)

    def insert(table: str, columns: tuple[str, ...], rows: Rows) -> None:
        for n, database in enumerate(databases):
            started = time.perf_counter()
            (_copy if database.engine.dialect.name == "postgresql" else _executemany)(database, table, columns, rows)
            taken[n] += time.perf_counter() - started

    indexes = [i for model in (ResultRow, ReportOutcomeRow) for i in model.__table__.indexes if not i.unique]

    def each(work: Callable[[Any, str], None]) -> None:
        for n, database in enumerate(databases):
            started = time.perf_counter()
            with database.engine.begin() as connection:
                work(connection, database.engine.dialect.name)
            taken[n] += time.perf_counter() - started

    each(lambda connection, _: [index.drop(connection) for index in indexes])  # built once, after the rows
    for people in chunks(person_rows(numbers, rng, now)):
        insert("persons", PERSON_COLUMNS, people)
    for pairs in chunks(result_rows(results, len(numbers), registry, rng, now)):
        insert("recognised_results", RESULT_COLUMNS, [result for result, _ in pairs])
        insert("recognition_reports", OUTCOME_COLUMNS, [outcome for _, outcome in pairs])

    def finish(connection: Any, dialect: str) -> None:
        for index in indexes:
            index.create(connection)
        if dialect == "postgresql":
            connection.execute(text("SELECT setval(pg_get_serial_sequence('persons', 'id'), max(id)) FROM persons"))
        connection.execute(text("ANALYZE"))

    each(finish)
    return taken


def _executemany(database: Database, table: str, columns: tuple[str, ...], rows: Rows) -> None:
    statement = f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))})"
    raw = database.engine.raw_connection()
    try:
        cursor = raw.cursor()
        cursor.execute("PRAGMA synchronous=OFF")  # a scratch file: no fsync at each chunk's commit
        cursor.executemany(statement, rows)
        raw.commit()
        cursor.execute("PRAGMA synchronous=NORMAL")
    finally:
        raw.close()


def _copy(database: Database, table: str, columns: tuple[str, ...], rows: Rows) -> None:
    """COPY in PostgreSQL's text format; the row values are text already, and none holds a tab or newline."""
    block = "".join("\t".join("\\N" if v is None else str(v).replace("\\", "\\\\") for v in row) + "\n" for row in rows)
    raw = database.engine.raw_connection()
    try:
        with raw.cursor() as cursor:  # type: ignore[attr-defined]
            cursor.execute("SET TIME ZONE 'UTC'; SET synchronous_commit = off")  # a scratch database
            with cursor.copy(f"COPY {table} ({', '.join(columns)}) FROM STDIN") as copy:
                copy.write(block)
        raw.commit()
    finally:
        raw.close()


def percentile(samples: list[float], share: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def timed(calls: list[Callable[[], object]]) -> list[float]:
    times = []
    for call in calls:
        start = time.perf_counter()
        call()
        times.append(time.perf_counter() - start)
    return times


def measure(database: Database, registry: Registry, numbers: list[str], lookups: int, seed: int) -> dict[str, Any]:
    rng = random.Random(seed)
    items = [(i.system, i.code) for i in registry.config.recognition.items]
    unknown = national_ids(lookups // 10 + 1, random.Random(seed + 1))
    queries = [
        (rng.choice(numbers) if rng.random() < 0.9 else rng.choice(unknown), rng.choice(items)) for _ in range(lookups)
    ]
    reasons: dict[str, int] = {}

    def lookup(number: str, item: tuple[str, str]) -> None:
        found = registry.lookup(national_id=number, item=item, who="bench", via="bench")
        reasons[found.reason] = reasons.get(found.reason, 0) + 1
        assert all(isinstance(r, RecognisedResult) for r in found.results)

    select = text(
        "SELECT r.* FROM recognised_results r JOIN persons p ON p.id = r.person_id"
        " WHERE p.national_id = :n AND r.item_code = :c AND r.item_system = :s AND r.state = 'current'"
    )

    audit = text(
        "INSERT INTO recognition_lookups (at, who, via, person_id, item_system, item_code, as_of, reason, results)"
        " VALUES (:at, 'bench', 'bench', NULL, :s, :c, :d, 'found', :k)"
    )

    def read(number: str, item: tuple[str, str]) -> None:
        with database.engine.connect() as connection:
            connection.execute(select, {"n": number, "s": item[0], "c": item[1]}).all()

    def read_write(number: str, item: tuple[str, str]) -> None:
        with database.engine.begin() as connection:
            found = connection.execute(select, {"n": number, "s": item[0], "c": item[1]}).all()
            now = datetime.now(UTC)
            connection.execute(audit, {"at": now, "s": item[0], "c": item[1], "d": now.date(), "k": len(found)})

    candidates = {"ours": lookup, "read": read, "read+write": read_write}
    for number, item in queries[:50]:  # warm caches and lazy imports outside the clock
        for candidate in candidates.values():
            candidate(number, item)
    reasons.clear()
    times: dict[str, list[float]] = {name: [] for name in candidates}
    for start in range(0, lookups, 100):  # interleaved, so drifts of the machine hit all alike
        batch = queries[start : start + 100]
        for name, candidate in candidates.items():
            times[name] += timed([lambda q=q, c=candidate: c(*q) for q in batch])  # type: ignore[misc]
    return {**times, "reasons": reasons}


@contextmanager
def scratch_databases(postgres: str | None) -> Iterator[list[tuple[str, str]]]:
    with tempfile.TemporaryDirectory(prefix="hub-bench-registry-") as folder:
        urls = [("sqlite", f"sqlite:///{Path(folder) / 'hub.db'}")]
        if postgres is None:
            yield urls
            return
        admin = create_engine(postgres, isolation_level="AUTOCOMMIT")
        name = f"hub_bench_{uuid.uuid4().hex[:10]}"
        with admin.connect() as connection:
            connection.execute(text(f'CREATE DATABASE "{name}"'))
        try:
            yield [*urls, ("postgresql", make_url(postgres).set(database=name).render_as_string(hide_password=False))]
        finally:
            with admin.connect() as connection:
                connection.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
            admin.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=int, default=1_000_000)
    parser.add_argument("--lookups", type=int, default=3_000)
    parser.add_argument("--postgres", default=POSTGRES, help="server for the scratch database (SQLAlchemy URL)")
    parser.add_argument("--no-postgres", action="store_true", help="SQLite only")
    parser.add_argument("--seed", type=int, default=20261122)
    args = parser.parse_args()
    config = load_config(ROOT / "examples" / "consortium.toml")
    persons = max(1, int(args.results * 0.3))
    rng = random.Random(args.seed)
    numbers = national_ids(persons, rng)
    print(
        f"recognition lookup: {args.results:,} recognised results, {persons:,} persons, {args.lookups:,} lookups "
        f"(each with its audit write) on {os.cpu_count()} cores"
    )
    print("baselines on the same database and queries: read = the one indexed SELECT a lookup needs;")
    print("read+write = that SELECT and the audit INSERT, committed; both plain SQL, no ORM")
    print(
        f"{'database':<11} {'load':>7} {'lookup p50':>10} {'p99':>7} {'read p50':>9} {'p99':>7} "
        f"{'read+write p50':>14} {'p99':>7} {'lookup/read+write p50':>22}"
    )
    with scratch_databases(None if args.no_postgres else args.postgres) as urls:
        databases = [open_database(url) for _, url in urls]
        try:
            registries = []
            for database in databases:
                database.migrate()
                registries.append(Registry(database, config))
            loaded = load(databases, registries[0], numbers, args.results, args.seed)
            for (kind, _), database, registry, seconds in zip(urls, databases, registries, loaded, strict=True):
                report(kind, seconds, measure(database, registry, numbers, args.lookups, args.seed))
        finally:
            for database in databases:
                database.close()


def report(kind: str, loaded: float, figures: dict[str, Any]) -> None:
    ours, plain, floor = figures["ours"], figures["read"], figures["read+write"]
    cells = [percentile(t, share) * 1e3 for t in (ours, plain, floor) for share in (0.5, 0.99)]
    print(
        f"{kind:<11} {loaded:>6.1f}s {cells[0]:>8.2f}ms {cells[1]:>5.2f}ms {cells[2]:>7.2f}ms {cells[3]:>5.2f}ms "
        f"{cells[4]:>12.2f}ms {cells[5]:>5.2f}ms {cells[0] / cells[4]:>21.1f}x"
    )
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(figures["reasons"].items()))
    print(f"{'':<11} mean lookup {statistics.fmean(ours) * 1e3:.2f} ms; reasons: {reasons}")


if __name__ == "__main__":
    main()
