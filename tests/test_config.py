"""The consortium config: the shipped example loads, lookups work, and every error names file, key and fault."""

from __future__ import annotations

import hmac
from datetime import timedelta
from pathlib import Path

import pytest

import hub.config
from adapters.dicom._text import resolve_fallback_charset
from adapters.hl7v2._charset import codec_for
from hub.config import Egress, load_config, parse_config
from hub.errors import ConfigError
from hub.gateways.egress import report_charset

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "examples" / "consortium.toml"

MINIMAL = """
[consortium]
name = "测试医共体"
lead = "12330112470101234B"

[[institutions]]
code = "12330112470101234B"
name = "临安区人民医院"
kind = "lead"

[[institutions]]
code = "12330112472334561L"
name = "於潜镇中心卫生院"
ae_titles = ["YQ_CT01"]
egress = "mllp://127.0.0.1:6601"
"""


def test_the_example_is_a_lead_hospital_with_at_least_six_township_or_community_members() -> None:
    config = load_config(EXAMPLE)
    assert config.consortium.name == "临安区医共体"
    assert config.institution(config.consortium.lead).kind == "lead"  # type: ignore[union-attr]
    assert sum(i.kind in ("township", "community") for i in config.members) >= 6
    assert {i.egress.kind for i in config.members} == {"mllp", "fhir", "pull"}
    assert config.gateways.mllp is not None and config.gateways.mllp.host == "127.0.0.1"
    assert config.gateways.dicom is not None and config.gateways.dicom.host == "127.0.0.1"
    assert config.gateways.fhir is not None and config.gateways.fhir.host == "127.0.0.1"


def test_lookups_by_ae_title_facility_token_and_code(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HUB_TOKEN_QSH", "secret-qsh")
    config = load_config(EXAMPLE)
    assert config.institution_by_ae_title(" YQ_CT01 ").name == "於潜镇中心卫生院"  # type: ignore[union-attr]
    assert config.institution_by_ae_title("NOBODY") is None
    assert config.institution_by_facility("BQWSY").code == "123301124767189052"  # type: ignore[union-attr]
    assert config.institution_by_facility("12330112473455672X").name == "昌化镇卫生院"  # type: ignore[union-attr]
    assert config.institution_by_token("secret-qsh").code == "12330112471213450B"  # type: ignore[union-attr]
    assert config.institution_by_token("") is None
    assert config.institution_by_token("guess") is None


def test_sla_targets_from_config_and_defaults() -> None:
    config = parse_config(MINIMAL + "\n[centres.ecg]\nsla_minutes = { stat = 8 }\n")
    assert config.sla("ecg", "stat") == timedelta(minutes=8)
    assert config.sla("ecg", "routine") == timedelta(minutes=30)  # the default, not given
    assert config.sla("imaging", "stat") == timedelta(minutes=30)
    assert config.sla("lab", "routine") == timedelta(minutes=120)


def test_relative_data_dir_is_relative_to_the_config_file(tmp_path: Path) -> None:
    path = tmp_path / "etc" / "hub.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL + '\n[hub]\ndata_dir = "../var/hub"\n', "utf-8")
    assert load_config(path).data_dir == tmp_path / "var" / "hub"


def test_unset_data_dir_follows_the_environment(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("HUB_DATA_DIR", str(tmp_path / "hubdata"))
    assert parse_config(MINIMAL).data_dir == tmp_path / "hubdata"


@pytest.mark.parametrize(
    ("text", "where", "what"),
    [
        (MINIMAL.replace("12330112472334561L", "12330112472334561M"), "institutions[1].code", "GB 32100"),
        (MINIMAL.replace("mllp://127.0.0.1:6601", "mllp://127.0.0.1"), "institutions[1].egress", "host and a port"),
        (MINIMAL.replace("mllp://127.0.0.1:6601", "ftp://x"), "institutions[1].egress", "mllp://host:port"),
        (MINIMAL + 'charset = "KLINGON"\n', "institutions[1].charset", "unknown character set"),
        (MINIMAL + 'charset = "windows-1252"\n', "institutions[1].charset", "GB18030, GBK"),  # not in HL7 v2
        (MINIMAL + 'charset = "GB 18030-2000"\n', "institutions[1].charset", "write GB18030"),  # not in DICOM
        (MINIMAL + 'charset = "ISO_IR 192"\n', "institutions[1].charset", "write UTF-8"),  # not a Python codec
        (MINIMAL + 'colour = "red"\n', "institutions[1].colour", "Extra inputs"),
        (MINIMAL.replace('lead = "12330112470101234B"', 'lead = "123301124767189052"'), "(top level)", "lead"),
        (MINIMAL.replace('["YQ_CT01"]', '["THIS_AE_TITLE_IS_TOO_LONG"]'), "institutions[1].ae_titles[0]", "16"),
        (MINIMAL + "[gateways.mllp]\nport = 70000\n", "gateways.mllp.port", "65535"),
        (MINIMAL + '[gateways.mllp]\ntls_cert = "/etc/hub.crt"\n', "gateways.mllp", "tls_key"),
        (MINIMAL + "[gateways.dicom]\nmax_associations = 0\n", "gateways.dicom.max_associations", "greater than 0"),
        (MINIMAL + '[routing]\nX1 = "dental"\n', "routing.X1", "imaging"),
    ],
)
def test_errors_name_the_file_the_key_and_the_fault(text: str, where: str, what: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="临安.toml")
    message = str(caught.value)
    assert message.startswith(f"临安.toml: {where}: ")
    assert what in message


def test_two_members_cannot_share_an_ae_title_or_a_token() -> None:
    twice = MINIMAL + '\n[[institutions]]\ncode = "12330112473455672X"\nname = "昌化"\nae_titles = ["YQ_CT01"]\n'
    with pytest.raises(ConfigError, match="YQ_CT01"):
        parse_config(twice)
    tokens = MINIMAL.replace('egress = "mllp://127.0.0.1:6601"', 'fhir_token = "t1"') + (
        '\n[[institutions]]\ncode = "12330112473455672X"\nname = "昌化"\nfhir_token = "t1"\n'
    )
    with pytest.raises(ConfigError, match="token"):
        parse_config(tokens)


CHANGHUA = '\n[[institutions]]\ncode = "12330112473455672X"\nname = "昌化镇卫生院"\n'


@pytest.mark.parametrize(
    ("text", "alias"),
    [
        (
            MINIMAL + 'hl7_facilities = ["12330112470101234B"]\n',
            "'12330112470101234B' already names 12330112470101234B",
        ),
        (
            MINIMAL + 'hl7_facilities = ["CH"]\n' + CHANGHUA + 'hl7_facilities = ["CH"]\n',
            "'CH' already names 12330112472334561L",
        ),
        (
            MINIMAL + 'hl7_facilities = ["12330112473455672X"]\n' + CHANGHUA,
            "'12330112473455672X' already names 12330112473455672X",
        ),
    ],
)
def test_an_hl7_facility_names_one_institution_only(text: str, alias: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, source="临安.toml")
    message = str(caught.value)
    assert message.startswith("临安.toml: (top level): institutions[")
    assert ".hl7_facilities " + alias in message


def test_an_institution_may_list_its_own_code_and_an_alias_twice() -> None:
    config = parse_config(MINIMAL + 'hl7_facilities = ["12330112472334561L", "YQ", "YQ"]\n' + CHANGHUA)
    assert config.institution_by_facility("YQ").code == "12330112472334561L"  # type: ignore[union-attr]
    assert config.institution_by_facility("12330112473455672X").name == "昌化镇卫生院"  # type: ignore[union-attr]


@pytest.mark.parametrize("charset", ["GB18030", "GBK", "gb2312", "UTF-8", "utf8", "ASCII", "ISO-8859-1", "Big5"])
def test_a_charset_the_config_takes_every_reader_takes(charset: str) -> None:
    member = parse_config(MINIMAL + f'charset = "{charset}"\n').institution("12330112472334561L")
    assert member is not None and member.charset == charset
    assert codec_for(charset) is not None
    assert resolve_fallback_charset(charset)
    assert report_charset(member) in ("gb18030", "utf-8")


def test_a_token_is_compared_in_constant_time_with_every_members(monkeypatch: pytest.MonkeyPatch) -> None:
    text = MINIMAL.replace('egress = "mllp://127.0.0.1:6601"', 'fhir_token = "t1"') + CHANGHUA + 'fhir_token = "t2"\n'
    config = parse_config(text)
    compared: list[tuple[bytes, bytes]] = []
    compare_digest = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        compared.append((a, b))
        return compare_digest(a, b)

    monkeypatch.setattr(hub.config.hmac, "compare_digest", spy)
    assert config.institution_by_token("t1").code == "12330112472334561L"  # type: ignore[union-attr]
    assert len(compared) == 2  # the match did not stop the comparison with the next member's
    assert len({len(a) for pair in compared for a in pair}) == 1  # digests: the lengths tell nothing
    assert config.institution_by_token("t2").code == "12330112473455672X"  # type: ignore[union-attr]
    assert config.institution_by_token("令牌") is None  # not ASCII: no match, no TypeError
    assert config.institution_by_token("") is None


def test_unreadable_files_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config(tmp_path / "missing.toml")
    gbk = tmp_path / "gbk.toml"
    gbk.write_bytes(MINIMAL.encode("gbk"))
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config(gbk)
    broken = tmp_path / "broken.toml"
    broken.write_text("[consortium\n", "utf-8")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_config(broken)


def test_egress_forms() -> None:
    assert Egress.parse("pull").kind == "pull"
    mllp = Egress.parse("mllp://10.1.2.3:6601")
    assert (mllp.kind, mllp.host_port, str(mllp)) == ("mllp", ("10.1.2.3", 6601), "mllp://10.1.2.3:6601")
    fhir = Egress.parse("fhir+https://emr.example.cn/fhir")
    assert (fhir.kind, fhir.url, str(fhir)) == (
        "fhir",
        "https://emr.example.cn/fhir",
        "fhir+https://emr.example.cn/fhir",
    )


def test_repr_of_an_institution_hides_its_token() -> None:
    config = parse_config(MINIMAL.replace('egress = "mllp://127.0.0.1:6601"', 'fhir_token = "s3cr3t"'))
    assert "s3cr3t" not in repr(config)
