"""Every public module says what it exports, and exports only what exists."""

import importlib

import pytest

PUBLIC_MODULES = [
    "hub",
    "hub.envelope",
    "hub.errors",
    "hub.ids",
    "hub.resources",
    "hub.schemas",
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
