"""Every public module says what it exports, and exports only what exists."""

import importlib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def public_modules() -> list[str]:
    """Every module of hub and adapters but the private (``_x``) ones, ``__main__`` and the migrations."""
    names = []
    for package in ("hub", "adapters"):
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if "migrations" in parts or any(p.startswith("_") for p in parts):
                continue
            names.append(".".join(parts))
    return names


PUBLIC_MODULES = public_modules()


def test_the_module_list_is_found() -> None:
    assert {"hub", "hub.store.ledger", "hub.store.recognition", "adapters.hl7v2"} <= set(PUBLIC_MODULES)


@pytest.mark.parametrize("name", PUBLIC_MODULES)
def test_all_lists_only_real_names(name: str) -> None:
    module = importlib.import_module(name)
    exported = module.__all__
    assert len(exported) == len(set(exported)), "duplicates in __all__"
    for attr in exported:
        assert hasattr(module, attr) or importlib.util.find_spec(f"{name}.{attr}"), f"{name}.{attr} missing"


def test_hub_top_level_is_the_envelope_and_error_tree() -> None:
    import hub
    from hub import envelope, errors

    for attr in hub.__all__:
        assert getattr(hub, attr) is getattr(envelope, attr, None) or getattr(hub, attr) is getattr(errors, attr)


def test_error_tree_shape() -> None:
    from hub import errors

    assert issubclass(errors.AdapterError, errors.HubError)
    for leaf in (errors.DecodeError, errors.UnsupportedMessage, errors.InvalidMessage):
        assert issubclass(leaf, errors.AdapterError)
    assert issubclass(errors.EnvelopeError, errors.HubError)
    assert not issubclass(errors.EnvelopeError, errors.AdapterError)
    error = errors.InvalidMessage("患者身份证号缺失", location="PID-3")
    assert (error.location, error.message, str(error)) == ("PID-3", "患者身份证号缺失", "PID-3: 患者身份证号缺失")


def test_only_the_rabbitmq_broker_imports_pika() -> None:
    root = ROOT
    importers = sorted(
        str(path.relative_to(root))
        for folder in ("hub", "adapters")
        for path in (root / folder).rglob("*.py")
        if any(line.lstrip().startswith(("import pika", "from pika")) for line in path.read_text("utf-8").splitlines())
    )
    assert importers == ["hub/brokers/rabbitmq.py"]
