"""Helpers shared by the catalog tests and bench/bench_catalog.py: small
Part-10 files written with pydicom, and InstanceInfo records. (No tests here.)"""

from __future__ import annotations

import time
from pathlib import Path

from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

from fastscp.instance import InstanceInfo

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"


def write_instance(
    path: Path,
    sop_uid: str,
    study_uid: str = "1.2.826.0.1.3680043.9.7.1",
    series_uid: str = "1.2.826.0.1.3680043.9.7.1.1",
    *,
    patient_id: str = "PID1",
    patient_name: str = "Doe^Jane",
    modality: str = "CT",
    instance_number: int = 1,
    rows: int = 4,
    columns: int = 4,
    study_date: str = "20240131",
) -> Path:
    """Write a small, valid Part-10 file (4x4 16-bit pixels by default)."""
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CT_IMAGE if modality == "CT" else MR_IMAGE
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID = meta.MediaStorageSOPClassUID
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate = study_date
    ds.StudyTime = "101500"
    ds.AccessionNumber = "ACC" + study_uid[-4:]
    ds.Modality = modality
    ds.Manufacturer = "fastscp-test"
    ds.InstitutionName = "Test Hospital"
    ds.ReferringPhysicianName = "Ref^Doctor"
    ds.StationName = "ST1"
    ds.StudyDescription = "Chest"
    ds.SeriesDescription = "Axial"
    ds.PatientName = patient_name
    ds.PatientID = patient_id
    ds.PatientBirthDate = "19700101"
    ds.PatientSex = "F"
    ds.BodyPartExamined = "CHEST"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.SeriesNumber = 1
    ds.InstanceNumber = instance_number
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.PixelData = bytes(rows * columns * 2)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def make_info(i: int, *, study: int = 0, series: int = 0, modality: str = "CT",
              calling_ae: str = "SCU1", received_at: float | None = None,
              path: str | None = None, file_size: int = 1000) -> InstanceInfo:
    """An InstanceInfo as the receiver would produce it."""
    study_uid = f"1.2.826.0.1.3680043.9.7.{study}"
    return InstanceInfo(
        sop_class_uid=CT_IMAGE,
        sop_instance_uid=f"1.2.826.0.1.3680043.9.8.{i}",
        transfer_syntax_uid=str(ExplicitVRLittleEndian),
        patient_id=f"PID{study}",
        patient_name="Doe^Jane",
        patient_birth_date="19700101",
        patient_sex="F",
        study_instance_uid=study_uid,
        study_date="20240131",
        study_time="101500",
        accession_number=f"ACC{study}",
        study_description="Chest",
        series_instance_uid=f"{study_uid}.{series}",
        modality=modality,
        series_number=series + 1,
        instance_number=i + 1,
        rows=512,
        columns=512,
        number_of_frames=1,
        calling_ae=calling_ae,
        called_ae="FASTSCP",
        peer="127.0.0.1:40000",
        association_id="assoc-1",
        received_at=time.time() if received_at is None else received_at,
        dataset_size=file_size - 300,
        file_size=file_size,
        path=path or f"/storage/{i}.dcm",
        content_hash=f"{i:032x}",
    )
