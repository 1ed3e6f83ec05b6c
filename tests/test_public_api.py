"""Every public module says what it exports, and exports only what exists."""

import importlib

import pytest

PUBLIC_MODULES = [
    "hub",
    "hub.envelope",
    "hub.errors",
    "hub.broker",
    "hub.brokers.memory",
    "hub.brokers.rabbitmq",
    "hub.config",
    "hub.events",
    "hub.gateways.dicom",
    "hub.gateways.egress",
    "hub.gateways.http",
    "hub.gateways.mllp",
    "hub.gateways.studies",
    "hub.ids",
    "hub.intake",
    "hub.loop",
    "hub.members",
    "hub.mllp",
    "hub.pull",
    "hub.replay",
    "hub.replay_dicom",
    "hub.serve",
    "hub.store.blobs",
    "hub.publish",
    "hub.resources",
    "hub.schemas",
    "hub.topology",
    "hub.worker",
    "adapters",
    "adapters.hl7v2",
    "adapters.fhir",
    "adapters.dicom",
]


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
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    importers = sorted(
        str(path.relative_to(root))
        for folder in ("hub", "adapters")
        for path in (root / folder).rglob("*.py")
        if any(line.lstrip().startswith(("import pika", "from pika")) for line in path.read_text("utf-8").splitlines())
    )
    assert importers == ["hub/brokers/rabbitmq.py"]
