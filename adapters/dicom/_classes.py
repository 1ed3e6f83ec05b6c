"""Which shared centre reads an instance of a given SOP class."""

from __future__ import annotations

from pydicom import uid

from hub.envelope import Centre

__all__ = ["centre_for"]

_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."
# Image storage classes outside diagnostic imaging: radiotherapy, security screening (DICOS) and
# non-destructive testing (DICONDE) images.
_NOT_DIAGNOSTIC = ("1.2.840.10008.5.1.4.1.1.481.", "1.2.840.10008.5.1.4.1.1.501.", "1.2.840.10008.5.1.4.1.1.601.")

_ECG = frozenset(
    {
        uid.TwelveLeadECGWaveformStorage,
        uid.GeneralECGWaveformStorage,
        uid.AmbulatoryECGWaveformStorage,
        uid.General32bitECGWaveformStorage,
    }
)
# Slides read by a pathologist rather than a radiologist.
_PATHOLOGY = frozenset(
    {
        uid.VLWholeSlideMicroscopyImageStorage,
        uid.VLMicroscopicImageStorage,
        uid.VideoMicroscopicImageStorage,
        uid.VLSlideCoordinatesMicroscopicImageStorage,
    }
)


def centre_for(sop_class: str) -> Centre | None:
    """The centre for a SOP class, or None when the hub does not take it.

    Imaging is every storage SOP class that pydicom's UID dictionary names
    an "Image Storage" (CT, MR, CR, DX, MG, US, XA, RF, NM, PET, secondary
    capture, endoscopy, ophthalmic photography and their enhanced and
    multi-frame variants), except the non-diagnostic ones above.
    """
    if sop_class in _ECG:
        return "ecg"
    if sop_class in _PATHOLOGY:
        return "pathology"
    known = uid.UID(sop_class)
    if (
        sop_class.startswith(_STORAGE_ROOT)
        and not sop_class.startswith(_NOT_DIAGNOSTIC)
        and known.type == "SOP Class"
        and "Image Storage" in known.name
    ):
        return "imaging"
    return None
