"""The shipped JSON Schemas are generated from the models and load from the installed package."""

import json
from pathlib import Path

import hub
from hub.envelope import json_schemas
from hub.resources import data_dir, load_schema
from hub.schemas import stale_schemas, write_schemas

REPO = Path(__file__).resolve().parents[1]


def test_committed_schemas_match_the_models() -> None:
    stale = stale_schemas(REPO / "schemas")
    assert stale == [], f"schemas/ drifted from hub/envelope.py: run `hub schemas write` ({stale})"


def test_stale_schemas_notices_a_change(tmp_path: Path) -> None:
    write_schemas(tmp_path)
    assert stale_schemas(tmp_path) == []
    path = tmp_path / "exam.schema.json"
    path.write_text(path.read_text("utf-8").replace('"exam_id"', '"exam_no"'), "utf-8")
    assert stale_schemas(tmp_path) == ["exam.schema.json"]


def test_schemas_load_from_the_installed_package() -> None:
    for name in ("exam", "report"):
        assert load_schema(name) == json.loads(json_schemas()[f"{name}.schema.json"])
    installed_from_checkout = Path(hub.__file__).resolve().is_relative_to(REPO)
    if not installed_from_checkout:  # a plain `pip install .`: the wheel must carry the schemas
        assert data_dir("schemas") == Path(hub.__file__).resolve().parent / "_data" / "schemas"
