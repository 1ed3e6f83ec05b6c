"""adapters.dicom.read either returns an Exam or raises an AdapterError, whatever the bytes.

Random bytes, random bytes behind a valid preamble, and mutations of every
valid sample: truncation, byte flips, deleted byte ranges, deleted elements.
"""

from __future__ import annotations

import os
import warnings
from functools import cache
from io import BytesIO

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adapters import dicom
from hub.envelope import Exam
from hub.errors import AdapterError
from hub.resources import data_dir

SAMPLES = data_dir("examples") / "messages" / "dicom"
VALID = sorted(path.name for path in SAMPLES.glob("*.dcm") if not path.name.startswith("bad-"))
PREAMBLE = b"\x00" * 128 + b"DICM"

# pydicom warns about the broken values it meets; that is not what is tested here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")
# DICOM_FUZZ_EXAMPLES=5000 for a longer run by hand.
fuzz_settings = settings(
    max_examples=int(os.environ.get("DICOM_FUZZ_EXAMPLES", "150")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)


@cache
def sample(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def read_outcome(data: bytes, *, charset: str | None = None) -> None:
    try:
        exam = dicom.read(data, charset=charset)
    except AdapterError as exc:
        assert exc.location, "every failure names where it is"
        assert exc.message
    else:
        assert isinstance(exam, Exam)


@fuzz_settings
@given(st.binary(max_size=2048))
def test_random_bytes(data: bytes) -> None:
    read_outcome(data)


@fuzz_settings
@given(st.binary(max_size=2048), st.sampled_from([b"", b"\x02\x00", b"\x08\x00"]))
def test_random_bytes_that_look_like_dicom(data: bytes, start: bytes) -> None:
    read_outcome(PREAMBLE + start + data)
    read_outcome(start + data)


@fuzz_settings
@given(st.sampled_from(VALID), st.floats(min_value=0, max_value=1))
def test_truncated_samples(name: str, fraction: float) -> None:
    data = sample(name)
    read_outcome(data[: int(len(data) * fraction)], charset="GBK")


@fuzz_settings
@given(st.sampled_from(VALID), st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), min_size=1, max_size=8))
def test_samples_with_flipped_bytes(name: str, flips: list[tuple[float, int]]) -> None:
    data = bytearray(sample(name))
    header_end = data.find(b"\xe0\x7f\x10\x00") if b"\xe0\x7f\x10\x00" in data else len(data)
    for where, mask in flips:  # mostly in the header, where the structure is
        data[min(int(header_end * where), len(data) - 1)] ^= mask
    read_outcome(bytes(data), charset="GBK")


@fuzz_settings
@given(st.sampled_from(VALID), st.floats(0, 1), st.integers(1, 64))
def test_samples_with_a_deleted_byte_range(name: str, where: float, length: int) -> None:
    data = sample(name)
    start = int(min(len(data), 8000) * where)
    read_outcome(data[:start] + data[start + length :], charset="GBK")


@fuzz_settings
@given(st.sampled_from(VALID), st.data())
def test_samples_with_a_deleted_element(name: str, data: st.DataObject) -> None:
    ds = pydicom.dcmread(BytesIO(sample(name)))
    tags = sorted(ds.keys())
    victim = data.draw(st.sampled_from(tags))
    del ds[victim]
    buffer = BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        ds.save_as(buffer, enforce_file_format=True)
    read_outcome(buffer.getvalue(), charset="GBK")
