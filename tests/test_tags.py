"""``fastscp tags``: printing (text, JSON, chosen tags) and setting values."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pydicom
import pytest
from pydicom.data import get_testdata_file

from fastscp.pipeline.tags import TagError, parse_tag, set_values


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "fastscp.cli", "tags", *args], capture_output=True, text=True, timeout=60)


CT = str(get_testdata_file("CT_small.dcm"))


@pytest.mark.parametrize("text", ["PatientName", "0010,0010", "(0010,0010)", "00100010", "(0010,0010"])
def test_tag_spellings(text: str) -> None:
    assert parse_tag(text) == 0x00100010


def test_unknown_keyword() -> None:
    with pytest.raises(TagError, match="PatientNam"):
        parse_tag("PatientNam")


def test_print_chosen_tags_and_all() -> None:
    res = run(CT, "PatientName", "0028,0010", "AccessionNumber", "0009,0010")
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].startswith("(0010,0010) PN PatientName") and lines[0].endswith("CompressedSamples^CT1")
    assert lines[1].split()[-1] == "128"
    assert "(absent)" in res.stdout or len(lines) == 4
    full = run(CT)
    assert full.returncode == 0
    assert "(0002,0010) UI TransferSyntaxUID" in full.stdout and "(7FE0,0010) OW PixelData" in full.stdout
    assert "<32768 bytes>" in full.stdout


def test_sequences_are_indented() -> None:
    res = run(str(get_testdata_file("rtplan.dcm")))
    assert res.returncode == 0
    assert "  item 1" in res.stdout and "\n    (300A," in res.stdout


def test_json_is_the_dicom_json_model_without_bulk_data() -> None:
    res = run(CT, "--json")
    data = orjson.loads(res.stdout)
    assert data["00100010"] == {"vr": "PN", "Value": [{"Alphabetic": "CompressedSamples^CT1"}]}
    assert "BulkDataURI" in data["7FE00010"] and "InlineBinary" not in data["7FE00010"]
    only = orjson.loads(run(CT, "PatientID", "Rows", "--json").stdout)
    assert only == {"00100020": {"vr": "LO", "Value": ["1CT1"]}, "00280010": {"vr": "US", "Value": [128]}}


def test_set_writes_a_copy_keeping_pixels_and_transfer_syntax(tmp_path: Path) -> None:
    src = get_testdata_file("JPEG2000.dcm")
    out = tmp_path / "out.dcm"
    res = run(str(src), "--set", "PatientName=Roe^Richard", "--set", "0008,0050=ACC9", "--set", "ImageType=ORIGINAL\\PRIMARY",
              "--set", "Rows=1024", "--set", "PatientAge=", "-o", str(out))
    assert res.returncode == 0, res.stderr
    a, b = pydicom.dcmread(src), pydicom.dcmread(out)
    assert str(b.PatientName) == "Roe^Richard" and b.AccessionNumber == "ACC9" and list(b.ImageType) == ["ORIGINAL", "PRIMARY"]
    assert b.Rows == 1024 and b["PatientAge"].value in (None, "")
    assert b.file_meta.TransferSyntaxUID == a.file_meta.TransferSyntaxUID and b.PixelData == a.PixelData
    assert (b.pixel_array == a.pixel_array).all()
    assert str(pydicom.dcmread(src).PatientName) != "Roe^Richard"  # the source is untouched


def test_set_non_ascii_switches_to_utf8_and_keeps_other_text(tmp_path: Path) -> None:
    src = tmp_path / "latin1.dcm"
    ds = pydicom.dcmread(CT)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstitutionName = "Hôpital Général"
    ds.save_as(src)
    res = run(str(src), "--set", "PatientName=山田^太郎", "--in-place")
    assert res.returncode == 0, res.stderr
    back = pydicom.dcmread(src)
    assert back.SpecificCharacterSet == "ISO_IR 192"
    assert str(back.PatientName) == "山田^太郎" and back.InstitutionName == "Hôpital Général"


def test_set_errors() -> None:
    ds = pydicom.Dataset()
    with pytest.raises(TagError, match="VR"):
        set_values(ds, ["0009,1001=x"])
    set_values(ds, ["0009,1001:LO=private"])
    assert ds[0x00091001].value == "private"
    with pytest.raises(TagError, match="not valid for VR US"):
        set_values(ds, ["Rows=abc"])
    with pytest.raises(TagError, match="KEYWORD=VALUE"):
        set_values(ds, ["PatientName"])
    res = run(CT, "--set", "PatientName=x")
    assert res.returncode == 2 and "-o OUT or --in-place" in res.stderr
    res = run(__file__)
    assert res.returncode == 1 and "not a DICOM file" in res.stderr
