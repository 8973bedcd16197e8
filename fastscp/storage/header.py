"""Header-only parse of a received dataset into an InstanceInfo.

The receiver keeps the first bytes of each C-STORE dataset (the bytes after
the Part-10 file meta, in the negotiated transfer syntax). ``parse_head``
runs the Cython scanner (_ext/header.pyx, PS3.5 section 7) over that head for
the ~29 top-level attributes InstanceInfo carries, then decodes only those
values: UI/CS/DA/TM in the default repertoire, SH/LO/PN with the data set's
(0008,0005) Specific Character Set through pydicom's charset machinery
(PS3.5 6.1, including ISO 2022 code extensions), IS to int, US by the
transfer syntax's byte order.

If the head ends before the scan could settle every attribute, ``parse_head``
returns None and the caller goes to the file on disk (``parse_file``, which
runs the same scanner over a memory map, or pydicom when the scanner finds
the encoding malformed). Deflated Explicit VR Little Endian (PS3.5 A.5) is
inflated (raw deflate) before scanning. A pydicom Dataset of the header is
only built on request (``header_dataset``), never on the default path.
"""

from __future__ import annotations

import mmap
import os
import stat
import zlib
from collections.abc import Callable
from dataclasses import dataclass, replace
from io import BytesIO
from typing import TYPE_CHECKING, Any

from .._ext.header import (
    END,
    EXPLICIT_VR_BE,
    EXPLICIT_VR_LE,
    IMPLICIT_VR_LE,
    PAST_LAST,
    PIXEL_DATA,
    TRUNCATED,
    HeaderScanner,
    decode_values_into,
    walk_to_end,
)
from ..instance import InstanceInfo

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

# pydicom (with numpy and its pixel plugins, about 30 MB of a process) is
# imported only where it is needed: a character set outside _CODECS, ISO
# 2022 escapes, a header Dataset for template naming, the lenient file
# parse. A receiver of ordinary images never loads it.

__all__ = [
    "FileMeta",
    "MalformedDataset",
    "check_dataset_end",
    "complete_copy",
    "file_meta",
    "header_dataset",
    "info_from_dataset",
    "parse_file",
    "parse_head",
    "read_file_meta",
    "scan_syntax",
]

IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1"
DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2.1.99"
EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"

# Inflating a deflated head stops here: the attributes we want sit in the
# first few KB, and a deflate bomb must not cost memory.
MAX_INFLATED = 4 << 20


class MalformedDataset(ValueError):
    """The bytes are not a valid data set in the given transfer syntax."""


# How each attribute is decoded.
_UID, _CODE, _TEXT, _NAME, _INT, _INTS, _US = range(7)

# (tag, InstanceInfo field, decoding), ascending by tag.
_ATTRIBUTES: tuple[tuple[int, str, int], ...] = (
    (0x00080005, "specific_character_set", _CODE),
    (0x00080016, "sop_class_uid", _UID),
    (0x00080018, "sop_instance_uid", _UID),
    (0x00080020, "study_date", _CODE),
    (0x00080030, "study_time", _CODE),
    (0x00080050, "accession_number", _TEXT),
    (0x00080060, "modality", _CODE),
    (0x00080070, "manufacturer", _TEXT),
    (0x00080080, "institution_name", _TEXT),
    (0x00080090, "referring_physician", _NAME),
    (0x00081010, "station_name", _TEXT),
    (0x00081030, "study_description", _TEXT),
    (0x0008103E, "series_description", _TEXT),
    (0x00100010, "patient_name", _NAME),
    (0x00100020, "patient_id", _TEXT),
    (0x00100030, "patient_birth_date", _CODE),
    (0x00100040, "patient_sex", _CODE),
    (0x00180015, "body_part_examined", _CODE),
    (0x00180086, "echo_numbers", _INTS),
    (0x00181030, "protocol_name", _TEXT),
    (0x0020000D, "study_instance_uid", _UID),
    (0x0020000E, "series_instance_uid", _UID),
    (0x00200010, "study_id", _TEXT),
    (0x00200011, "series_number", _INT),
    (0x00200013, "instance_number", _INT),
    (0x00280008, "number_of_frames", _INT),
    (0x00280010, "rows", _US),
    (0x00280011, "columns", _US),
    (0x00321032, "requesting_physician", _NAME),
)

_SCANNER = HeaderScanner(tag for tag, _, _ in _ATTRIBUTES)
_HEADER_SPAN = HeaderScanner(())  # no tags: walk to pixel data / the end


def scan_syntax(transfer_syntax_uid: str) -> tuple[int, bool]:
    """(scanner syntax, deflated) for a transfer syntax UID.

    Every syntax other than the three uncompressed ones and deflate encodes
    its data set in Explicit VR Little Endian (PS3.5 A.4, compressed pixel
    data only changes the Pixel Data element).
    """
    uid = transfer_syntax_uid.rstrip("\0 ")
    if uid == IMPLICIT_VR_LITTLE_ENDIAN:
        return IMPLICIT_VR_LE, False
    if uid == EXPLICIT_VR_BIG_ENDIAN:
        return EXPLICIT_VR_BE, False
    if uid == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        return EXPLICIT_VR_LE, True
    return EXPLICIT_VR_LE, False


def _inflate(data: bytes | bytearray | memoryview) -> tuple[bytes, bool]:
    """Inflate a (possibly partial) raw deflate stream; True if it ended."""
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    try:
        out = inflater.decompress(data, MAX_INFLATED)
    except zlib.error as exc:
        raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
    return out, inflater.eof


def _scan_deflated(
    data: bytes | bytearray | memoryview,
) -> tuple[tuple[bytes | None, ...], int, int, bool]:
    """Scan a raw deflate stream, inflating only as far as the scan needs.

    Output is produced in doubling steps (8 KiB first) and rescanned each
    time; the scan is cheap next to inflating a whole 16 KiB head (or file).
    The last item says whether the deflate stream ended.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    inflated = bytearray()
    source: bytes | bytearray | memoryview = data
    want = 8192
    while True:
        room = want - len(inflated)
        try:
            chunk = inflater.decompress(source, room)
        except zlib.error as exc:
            raise MalformedDataset(f"deflated data set does not inflate: {exc}") from None
        inflated += chunk
        source = inflater.unconsumed_tail
        exhausted = inflater.eof or (not source and len(chunk) < room)
        values, status, offset = _scan(_SCANNER, inflated, EXPLICIT_VR_LE)
        if status == PAST_LAST or status == PIXEL_DATA or exhausted or want >= MAX_INFLATED:
            return values, status, offset, inflater.eof
        want *= 2


def _scan(
    scanner: HeaderScanner, head: bytes | bytearray | memoryview, syntax: int
) -> tuple[tuple[bytes | None, ...], int, int]:
    try:
        return scanner.scan(head, syntax)
    except ValueError as exc:
        raise MalformedDataset(str(exc)) from None


# ---- value decoding -------------------------------------------------------

_ENCODINGS_CACHE: dict[bytes, tuple[str, list[str]]] = {}
_DEFAULT_ENCODINGS = ["iso8859"]

# Specific Character Set (0008,0005) single values without code extensions
# (PS3.3 C.12.1.1.2, Table C.12-2) and the Python codec of each: the same
# codecs pydicom's convert_encodings gives (tests/test_header_parse.py
# checks every entry against it).
_CODECS = {
    "": "iso8859", "ISO_IR 6": "iso8859", "ISO_IR 100": "latin_1", "ISO_IR 101": "iso8859_2",
    "ISO_IR 109": "iso8859_3", "ISO_IR 110": "iso8859_4", "ISO_IR 126": "iso_ir_126", "ISO_IR 127": "iso_ir_127",
    "ISO_IR 138": "iso_ir_138", "ISO_IR 144": "iso_ir_144", "ISO_IR 148": "iso_ir_148", "ISO_IR 166": "iso_ir_166",
    "ISO_IR 13": "shift_jis", "ISO_IR 192": "UTF8", "GB18030": "GB18030", "GBK": "GBK",
}


def _charset(raw: bytes) -> tuple[str, list[str]]:
    """(Specific Character Set as text, Python codecs) for the raw value
    (the instances of a study repeat it: the pair is kept by raw value)."""
    known = _ENCODINGS_CACHE.get(raw)
    if known is not None:
        return known
    terms = [term.strip(" \0") for term in raw.decode("latin-1").split("\\")]
    text = "\\".join(terms)
    encodings: list[str] | None = None
    if len(terms) == 1 and terms[0] in _CODECS:
        encodings = [_CODECS[terms[0]]]
    if encodings is None:
        from pydicom.charset import convert_encodings

        try:
            encodings = convert_encodings(terms if len(terms) > 1 else terms[0])
        except (ValueError, LookupError):  # e.g. a NUL inside a term: codec lookup fails
            encodings = _DEFAULT_ENCODINGS
    if len(_ENCODINGS_CACHE) > 256:  # hostile peers may vary it forever
        _ENCODINGS_CACHE.clear()
    pair = _ENCODINGS_CACHE[raw] = (text, encodings)
    return pair


def _decode_text(raw: bytes, encodings: list[str]) -> str:
    """SH/LO/PN value in the data set's character set, each value stripped."""
    if b"\x1b" in raw:  # ISO 2022 code extensions: pydicom switches codecs
        from pydicom.charset import decode_bytes
        from pydicom.valuerep import TEXT_VR_DELIMS

        try:
            text = decode_bytes(raw, encodings, TEXT_VR_DELIMS)
        except (ValueError, LookupError):  # pydicom's strict mode, or odd escapes
            text = raw.decode("latin-1")
    else:
        try:
            text = raw.decode(encodings[0])
        except UnicodeDecodeError:
            text = raw.decode(encodings[0], "replace")
        except LookupError:
            text = raw.decode("latin-1")
    if "\\" in text:
        return "\\".join(value.strip(" \0") for value in text.split("\\"))
    return text.strip(" \0")


def _decode_name(raw: bytes, encodings: list[str]) -> str:
    """PN: like text, minus empty trailing component groups ("A^B=" is "A^B")."""
    text = _decode_text(raw, encodings)
    if "=" not in text:
        return text
    return "\\".join(value.rstrip("=") for value in text.split("\\"))


def _decode_code(raw: bytes) -> str:
    """UI/CS/DA/TM/IS: default repertoire, each value stripped."""
    text = raw.decode("latin-1")
    if "\\" in text:
        return "\\".join(value.strip(" \0") for value in text.split("\\"))
    return text.strip(" \0")


def _decode_int(raw: bytes) -> int | None:
    """First value of an IS as int; None if empty or not an integer."""
    if b"_" in raw:  # Python's int() would take "1_0"; DICOM does not
        return None
    try:
        return int(raw)  # int() accepts bytes and ignores surrounding spaces
    except ValueError:
        pass
    text = raw.decode("latin-1").split("\\", 1)[0].strip(" \0")
    if not text:
        return None
    try:
        return int(text)
    except ValueError:
        pass
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() else None


_NAMES: tuple[str, ...] = tuple(name for _, name, _ in _ATTRIBUTES[1:])
_UNIQUE = _NAMES.index("sop_instance_uid")  # differs per instance: not shared
# Decoded single values by raw bytes, shared by the instances that repeat
# them (_ext/header.pyx decode_values_into, bounded there): code strings,
# and text per codec.
_SHARED_CODES: dict[bytes, str] = {}
_SHARED_TEXTS: dict[str, dict[bytes, str]] = {}
_KINDS: tuple[int, ...] = tuple(kind for _, _, kind in _ATTRIBUTES[1:])
assert (_CODE, _TEXT, _NAME, _INT, _INTS) == (1, 2, 3, 4, 5)  # the kinds _ext/header.pyx knows
InstanceInfo.check_field_names(_NAMES)  # what _decode_values hands InstanceInfo.from_fields


def _decode_values(
    values: tuple[bytes | None, ...], little: bool, transfer_syntax_uid: str
) -> InstanceInfo:
    charset_raw = values[0]
    if charset_raw:
        charset, encodings = _charset(charset_raw)
    else:
        charset, encodings = "", _DEFAULT_ENCODINGS
    fields: dict[str, Any] = {
        "specific_character_set": charset, "sop_class_uid": "", "sop_instance_uid": "",
    }
    # The loop is Cython (_ext/header.pyx); rare cases call back the decoders above.
    encoding = encodings[0]
    texts = _SHARED_TEXTS.get(encoding)
    if texts is None:
        if len(_SHARED_TEXTS) > 64:  # hostile peers may vary the character set forever
            _SHARED_TEXTS.clear()
        texts = _SHARED_TEXTS[encoding] = {}
    decode_values_into(fields, values, _NAMES, _KINDS, encoding, encodings, little,
                       _decode_code, _decode_text, _decode_name, _decode_int, _SHARED_CODES, texts, _UNIQUE)
    fields["transfer_syntax_uid"] = transfer_syntax_uid
    return InstanceInfo.from_fields(fields)


# ---- public API -----------------------------------------------------------


def parse_head(
    head: bytes | bytearray | memoryview, transfer_syntax_uid: str, complete: bool
) -> InstanceInfo | None:
    """InstanceInfo from the first bytes of a dataset, or None if they are not enough.

    ``head`` is the start of the dataset (no file meta) encoded in
    ``transfer_syntax_uid``; ``complete`` says it is the whole dataset. The
    result carries the patient/study/series/instance fields and the SOP
    Class/Instance UIDs as found in the dataset ("" when absent; the caller
    checks them against the C-STORE command). Reception fields keep their
    defaults and ``header`` is None (see ``header_dataset``).

    Returns None only when ``complete`` is false and the head ends before an
    element past the last wanted attribute (or pixel data): then parse the
    stored file with ``parse_file``. Raises MalformedDataset (a ValueError)
    if the bytes break the encoding rules, or if a complete dataset ends
    inside an element.
    """
    syntax, deflated = scan_syntax(transfer_syntax_uid)
    stream_ended = True
    if deflated:
        values, status, offset, stream_ended = _scan_deflated(head)
    else:
        values, status, offset = _scan(_SCANNER, head, syntax)
    if status == PAST_LAST or status == PIXEL_DATA or (status == END and complete and stream_ended):
        return _decode_values(values, syntax != EXPLICIT_VR_BE, transfer_syntax_uid)
    if not complete:
        return None
    if not stream_ended:
        raise MalformedDataset(
            f"deflate stream ends early or inflates past {MAX_INFLATED} bytes before the attributes"
        )
    raise MalformedDataset(f"data set ends inside the element at offset {offset}")


def check_dataset_end(
    head: bytes | bytearray | memoryview,
    dataset_size: int,
    transfer_syntax_uid: str,
    read_at: Callable[[int, int], bytes],
) -> None:
    """Raise MalformedDataset unless the top-level elements of a received
    dataset end exactly at its last byte.

    ``parse_head`` settles once it has the attributes it wants, so a dataset
    cut inside its pixel data (or anything after the header) would pass it.
    The C scanner walks the head to pixel data or the end; the few elements
    from there on (usually just pixel data) are checked from their headers
    (``walk_to_end``, the same C element cursor), read with
    ``read_at(offset, n)`` (offsets within the dataset) when they lie past
    the head. Encapsulated pixel data is walked item by item; other
    undefined-length elements after pixel data are not followed (accepted).
    Deflated datasets are not checked here (their inflated size is unknown).
    Also raises if the first element's VR encoding (explicit or implicit)
    is not the negotiated transfer syntax's.
    """
    syntax, deflated = scan_syntax(transfer_syntax_uid)
    if deflated:
        return
    if len(head) >= 6 and (65 <= head[4] <= 90 and 65 <= head[5] <= 90) == (syntax == IMPLICIT_VR_LE):
        # the scanner tolerates this (files on disk get it wrong); a received
        # data set must be in the transfer syntax negotiated for it (PS3.5 10)
        raise MalformedDataset("data set is not encoded in the negotiated transfer syntax "
                               f"({'explicit' if syntax == IMPLICIT_VR_LE else 'implicit'} VR found)")
    _, status, pos = _scan(_HEADER_SPAN, head, syntax)
    if status == END and len(head) == dataset_size:
        return
    try:  # the rest (usually just pixel data) element by element: _ext/header.pyx
        walk_to_end(head, pos, dataset_size, syntax, read_at)
    except ValueError as exc:
        raise MalformedDataset(str(exc)) from None


def header_dataset(head: bytes | bytearray | memoryview, transfer_syntax_uid: str) -> Dataset:
    """pydicom Dataset of the top-level elements before pixel data in ``head``.

    Built on request only (template naming, hooks): the head is scanned for
    the last whole element before pixel data, and pydicom's read_dataset
    reads that span, so a truncated head gives the elements it fully holds.
    """
    syntax, deflated = scan_syntax(transfer_syntax_uid)
    data: bytes | bytearray | memoryview = head
    if deflated:
        data, _ = _inflate(head)
    _, _, offset = _scan(_HEADER_SPAN, data, syntax)
    from pydicom.filereader import read_dataset

    return read_dataset(
        BytesIO(bytes(data[:offset])),
        is_implicit_VR=syntax == IMPLICIT_VR_LE,
        is_little_endian=syntax != EXPLICIT_VR_BE,
    )


@dataclass(frozen=True, slots=True)
class FileMeta:
    """What the reader takes from a Part-10 file meta (group 0002)."""

    dataset_offset: int  # where the data set starts
    transfer_syntax_uid: str  # (0002,0010)
    sop_class_uid: str  # (0002,0002) Media Storage SOP Class UID
    sop_instance_uid: str  # (0002,0003) Media Storage SOP Instance UID


# (0002,0002) Media Storage SOP Class UID, (0002,0003) its Instance UID, (0002,0010) Transfer Syntax UID
_FILE_META = HeaderScanner((0x00020002, 0x00020003, 0x00020010), group=0x0002)


def file_meta(data: bytes | bytearray | memoryview) -> FileMeta:
    """The file meta of a Part-10 file's bytes (see ``read_file_meta``)."""
    if len(data) < 132 or bytes(data[128:132]) != b"DICM":
        raise MalformedDataset("not a DICOM Part-10 file (no preamble and DICM prefix)")
    with memoryview(data)[132:] as rest:
        values, status, offset = _scan(_FILE_META, rest, EXPLICIT_VR_LE)
    if status == TRUNCATED and len(data) - 132 - offset >= 8:  # a shorter tail cannot hold an element: the meta ended
        raise MalformedDataset(f"file meta information is truncated (element at offset {132 + offset})")
    sop_class, sop_instance, syntax = (
        value.decode("latin-1").strip(" \0") if value is not None else "" for value in values)
    return FileMeta(132 + offset, syntax, sop_class, sop_instance)


def read_file_meta(data: bytes | bytearray | memoryview) -> tuple[int, str]:
    """(dataset offset, transfer syntax UID) of a Part-10 file's bytes.

    Expects the 128-byte preamble and "DICM" (PS3.10 7.1). The file meta
    elements (group 0002, explicit VR little endian) are walked by the C
    scanner rather than trusting (0002,0000), as writers get the group length
    wrong; the data set starts at the first element of another group. Like
    the scanner, the walk reads a file meta written in implicit VR (the first
    element decides). Raises MalformedDataset if there is no such header or
    it is cut short.
    """
    meta = file_meta(data)
    return meta.dataset_offset, meta.transfer_syntax_uid


def parse_file(
    path: str | os.PathLike[str],
    dataset_offset: int | None = None,
    transfer_syntax_uid: str | None = None,
) -> InstanceInfo:
    """InstanceInfo from a stored file: the one reader for files, used by
    reception when the head was not enough and by reconcile/reindex.

    ``dataset_offset``/``transfer_syntax_uid`` default to what the file meta
    says; when the meta is read, a data set without SOP Class/Instance UID
    takes the meta's Media Storage SOP Class/Instance UID. The file is
    memory-mapped and scanned like a complete head (only the pages up to the
    last wanted attribute are touched); a deflated data set is inflated until
    the attributes are found. If the scanner finds the encoding malformed,
    pydicom reads the file instead (it tolerates more; ``header`` is then
    its Dataset), and MalformedDataset is raised only if that fails too.
    """
    meta: FileMeta | None = None
    with open(path, "rb") as fileobj:
        size = os.fstat(fileobj.fileno()).st_size
        if size == 0:
            raise MalformedDataset(f"{os.fspath(path)} is empty")
        with mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
            view = memoryview(mapped)
            try:
                if dataset_offset is None or transfer_syntax_uid is None:
                    meta = file_meta(view)
                    dataset_offset = meta.dataset_offset if dataset_offset is None else dataset_offset
                    transfer_syntax_uid = transfer_syntax_uid or meta.transfer_syntax_uid
                with view[dataset_offset:] as dataset:
                    try:
                        info = parse_head(dataset, transfer_syntax_uid, True)
                    except MalformedDataset:
                        info = None  # complete input never gives None: this is the fallback
            finally:
                view.release()
    if info is None:
        info = _parse_with_pydicom(path, transfer_syntax_uid)
    if meta is not None and not (info.sop_class_uid and info.sop_instance_uid):
        info = replace(info, sop_class_uid=info.sop_class_uid or meta.sop_class_uid,
                       sop_instance_uid=info.sop_instance_uid or meta.sop_instance_uid)
    return info


def complete_copy(path: str | os.PathLike[str], sop_instance_uid: str) -> bool:
    """True if ``path`` is a regular file holding a whole Part-10 copy of the
    instance ``sop_instance_uid``: preamble and file meta readable, the data
    set's own SOP Instance UID equal to it (a data set without one is not
    taken for a copy, whatever its file meta says), and the top-level
    elements ending exactly at the file's last byte (``check_dataset_end``).

    The duplicate check asks this before it answers Success for a copy it
    drops (storage/duplicates.py): only a complete copy of that instance in
    the served tree may stand for the one received. Runs only when the UID
    is already known, so the mmap and scan cost nothing on the normal path.
    """
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode):
            return False
        with open(path, "rb") as fileobj:
            size = os.fstat(fileobj.fileno()).st_size
            if size < 132:
                return False
            with mmap.mmap(fileobj.fileno(), 0, access=mmap.ACCESS_READ) as mapped:
                view = memoryview(mapped)
                try:
                    offset, syntax = read_file_meta(view)
                    with view[offset:] as dataset:
                        info = parse_head(dataset, syntax, True)
                        if info is None or (info.sop_instance_uid or "") != sop_instance_uid:
                            return False

                        def read_at(at: int, n: int) -> bytes:
                            return bytes(dataset[at:at + n])

                        check_dataset_end(dataset, len(dataset), syntax, read_at)
                finally:
                    view.release()
    except (OSError, ValueError, MalformedDataset):
        return False
    return True


def _parse_with_pydicom(path: str | os.PathLike[str], transfer_syntax_uid: str | None) -> InstanceInfo:
    import pydicom

    try:
        ds = pydicom.dcmread(path, stop_before_pixels=True, force=True)
    except Exception as exc:  # pydicom raises many kinds on bad input
        raise MalformedDataset(f"pydicom cannot read {os.fspath(path)}: {exc}") from exc
    uid = transfer_syntax_uid or str(ds.file_meta.get("TransferSyntaxUID", ""))
    return info_from_dataset(ds, uid)


def _text_of(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        return "\\".join(str(v).strip(" \0") for v in value)
    return str(value).strip(" \0")


def _int_of(value: Any) -> int | None:
    if value is None or value == "":
        return None
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        if not value:
            return None
        value = value[0]
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return int(number) if number.is_integer() else None


def info_from_dataset(ds: Dataset, transfer_syntax_uid: str) -> InstanceInfo:
    """InstanceInfo from a pydicom Dataset (the slow, lenient path)."""
    from pydicom.datadict import keyword_for_tag

    fields: dict[str, Any] = {}
    convert: dict[int, Callable[[Any], Any]] = {
        _UID: _text_of, _CODE: _text_of, _TEXT: _text_of, _NAME: _text_of,
        _INTS: _text_of, _INT: _int_of, _US: _int_of,
    }
    for tag, name, kind in _ATTRIBUTES:
        try:
            element = ds.get(keyword_for_tag(tag))
        except Exception:  # an undecodable value is reported as absent
            element = None
        fields[name] = convert[kind](element)
    fields["header"] = ds
    return InstanceInfo(transfer_syntax_uid=transfer_syntax_uid, **fields)
