"""Scan sheets: one page per study, written into the study's folder.

``scan_sheet.html`` holds the patient/study header, a table of series
(number, description, modality, image count, echo numbers, protocol) and a
grid with the middle image of each series. Thumbnails are embedded as
``data:`` JPEG URIs, so the page opens offline and can be moved or mailed
alone. ``scan_sheet.png`` is the same content drawn with Pillow (a browser
engine would be needed to render the HTML itself; Pillow draws the sheet
directly instead).

A sheet is built from a *manifest* (a JSON-able dict): the pipeline makes
one from its study tracker, with no file read but the middle images; the
``fastscp scan-sheet`` command makes one by reading the headers of a study
folder (or of the files of a Study Instance UID under the storage folder).
``python -m fastscp.pipeline.scansheet --manifest -`` reads a manifest on
stdin and prints ``{"html": ..., "png": ...}``; the receiver runs it as a
child process so decoding pixels never takes the receiver's GIL.
"""

from __future__ import annotations

import argparse
import base64
import dataclasses
import datetime
import html
import io
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson

from ..storage.layout import SCAN_SHEET_HTML, SCAN_SHEET_PNG
from .studies import StudyRecord, study_folder

__all__ = ["HTML_NAME", "PNG_NAME", "manifest_from_files", "manifest_from_record", "register", "write_scan_sheet"]

HTML_NAME = SCAN_SHEET_HTML
PNG_NAME = SCAN_SHEET_PNG


def _series_key(s: dict[str, Any]) -> tuple[Any, ...]:
    n = s.get("number")
    return (n is None, n if n is not None else 0, s.get("description", ""), s.get("series_uid", ""))


def manifest_from_record(rec: StudyRecord, folder: Path) -> dict[str, Any]:
    series = [{
        "series_uid": s.series_uid, "number": s.number, "description": s.description, "modality": s.modality,
        "protocol": s.protocol, "echo_numbers": sorted(s.echo_numbers, key=_echo_key), "count": s.count,
        "middle": s.middle_path(),
    } for s in rec.series.values()]
    series.sort(key=_series_key)
    return {
        "study_uid": rec.study_uid, "folder": str(folder), "patient_name": rec.patient_name,
        "patient_id": rec.patient_id, "birth_date": rec.patient_birth_date, "sex": rec.patient_sex,
        "study_date": rec.study_date, "study_time": rec.study_time, "accession": rec.accession,
        "description": rec.study_description, "referring": rec.referring_physician,
        "institution": rec.institution, "calling_aes": rec.calling_aes, "count": rec.count, "series": series,
    }


def _echo_key(e: str) -> tuple[int, str]:
    try:
        return (int(e), e)
    except ValueError:
        return (1 << 30, e)


def records_from_files(paths: Iterable[Path]) -> tuple[dict[str, StudyRecord], int]:
    """Read the headers (the receiver's own scanner); group by study. Returns
    the records and how many files were not DICOM."""
    from ..storage.header import parse_file

    studies: dict[str, StudyRecord] = {}
    skipped = 0
    for path in paths:
        try:
            info = parse_file(path)
        except Exception:
            skipped += 1
            continue
        info = dataclasses.replace(info, path=str(Path(path).resolve()))
        rec = studies.get(info.study_instance_uid)
        if rec is None:
            rec = studies[info.study_instance_uid] = StudyRecord(info.study_instance_uid)
        rec.add(info, 0.0)
    return studies, skipped


def _dicom_files(folder: Path) -> Iterable[Path]:
    for root, dirs, names in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        for name in sorted(names):
            if name.startswith(".") or name in (HTML_NAME, PNG_NAME):
                continue
            yield Path(root) / name


def manifest_from_files(paths: Iterable[Path], storage_root: Path, study_uid: str | None = None,
                        folder: Path | None = None) -> dict[str, Any]:
    studies, _skipped = records_from_files(paths)
    if study_uid is not None:
        studies = {k: v for k, v in studies.items() if k == study_uid}
    if not studies:
        raise LookupError("no DICOM instances found" + (f" of study {study_uid}" if study_uid else ""))
    if len(studies) > 1:
        raise LookupError("several studies here: " + ", ".join(sorted(studies)) + "; name one with --study UID")
    rec = next(iter(studies.values()))
    return manifest_from_record(rec, folder if folder is not None else study_folder(rec, storage_root))


# ---- rendering ----------------------------------------------------------------------

def _fmt_date(da: str) -> str:
    if len(da) == 8 and da.isdigit():
        return f"{da[:4]}-{da[4:6]}-{da[6:]}"
    return da


def _fmt_name(pn: str) -> str:
    return " ".join(part for part in pn.split("=")[0].split("^") if part) or pn


def _thumbnails(manifest: dict[str, Any], size: int) -> list[bytes | None]:
    from .convert import thumbnail_jpeg

    out: list[bytes | None] = []
    for s in manifest["series"]:
        try:
            out.append(thumbnail_jpeg(s["middle"], size) if s.get("middle") else None)
        except Exception:  # not an image (SR, PR ...), or undecodable
            out.append(None)
    return out


def render_html(manifest: dict[str, Any], thumbs: list[bytes | None]) -> str:
    e = html.escape
    m = manifest
    header = [("Patient", _fmt_name(m["patient_name"])), ("Patient ID", m["patient_id"]),
              ("Birth date", _fmt_date(m.get("birth_date", ""))), ("Sex", m.get("sex", "")),
              ("Study date", _fmt_date(m["study_date"])), ("Accession", m["accession"]),
              ("Description", m["description"]), ("Referring physician", _fmt_name(m.get("referring", ""))),
              ("Institution", m.get("institution", "")), ("Study UID", m["study_uid"]),
              ("Received from", ", ".join(m.get("calling_aes", []))),
              ("Images", f"{m['count']} in {len(m['series'])} series")]
    rows = []
    for s in m["series"]:
        rows.append(
            f'<tr class="series" data-series-uid="{e(s["series_uid"])}" data-count="{s["count"]}">'
            f'<td>{e(str(s["number"]) if s["number"] is not None else "")}</td><td>{e(s["description"])}</td>'
            f'<td>{e(s["modality"])}</td><td class="count">{s["count"]}</td>'
            f'<td>{e(", ".join(s["echo_numbers"]))}</td><td>{e(s["protocol"])}</td></tr>')
    figures = []
    for s, thumb in zip(m["series"], thumbs, strict=True):
        label = f'{s["number"] if s["number"] is not None else "?"}: {s["description"] or s["modality"]} ({s["count"]})'
        if thumb is None:
            img = '<div class="noimg">no image</div>'
        else:
            img = f'<img alt="{e(label)}" src="data:image/jpeg;base64,{base64.b64encode(thumb).decode()}">'
        figures.append(
            f'<figure data-series-uid="{e(s["series_uid"])}">{img}<figcaption>{e(label)}</figcaption></figure>')
    made = datetime.datetime.now().strftime("%Y-%m-%d %H:%M")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>Scan sheet: {e(_fmt_name(m["patient_name"]))} {e(_fmt_date(m["study_date"]))}</title>
<style>
body{{font-family:sans-serif;margin:1.5em;color:#111}}
h1{{font-size:1.4em;margin:0 0 .5em}}
table{{border-collapse:collapse;margin-bottom:1.2em}}
td,th{{border:1px solid #bbb;padding:.25em .6em;text-align:left;vertical-align:top}}
th{{background:#eee}} table.header th{{width:11em}}
.grid{{display:flex;flex-wrap:wrap;gap:12px}}
figure{{margin:0;width:180px;text-align:center;font-size:.85em}}
figure img{{max-width:180px;max-height:180px;background:#000}}
.noimg{{width:180px;height:120px;line-height:120px;background:#ddd;color:#555}}
footer{{margin-top:1.5em;font-size:.8em;color:#666}}
</style></head>
<body>
<h1>Scan sheet</h1>
<table class="header">
{"".join(f"<tr><th>{e(k)}</th><td>{e(str(v))}</td></tr>" for k, v in header)}
</table>
<table class="series-table">
<thead><tr>
<th>Series</th><th>Description</th><th>Modality</th><th>Images</th><th>Echo numbers</th><th>Protocol</th>
</tr></thead>
<tbody>
{chr(10).join(rows)}
</tbody></table>
<div class="grid">
{chr(10).join(figures)}
</div>
<footer>fastscp scan sheet, made {made}</footer>
</body></html>
"""


def render_png(manifest: dict[str, Any], thumbs: list[bytes | None], thumb_size: int) -> bytes:
    from PIL import Image, ImageDraw, ImageFont

    try:
        font = ImageFont.load_default(size=14)
        bold = ImageFont.load_default(size=18)
    except TypeError:  # Pillow without FreeType sizes
        font = bold = ImageFont.load_default()
    m = manifest
    width = 1000
    cell = thumb_size + 40
    per_row = max(1, (width - 40) // cell)
    grid_rows = (len(thumbs) + per_row - 1) // per_row
    def join(*parts: tuple[str, str]) -> str:
        return "   ".join(f"{label}{value}" for label, value in parts if value)

    lines = [join(("", _fmt_name(m["patient_name"])), ("ID ", m["patient_id"]),
                  ("born ", _fmt_date(m.get("birth_date", ""))), ("sex ", m.get("sex", ""))),
             join(("Study ", _fmt_date(m["study_date"])), ("accession ", m["accession"]), ("", m["description"])),
             f"{m['count']} images in {len(m['series'])} series   UID {m['study_uid']}"]
    height = 40 + 22 * len(lines) + 30 + 20 * (len(m["series"]) + 1) + 20 + grid_rows * (cell + 20) + 20
    img = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(img)
    y = 15
    d.text((20, y), "Scan sheet", fill="black", font=bold)
    y += 30
    for line in lines:
        d.text((20, y), line, fill="black", font=font)
        y += 22
    y += 10
    cols = [(20, "Series"), (90, "Description"), (400, "Modality"), (480, "Images"), (550, "Echoes"), (650, "Protocol")]
    for x, title in cols:
        d.text((x, y), title, fill="black", font=font)
    y += 20
    d.line((20, y - 2, width - 20, y - 2), fill="gray")
    for s in m["series"]:
        values = ["" if s["number"] is None else str(s["number"]), s["description"][:40], s["modality"],
                  str(s["count"]), ",".join(s["echo_numbers"])[:12], s["protocol"][:40]]
        for (x, _t), v in zip(cols, values, strict=True):
            d.text((x, y), v, fill="black", font=font)
        y += 20
    y += 20
    for i, (s, thumb) in enumerate(zip(m["series"], thumbs, strict=True)):
        x0 = 20 + (i % per_row) * cell
        y0 = y + (i // per_row) * (cell + 20)
        d.rectangle((x0, y0, x0 + thumb_size, y0 + thumb_size), fill="black")
        if thumb is not None:
            t = Image.open(io.BytesIO(thumb)).convert("RGB")
            img.paste(t, (x0 + (thumb_size - t.width) // 2, y0 + (thumb_size - t.height) // 2))
        number = "" if s["number"] is None else s["number"]
        label = f"{number}: {(s['description'] or s['modality'])[:18]} ({s['count']})"
        d.text((x0, y0 + thumb_size + 4), label, fill="black", font=font)
    buf = io.BytesIO()
    img.save(buf, "PNG", optimize=True)
    return buf.getvalue()


def write_scan_sheet(manifest: dict[str, Any], out_dir: Path | None = None, thumb_size: int = 160,
                     png: bool = True) -> tuple[Path, Path | None]:
    """Write ``scan_sheet.html`` (and ``.png``) into the study folder (or
    ``out_dir``); returns their paths."""
    folder = Path(out_dir) if out_dir is not None else Path(manifest["folder"])
    folder.mkdir(parents=True, exist_ok=True)
    thumbs = _thumbnails(manifest, thumb_size)
    html_path = folder / HTML_NAME
    _write_atomic(html_path, render_html(manifest, thumbs).encode("utf-8"))
    png_path = None
    if png:
        png_path = folder / PNG_NAME
        _write_atomic(png_path, render_png(manifest, thumbs, thumb_size))
    return html_path, png_path


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- command line -------------------------------------------------------------------

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("scan-sheet", help="write a study's scan sheet (HTML + PNG) into its folder")
    p.add_argument("target", help="a study folder, or a Study Instance UID to look up under the storage folder")
    p.add_argument("--study", help="with a folder holding several studies: which one")
    p.add_argument("--storage-dir", help="storage folder (default: from --config, ./config.yaml or ./received)")
    p.add_argument("--config", help="configuration file giving storage.directory")
    p.add_argument("-o", "--output-dir", help="write the sheet here instead of the study folder")
    p.add_argument("--size", type=int, default=160, help="thumbnail size in pixels (default 160)")
    p.add_argument("--no-png", action="store_true", help="HTML only")
    p.set_defaults(func=_scan_sheet_cmd)


def _storage_dir(args: argparse.Namespace) -> Path:
    if args.storage_dir:
        return Path(args.storage_dir)
    from ..config import load_config

    path = args.config or ("config.yaml" if os.path.exists("config.yaml") else None)
    return Path(load_config(path, {}).storage.directory)


def _scan_sheet_cmd(args: argparse.Namespace) -> int:
    target = Path(args.target)
    try:
        if target.is_dir():
            root = Path(args.storage_dir) if args.storage_dir else target.parent
            manifest = manifest_from_files(_dicom_files(target), root, args.study, folder=target)
        else:
            root = _storage_dir(args)
            if not root.is_dir():
                print(f"error: {args.target} is not a folder, and the storage folder {root} does not exist",
                      file=sys.stderr)
                return 2
            manifest = manifest_from_files(_dicom_files(root), root, args.target)
        html_path, png_path = write_scan_sheet(manifest, Path(args.output_dir) if args.output_dir else None,
                                               args.size, not args.no_png)
    except LookupError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(html_path)
    if png_path:
        print(png_path)
    return 0


def main(argv: list[str] | None = None) -> int:
    """``--manifest FILE|-``: write the sheet a manifest describes; print
    the paths as one JSON line."""
    p = argparse.ArgumentParser(prog="python -m fastscp.pipeline.scansheet")
    p.add_argument("--manifest", required=True)
    p.add_argument("--size", type=int, default=160)
    p.add_argument("--no-png", action="store_true")
    args = p.parse_args(argv)
    raw = sys.stdin.buffer.read() if args.manifest == "-" else Path(args.manifest).read_bytes()
    manifest = orjson.loads(raw)
    html_path, png_path = write_scan_sheet(manifest, None, args.size, not args.no_png)
    sys.stdout.write(orjson.dumps({"html": str(html_path), "png": str(png_path) if png_path else None}).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
