"""Per-header cost: fastscp parse_head vs pydicom, in microseconds.

Run: python bench/bench_header.py [--number N]

Inputs are the dataset bytes (after the file meta) of pydicom's test files,
cut to a 16 KiB head as the receiver keeps it. For each, it times:

- scan only:        the Cython HeaderScanner on the head (raw value bytes)
- parse_head:       scan + decoding into an InstanceInfo (the receiver's path)
- read_dataset:     pydicom.filereader.read_dataset on the head, stopping
                    before pixel data, plus reading the same attributes
- dcmread:          pydicom.dcmread(stop_before_pixels=True) of the Part-10
                    bytes in memory, plus reading the same attributes
- dcmread bare:     the same without touching any attribute

pydicom decodes lazily, so the read_dataset and dcmread columns include
touching the attributes that InstanceInfo carries (parse_head decodes them
all); "dcmread bare" is the number ARCHITECTURE.md quotes.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import timeit
import warnings
from io import BytesIO
from pathlib import Path

import pydicom
from pydicom.data import get_testdata_file
from pydicom.filereader import read_dataset

from fastscp.storage import header as header_module
from fastscp.storage.header import parse_head, read_file_meta

HEAD = 16 * 1024
KEYWORDS = (
    "SpecificCharacterSet", "SOPClassUID", "SOPInstanceUID", "StudyDate", "StudyTime",
    "AccessionNumber", "Modality", "Manufacturer", "InstitutionName", "ReferringPhysicianName",
    "StationName", "StudyDescription", "SeriesDescription", "PatientName", "PatientID",
    "PatientBirthDate", "PatientSex", "BodyPartExamined", "EchoNumbers", "ProtocolName",
    "StudyInstanceUID", "SeriesInstanceUID", "SeriesNumber", "InstanceNumber", "NumberOfFrames",
    "Rows", "Columns", "RequestingPhysician",
)
CASES = (
    ("CT explicit LE", "CT_small.dcm"),
    ("MR implicit LE", "MR_small_implicit.dcm"),
    ("MR explicit BE", "MR_small_bigendian.dcm"),
    ("JPEG-LS explicit LE", "MR_small_jpeg_ls_lossless.dcm"),
    ("RT plan (long, sequences)", "rtplan.dcm"),
    ("deflated", "image_dfl.dcm"),
)


def _at_pixel_data(tag: int, vr: str | None, length: int) -> bool:
    return tag in (0x7FE00008, 0x7FE00009, 0x7FE00010)


def _touch(ds: pydicom.Dataset) -> None:
    for keyword in KEYWORDS:
        ds.get(keyword)


def _best_us(func: object, number: int, repeat: int) -> float:
    # many short runs, best one: robust against other processes on a busy box
    timer = timeit.Timer(func)  # type: ignore[arg-type]
    return min(timer.repeat(repeat=repeat, number=number)) / number * 1e6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--number", type=int, default=200, help="calls per timing run")
    parser.add_argument("--repeat", type=int, default=30, help="timing runs (the best counts)")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    scanner = header_module._SCANNER
    rows = []
    for label, name in CASES:
        path = get_testdata_file(name)
        if path is None:
            continue
        raw = Path(path).read_bytes()
        offset, uid = read_file_meta(raw)
        dataset = raw[offset:]
        head = dataset[:HEAD]
        complete = len(dataset) <= HEAD
        syntax, deflated = header_module.scan_syntax(uid)
        info = parse_head(head, uid, complete)
        assert info is not None, name
        # where the scan stopped: the bytes of header it really walked
        walked = scanner.scan(header_module._inflate(head)[0] if deflated else head, syntax)[2]

        n = args.number
        r = args.repeat
        scan_us = (float("nan") if deflated
                   else _best_us(lambda head=head, syntax=syntax: scanner.scan(head, syntax), n, r))
        parse_us = _best_us(lambda head=head, uid=uid, complete=complete: parse_head(head, uid, complete), n, r)

        implicit = syntax == header_module.IMPLICIT_VR_LE
        little = syntax != header_module.EXPLICIT_VR_BE
        plain = header_module._inflate(head)[0] if deflated else head

        def pydicom_read_dataset(plain: bytes = plain, implicit: bool = implicit, little: bool = little) -> None:
            _touch(read_dataset(BytesIO(plain), implicit, little, stop_when=_at_pixel_data))

        def pydicom_dcmread(raw: bytes = raw) -> None:
            _touch(pydicom.dcmread(BytesIO(raw), stop_before_pixels=True))

        def pydicom_dcmread_bare(raw: bytes = raw) -> None:
            pydicom.dcmread(BytesIO(raw), stop_before_pixels=True)

        slow = max(20, n // 10)
        read_us = _best_us(pydicom_read_dataset, slow, r)
        dcmread_us = _best_us(pydicom_dcmread, slow, r)
        bare_us = _best_us(pydicom_dcmread_bare, slow, r)
        rows.append((label, walked, scan_us, parse_us, read_us, dcmread_us, bare_us))

    print(f"pydicom {pydicom.__version__}, Python {sys.version.split()[0]}; "
          "best of --repeat runs, microseconds per header")
    print(
        f"{'case':28} {'walked':>7} {'scan':>6} {'parse_head':>11} {'read_dataset':>13}"
        f" {'dcmread':>8} {'dcmread bare':>13} {'vs bare':>8}"
    )
    for label, walked, scan_us, parse_us, read_us, dcmread_us, bare_us in rows:
        print(
            f"{label:28} {walked:>6}B {scan_us:>6.1f} {parse_us:>11.1f} {read_us:>13.1f}"
            f" {dcmread_us:>8.1f} {bare_us:>13.1f} {bare_us / parse_us:>7.0f}x"
        )
    print(f"median parse_head: {statistics.median(r[3] for r in rows):.1f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
