"""Conversions on pydicom's test files (uncompressed, JPEG, RLE, JPEG 2000,
JPEG-LS, colour, palette, multi-frame) and synthetic MONOCHROME1; JPEG to
Secondary Capture checked by pydicom, dcmtk and fastscp itself."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import numpy as np
import orjson
import pydicom
import pytest
from PIL import Image
from pydicom.data import get_testdata_file

from conftest import dcmtk
from fastscp.pipeline.convert import ConversionError, dicom_to_image, from_jpeg, thumbnail_jpeg, to_jpeg, window_to_uint8


def tf(name: str) -> str:
    path = get_testdata_file(name)
    assert path, name
    return str(path)


def jpeg_array(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data))).astype(np.int16)


def reference_window(values: np.ndarray, c: float, w: float) -> np.ndarray:
    """PS3.3 C.11.2.1.2.1, written out independently of the module."""
    lo, hi = c - 0.5 - (w - 1) / 2, c - 0.5 + (w - 1) / 2
    out = np.empty(values.shape)
    for idx, x in np.ndenumerate(values.astype(float)):
        out[idx] = 0 if x <= lo else 255 if x > hi else ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
    return np.rint(out)


def test_window_formula_edges() -> None:
    x = np.array([-1000, 39.4, 40, 239.4, 240, 1000])
    y = window_to_uint8(x, 40, 400)
    assert y[0] == 0 and y[-1] == 255
    assert (y == np.clip(reference_window(x, 40, 400), 0, 255)).all()
    assert list(window_to_uint8(np.array([99, 99.6, 101]), 100, 1)) == [0, 255, 255]


def test_mr_uses_its_window_and_modality_lut() -> None:
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    c, w = float(ds.WindowCenter), float(ds.WindowWidth)
    values = ds.pixel_array * float(ds.get("RescaleSlope", 1)) + float(ds.get("RescaleIntercept", 0))
    got = jpeg_array(to_jpeg(ds, quality=100))
    assert np.abs(got - reference_window(values, c, w)).mean() < 2.0


@pytest.mark.parametrize("name", ["MR_small_RLE.dcm", "MR_small_jp2klossless.dcm", "MR_small_jpeg_ls_lossless.dcm",
                                  "MR_small_implicit.dcm", "MR_small_bigendian.dcm"])
def test_compressed_and_other_encodings_give_the_same_picture(name: str) -> None:
    ref = np.asarray(dicom_to_image(tf("MR_small.dcm")))
    got = np.asarray(dicom_to_image(tf(name)))
    assert (ref == got).all()


def test_monochrome1_is_inverted() -> None:
    ds = pydicom.dcmread(tf("MR_small.dcm"))
    m2 = np.asarray(dicom_to_image(ds)).astype(int)
    ds.PhotometricInterpretation = "MONOCHROME1"
    m1 = np.asarray(dicom_to_image(ds)).astype(int)
    assert m2.std() > 10
    assert (m1 == 255 - m2).all()


def test_window_option_overrides_and_min_max_without_window() -> None:
    ct = tf("CT_small.dcm")  # no window in the file: min/max
    auto = np.asarray(dicom_to_image(ct))
    assert auto.min() == 0 and auto.max() == 255
    narrow = np.asarray(dicom_to_image(ct, window=(40, 80)))
    assert not (auto == narrow).all()
    assert ((narrow == 0) | (narrow == 255)).mean() > 0.5  # a soft-tissue window saturates most of the image


@pytest.mark.parametrize("name", ["SC_rgb_dcmtk_+eb+cy+np.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", "SC_rgb_jpeg_dcmtk.dcm",
                                  "SC_rgb_dcmtk_+eb+cr.dcm", "SC_rgb_rle_16bit.dcm", "SC_rgb_gdcm_KY.dcm",
                                  "SC_rgb_jpeg_gdcm.dcm"])
def test_colour_jpeg_ybr_rle_and_j2k_match_the_rgb_reference(name: str) -> None:
    ref = np.asarray(dicom_to_image(tf("SC_rgb_rle.dcm"))).astype(int)
    got = jpeg_array(to_jpeg(tf(name), quality=95))
    assert got.shape == ref.shape == (100, 100, 3)
    assert np.abs(got - ref).mean() < 8, name  # lossy sources; an unconverted YBR image is ~60 off


def test_rgb_uncompressed_is_kept() -> None:
    ds = pydicom.dcmread(tf("examples_rgb_color.dcm"))
    got = jpeg_array(to_jpeg(ds, quality=100))
    assert np.abs(got - ds.pixel_array.astype(int)).mean() < 2.5


def test_palette_colour_becomes_rgb() -> None:
    img = dicom_to_image(tf("examples_palette.dcm"))
    arr = np.asarray(img).astype(int)
    assert img.mode == "RGB" and (np.abs(arr[..., 0] - arr[..., 2]) > 20).any()


def test_multi_frame_choice(tmp_path: Path) -> None:
    path = tf("examples_ybr_color.dcm")  # 30 frames
    first = np.asarray(dicom_to_image(path, frame=0)).astype(int)
    last = np.asarray(dicom_to_image(path, frame=29)).astype(int)
    assert first.shape == (240, 320, 3) and np.abs(first - last).mean() > 1
    ds = pydicom.dcmread(path)
    assert (np.asarray(dicom_to_image(ds, frame=29)).astype(int) == last).all()
    with pytest.raises(ConversionError, match="out of range"):
        dicom_to_image(path, frame=30)
    out = tmp_path / "f.jpg"
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "convert", "to-jpeg", path, "--frame", "31", "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 1 and "out of range" in res.stderr and not out.exists()
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "convert", "to-jpeg", path, "--frame", "30",
                          "--window", "100,50", "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Image.open(out).size == (320, 240)


def test_thumbnail_size_and_format(tmp_path: Path) -> None:
    data = thumbnail_jpeg(tf("JPEG2000.dcm"), 96)
    img = Image.open(io.BytesIO(data))
    assert img.format == "JPEG" and max(img.size) == 96 and img.size == (24, 96)  # 256x1024 keeps its aspect
    out = tmp_path / "t.jpg"
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "convert", "thumbnail", tf("JPGExtended.dcm"),
                          "--size", "64", "-o", str(out)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert max(Image.open(out).size) == 64


def test_no_pixel_data_is_a_clear_error() -> None:
    with pytest.raises(ConversionError, match="no pixel data"):
        dicom_to_image(tf("rtplan.dcm"))


# ---- JPEG -> DICOM ------------------------------------------------------------------

def make_jpeg(path: Path, mode: str, subsampling: int = 2, progressive: bool = False) -> bytes:
    rng = np.random.default_rng(1)
    if mode == "L":
        arr = (np.add.outer(np.arange(60), np.arange(80)) * 2 % 256).astype(np.uint8)
    else:
        arr = np.zeros((60, 80, 3), np.uint8)
        arr[..., 0] = np.arange(80) * 3
        arr[..., 1] = np.arange(60)[:, None] * 4
        arr[..., 2] = rng.integers(0, 50, (60, 80))
    Image.fromarray(arr, mode).save(path, "JPEG", quality=90, subsampling=subsampling, progressive=progressive)
    return path.read_bytes()


@pytest.mark.parametrize("mode, subsampling, photometric", [("RGB", 2, "YBR_FULL_422"), ("RGB", 0, "YBR_FULL"),
                                                              ("L", 0, "MONOCHROME2")])
def test_from_jpeg_encapsulates_as_is(tmp_path: Path, mode: str, subsampling: int, photometric: str) -> None:
    src = tmp_path / "in.jpg"
    raw = make_jpeg(src, mode, subsampling)
    out = tmp_path / "out.dcm"
    from_jpeg(src, out, {"PatientName": "Doe^Jane", "PatientID": "J1"})
    ds = pydicom.dcmread(out)
    assert ds.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.7"
    assert ds.PhotometricInterpretation == photometric and (ds.Rows, ds.Columns) == (60, 80)
    assert str(ds.PatientName) == "Doe^Jane" and ds.PatientID == "J1"
    from pydicom.encaps import generate_frames

    frames = list(generate_frames(ds.PixelData, number_of_frames=1))
    assert frames[0].rstrip(b"\x00") == raw.rstrip(b"\x00")  # the bitstream, unchanged (padded to even)
    expect = np.asarray(Image.open(src).convert("RGB" if mode == "RGB" else "L")).astype(int)
    assert np.abs(ds.pixel_array.astype(int) - expect).max() <= 4  # decoders round differently
    # dcmtk decodes it too
    png = tmp_path / "dcmtk.png"
    res = subprocess.run([dcmtk("dcmj2pnm"), "--write-png", str(out), str(png)], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    assert Image.open(png).size == (80, 60)


def test_from_jpeg_cli_with_demographics_file_and_fastscp_receives_it(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    src = tmp_path / "photo.jpg"
    make_jpeg(src, "RGB")
    demo = tmp_path / "demo.json"
    demo.write_bytes(orjson.dumps({"PatientName": "From^File", "PatientID": "F1", "StudyDescription": "Photo"}))
    out = tmp_path / "photo.dcm"
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "convert", "from-jpeg", str(src), "--demographics",
                          str(demo), "--patient-id", "OPT7", "--study-uid", "1.2.3.4.5", "-o", str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    ds = pydicom.dcmread(out)
    assert str(ds.PatientName) == "From^File" and ds.PatientID == "OPT7" and ds.StudyInstanceUID == "1.2.3.4.5"
    srv = start_server()
    res = subprocess.run([dcmtk("storescu"), "-xy", "-aec", srv.ae_title, "127.0.0.1", str(srv.port), str(out)],
                         capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    stored = srv.stored_files()
    assert len(stored) == 1
    back = pydicom.dcmread(stored[0])
    assert back.SOPInstanceUID == ds.SOPInstanceUID and back.file_meta.TransferSyntaxUID == "1.2.840.10008.1.2.4.50"
    assert back.PixelData == ds.PixelData


def test_progressive_jpeg_is_refused(tmp_path: Path) -> None:
    src = tmp_path / "p.jpg"
    make_jpeg(src, "RGB", progressive=True)
    with pytest.raises(ConversionError, match="progressive"):
        from_jpeg(src, tmp_path / "o.dcm", {})
    assert not (tmp_path / "o.dcm").exists()
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "convert", "from-jpeg", str(tmp_path / "missing.jpg"),
                          "-o", str(tmp_path / "x.dcm")], capture_output=True, text=True)
    assert res.returncode == 1 and "missing.jpg" in res.stderr
