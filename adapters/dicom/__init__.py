"""DICOM adapter: one instance's header in, one Exam out.

    from adapters import dicom
    exam = dicom.read(raw_bytes, charset="GBK")

Imaging SOP classes go to the imaging centre, ECG waveforms to the ECG
centre (with the waveform's shape and measurements; the samples stay in the
source and are referenced by an Attachment), slide microscopy to pathology.
Pixel data is never read. Every failure is a DecodeError, UnsupportedMessage
or InvalidMessage located at a DICOM tag such as ``(0010,0010)``, or at
``preamble`` for input that is not DICOM at all.
"""

from adapters.dicom._reader import read

__all__ = ["read"]
