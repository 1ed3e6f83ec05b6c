"""The hub's network edges: MLLP, DICOM and FHIR in; report egress out. Each is a thin module."""

__all__: list[str] = []
