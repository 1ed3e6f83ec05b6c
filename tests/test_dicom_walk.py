"""adapters.dicom's own header walker (``_walk``) reads what pydicom reads, or leaves the input to pydicom.

Every file pydicom ships, the project's samples and mutations of them are read
both ways: by the walker, and with the walker switched off, so by pydicom's
``dcmread`` as before it. The exam, or the error with its location, must be
the same.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from datetime import UTC, datetime
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydicom.data import get_testdata_file, get_testdata_files
from pydicom.dataelem import RawDataElement, convert_raw_data_element
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, ExplicitVRBigEndian, ImplicitVRLittleEndian

from adapters import dicom
from adapters.dicom import _load
from adapters.dicom._items import Item, read_items
from adapters.dicom._walk import WalkError, walk_part10
from hub.errors import AdapterError
from hub.ids import resident_id_check_digit
from hub.resources import data_dir

SAMPLES = data_dir("examples") / "messages" / "dicom"
RECEIVED = datetime(2026, 12, 2, 3, 0, tzinfo=UTC)
ORIGIN = "12330112473455672X"
RESIDENT_ID = "33011219800101001" + resident_id_check_digit("33011219800101001")
WANTED = frozenset(int(tag) for tag in _load.WANTED_TAGS)
_NOT_DICOM = (".py", ".txt", ".json", ".gz", ".bz2", ".dump", ".icc", "README")
CORPUS = sorted(
    [Path(name) for name in get_testdata_files() if Path(name).is_file() and not name.endswith(_NOT_DICOM)]
    + list(SAMPLES.glob("*.dcm")),
    key=lambda path: path.name,
)

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def outcome(read: Callable[[], object]) -> object:
    """What dicom.read made of an input: the exam as data, or the error with its location."""
    try:
        exam = read()
    except AdapterError as error:
        return type(error).__name__, str(error), error.location
    return exam.model_dump(mode="json")  # type: ignore[attr-defined]


def read_both_ways(raw: bytes, monkeypatch: pytest.MonkeyPatch) -> tuple[object, object]:
    walked = outcome(lambda: dicom.read(raw, origin=ORIGIN, received_at=RECEIVED))
    with monkeypatch.context() as patch:
        patch.setattr(_load, "_walk", lambda data: None)
        by_pydicom = outcome(lambda: dicom.read(raw, origin=ORIGIN, received_at=RECEIVED))
    return walked, by_pydicom


def elements_by_pydicom(raw: bytes) -> Dataset:
    return pydicom.dcmread(BytesIO(raw), stop_before_pixels=True, specific_tags=list(_load.WANTED_TAGS))


def assert_same_elements(walked: dict[int, object], raw: bytes) -> None:
    dataset = elements_by_pydicom(raw)
    assert set(walked) == {int(tag) for tag in dataset.keys()}  # noqa: SIM118 (iterating gives elements)
    for tag, ours in walked.items():
        theirs = dataset.get_item(tag)
        if isinstance(theirs, RawDataElement):
            assert ours == theirs, hex(tag)
        elif theirs.VR == "SQ":  # pydicom parses a sequence of undefined length at once
            items = read_items(ours.value, implicit_vr=ours.is_implicit_VR, little_endian=ours.is_little_endian)  # type: ignore[attr-defined]
            assert len(items) == len(theirs.value), hex(tag)
        else:  # converted on reading (Specific Character Set)
            assert convert_raw_data_element(ours).value == theirs.value, hex(tag)  # type: ignore[arg-type]


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_every_corpus_file_reads_the_same_either_way(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    walked, by_pydicom = read_both_ways(path.read_bytes(), monkeypatch)
    assert walked == by_pydicom


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_every_corpus_file_reads_the_same_from_its_path(path: Path) -> None:
    # The DICOM gateway reads each instance from its blob's file (hub/gateways/dicom.py).
    from_path = outcome(lambda: dicom.read(path, origin=ORIGIN, received_at=RECEIVED))
    from_bytes = outcome(lambda: dicom.read(path.read_bytes(), origin=ORIGIN, received_at=RECEIVED))
    if isinstance(from_bytes, dict) and isinstance(from_path, dict):
        for ours, theirs in zip(from_path["attachments"], from_bytes["attachments"], strict=True):
            if ours["size"] is None:  # a path's size is not read (test_dicom); the gateway sets the blob's
                ours["size"] = theirs["size"]
    assert from_path == from_bytes


@pytest.mark.parametrize("path", CORPUS, ids=lambda path: path.name)
def test_what_the_walker_takes_it_reads_as_pydicom_does(path: Path) -> None:
    raw = path.read_bytes()
    try:
        walked, _ = walk_part10(raw, WANTED)
    except WalkError:
        return  # left to pydicom: the test above covers it
    assert_same_elements(walked, raw)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "name",
    [
        "CT_small.dcm",  # explicit VR little endian
        "MR_small_implicit.dcm",
        "MR_small_bigendian.dcm",
        "JPEG2000.dcm",  # encapsulated pixel data
        "waveform_ecg.dcm",
        "nested_priv_SQ.dcm",  # undefined-length private sequences, skipped
    ],
)
def test_the_walker_takes_the_common_syntaxes(name: str) -> None:
    elements, pixels_at = walk_part10(Path(get_testdata_file(name)).read_bytes(), WANTED)  # type: ignore[arg-type]
    assert 0x00080016 in elements or name == "nested_priv_SQ.dcm"
    assert (pixels_at is None) == (name == "waveform_ecg.dcm")


def test_the_walker_takes_every_valid_sample() -> None:
    valid = [path for path in SAMPLES.glob("*.dcm") if not path.name.startswith("bad-")]
    assert valid
    for path in valid:
        assert isinstance(_load.load(path.read_bytes()).dataset, Item), path.name


def _ct() -> Dataset:
    return pydicom.dcmread(get_testdata_file("CT_small.dcm"))


def _encode(dataset: Dataset, syntax: str | None = None) -> bytes:
    """The data set as a Part 10 file, in ``syntax`` (default: the one it was read in)."""
    plain = Dataset(dataset)  # a plain Dataset may be written in another byte order than it was read in
    plain.file_meta = FileMetaDataset(dataset.file_meta)
    if syntax is not None:
        plain.file_meta.TransferSyntaxUID = syntax
    buffer = BytesIO()
    pydicom.dcmwrite(buffer, plain, enforce_file_format=True)
    return buffer.getvalue()


def _undefined_length(dataset: Dataset, keyword: str) -> None:
    element = dataset[keyword]
    element.is_undefined_length = True
    for item in element.value:
        item.is_undefined_length_sequence_item = True


def _with_sequences() -> Dataset:
    """CT_small with Other Patient IDs (wanted) and a private sequence (skipped), both of undefined length,
    the private one nesting another."""
    dataset = _ct()
    ids = []
    for value, issuer in ((RESIDENT_ID, "居民身份证"), ("H0042", "浙江省人民医院")):
        item = Dataset()
        item.PatientID = value
        item.IssuerOfPatientID = issuer
        ids.append(item)
    dataset.SpecificCharacterSet = "GB18030"
    dataset.OtherPatientIDsSequence = Sequence(ids)
    _undefined_length(dataset, "OtherPatientIDsSequence")
    inner = Dataset()
    inner.add_new(0x00310010, "LO", "扫描协议")
    outer = Dataset()
    outer.add_new(0x00310010, "LO", "私有")
    outer.add_new(0x00311001, "SQ", Sequence([inner]))
    outer[0x00311001].is_undefined_length = True
    inner.is_undefined_length_sequence_item = True
    dataset.add_new(0x00310010, "LO", "HUB TEST")
    dataset.add_new(0x00311002, "SQ", Sequence([outer]))
    dataset[0x00311002].is_undefined_length = True
    outer.is_undefined_length_sequence_item = True
    return dataset


SYNTHETIC: dict[str, Callable[[], bytes]] = {
    "sequences-explicit-little": lambda: _encode(_with_sequences()),
    "sequences-implicit-little": lambda: _encode(_with_sequences(), ImplicitVRLittleEndian),
    "sequences-explicit-big": lambda: _encode(_with_sequences(), ExplicitVRBigEndian),
    "sequences-deflated": lambda: _encode(_with_sequences(), DeflatedExplicitVRLittleEndian),
    "gb18030-name": lambda: _encode(_named("GB18030", "王^秀英")),
    "gbk-name": lambda: _encode(_named("GBK", "李^建国")),
}


def _named(charset: str, name: str) -> Dataset:
    dataset = _ct()
    dataset.SpecificCharacterSet = charset
    dataset.PatientName = name
    dataset.StudyDescription = "胸部CT平扫"
    return dataset


@pytest.mark.parametrize("name", SYNTHETIC)
def test_undefined_lengths_syntaxes_and_chinese_text_read_the_same(name: str, monkeypatch: pytest.MonkeyPatch) -> None:
    raw = SYNTHETIC[name]()
    walked, by_pydicom = read_both_ways(raw, monkeypatch)
    assert walked == by_pydicom
    assert isinstance(walked, dict), walked  # an exam, not an error
    if name == "sequences-deflated":
        with pytest.raises(WalkError):
            walk_part10(raw, WANTED)
        return
    elements, _ = walk_part10(raw, WANTED)
    assert_same_elements(elements, raw)  # type: ignore[arg-type]
    assert 0x00311002 not in elements  # the private sequence was skipped


def test_the_other_patient_ids_of_an_undefined_length_sequence_reach_the_exam() -> None:
    exam = dicom.read(_encode(_with_sequences()), origin=ORIGIN, received_at=RECEIVED)
    assert exam.patient.national_id == RESIDENT_ID
    assert ("H0042", "浙江省人民医院") in {(local.value, local.system) for local in exam.patient.local_ids}


def test_a_path_is_read_as_its_bytes(tmp_path: Path) -> None:
    raw = _encode(_named("GB18030", "王^秀英"))
    path = tmp_path / "ct.dcm"
    path.write_bytes(raw)
    from_path = dicom.read(path, origin=ORIGIN, received_at=RECEIVED).model_dump()
    from_bytes = dicom.read(raw, origin=ORIGIN, received_at=RECEIVED).model_dump()
    assert from_path["attachments"][0].pop("size") is None  # a path's size is not read (test_dicom)
    assert from_bytes["attachments"][0].pop("size") == len(raw)
    assert from_path == from_bytes
    assert isinstance(_load.load(path).dataset, Item)


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda raw, at: raw[: at + 5], "inside an element header"),
        (lambda raw, at: raw[:at] + b"\xfe\xff\x0d\xe0\x00\x00\x00\x00" + raw[at:], "out of place"),
        (lambda raw, at: raw[:at] + raw[at : at + 4] + b"Q?" + raw[at + 6 :], "unknown VR"),
        (lambda raw, at: raw[:at] + raw[at : at + 6] + b"\xff\xff" + raw[at + 8 :], "past the end"),
    ],
    ids=["cut-header", "stray-delimiter", "unknown-vr", "long-value"],
)
def test_what_the_walker_does_not_expect_is_left_to_pydicom(
    damage: Callable[[bytes, int], bytes], reason: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = Path(get_testdata_file("CT_small.dcm")).read_bytes()
    at = raw.index(b"\x10\x00\x10\x00PN")  # Patient Name
    damaged = damage(raw, at)
    with pytest.raises(WalkError, match=reason):
        walk_part10(damaged, WANTED)
    walked, by_pydicom = read_both_ways(damaged, monkeypatch)
    assert walked == by_pydicom


@settings(
    max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_mutated_samples_read_the_same_either_way(data: st.DataObject, monkeypatch: pytest.MonkeyPatch) -> None:
    path = data.draw(st.sampled_from(sorted(SAMPLES.glob("*.dcm"))))
    raw = bytearray(path.read_bytes())
    for _ in range(data.draw(st.integers(1, 4))):
        at = data.draw(st.integers(132, len(raw) - 1))
        raw[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(132, len(raw)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        walked, by_pydicom = read_both_ways(bytes(raw[:cut]), monkeypatch)
    assert walked == by_pydicom
