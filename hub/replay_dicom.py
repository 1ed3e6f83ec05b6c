"""A C-STORE sender for ``hub replay --via dicom``: what a modality does, with pynetdicom as the SCU.

The file's data set goes on the wire as it is on disk (pynetdicom's chunked
sending), not decoded and re-encoded, so the hub sees what a modality would
send, flaws included.
"""

from __future__ import annotations

from pathlib import Path

from pydicom.errors import InvalidDicomError
from pydicom.filereader import read_file_meta_info
from pynetdicom import AE, _config
from pynetdicom.presentation import build_context

__all__ = ["store"]


def store(path: Path, *, calling: str, host: str, port: int, called: str) -> tuple[bool, str]:
    """Send the instance in ``path``; (accepted, what the SCP said)."""
    try:
        meta = read_file_meta_info(path)
        sop_class, syntax = meta.MediaStorageSOPClassUID, meta.TransferSyntaxUID
    except (InvalidDicomError, AttributeError, ValueError, EOFError, OSError) as exc:
        return False, f"not sendable as DICOM (no Part 10 file meta): {type(exc).__name__}"[:300]
    _config.STORE_SEND_CHUNKED_DATASET = True  # send the file's bytes as they are
    ae = AE(ae_title=calling)
    ae.requested_contexts = [build_context(sop_class, [syntax])]
    assoc = ae.associate(host, port, ae_title=called)
    if not assoc.is_established:
        reason = "rejected" if assoc.is_rejected else "aborted" if assoc.is_aborted else "no association"
        return False, f"association {reason} by {called}@{host}:{port} for calling AE {calling}"
    try:
        accepted = [c for c in assoc.accepted_contexts if c.abstract_syntax == sop_class]
        if not accepted:
            return (
                False,
                f"the hub does not take SOP class {sop_class} ({sop_class.name}): presentation context rejected",
            )
        status = assoc.send_c_store(path)
    except (ValueError, RuntimeError, AttributeError) as exc:  # an unencodable or unreadable data set
        return False, f"not sent: {type(exc).__name__}: {exc}"[:300]
    finally:
        assoc.release()
    code = int(getattr(status, "Status", -1)) if status else -1
    if code == 0x0000:
        return True, "0x0000 Success"
    if code == -1:
        return False, "no C-STORE response"
    comment = str(getattr(status, "ErrorComment", "") or "")
    return False, f"0x{code:04X}" + (f": {comment}" if comment else "")
