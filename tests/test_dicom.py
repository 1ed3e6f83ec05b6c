"""adapters.dicom: character sets, identifiers, routing, time, waveforms, inputs and failures."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from io import BytesIO
from pathlib import Path

import pydicom
import pytest
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence

from adapters import dicom
from adapters._common import CHINA_TZ, RESIDENT_ID_SYSTEM
from adapters.dicom._classes import centre_for
from adapters.dicom._text import format_person_name
from hub.errors import AdapterError, DecodeError, InvalidMessage, NotAsDeclared, UnsupportedMessage
from hub.ids import derive_exam_id, resident_id_check_digit
from hub.resources import data_dir

SAMPLES = data_dir("examples") / "messages" / "dicom"
CT = "ct-chest-gb18030.dcm"
ECG = "ecg-12lead.dcm"
MR = "mr-iso2022-ir58.dcm"
GBK = "ct-gbk-no-charset.dcm"
CHANGHUA = "12330112473455672X"  # 昌化镇卫生院
TAIHUYUAN = "123301124745767837"  # 太湖源镇卫生院


def raw(name: str) -> bytes:
    return (SAMPLES / name).read_bytes()


def dataset(name: str) -> Dataset:
    return pydicom.dcmread(BytesIO(raw(name)))


def encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def raw_element(tag: int, vr: str, value: bytes) -> RawDataElement:
    """An element written as these exact bytes, even when they are not a valid value."""
    return RawDataElement(pydicom.tag.Tag(tag), vr, len(value), value, 0, False, True)


def resident_id(first17: str) -> str:
    return first17 + resident_id_check_digit(first17)


def test_public_api_is_read() -> None:
    assert dicom.__all__ == ["read"]
    assert callable(dicom.read)


# Character sets


@pytest.mark.parametrize(
    ("fallback", "codec"), [("GBK", "gbk"), ("gbk", "gbk"), ("GB18030", "gb18030"), ("cp936", "gbk")]
)
def test_gbk_without_charset_decodes_with_the_senders_fallback(fallback: str, codec: str) -> None:
    exam = dicom.read(raw(GBK), charset=fallback)
    assert exam.patient.name == "刘建国"
    assert exam.service.display == "头颅CT平扫"
    assert exam.source.charset == codec


def test_gbk_without_charset_and_without_fallback_tells_the_sender_what_to_fix() -> None:
    with pytest.raises(DecodeError) as raised:
        dicom.read(raw(GBK))
    assert raised.value.location == "(0010,0010)"
    assert "Specific Character Set" in raised.value.message
    assert "fallback" in raised.value.message
    assert "刘" not in str(raised.value)


def test_an_unknown_fallback_charset_is_a_decode_error_naming_the_configuration() -> None:
    with pytest.raises(DecodeError) as raised:
        dicom.read(raw(GBK), charset="klingon")
    assert raised.value.location == "(0008,0005)"
    assert "klingon" in raised.value.message


def test_the_declared_charset_wins_over_the_fallback() -> None:
    exam = dicom.read(raw(CT), charset="latin-1")
    assert exam.patient.name == "王秀英"
    assert exam.source.charset == "gb18030"


def test_iso_2022_ir_58_escapes_are_removed_from_names_and_text() -> None:
    exam = dicom.read(raw(MR))
    assert exam.patient.name == "陈桂英"
    assert exam.service.display == "头颅MR平扫"
    assert exam.attachments[0].title == "T2WI 轴位"
    assert exam.patient.national_id is not None  # issuer "身份证" was written under IR 58 too


def test_iso_2022_ir_58_text_pydicom_already_converted_in_a_dataset_is_cleaned() -> None:
    ds = dataset(MR)
    assert "头颅" in ds.StudyDescription  # pydicom 3.0.2 leaves "\x1b$)A" in front of it
    assert str(ds.PatientName)
    exam = dicom.read(ds)
    assert exam.service.display == "头颅MR平扫"
    assert exam.patient.name == "陈桂英"


def test_iso_2022_ir_58_with_a_return_to_ascii_escape() -> None:
    ds = dataset(MR)
    ds[0x00081030] = DataElement(0x00081030, "LO", b"\x1b$)A" + "胸部".encode("gb2312") + b"\x1b(BCT")
    assert dicom.read(encode(ds)).service.display == "胸部CT"


def test_bytes_invalid_for_the_declared_charset_are_a_decode_error() -> None:
    ds = dataset(ECG)  # ISO_IR 192 (UTF-8)
    ds[0x00100010] = DataElement(0x00100010, "PN", "张^伟".encode("gbk"))
    with pytest.raises(DecodeError) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0010,0010)"
    assert "utf-8" in raised.value.message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_an_unknown_declared_charset_fails_only_on_non_ascii_text() -> None:
    ds = dataset(ECG)
    ds.SpecificCharacterSet = "ISO_IR 999"
    with pytest.raises(DecodeError) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0008,0005)"
    ds.PatientName = "Zhang^Wei"
    ds.IssuerOfPatientID = "CHZ"
    ds.InstitutionCodeSequence[0].CodeMeaning = "Changhua"
    ds.ProcedureCodeSequence[0].CodeMeaning = "ECG"
    assert dicom.read(encode(ds)).patient.name == "Zhang Wei"


def test_a_gbk_trail_byte_that_is_a_backslash_does_not_split_the_value() -> None:
    # In GBK the second byte of a character may be 0x5C, the DICOM value separator.
    char = next(c for c in map(chr, range(0x4E00, 0x9FA6)) if c.encode("gbk")[1:] == b"\\")
    ds = dataset(GBK)
    ds[0x00100010] = DataElement(0x00100010, "PN", ("王^" + char + "华").encode("gbk"))
    assert dicom.read(encode(ds), charset="GBK").patient.name == "王" + char + "华"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("Wang^Xiuying=王^秀英", "王秀英"),
        ("Chen^Guiying=陈^桂英=", "陈桂英"),
        ("张^伟", "张伟"),
        ("Zhang^Wei", "Zhang Wei"),
        ("Zhang^Wei==", "Zhang Wei"),
        ("Zhang^Wei=^=", "Zhang Wei"),
        ("阿卜杜拉·买买提", "阿卜杜拉·买买提"),
        ("^^", None),
    ],
)
def test_person_names_prefer_the_ideographic_group(value: str, expected: str | None) -> None:
    assert format_person_name(value) == expected


# Patient identifiers


def test_a_labelled_resident_id_failing_gb11643_stays_local_with_a_notice() -> None:
    ds = dataset(CT)
    good = ds.OtherPatientIDsSequence[0].PatientID
    bad = good[:-1] + ("0" if good[-1] != "0" else "1")
    ds.OtherPatientIDsSequence[0].PatientID = bad
    exam = dicom.read(encode(ds))
    assert exam.patient.national_id is None
    assert bad in [identifier.value for identifier in exam.patient.local_ids]
    assert [notice.location for notice in exam.notices] == ["(0010,1002)[0](0010,0020)"]
    assert bad not in exam.notices[0].message


def test_an_unlabelled_number_is_never_taken_for_a_resident_id() -> None:
    ds = dataset(CT)
    del ds.OtherPatientIDsSequence[0].IssuerOfPatientID
    exam = dicom.read(encode(ds))
    assert exam.patient.national_id is None
    assert exam.notices == ()


@pytest.mark.parametrize("issuer", ["身份证", "居民身份证号", "2.16.156.10011.1.3", RESIDENT_ID_SYSTEM])
def test_the_main_patient_id_can_be_the_resident_id(issuer: str) -> None:
    ds = dataset(ECG)
    number = resident_id("33011219620821031")
    ds.PatientID = number
    ds.IssuerOfPatientID = issuer
    del ds.OtherPatientIDsSequence
    exam = dicom.read(encode(ds))
    assert exam.patient.national_id == number
    assert exam.patient.local_ids == ()


def test_local_ids_carry_their_issuer_as_system() -> None:
    exam = dicom.read(raw(CT))
    assert [(i.value, i.system) for i in exam.patient.local_ids] == [
        ("THY0012345", "太湖源镇卫生院"),
        ("A33011256789", "医保卡"),
    ]


# Routing, origin, order identifiers, service, priority


@pytest.mark.parametrize(
    "sop_class",
    [
        pydicom.uid.CTImageStorage,
        pydicom.uid.EnhancedCTImageStorage,
        pydicom.uid.MRImageStorage,
        pydicom.uid.EnhancedMRImageStorage,
        pydicom.uid.ComputedRadiographyImageStorage,
        pydicom.uid.DigitalXRayImageStorageForPresentation,
        pydicom.uid.DigitalMammographyXRayImageStorageForPresentation,
        pydicom.uid.UltrasoundImageStorage,
        pydicom.uid.UltrasoundMultiFrameImageStorage,
        pydicom.uid.XRayAngiographicImageStorage,
        pydicom.uid.XRayRadiofluoroscopicImageStorage,
        pydicom.uid.NuclearMedicineImageStorage,
        pydicom.uid.PositronEmissionTomographyImageStorage,
        pydicom.uid.SecondaryCaptureImageStorage,
        pydicom.uid.VLEndoscopicImageStorage,
    ],
)
def test_image_storage_classes_go_to_imaging(sop_class: str) -> None:
    assert centre_for(sop_class) == "imaging"


@pytest.mark.parametrize(
    ("sop_class", "centre"),
    [
        (pydicom.uid.TwelveLeadECGWaveformStorage, "ecg"),
        (pydicom.uid.GeneralECGWaveformStorage, "ecg"),
        (pydicom.uid.AmbulatoryECGWaveformStorage, "ecg"),
        (pydicom.uid.VLWholeSlideMicroscopyImageStorage, "pathology"),
        (pydicom.uid.BasicTextSRStorage, None),
        (pydicom.uid.RTPlanStorage, None),
        (pydicom.uid.RTImageStorage, None),
        (pydicom.uid.EncapsulatedPDFStorage, None),
        (pydicom.uid.HemodynamicWaveformStorage, None),
        (pydicom.uid.GrayscaleSoftcopyPresentationStateStorage, None),
        ("1.2.826.0.1.3680043.8.498.1", None),
    ],
)
def test_other_classes(sop_class: str, centre: str | None) -> None:
    assert centre_for(sop_class) == centre


def test_an_rt_plan_is_unsupported_at_the_sop_class() -> None:
    ds = dataset(CT)
    ds.SOPClassUID = pydicom.uid.RTPlanStorage
    with pytest.raises(UnsupportedMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0008,0016)"
    assert "RT Plan Storage" in raised.value.message


def test_a_missing_sop_class_is_invalid() -> None:
    ds = dataset(ECG)
    del ds.SOPClassUID
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0008,0016)"


def test_origin_parameter_overrides_the_institution_code() -> None:
    exam = dicom.read(raw(CT), origin=CHANGHUA)
    assert exam.origin == CHANGHUA
    assert exam.exam_id == derive_exam_id(CHANGHUA, placer_order="THYO2403150087")


def test_an_institution_name_is_not_an_origin() -> None:
    ds = dataset(CT)
    del ds.InstitutionCodeSequence
    assert ds.InstitutionName == "太湖源镇卫生院"
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0008,0082)"
    assert dicom.read(encode(ds), origin=TAIHUYUAN).origin == TAIHUYUAN


def test_a_short_code_value_is_an_origin_too() -> None:
    ds = dataset(CT)
    item = ds.InstitutionCodeSequence[0]
    del item.LongCodeValue
    item.CodeValue = "THY001"
    assert dicom.read(encode(ds)).origin == "THY001"


def test_exam_id_uses_the_placer_order_then_accession_then_study_uid() -> None:
    ds = dataset(CT)
    exam = dicom.read(encode(ds))
    assert exam.exam_id == derive_exam_id(TAIHUYUAN, placer_order="THYO2403150087")
    del ds.PlacerOrderNumberImagingServiceRequest
    assert dicom.read(encode(ds)).exam_id == derive_exam_id(TAIHUYUAN, accession="THYC2403150021")
    del ds.AccessionNumber
    assert dicom.read(encode(ds)).exam_id == derive_exam_id(TAIHUYUAN, study_uid=ds.StudyInstanceUID)


def test_no_order_identifier_at_all_is_invalid() -> None:
    ds = dataset(MR)
    del ds.AccessionNumber
    del ds.StudyInstanceUID
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0020,000D)"
    assert "(0040,2016)" in raised.value.message


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_a_malformed_uid_is_invalid_at_its_tag() -> None:
    ds = dataset(CT)
    ds.StudyInstanceUID = "1.2.abc"
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0020,000D)"


def test_a_procedure_code_item_without_a_code_is_invalid_where_the_code_belongs() -> None:
    ds = dataset(CT)
    del ds.RequestedProcedureCodeSequence[0].CodeValue
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0032,1064)[0](0008,0100)"


def test_without_codes_or_modality_there_is_no_service() -> None:
    ds = dataset(MR)
    del ds.Modality
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(0008,0060)"


@pytest.mark.parametrize(
    ("value", "priority"),
    [
        ("STAT", "stat"),
        ("HIGH", "urgent"),
        ("ROUTINE", "routine"),
        ("MEDIUM", "routine"),
        ("LOW", "routine"),
        (None, "routine"),
    ],
)
def test_priority(value: str | None, priority: str) -> None:
    ds = dataset(CT)
    if value is None:
        del ds.RequestedProcedurePriority
    else:
        ds.RequestedProcedurePriority = value
    assert dicom.read(encode(ds)).priority == priority


# Time


def test_the_timezone_offset_applies_to_the_study_time() -> None:
    ds = dataset(CT)
    ds.TimezoneOffsetFromUTC = "-0500"
    performed = dicom.read(encode(ds)).performed_at
    assert performed is not None
    assert performed.utcoffset() == timedelta(hours=-5)
    assert (performed.hour, performed.minute, performed.second) == (9, 30, 12)


def test_an_unreadable_timezone_offset_means_china_time_and_a_notice() -> None:
    ds = dataset(CT)
    ds.TimezoneOffsetFromUTC = "+8"
    exam = dicom.read(encode(ds))
    assert exam.performed_at == datetime(2024, 3, 15, 9, 30, 12, tzinfo=CHINA_TZ)
    assert [notice.location for notice in exam.notices] == ["(0008,0201)"]


def test_acquisition_datetime_when_there_is_no_study_date() -> None:
    ds = dataset(ECG)
    del ds.StudyDate
    ds.AcquisitionDateTime = "20240316021745.5+0900"
    assert dicom.read(encode(ds)).performed_at == datetime(2024, 3, 16, 1, 17, 45, 500000, tzinfo=CHINA_TZ)


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_an_invalid_birth_date_is_dropped_with_a_notice() -> None:
    ds = dataset(CT)
    ds.PatientBirthDate = "19561399"
    exam = dicom.read(encode(ds))
    assert exam.patient.birth_date is None
    assert [notice.location for notice in exam.notices] == ["(0010,0030)"]


def test_received_at() -> None:
    before = datetime.now(UTC)
    assert dicom.read(raw(CT)).source.received_at >= before
    given = datetime(2024, 3, 15, 1, 40, tzinfo=UTC)
    assert dicom.read(raw(CT), received_at=given).source.received_at == given
    naive = datetime(2024, 3, 15, 9, 40)
    assert dicom.read(raw(CT), received_at=naive).source.received_at == naive.replace(tzinfo=CHINA_TZ)


# ECG


@pytest.mark.parametrize("kind", ["bytes", "path", "dataset"])
def test_ecg_waveform_data_is_referenced_inside_the_instance(kind: str) -> None:
    source: bytes | Path | Dataset = {"bytes": raw(ECG), "path": SAMPLES / ECG, "dataset": dataset(ECG)}[kind]
    exam = dicom.read(source)
    assert exam.waveform is not None and exam.waveform.data is not None
    assert exam.waveform.data.uri == "#(5400,0100)[0](5400,1010)"  # resolves against Source.uri
    assert exam.waveform.data.size == 240_000
    assert exam.waveform.data.sha256 is None  # the blob store hashes the instance once
    whole = exam.attachments[0]
    assert whole.uri == f"urn:oid:{exam.source.message_id}"
    assert whole.sha256 is None
    assert whole.size == (len(raw(ECG)) if kind == "bytes" else None)


def test_ecg_without_waveform_sequence_is_invalid() -> None:
    ds = dataset(ECG)
    del ds.WaveformSequence
    with pytest.raises(InvalidMessage) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(5400,0100)"


def test_ecg_measurement_that_is_not_a_number_is_skipped_with_a_notice() -> None:
    ds = dataset(ECG)
    numeric = [i for i, item in enumerate(ds.WaveformAnnotationSequence) if "NumericValue" in item]
    ds.WaveformAnnotationSequence[numeric[0]][0x0040A30A] = raw_element(0x0040A30A, "DS", b"abc ")
    exam = dicom.read(encode(ds))
    assert len(exam.observations) == 8
    assert [notice.location for notice in exam.notices] == [f"(0040,B020)[{numeric[0]}](0040,A30A)"]


def test_ecg_measurements_are_observed_when_the_ecg_was_recorded() -> None:
    exam = dicom.read(raw(ECG))
    assert {obs.observed_at for obs in exam.observations} == {exam.performed_at}
    assert all(obs.status == "final" for obs in exam.observations)


# Inputs


def test_a_path_as_str_and_as_pathlike() -> None:
    assert dicom.read(str(SAMPLES / CT)).patient.name == "王秀英"
    assert dicom.read(SAMPLES / CT).patient.name == "王秀英"


def test_a_missing_file_is_a_decode_error() -> None:
    with pytest.raises(DecodeError) as raised:
        dicom.read(SAMPLES / "no-such-file.dcm")
    assert raised.value.location == "preamble"


def test_bytearray_and_memoryview() -> None:
    assert dicom.read(bytearray(raw(CT))).patient.name == "王秀英"
    assert dicom.read(memoryview(raw(CT))).patient.name == "王秀英"


def test_a_data_set_without_file_meta_as_received_over_the_network() -> None:
    buffer = DicomBytesIO()
    buffer.is_little_endian = True
    buffer.is_implicit_VR = True
    write_dataset(buffer, dataset(CT))
    exam = dicom.read(buffer.getvalue())
    assert exam.patient.name == "王秀英"
    assert exam.service.code == "CT0201"


def test_a_deflated_transfer_syntax() -> None:
    ds = dataset(ECG)
    ds.file_meta.TransferSyntaxUID = pydicom.uid.DeflatedExplicitVRLittleEndian
    exam = dicom.read(encode(ds))
    assert exam.patient.name == "张伟"
    assert len(exam.observations) == 9


def test_pixel_data_of_a_dataset_is_not_touched() -> None:
    ds = dataset(CT)
    assert isinstance(ds.get_item(0x7FE00010), RawDataElement)
    dicom.read(ds)
    assert isinstance(ds.get_item(0x7FE00010), RawDataElement)


def test_other_inputs_are_a_type_error() -> None:
    with pytest.raises(TypeError):
        dicom.read(12345)  # type: ignore[arg-type]


# Truncated and broken inputs


def element_ends(data: bytes) -> set[int]:
    """Offsets where a top-level element of the data set ends (all of defined length here)."""
    ends: set[int] = set()
    buffer = BytesIO(data)

    def note_end(tag: object, vr: object, length: int) -> bool:
        ends.add(buffer.tell() + length)
        return False

    pydicom.filereader.read_partial(buffer, stop_when=note_end)
    return ends


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_a_header_cut_anywhere_is_an_adapter_error_and_inside_an_element_a_decode_error() -> None:
    data = raw(CT)
    pixel_data = data.index(b"\xe0\x7f\x10\x00")
    meta_end = 132 + 12 + int.from_bytes(data[140:144], "little")
    ends = element_ends(data)
    for cut in range(0, pixel_data + 100, 3):
        with pytest.raises(AdapterError) as raised:
            dicom.read(data[:cut])
        if cut >= meta_end and cut not in ends:  # an input cut between two elements could be whole
            assert isinstance(raised.value, DecodeError), (cut, raised.value)


def test_an_ecg_cut_inside_its_waveform_is_a_decode_error() -> None:
    data = raw(ECG)
    for cut in (20_000, 150_000, len(data) - 300):
        with pytest.raises(DecodeError):
            dicom.read(data[:cut])


def test_stray_bytes_after_the_last_element_are_a_decode_error() -> None:
    ds = dataset(MR)
    del ds.PixelData
    ds.SOPClassUID = pydicom.uid.TwelveLeadECGWaveformStorage  # no pixel data expected
    ds.WaveformSequence = dataset(ECG).WaveformSequence
    ds["WaveformSequence"].is_undefined_length = False  # a last element whose end is known
    for tag in [tag for tag in ds.keys() if tag > 0x54000100]:  # noqa: SIM118 - a Dataset iterates over elements, not tags
        del ds[tag]
    data = encode(ds)
    assert dicom.read(data).centre == "ecg"
    with pytest.raises(DecodeError) as raised:
        dicom.read(data + b"\x08\x00\x10")
    assert raised.value.location == "(5400,0100)"


def test_an_image_without_pixel_data_is_a_decode_error() -> None:
    ds = dataset(CT)
    del ds.PixelData
    with pytest.raises(DecodeError) as raised:
        dicom.read(encode(ds))
    assert raised.value.location == "(7FE0,0010)"


def test_a_sequence_with_broken_item_framing_is_a_decode_error_at_the_sequence() -> None:
    ds = dataset(CT)
    ds[0x00101002] = raw_element(0x00101002, "SQ", b"\x10\x00\x20\x00\x00\x00\x00\x00")
    data = encode(ds)
    with pytest.raises(DecodeError) as raised:
        dicom.read(data)
    assert raised.value.location == "(0010,1002)"


@pytest.mark.filterwarnings("ignore::UserWarning")  # pydicom warns about the broken values
def test_errors_never_carry_patient_names() -> None:
    ds = dataset(ECG)
    ds[0x0020000D] = raw_element(0x0020000D, "UI", "not a uid 张伟".encode())
    with pytest.raises(AdapterError) as raised:
        dicom.read(encode(ds))
    assert "张伟" not in str(raised.value)


def test_code_sequences_sent_with_another_vr_are_a_decode_error() -> None:
    ds = dataset(CT)
    ds[0x00321064] = DataElement(0x00321064, "LO", "CT0201")
    ds_bytes = encode(ds)
    with pytest.raises(DecodeError) as raised:
        dicom.read(ds_bytes)
    assert raised.value.location == "(0032,1064)"


def test_institution_code_sequence_can_hold_several_items_first_wins() -> None:
    ds = dataset(CT)
    extra = Dataset()
    extra.LongCodeValue = CHANGHUA
    extra.CodingSchemeDesignator = "99USCC"
    ds.InstitutionCodeSequence = Sequence([ds.InstitutionCodeSequence[0], extra])
    assert dicom.read(encode(ds)).origin == TAIHUYUAN


def test_the_uids_a_c_store_request_announced_must_be_the_data_sets() -> None:
    sample = dataset("ct-gbk-no-charset.dcm")
    announced = {"affected_sop_class": sample.SOPClassUID, "affected_sop_instance": sample.SOPInstanceUID}
    exam = dicom.read(raw("ct-gbk-no-charset.dcm"), charset="GBK", **announced)
    assert exam.source.message_id == sample.SOPInstanceUID and exam.patient.name == "刘建国"
    other_class = {**announced, "affected_sop_class": "1.2.840.10008.5.1.4.1.1.4"}  # MR Image Storage
    other_instance = {**announced, "affected_sop_instance": sample.SOPInstanceUID + ".1"}
    for wrong, location, element in (
        (other_class, "(0008,0016)", "Class"),
        (other_instance, "(0008,0018)", "Instance"),
    ):
        with pytest.raises(NotAsDeclared) as caught:
            dicom.read(raw("ct-gbk-no-charset.dcm"), charset="GBK", **wrong)
        assert caught.value.location == location
        assert str(caught.value).startswith(f"{location}: the data set's SOP {element} UID is not the C-STORE")
    # A class no centre reads is named as such, whatever the request announced.
    with pytest.raises(UnsupportedMessage, match=r"\(0008,0016\): SOP class 1\.2\.840\.10008\.5\.1\.4\.1\.1\.88\.11"):
        dicom.read(raw("bad-sr-unsupported.dcm"), **announced)
