"""Pure format adapters: bytes in, envelopes out, and back. No I/O, no broker.

    from adapters import hl7v2, fhir, dicom
"""

__all__ = ["dicom", "fhir", "hl7v2"]
