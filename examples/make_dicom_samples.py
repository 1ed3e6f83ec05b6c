"""Write the DICOM sample messages of examples/messages/dicom/.

    python examples/make_dicom_samples.py [OUTDIR]

Each sample is one of pydicom's bundled test files relabelled as an exam sent
by a member of the 临安区 consortium: Chinese patients with valid resident ID
numbers, the members' unified social credit codes, local order codes. The
output is deterministic (name-based UUIDs under 2.25, fixed
dates, fixed implementation UID), so a test can rebuild the files and compare
them byte for byte.
"""

from __future__ import annotations

import sys
import uuid
from io import BytesIO
from pathlib import Path

from pydicom import dcmread
from pydicom.data import get_testdata_file
from pydicom.dataelem import DataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import UID, BasicTextSRStorage, ExplicitVRLittleEndian

from hub.ids import resident_id_check_digit

OUT_DIR = Path(__file__).resolve().parent / "messages" / "dicom"
RESIDENT_ID_OID = "2.16.156.10011.1.3"
ORDER_SCHEME = "99LAYGT"  # the consortium's local order catalogue (private coding scheme, hence "99")
INSTITUTION_SCHEME = "99USCC"  # unified social credit codes (GB 32100)

INSTITUTIONS = {
    "临安区人民医院": "12330112470101234B",
    "青山湖街道社区卫生服务中心": "12330112471213450B",
    "於潜镇中心卫生院": "12330112472334561L",
    "昌化镇卫生院": "12330112473455672X",
    "太湖源镇卫生院": "123301124745767837",
    "高虹镇卫生院": "12330112475697894G",
    "板桥镇卫生院": "123301124767189052",
}


def resident_id(birth: str, sequence: str) -> str:
    """A valid 18-digit resident ID registered in 临安区 (330112); an odd last sequence digit means male."""
    first17 = f"330112{birth}{sequence}"
    return first17 + resident_id_check_digit(first17)


def uid(*labels: str) -> UID:
    """A fixed UID for a label: the name-based (version 5) UUID under the 2.25 root (PS3.5 B.2)."""
    return UID(f"2.25.{uuid.uuid5(uuid.NAMESPACE_URL, 'urn:consortium-hub:dicom-samples:' + ':'.join(labels)).int}")


def bundled(name: str) -> Dataset:
    """One of the test files in pydicom's wheel."""
    path = get_testdata_file(name, read=False)
    if not isinstance(path, str):
        raise FileNotFoundError(f"pydicom does not ship {name}")
    return dcmread(path)


IMPLEMENTATION_UID = uid("implementation")
IR58 = b"\x1b$)A"  # ISO 2022 escape sequence designating GB2312 into G1 (PS3.5 Annex K)


def ir58(text: str) -> bytes:
    """GB2312 text as written under ISO 2022 IR 58: the designation, then the EUC-CN (high bit set) bytes."""
    return IR58 + text.encode("gb2312")


def code_item(value: str, scheme: str, meaning: str | bytes) -> Dataset:
    item = Dataset()
    if len(value) > 16:  # too long for Code Value (SH): PS3.3 8.8 says Long Code Value
        item.LongCodeValue = value
    else:
        item.CodeValue = value
    item.CodingSchemeDesignator = scheme
    if isinstance(meaning, bytes):
        item[0x00080104] = DataElement(0x00080104, "LO", meaning)
    else:
        item.CodeMeaning = meaning
    return item


def institution(ds: Dataset, name: str, *, name_bytes: bytes | None = None) -> None:
    if name_bytes is None:
        ds.InstitutionName = name
    else:
        ds[0x00080080] = DataElement(0x00080080, "LO", name_bytes)
    ds.InstitutionCodeSequence = Sequence([code_item(INSTITUTIONS[name], INSTITUTION_SCHEME, name_bytes or name)])


def relabel(ds: Dataset, sample: str, *, date: str, time: str) -> None:
    """New identity for a bundled test file: UIDs, dates, and none of its original patient data."""
    ds.preamble = b"\x00" * 128
    ds.StudyInstanceUID = uid(sample, "study")
    ds.SeriesInstanceUID = uid(sample, "series")
    ds.SOPInstanceUID = uid(sample, "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "CONSORTIUMHUB1"
    if "FrameOfReferenceUID" in ds:
        ds.FrameOfReferenceUID = uid(sample, "frame of reference")
    if "InstanceCreatorUID" in ds:
        del ds.InstanceCreatorUID
    for keyword in ("InstanceCreationDate", "StudyDate", "SeriesDate", "AcquisitionDate", "ContentDate"):
        if keyword in ds:
            setattr(ds, keyword, date)
    for keyword in ("InstanceCreationTime", "StudyTime", "SeriesTime", "AcquisitionTime", "ContentTime"):
        if keyword in ds:
            setattr(ds, keyword, time)
    for keyword in ("OtherPatientIDs", "OtherPatientIDsSequence", "PatientAddress", "AdditionalPatientHistory"):
        if keyword in ds:
            delattr(ds, keyword)


def other_id(value: str, *, issuer: str | bytes | None = None, qualifiers: Dataset | None = None) -> Dataset:
    item = Dataset()
    item.PatientID = value
    if isinstance(issuer, bytes):
        item[0x00100021] = DataElement(0x00100021, "LO", issuer)
    elif issuer is not None:
        item.IssuerOfPatientID = issuer
    item.TypeOfPatientID = "TEXT"
    if qualifiers is not None:
        item.IssuerOfPatientIDQualifiersSequence = Sequence([qualifiers])
    return item


def encode(ds: Dataset) -> bytes:
    buffer = BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def ct_chest_gb18030() -> bytes:
    """太湖源镇卫生院: an urgent chest CT, GB18030, romanised and ideographic name groups."""
    ds = bundled("CT_small.dcm")
    relabel(ds, "ct-chest-gb18030", date="20240315", time="093012")
    ds.SpecificCharacterSet = "GB18030"
    ds.TimezoneOffsetFromUTC = "+0800"
    ds.PatientName = "Wang^Xiuying=王^秀英"
    ds.PatientID = "THY0012345"
    ds.IssuerOfPatientID = "太湖源镇卫生院"
    ds.PatientBirthDate = "19560314"
    ds.PatientSex = "F"
    ds.PatientAge = "068Y"
    ds.OtherPatientIDsSequence = Sequence(
        [other_id(resident_id("19560314", "042"), issuer="身份证"), other_id("A33011256789", issuer="医保卡")]
    )
    institution(ds, "太湖源镇卫生院")
    ds.ReferringPhysicianName = "Li^Ming=李^明"
    ds.StationName = "THY-CT01"
    ds.StudyID = "THY0315021"
    ds.AccessionNumber = "THYC2403150021"
    ds.PlacerOrderNumberImagingServiceRequest = "THYO2403150087"
    ds.StudyDescription = "胸部CT平扫"
    ds.SeriesDescription = "胸部平扫 5mm 肺窗"
    ds.RequestedProcedurePriority = "HIGH"
    ds.RequestedProcedureCodeSequence = Sequence([code_item("CT0201", ORDER_SCHEME, "胸部CT平扫")])
    ds.ImageComments = "咳嗽两周，排除肺部感染"
    return encode(ds)


def ecg_12lead() -> bytes:
    """昌化镇卫生院: a STAT 12-lead ECG at night (chest pain), UTF-8, name only in Chinese."""
    ds = bundled("waveform_ecg.dcm")
    relabel(ds, "ecg-12lead", date="20240316", time="021745")
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.AcquisitionDateTime = "20240316021745"
    ds.PatientName = "张^伟"
    ds.PatientID = "CHZ0008812"
    ds.IssuerOfPatientID = "昌化镇卫生院"
    ds.PatientBirthDate = "19620821"
    ds.PatientSex = "M"
    ds.PatientAge = "061Y"
    qualifiers = Dataset()
    qualifiers.UniversalEntityID = RESIDENT_ID_OID
    qualifiers.UniversalEntityIDType = "ISO"
    qualifiers.IdentifierTypeCode = "NNCHN"
    ds.OtherPatientIDsSequence = Sequence([other_id(resident_id("19620821", "031"), qualifiers=qualifiers)])
    institution(ds, "昌化镇卫生院")
    ds.ReferringPhysicianName = "刘^芳"
    ds.RequestingPhysician = "刘^芳"
    ds.CurrentPatientLocation = "急诊留观"
    ds.StationName = "CHZ-ECG1"
    ds.AccessionNumber = "CHZE2403160007"
    request = Dataset()
    request.RequestedProcedureID = "RP2403160007"
    request.PlacerOrderNumberImagingServiceRequest = "CHZO2403160031"
    ds.RequestAttributesSequence = Sequence([request])
    ds.ProcedureCodeSequence = Sequence([code_item("ECG01", ORDER_SCHEME, "常规十二导联心电图")])
    ds.StudyDescription = "常规十二导联心电图"
    ds.RequestedProcedurePriority = "STAT"
    ds.ReasonForStudy = "胸痛2小时"
    statements = {"RITMO SINUSALE": "窦性心律", "ECG NORMALE": "正常心电图"}
    for item in ds.WaveformAnnotationSequence:
        if "UnformattedTextValue" in item:
            item.UnformattedTextValue = statements.get(item.UnformattedTextValue, item.UnformattedTextValue)
    return encode(ds)


def mr_iso2022_ir58() -> bytes:
    """青山湖街道社区卫生服务中心: a routine head MR, GB2312 through ISO 2022 IR 58 escapes, no order code."""
    ds = bundled("MR_small.dcm")
    relabel(ds, "mr-iso2022-ir58", date="20240317", time="140533")
    ds.SpecificCharacterSet = ["", "ISO 2022 IR 58"]
    ds.TimezoneOffsetFromUTC = "+0800"
    # The PS3.5 Annex K example layout: alphabetic=ESC$)A family^ESC$)A given= (empty phonetic group).
    name = b"Chen^Guiying=" + ir58("陈") + b"^" + ir58("桂英") + b"="
    ds[0x00100010] = DataElement(0x00100010, "PN", name)
    ds.PatientID = "QSH0000781"
    ds.PatientBirthDate = "19481102"
    ds.PatientSex = "F"
    ds.PatientAge = "075Y"
    ds.OtherPatientIDsSequence = Sequence([other_id(resident_id("19481102", "026"), issuer=ir58("身份证"))])
    institution(ds, "青山湖街道社区卫生服务中心", name_bytes=ir58("青山湖街道社区卫生服务中心"))
    ds.AccessionNumber = "QSHM2403170003"
    ds[0x00081030] = DataElement(0x00081030, "LO", ir58("头颅") + b"MR" + "平扫".encode("gb2312"))
    ds[0x0008103E] = DataElement(0x0008103E, "LO", b"T2WI " + ir58("轴位"))
    ds.NameOfPhysiciansReadingStudy = ""
    ds.OperatorsName = ""
    return encode(ds)


def ct_gbk_no_charset() -> bytes:
    """於潜镇中心卫生院: an old CT that writes GBK text and declares no Specific Character Set."""
    ds = bundled("CT_small.dcm")
    relabel(ds, "ct-gbk-no-charset", date="20240318", time="101522")
    del ds.SpecificCharacterSet
    del ds.TimezoneOffsetFromUTC
    ds[0x00100010] = DataElement(0x00100010, "PN", "刘^建国".encode("gbk"))
    ds.PatientID = "YQ00045123"
    ds.PatientBirthDate = "19530509"
    ds.PatientSex = "M"
    ds.PatientAge = "070Y"
    ds.OtherPatientIDsSequence = Sequence([other_id(resident_id("19530509", "017"), issuer="身份证".encode("gbk"))])
    institution(ds, "於潜镇中心卫生院", name_bytes="於潜镇中心卫生院".encode("gbk"))
    ds.StationName = "YQ-CT"
    ds.StudyID = "YQ0318042"
    ds.AccessionNumber = "YQC2403180042"
    ds.PlacerOrderNumberImagingServiceRequest = "YQO2403180042"
    ds[0x00081030] = DataElement(0x00081030, "LO", "头颅CT平扫".encode("gbk"))
    ds.SeriesDescription = "HEAD 5mm"
    ds.RequestedProcedurePriority = "ROUTINE"
    ds.RequestedProcedureCodeSequence = Sequence([code_item("CT0101", ORDER_SCHEME, "头颅CT平扫".encode("gbk"))])
    ds.ImageComments = ""
    return encode(ds)


def bad_sr_unsupported() -> bytes:
    """高虹镇卫生院: a Basic Text SR (a typed report, not an exam to read): the hub does not take it."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.MediaStorageSOPClassUID = BasicTextSRStorage
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = BasicTextSRStorage
    ds.Modality = "SR"
    ds.StudyDate = ds.ContentDate = "20240319"
    ds.StudyTime = ds.ContentTime = "083000"
    ds.AccessionNumber = "GHR2403190004"
    institution(ds, "高虹镇卫生院")
    ds.PatientName = "周^丽华"
    ds.PatientID = "GH0002231"
    ds.PatientBirthDate = "19700606"
    ds.PatientSex = "F"
    ds.SeriesNumber = "1"
    ds.InstanceNumber = "1"
    ds.ValueType = "CONTAINER"
    ds.ConceptNameCodeSequence = Sequence([code_item("121070", "DCM", "Findings")])
    ds.ContinuityOfContent = "SEPARATE"
    ds.CompletionFlag = "COMPLETE"
    ds.VerificationFlag = "UNVERIFIED"
    finding = Dataset()
    finding.RelationshipType = "CONTAINS"
    finding.ValueType = "TEXT"
    finding.ConceptNameCodeSequence = Sequence([code_item("121071", "DCM", "Finding")])
    finding.TextValue = "双肺纹理增多，未见明显实变影。"
    ds.ContentSequence = Sequence([finding])
    ds.preamble = b"\x00" * 128
    ds.StudyInstanceUID = uid("bad-sr-unsupported", "study")
    ds.SeriesInstanceUID = uid("bad-sr-unsupported", "series")
    ds.SOPInstanceUID = uid("bad-sr-unsupported", "instance")
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.file_meta.ImplementationClassUID = IMPLEMENTATION_UID
    ds.file_meta.ImplementationVersionName = "CONSORTIUMHUB1"
    return encode(ds)


# A text export sent to the DICOM port by mistake.
NOT_DICOM = "检查申请单（设备导出的文本，不是DICOM）\r\n申请科室: 内科\r\n检查项目: 胸部CT平扫\r\n" * 4
# The truncated sample: the chest CT cut off in the middle of its pixel data, as by a dropped connection.
TRUNCATED_LENGTH = 20_000


def build_samples() -> dict[str, bytes]:
    """File name -> content, for every sample."""
    ct = ct_chest_gb18030()
    return {
        "ct-chest-gb18030.dcm": ct,
        "ecg-12lead.dcm": ecg_12lead(),
        "mr-iso2022-ir58.dcm": mr_iso2022_ir58(),
        "ct-gbk-no-charset.dcm": ct_gbk_no_charset(),
        "bad-not-dicom.dcm": NOT_DICOM.encode("utf-8"),
        "bad-truncated.dcm": ct[:TRUNCATED_LENGTH],
        "bad-sr-unsupported.dcm": bad_sr_unsupported(),
    }


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    out_dir = Path(args[0]) if args else OUT_DIR
    out_dir.mkdir(parents=True, exist_ok=True)
    for name, content in build_samples().items():
        (out_dir / name).write_bytes(content)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
