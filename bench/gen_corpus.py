"""Synthetic DICOM corpora for the flood benchmark.

Three kinds, all Part-10 files in Explicit VR Little Endian:
  large       CT Image Storage, 512x512 16-bit (~0.5 MB each)
  small       CT Image Storage, 64x64 16-bit (~9 KB each)
  multiframe  one Multi-frame Grayscale Word Secondary Capture instance of
              512x512 frames, size in MB as an option (2048 for the real 2 GB)

Headers look like a real archive's: patients hold studies, studies hold
series, every Study/Series/SOP Instance UID is unique, slice positions step.
Pixel data is a phantom plus noise so it is not all zeros. The multi-frame
instance is streamed to disk frame by frame (the header is written by pydicom,
then the Pixel Data element header and the frames are appended), so a 2 GB
file never sits in memory.

A corpus lives in <root>/<kind>-<parameters>/ and is complete once its
manifest.json exists; asking again with the same parameters returns at once.
"""
from __future__ import annotations

import argparse
import datetime as dt
import json
import shutil
import struct
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import PYDICOM_IMPLEMENTATION_UID, UID, ExplicitVRLittleEndian, generate_uid

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
MF_GRAYSCALE_WORD_SC = "1.2.840.10008.5.1.4.1.1.7.3"
KINDS = ("large", "small", "multiframe")
DEFAULT_ROOT = Path(__file__).resolve().parent / "out" / "corpus"


@dataclass(frozen=True)
class CorpusSpec:
    """What to generate; the cache key is derived from every field."""

    kind: str
    count: int = 1
    size: int = 512              # rows == columns
    images_per_series: int = 100
    series_per_study: int = 2
    studies_per_patient: int = 2
    multiframe_mb: int = 64      # only for kind == "multiframe"
    seed: int = 8

    def key(self) -> str:
        if self.kind == "multiframe":
            return f"multiframe-{self.multiframe_mb}MB-s{self.seed}"
        return (f"{self.kind}-n{self.count}-{self.size}px-ips{self.images_per_series}"
                f"-sps{self.series_per_study}-spp{self.studies_per_patient}-s{self.seed}")


@dataclass
class Corpus:
    """A generated corpus: its files and what they add up to."""

    spec: CorpusSpec
    directory: Path
    files: list[Path]
    total_bytes: int
    sop_instance_uids: list[str]

    @property
    def name(self) -> str:
        return self.spec.kind


def default_spec(kind: str, count: int | None = None, multiframe_mb: int = 64) -> CorpusSpec:
    if kind == "large":
        return CorpusSpec("large", count=count or 200, size=512, images_per_series=100)
    if kind == "small":
        return CorpusSpec("small", count=count or 1000, size=64, images_per_series=250)
    if kind == "multiframe":
        return CorpusSpec("multiframe", count=1, size=512, multiframe_mb=multiframe_mb)
    raise ValueError(f"unknown corpus kind {kind!r}; expected one of {KINDS}")


def _phantom(size: int, rng: np.random.Generator) -> np.ndarray:
    """A water disc with a bone ring in air, in CT numbers + 1024 (unsigned)."""
    yy, xx = np.mgrid[0:size, 0:size]
    r = np.hypot(xx - size / 2, yy - size / 2) / (size / 2)
    img = np.where(r < 0.85, 1024, 24).astype(np.int32)
    img = np.where((r > 0.75) & (r < 0.85), 2200, img)
    img += rng.integers(-20, 21, size=(size, size), dtype=np.int32)
    return np.clip(img, 0, 4095).astype("<u2")


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = UID(sop_class)
    meta.MediaStorageSOPInstanceUID = UID(sop_instance)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = "FASTSCP_BENCH"
    return meta


def _patient_study_series(ds: Dataset, patient_no: int, study_uid: str, series_uid: str,
                          series_no: int, study_date: dt.date, frame_of_ref: str) -> None:
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.PatientName = f"BENCH^PATIENT{patient_no:05d}"
    ds.PatientID = f"PID{patient_no:07d}"
    ds.PatientBirthDate = f"{1940 + patient_no % 60}0{1 + patient_no % 9}15"
    ds.PatientSex = "MF"[patient_no % 2]
    ds.StudyInstanceUID = study_uid
    ds.StudyDate = study_date.strftime("%Y%m%d")
    ds.StudyTime = "101500"
    ds.StudyID = f"S{patient_no:05d}"
    ds.AccessionNumber = f"ACC{abs(hash(study_uid)) % 10**9:09d}"
    ds.ReferringPhysicianName = "REFERRER^BENCH"
    ds.StudyDescription = "CT CHEST ABDOMEN PELVIS"
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = series_no
    ds.SeriesDate = ds.StudyDate
    ds.SeriesTime = "102000"
    ds.SeriesDescription = f"AXIAL {series_no}"
    ds.BodyPartExamined = "CHEST"
    ds.FrameOfReferenceUID = frame_of_ref
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "FASTSCP BENCH"
    ds.InstitutionName = "LOOPBACK HOSPITAL"
    ds.StationName = "BENCH01"


def _image_pixel_module(ds: Dataset, size: int) -> None:
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows = size
    ds.Columns = size
    ds.PixelSpacing = [round(350.0 / size, 4)] * 2
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0


def _generate_images(spec: CorpusSpec, directory: Path) -> tuple[list[Path], list[str]]:
    rng = np.random.default_rng(spec.seed)
    base = _phantom(spec.size, rng)
    noise_bank = [rng.integers(0, 16, size=base.shape, dtype=np.uint16) for _ in range(16)]
    files: list[Path] = []
    uids: list[str] = []
    per_study = spec.images_per_series * spec.series_per_study
    per_patient = per_study * spec.studies_per_patient
    study_uid = series_uid = frame_of_ref = ""
    now = dt.datetime.now()
    for i in range(spec.count):
        patient_no, in_patient = divmod(i, per_patient)
        study_no, in_study = divmod(in_patient, per_study)
        series_no, in_series = divmod(in_study, spec.images_per_series)
        if in_study == 0:
            study_uid, frame_of_ref = generate_uid(), generate_uid()
        if in_series == 0:
            series_uid = generate_uid()
        sop_uid = generate_uid()
        ds = Dataset()
        ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
        _patient_study_series(ds, patient_no, study_uid, series_uid, series_no + 1,
                              dt.date(2024, 1, 1) + dt.timedelta(days=patient_no * 3 + study_no),
                              frame_of_ref)
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = sop_uid
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.Modality = "CT"
        ds.InstanceCreationDate = now.strftime("%Y%m%d")
        ds.InstanceCreationTime = now.strftime("%H%M%S")
        ds.ContentDate = ds.StudyDate
        ds.ContentTime = "102030"
        ds.InstanceNumber = in_series + 1
        ds.AcquisitionNumber = 1
        z = -in_series * 1.25
        ds.ImagePositionPatient = [-175.0, -175.0, z]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.SliceLocation = z
        ds.SliceThickness = 1.25
        ds.KVP = 120
        ds.XRayTubeCurrent = 250
        ds.ConvolutionKernel = "STANDARD"
        _image_pixel_module(ds, spec.size)
        ds.RescaleIntercept = -1024
        ds.RescaleSlope = 1
        ds.RescaleType = "HU"
        ds.WindowCenter = 40
        ds.WindowWidth = 400
        ds.PixelData = (base + noise_bank[i % len(noise_bank)]).tobytes()
        path = directory / f"{i:06d}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files.append(path)
        uids.append(sop_uid)
    return files, uids


def _generate_multiframe(spec: CorpusSpec, directory: Path) -> tuple[list[Path], list[str]]:
    rng = np.random.default_rng(spec.seed)
    frame_bytes = spec.size * spec.size * 2
    frames = max(1, (spec.multiframe_mb * 1024 * 1024) // frame_bytes)
    pixel_length = frames * frame_bytes
    if pixel_length >= 0xFFFFFFFF:
        raise ValueError("pixel data must stay below 4 GiB (32-bit element length)")
    base = _phantom(spec.size, rng)
    bank = [(base + rng.integers(0, 16, size=base.shape, dtype=np.uint16)).tobytes()
            for _ in range(8)]
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _file_meta(MF_GRAYSCALE_WORD_SC, sop_uid)
    _patient_study_series(ds, 1, generate_uid(), generate_uid(), 1,
                          dt.date(2024, 6, 1), generate_uid())
    ds.SOPClassUID = MF_GRAYSCALE_WORD_SC
    ds.SOPInstanceUID = sop_uid
    ds.ImageType = ["DERIVED", "SECONDARY"]
    ds.Modality = "OT"
    ds.ConversionType = "WSD"
    ds.InstanceNumber = 1
    ds.ContentDate = ds.StudyDate
    ds.ContentTime = "120000"
    _image_pixel_module(ds, spec.size)
    ds.NumberOfFrames = frames
    ds.FrameIncrementPointer = (0x0018, 0x2005)  # Slice Location Vector
    ds.SliceLocationVector = [float(-i) for i in range(frames)]
    ds.RescaleIntercept = -1024
    ds.RescaleSlope = 1
    ds.RescaleType = "HU"
    path = directory / "multiframe.dcm"
    with open(path, "wb") as fh:
        ds.save_as(fh, enforce_file_format=True)
        # (7FE0,0010) OW, 2 reserved bytes, 32-bit length: PS3.5 7.1.2.
        fh.write(struct.pack("<HH2sHI", 0x7FE0, 0x0010, b"OW", 0, pixel_length))
        for i in range(frames):
            fh.write(bank[i % len(bank)])
    return [path], [sop_uid]


def ensure_corpus(spec: CorpusSpec, root: Path = DEFAULT_ROOT, quiet: bool = False) -> Corpus:
    """Return the corpus for spec, generating it unless a complete one is cached."""
    directory = root / spec.key()
    manifest = directory / "manifest.json"
    if manifest.exists():
        data = json.loads(manifest.read_text())
        files = [directory / name for name in data["files"]]
        return Corpus(spec, directory, files, data["total_bytes"], data["sop_instance_uids"])
    if directory.exists():
        shutil.rmtree(directory)  # an interrupted earlier run
    directory.mkdir(parents=True)
    t0 = time.perf_counter()
    if spec.kind == "multiframe":
        files, uids = _generate_multiframe(spec, directory)
    else:
        files, uids = _generate_images(spec, directory)
    total = sum(p.stat().st_size for p in files)
    manifest.write_text(json.dumps({
        "spec": asdict(spec), "files": [p.name for p in files],
        "total_bytes": total, "sop_instance_uids": uids,
    }))
    if not quiet:
        print(f"generated {spec.key()}: {len(files)} files, {total / 1e6:.1f} MB "
              f"in {time.perf_counter() - t0:.1f} s", file=sys.stderr)
    return Corpus(spec, directory, files, total, uids)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kinds", default="large,small", help="comma list of " + ",".join(KINDS))
    ap.add_argument("--large-count", type=int, default=200)
    ap.add_argument("--small-count", type=int, default=1000)
    ap.add_argument("--multiframe-mb", type=int, default=64)
    ap.add_argument("--root", type=Path, default=DEFAULT_ROOT)
    args = ap.parse_args(argv)
    counts = {"large": args.large_count, "small": args.small_count, "multiframe": 1}
    for kind in args.kinds.split(","):
        c = ensure_corpus(default_spec(kind, counts[kind], args.multiframe_mb), args.root)
        print(f"{kind}: {len(c.files)} files, {c.total_bytes / 1e6:.1f} MB, {c.directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
