"""Conversions: DICOM -> JPEG (display-ready), thumbnails, JPEG -> DICOM.

DICOM -> picture follows the grayscale pipeline of PS3.3 C.11: stored values
-> Modality LUT (Rescale Slope/Intercept or a Modality LUT Sequence) -> VOI
(a window given by the user, else Window Center/Width of the image or its
frame's functional groups, else a VOI LUT Sequence, else the frame's
min/max) -> 8 bits, MONOCHROME1 inverted so that white is dense tissue.
Colour images are decoded to RGB by pydicom (YBR_* converted, PALETTE COLOR
through its LUT) and scaled to 8 bits when stored deeper. Compressed
transfer syntaxes are decoded by pydicom's handlers (pylibjpeg plugins for
JPEG, JPEG-LS, JPEG 2000 and RLE; Pillow too). Only the frame asked for is
decoded.

JPEG -> DICOM builds a Secondary Capture Image (PS3.3 A.8.1) that carries the
JPEG bitstream unchanged (encapsulated, PS3.5 A.4), with the transfer syntax
its SOF marker calls for (PS3.5 8.2.1: Baseline 1.2.840.10008.1.2.4.50 for
8-bit process 1, Extended 1.2.840.10008.1.2.4.51 for 12-bit process 4).
Progressive and lossless JPEG have no fitting transfer syntax here and are
refused.
"""

from __future__ import annotations

import argparse
import io
import math
import os
import sys
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import numpy as np
    from PIL import Image
    from pydicom import Dataset

__all__ = [
    "ConversionError",
    "dicom_to_image",
    "from_jpeg",
    "register",
    "thumbnail_jpeg",
    "to_jpeg",
    "window_to_uint8",
]


class ConversionError(ValueError):
    """The input cannot be converted; the message says why."""


# ---- DICOM -> picture ---------------------------------------------------------------

def window_to_uint8(arr: np.ndarray, center: float, width: float, function: str = "LINEAR") -> np.ndarray:
    """Map values to 0..255 through a VOI window (PS3.3 C.11.2.1.2 for
    LINEAR, C.11.2.1.3.1 LINEAR_EXACT, C.11.2.1.3.2 SIGMOID)."""
    import numpy as np

    x = arr.astype(np.float64)
    function = (function or "LINEAR").upper()
    if function == "SIGMOID":
        y = 255.0 / (1.0 + np.exp(-4.0 * (x - center) / max(width, 1e-6)))
    elif function == "LINEAR_EXACT":
        w = max(width, 1e-6)
        y = ((x - center) / w + 0.5) * 255.0
    else:
        w = max(width, 1.0)
        if w == 1.0:
            y = np.where(x <= center - 0.5, 0.0, 255.0)
        else:
            y = ((x - (center - 0.5)) / (w - 1.0) + 0.5) * 255.0
    return np.clip(np.rint(y), 0, 255).astype(np.uint8)


def _first_number(value: Any) -> float | None:
    if value is None or value == "":
        return None
    try:
        if isinstance(value, (list, tuple)) or (hasattr(value, "__getitem__") and not isinstance(value, (str, bytes))):
            value = value[0]
        f = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return f if math.isfinite(f) else None


def _window_from_dataset(ds: Dataset, frame: int) -> tuple[float, float, str] | None:
    """Window Center/Width: the image's own, or the frame's VOI in the
    (per-frame, then shared) functional groups of an enhanced image."""
    sources: list[Any] = [ds]
    for seq_name, indexed in (("PerFrameFunctionalGroupsSequence", True), ("SharedFunctionalGroupsSequence", False)):
        seq = ds.get(seq_name)
        if seq:
            item = seq[frame] if indexed and frame < len(seq) else seq[0]
            voi = item.get("FrameVOILUTSequence")
            if voi:
                sources.append(voi[0])
    for src in (sources[0], *sources[1:]):
        c = _first_number(src.get("WindowCenter"))
        w = _first_number(src.get("WindowWidth"))
        if c is not None and w is not None and w > 0:
            return c, w, str(src.get("VOILUTFunction", "LINEAR") or "LINEAR")
    return None


def _scale_to_uint8(arr: np.ndarray, bits: int | None) -> np.ndarray:
    import numpy as np

    if arr.dtype == np.uint8:
        return arr
    top = float(2 ** bits - 1) if bits and 8 < bits <= 32 else float(arr.max() or 1)
    return np.clip(np.rint(arr.astype(np.float64) * 255.0 / top), 0, 255).astype(np.uint8)


def dicom_to_image(src: str | os.PathLike[str] | Dataset, frame: int | None = None,
                   window: tuple[float, float] | None = None) -> Image.Image:
    """One frame of a DICOM image as an 8-bit PIL image (L or RGB), ready to
    show. ``frame`` is 0-based (default: the middle frame); ``window`` is
    (center, width) in modality units and overrides the file's."""
    import numpy as np
    from PIL import Image
    from pydicom import dcmread
    from pydicom.pixels import apply_color_lut, apply_modality_lut, apply_voi_lut, pixel_array

    ds = src if not isinstance(src, (str, os.PathLike)) else dcmread(src)
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise ConversionError("no pixel data in this file")
    frames = int(ds.get("NumberOfFrames") or 1)
    if frame is None:
        frame = frames // 2
    if not 0 <= frame < frames:
        raise ConversionError(f"frame {frame} out of range: the image has {frames} frame(s) (0..{frames - 1})")
    try:
        arr = pixel_array(ds, index=frame if frames > 1 else None)
    except Exception as exc:  # the decoders raise many kinds
        ts = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(ts, "name", ts)
        raise ConversionError(f"cannot decode pixel data ({name}): {exc}") from exc
    if frames > 1 and arr.ndim == (4 if int(ds.get("SamplesPerPixel", 1)) > 1 else 3):
        arr = arr[0]
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).upper()
    samples = int(ds.get("SamplesPerPixel", 1))
    if photometric == "PALETTE COLOR":
        rgb = apply_color_lut(arr, ds)
        bits = int(ds.RedPaletteColorLookupTableDescriptor[2]) if "RedPaletteColorLookupTableDescriptor" in ds else 8
        return Image.fromarray(_scale_to_uint8(rgb, 16 if bits > 8 else 8), "RGB")
    if samples > 1:  # pydicom has converted YBR_* to RGB
        return Image.fromarray(_scale_to_uint8(arr[..., :3], int(ds.get("BitsStored") or 8)), "RGB")
    values = apply_modality_lut(arr, ds)
    spec = (window[0], window[1], "LINEAR") if window else _window_from_dataset(ds, frame)
    if spec is not None:
        out = window_to_uint8(values, *spec)
    elif "VOILUTSequence" in ds:
        lut = apply_voi_lut(values, ds, index=0, prefer_lut=True).astype(np.float64)
        out = _minmax(lut)
    else:
        out = _minmax(values)
    if photometric == "MONOCHROME1":
        out = 255 - out
    return Image.fromarray(out, "L")


def _minmax(values: np.ndarray) -> np.ndarray:
    import numpy as np

    lo, hi = float(np.min(values)), float(np.max(values))
    if hi <= lo:
        return np.zeros(values.shape, np.uint8)
    return np.clip(np.rint((values.astype(np.float64) - lo) * 255.0 / (hi - lo)), 0, 255).astype(np.uint8)


def _jpeg_bytes(img: Image.Image, quality: int) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality, optimize=True)
    return buf.getvalue()


def to_jpeg(src: str | os.PathLike[str] | Dataset, out: str | os.PathLike[str] | None = None,
            frame: int | None = None, window: tuple[float, float] | None = None, quality: int = 90) -> bytes:
    """DICOM -> JPEG bytes (also written to ``out`` when given)."""
    data = _jpeg_bytes(dicom_to_image(src, frame, window), quality)
    if out is not None:
        _write_atomic(Path(out), data)
    return data


def thumbnail_jpeg(src: str | os.PathLike[str] | Dataset, size: int = 128, frame: int | None = None,
                   quality: int = 85) -> bytes:
    """A JPEG at most ``size`` pixels on its longer side (aspect kept)."""
    from PIL import Image

    img = dicom_to_image(src, frame)
    img.thumbnail((size, size), Image.Resampling.LANCZOS)
    return _jpeg_bytes(img, quality)


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(data)
    os.replace(tmp, path)


# ---- JPEG -> DICOM ------------------------------------------------------------------

JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_EXTENDED = "1.2.840.10008.1.2.4.51"
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"


def jpeg_frame_info(data: bytes) -> dict[str, Any]:
    """Read the SOF and APP14 markers of a JPEG (ITU T.81 B.2): process,
    precision, size, components and sampling, Adobe colour transform."""
    if data[:2] != b"\xff\xd8":
        raise ConversionError("not a JPEG file (no SOI marker)")
    i, n = 2, len(data)
    adobe_transform: int | None = None
    jfif = False
    while i + 4 <= n:
        if data[i] != 0xFF:
            raise ConversionError(f"corrupt JPEG: expected a marker at byte {i}")
        marker = data[i + 1]
        if marker == 0xFF:  # fill byte
            i += 1
            continue
        if marker in (0xD8, 0x01) or 0xD0 <= marker <= 0xD7:
            i += 2
            continue
        length = int.from_bytes(data[i + 2:i + 4], "big")
        seg = data[i + 4:i + 2 + length]
        if marker == 0xE0 and seg[:5] == b"JFIF\x00":
            jfif = True
        elif marker == 0xEE and seg[:5] == b"Adobe" and len(seg) >= 12:
            adobe_transform = seg[11]
        elif 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
            precision = seg[0]
            rows = int.from_bytes(seg[1:3], "big")
            cols = int.from_bytes(seg[3:5], "big")
            ncomp = seg[5]
            sampling = [(seg[6 + 3 * k + 1] >> 4, seg[6 + 3 * k + 1] & 15) for k in range(ncomp)]
            ids = [seg[6 + 3 * k] for k in range(ncomp)]
            return {"sof": marker, "precision": precision, "rows": rows, "columns": cols, "components": ncomp,
                    "sampling": sampling, "ids": ids, "adobe_transform": adobe_transform, "jfif": jfif}
        i += 2 + length
    raise ConversionError("corrupt JPEG: no SOF marker")


def _photometric(info: dict[str, Any]) -> str:
    if info["components"] == 1:
        return "MONOCHROME2"
    if info["components"] != 3:
        raise ConversionError(f"{info['components']}-component JPEG (CMYK?) has no DICOM equivalent")
    rgb = info["adobe_transform"] == 0 or (info["adobe_transform"] is None and not info["jfif"]
                                           and info["ids"] == [ord("R"), ord("G"), ord("B")])
    if rgb:
        return "RGB"
    # PS3.5 8.2.1: YCbCr from a JPEG codec is YBR_FULL_422 when the chroma
    # is subsampled (4:2:2 or 4:2:0), YBR_FULL when it is not.
    return "YBR_FULL" if len(set(info["sampling"])) == 1 else "YBR_FULL_422"


def from_jpeg(jpeg: str | os.PathLike[str], out: str | os.PathLike[str], demographics: Mapping[str, Any],
              study_uid: str | None = None, series_uid: str | None = None) -> Dataset:
    """Secondary Capture with the JPEG encapsulated as-is. ``demographics``
    maps DICOM keywords to values (PatientName, PatientID, StudyDescription
    ...); anything given overrides the defaults below."""
    import datetime

    from pydicom import Dataset
    from pydicom.datadict import tag_for_keyword
    from pydicom.dataset import FileMetaDataset
    from pydicom.encaps import encapsulate
    from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, generate_uid

    data = Path(jpeg).read_bytes()
    info = jpeg_frame_info(data)
    sof, precision = info["sof"], info["precision"]
    if sof == 0xC0 and precision == 8:
        ts = JPEG_BASELINE
    elif sof == 0xC1 and precision in (8, 12):
        ts = JPEG_EXTENDED  # process 2 (8-bit) and 4 (12-bit): SOF1 is not a baseline stream
    else:
        kind = {0xC2: "progressive", 0xC3: "lossless", 0xC9: "arithmetic-coded"}.get(sof, f"SOF 0x{sof:02X}")
        raise ConversionError(f"{kind} JPEG ({precision}-bit) has no transfer syntax for as-is encapsulation; "
                              "re-save it as baseline JPEG")
    photometric = _photometric(info)
    now = datetime.datetime.now()

    ds = Dataset()
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID = SECONDARY_CAPTURE
    ds.SOPInstanceUID = generate_uid()
    ds.StudyInstanceUID = study_uid or generate_uid()
    ds.SeriesInstanceUID = series_uid or generate_uid()
    ds.PatientName = ""
    ds.PatientID = ""
    ds.PatientBirthDate = ""
    ds.PatientSex = ""
    ds.StudyDate = ds.ContentDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.ContentTime = now.strftime("%H%M%S")
    ds.ReferringPhysicianName = ""
    ds.StudyID = ""
    ds.AccessionNumber = ""
    ds.Modality = "OT"
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ConversionType = "WSD"  # workstation
    ds.PatientOrientation = ""
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.SamplesPerPixel = info["components"]
    ds.PhotometricInterpretation = photometric
    if info["components"] > 1:
        ds.PlanarConfiguration = 0
    ds.Rows = info["rows"]
    ds.Columns = info["columns"]
    ds.BitsAllocated = 8 if precision == 8 else 16
    ds.BitsStored = precision
    ds.HighBit = precision - 1
    ds.PixelRepresentation = 0
    ds.LossyImageCompression = "01"
    ds.LossyImageCompressionMethod = "ISO_10918_1"
    for key, value in demographics.items():
        if value is None:
            continue
        if not tag_for_keyword(key):
            raise ConversionError(f"unknown DICOM keyword {key!r}")
        setattr(ds, key, value)
    ds.PixelData = encapsulate([data])
    ds["PixelData"].VR = "OB"

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = UID(ts)
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds.file_meta = meta
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    _write_atomic(Path(out), buf.getvalue())
    return ds


# ---- command line -------------------------------------------------------------------

def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("convert", help="DICOM <-> JPEG conversions and thumbnails")
    conv = p.add_subparsers(dest="conversion", required=True)
    q = conv.add_parser("to-jpeg", help="DICOM image -> JPEG (windowed, display-ready)")
    q.add_argument("file")
    q.add_argument("-o", "--output", help="output file (default: FILE with .jpg)")
    q.add_argument("--frame", type=int, help="frame number, 1-based (default: the middle frame)")
    q.add_argument("--window",
                   help="C,W: window center and width in modality units (default: the file's, else min/max)")
    q.add_argument("--quality", type=int, default=90)
    q.set_defaults(func=_to_jpeg_cmd)
    q = conv.add_parser("thumbnail", help="DICOM image -> JPEG thumbnail")
    q.add_argument("file")
    q.add_argument("-o", "--output", help="output file (default: FILE with _thumb.jpg)")
    q.add_argument("--size", type=int, default=128, help="longer side in pixels (default 128)")
    q.add_argument("--frame", type=int, help="frame number, 1-based (default: the middle frame)")
    q.set_defaults(func=_thumbnail_cmd)
    q = conv.add_parser("from-jpeg", help="JPEG -> DICOM Secondary Capture (JPEG kept as-is)")
    q.add_argument("image")
    q.add_argument("-o", "--output", required=True)
    q.add_argument("--patient-name")
    q.add_argument("--patient-id")
    q.add_argument("--birth-date", help="YYYYMMDD")
    q.add_argument("--sex", choices=["M", "F", "O"])
    q.add_argument("--accession")
    q.add_argument("--study-description")
    q.add_argument("--study-uid", help="add to an existing study")
    q.add_argument("--series-uid")
    q.add_argument("--demographics", help="JSON file of DICOM keyword -> value (options override it)")
    q.set_defaults(func=_from_jpeg_cmd)


def _frame_arg(value: int | None) -> int | None:
    if value is None:
        return None
    if value < 1:
        raise ConversionError("--frame counts from 1")
    return value - 1


def _window_arg(value: str | None) -> tuple[float, float] | None:
    if not value:
        return None
    try:
        c, w = (float(v) for v in value.split(","))
    except ValueError:
        raise ConversionError(f"--window wants CENTER,WIDTH, got {value!r}") from None
    if w <= 0:
        raise ConversionError("--window: the width must be positive")
    return c, w


def _run(fn: Callable[[], object]) -> int:
    from pydicom.errors import InvalidDicomError

    try:
        fn()
    except (ConversionError, InvalidDicomError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


def _to_jpeg_cmd(args: argparse.Namespace) -> int:
    def go() -> None:
        out = args.output or str(Path(args.file).with_suffix(".jpg"))
        to_jpeg(args.file, out, _frame_arg(args.frame), _window_arg(args.window), args.quality)
        print(out)
    return _run(go)


def _thumbnail_cmd(args: argparse.Namespace) -> int:
    def go() -> None:
        out = args.output or str(Path(args.file).with_name(Path(args.file).stem + "_thumb.jpg"))
        _write_atomic(Path(out), thumbnail_jpeg(args.file, args.size, _frame_arg(args.frame)))
        print(out)
    return _run(go)


def _from_jpeg_cmd(args: argparse.Namespace) -> int:
    import orjson

    def go() -> None:
        demo: dict[str, Any] = {}
        if args.demographics:
            try:
                loaded = orjson.loads(Path(args.demographics).read_bytes())
            except ValueError as exc:
                raise ConversionError(f"{args.demographics}: not JSON: {exc}") from None
            if not isinstance(loaded, dict):
                raise ConversionError(f"{args.demographics}: want a JSON object of keyword -> value")
            demo.update(loaded)
        for opt, key in (("patient_name", "PatientName"), ("patient_id", "PatientID"),
                         ("birth_date", "PatientBirthDate"), ("sex", "PatientSex"), ("accession", "AccessionNumber"),
                         ("study_description", "StudyDescription")):
            if getattr(args, opt) is not None:
                demo[key] = getattr(args, opt)
        ds = from_jpeg(args.image, args.output, demo, args.study_uid, args.series_uid)
        print(f"{args.output}: {ds.PhotometricInterpretation} {ds.Columns}x{ds.Rows}, "
              f"{ds.file_meta.TransferSyntaxUID.name}, SOP Instance {ds.SOPInstanceUID}")
    return _run(go)
