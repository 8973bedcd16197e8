"""Scan sheets: generated for a study received over storescu, and on demand."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
import time
from pathlib import Path

import pydicom
from PIL import Image

from conftest import dcmtk, make_image


def multi_series_study(d: Path) -> dict[str, int]:
    """Study 4: series 1 (6 images), 2 (3 images, echoes 1 and 2), 3 (1 image)."""
    d.mkdir()
    counts: dict[str, int] = {}
    i = 0
    for series, n in ((1, 6), (2, 3), (3, 1)):
        for k in range(n):
            path = d / f"s{series}_{k}.dcm"
            ds = make_image(path, k + 1, study=4, modality="MR", size=48, series=series)
            ds.SeriesDescription = f"<b>series {series}</b>"
            ds.ProtocolName = f"proto{series}"
            if series == 2:
                ds.EchoNumbers = k % 2 + 1
            ds.save_as(path, enforce_file_format=True)
            counts[str(ds.SeriesInstanceUID)] = counts.get(str(ds.SeriesInstanceUID), 0) + 1
            i += 1
    return counts


def check_sheet(sheet: Path, counts: dict[str, int]) -> None:
    text = sheet.read_text()
    rows = re.findall(r'<tr class="series" data-series-uid="([^"]+)" data-count="(\d+)">(.*?)</tr>', text)
    assert {uid: int(n) for uid, n, _ in rows} == counts
    assert "&lt;b&gt;series 1&lt;/b&gt;" in text and "<b>series" not in text  # values are escaped
    assert "proto2" in text and "1, 2" in text  # protocol and echo numbers of series 2
    assert "Test Patient4" in text and "P004" in text
    thumbs = re.findall(r'src="data:image/jpeg;base64,([^"]+)"', text)
    assert len(thumbs) == 3
    for b64 in thumbs:
        img = Image.open(io.BytesIO(base64.b64decode(b64)))
        img.load()
        assert img.format == "JPEG" and max(img.size) <= 160 and img.size[0] > 0
    assert "http://" not in text and "https://" not in text  # opens offline
    png = sheet.with_name("scan_sheet.png")
    with Image.open(png) as im:
        assert im.format == "PNG" and im.size[0] == 1000


def test_scan_sheet_written_when_a_received_study_completes(start_server, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    counts = multi_series_study(tmp_path / "src")
    srv = start_server("--study-timeout", "1")
    res = subprocess.run([dcmtk("storescu"), "-aec", srv.ae_title, "127.0.0.1", str(srv.port),
                          *map(str, sorted((tmp_path / "src").iterdir()))], capture_output=True, text=True)
    assert res.returncode == 0, res.stderr
    stored = srv.stored_files()
    assert len(stored) == 10
    study_dir = stored[0].parent.parent
    sheet = study_dir / "scan_sheet.html"
    deadline = time.monotonic() + 30
    while not (sheet.exists() and sheet.with_name("scan_sheet.png").exists()) and time.monotonic() < deadline:
        time.sleep(0.1)
    check_sheet(sheet, counts)


def test_scan_sheet_command_for_a_folder_and_a_study_uid(tmp_path: Path) -> None:
    counts = multi_series_study(tmp_path / "study")
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "scan-sheet", str(tmp_path / "study")],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    check_sheet(tmp_path / "study" / "scan_sheet.html", counts)

    # by Study Instance UID, under a storage folder holding another study too
    storage = tmp_path / "storage"
    (storage / "a").mkdir(parents=True)
    for p in (tmp_path / "study").glob("*.dcm"):
        (storage / "a" / p.name).write_bytes(p.read_bytes())
    make_image(storage / "other.dcm", 1, study=99)
    (storage / "notes.txt").write_text("not DICOM")
    uid = str(pydicom.dcmread(next((tmp_path / "study").glob("*.dcm"))).StudyInstanceUID)
    out = tmp_path / "out"
    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "scan-sheet", uid, "--storage-dir", str(storage),
                          "-o", str(out)], capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    check_sheet(out / "scan_sheet.html", counts)

    res = subprocess.run([sys.executable, "-m", "fastscp.cli", "scan-sheet", "1.2.3.4", "--storage-dir", str(storage)],
                         capture_output=True, text=True, timeout=60)
    assert res.returncode == 1 and "no DICOM instances found of study 1.2.3.4" in res.stderr
