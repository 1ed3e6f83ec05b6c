"""FHIR R4 JSON in, a validated fhir.resources R4B resource out, or an AdapterError with FHIR paths."""

from __future__ import annotations

import copy
import json
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B import get_fhir_model_class
from fhir.resources.R4B.bundle import Bundle, BundleEntry
from fhir.resources.R4B.diagnosticreport import DiagnosticReport
from fhir.resources.R4B.resource import Resource
from fhir.resources.R4B.servicerequest import ServiceRequest
from pydantic import ValidationError

from hub.envelope import Notice
from hub.errors import DecodeError, InvalidMessage, Problem, UnsupportedMessage

__all__ = ["Parsed", "parse"]

READABLE_BUNDLE_TYPES = frozenset({"message", "transaction", "batch", "collection"})
_LONE_RESOURCES: Mapping[str, type[Resource]] = {
    "ServiceRequest": ServiceRequest,
    "DiagnosticReport": DiagnosticReport,
}
_UTF8_BOM = b"\xef\xbb\xbf"
_NOT_R4 = "the resource does not validate against FHIR R4"
# A dateTime or instant with a time of day but no UTC offset, which FHIR (and the R4B models) refuse.
_LOCAL_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d+)?)?")


@dataclass(frozen=True, slots=True)
class Parsed:
    root: Resource
    notices: tuple[Notice, ...] = ()

    @property
    def path(self) -> str:
        return self.root.get_resource_type()


def parse(raw: object) -> Parsed:
    """Validate ``raw`` (JSON bytes or an already-decoded dict) with the R4B models."""
    if isinstance(raw, Mapping):
        return _parse_mapping(raw)
    if isinstance(raw, bytes | bytearray | memoryview):
        return _parse_bytes(bytes(raw))
    raise DecodeError(f"expected FHIR JSON as bytes or a dict, got {type(raw).__name__}", location="$")


def _parse_bytes(raw: bytes) -> Parsed:
    body = raw.removeprefix(_UTF8_BOM)
    # Most inputs are Bundles, and pydantic's own JSON parser is the fastest way to
    # validate them; anything else takes the slower diagnosing path below.
    try:
        bundle = Bundle.model_validate_json(body)
    except Exception:  # any failure is diagnosed, and mapped, below
        pass
    else:
        _check_bundle_type(bundle.type)
        return Parsed(bundle)
    data = _load_json(body)
    return Parsed(*_validate(data))


def _parse_mapping(raw: Mapping[str, Any]) -> Parsed:
    data = dict(raw)
    try:
        json.dumps(data, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise DecodeError(f"the dict is not JSON data: {exc}", location="$") from exc
    return Parsed(*_validate(data))


def _load_json(body: bytes) -> Any:
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise DecodeError(
            f"FHIR JSON must be UTF-8; byte {exc.start} is not (was it sent as GB18030 or GBK?)", location="$"
        ) from exc
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        reason = exc.msg.removesuffix(" at")
        raise DecodeError(f"invalid JSON at line {exc.lineno} column {exc.colno}: {reason}", location="$") from exc
    except (ValueError, RecursionError) as exc:
        raise DecodeError(f"invalid JSON: {exc}", location="$") from exc


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON number")


def _validate(data: Any) -> tuple[Resource, tuple[Notice, ...]]:
    model = _model_for(data)
    root = model.get_resource_type()
    try:
        return model.model_validate(data), ()
    except ValidationError as exc:
        patched, notices = _with_china_offsets(data, exc, root)
        if not notices:
            raise InvalidMessage(_NOT_R4, problems=_problems(exc, root)) from exc
    except Exception as exc:
        raise _library_failure(data, root) from exc
    try:
        return model.model_validate(patched), notices
    except ValidationError as exc:
        raise InvalidMessage(_NOT_R4, problems=_problems(exc, root)) from exc
    except Exception as exc:
        raise _library_failure(patched, root) from exc


def _library_failure(data: Any, root: str) -> InvalidMessage:
    # Some inputs make fhir.resources raise KeyError (an unknown nested resourceType),
    # AttributeError (a number where a URL goes) or TypeError instead of a ValidationError.
    unknown = next(_unknown_resource_types(data, root), None)
    if unknown is not None:
        return InvalidMessage("not a FHIR R4 resource type", location=unknown)
    return InvalidMessage(_NOT_R4, location=_failing_entry(data, root))


def _model_for(data: Any) -> type[Resource]:
    if not isinstance(data, dict):
        raise UnsupportedMessage("expected a FHIR resource: a JSON object with a resourceType", location="resourceType")
    resource_type = data.get("resourceType")
    if resource_type == "Bundle":
        kind = data.get("type")
        _check_bundle_type(kind if isinstance(kind, str) else None)
        return Bundle
    model = _LONE_RESOURCES.get(resource_type) if isinstance(resource_type, str) else None
    if model is None:
        raise UnsupportedMessage(
            f"the hub reads a Bundle, a ServiceRequest or a DiagnosticReport, not {resource_type!r}",
            location="resourceType",
        )
    return model


def _check_bundle_type(kind: str | None) -> None:
    if kind not in READABLE_BUNDLE_TYPES:
        raise UnsupportedMessage(
            f"the hub reads message, transaction, batch and collection Bundles, not {kind!r}", location="Bundle.type"
        )


def _with_china_offsets(data: Any, exc: ValidationError, root: str) -> tuple[Any, tuple[Notice, ...]]:
    """``data`` with offset-less times read as China time, and a notice for each; a valid message pays nothing."""
    patched = None
    notices = []
    for error in exc.errors(include_url=False, include_context=False):
        value = error.get("input")
        if not isinstance(value, str) or not _LOCAL_TIME.fullmatch(value):
            continue
        patched = patched if patched is not None else copy.deepcopy(data)
        loc = tuple(error["loc"])
        try:
            parent = patched
            for step in loc[:-1]:
                parent = parent[step]
            parent[loc[-1]] = value + (":00" if len(value) == 16 else "") + "+08:00"
        except (KeyError, IndexError, TypeError):
            continue
        notices.append(
            Notice(location=fhir_path(root, loc), message="a time without a UTC offset, read as China time (+08:00)")
        )
    return patched, tuple(notices)


def fhir_path(root: str, loc: tuple[int | str, ...]) -> str:
    parts = [root]
    for step in loc:
        if isinstance(step, int):
            parts.append(f"[{step}]")
        elif step == "resource_type":
            parts.append(".resourceType")
        elif step != "root" and "[" not in step:  # "root" and "function-wrap[...]" are pydantic's, not FHIR's
            parts.append(f".{step}")
    return "".join(parts)


def _problems(exc: ValidationError, root: str) -> list[Problem]:
    # No input values in the messages: they may be names or ID numbers.
    return [
        Problem(fhir_path(root, tuple(error["loc"])), " ".join(error["msg"].split()))
        for error in exc.errors(include_url=False, include_input=False, include_context=False)
    ]


def _unknown_resource_types(data: Any, path: str) -> Iterator[str]:
    # Iterative: the data may nest nearly as deep as the recursion limit.
    stack = [(data, path)]
    while stack:
        node, where = stack.pop()
        if isinstance(node, dict):
            resource_type = node.get("resourceType")
            if resource_type is not None and not _is_resource_type(resource_type):
                yield f"{where}.resourceType"
            stack.extend((value, f"{where}.{key}") for key, value in reversed(node.items()))
        elif isinstance(node, list):
            stack.extend((value, f"{where}[{index}]") for index, value in reversed(list(enumerate(node))))


def _failing_entry(data: dict[str, Any], root: str) -> str:
    """The path of the first Bundle entry that fails to validate, else the root."""
    entries = data.get("entry") if root == "Bundle" else None
    for index, entry in enumerate(entries if isinstance(entries, list) else ()):
        try:
            BundleEntry.model_validate(entry)
        except ValidationError:
            continue
        except Exception:  # the same library failure, now with a place
            return f"{root}.entry[{index}]"
    return root


def _is_resource_type(name: object) -> bool:
    if not isinstance(name, str):
        return False
    try:
        return get_fhir_model_class(name).has_resource_base()
    except ValueError:
        return False
