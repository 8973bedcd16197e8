"""Request and response identifiers (PS3.4 C.4: the data sets of C-FIND,
C-MOVE and C-GET) to and from bytes in a presentation context's transfer
syntax, for every syntax the receiver accepts (implicit and explicit little
endian, explicit big endian, deflated).

Decoding is strict where pydicom alone is lenient: the top-level elements
must end exactly at the last byte (the receiver's own element walk,
``storage.header.check_dataset_end``; pydicom reads a cut data set as the
elements before the cut), a deflated one must inflate whole and within
``MAX_INFLATED`` bytes, and a VR nobody knows is refused here rather than
when a value is converted later.

Encoding a C-FIND response (``encode_response``) writes the elements the
engine hands over (``qr.Response``) directly when they are plain: little
endian, every value ASCII text, an int or empty, VRs of the key table, a
character set whose ASCII bytes are ASCII. Anything else goes through
pydicom (``encode_identifier``), which the direct bytes equal
(tests/test_query_service.py compares them).
"""

from __future__ import annotations

import struct
import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.valuerep import VR

from ..qr import Response
from ..storage.header import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MalformedDataset,
    check_dataset_end,
)

__all__ = ["MAX_INFLATED", "MalformedIdentifier", "decode_identifier", "encode_identifier", "encode_response"]

MAX_INFLATED = 1 << 24  # a deflated identifier inflating past this is refused

_VRS = frozenset(vr.value for vr in VR)


class MalformedIdentifier(ValueError):
    """The identifier's bytes are not a data set in the context's transfer syntax."""


def decode_identifier(data: bytes, transfer_syntax: str) -> Dataset:
    """The identifier as a pydicom Dataset (values decoded lazily, on
    access). Raises MalformedIdentifier unless its top-level elements end
    exactly at the last byte in the transfer syntax's encoding: pydicom alone
    reads a cut data set as the elements before the cut."""
    syntax = transfer_syntax.rstrip("\0 ")
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        inflater = zlib.decompressobj(-zlib.MAX_WBITS)
        try:
            data = inflater.decompress(data, MAX_INFLATED)
        except zlib.error as exc:
            raise MalformedIdentifier(f"deflated identifier does not inflate: {exc}") from None
        if not inflater.eof:
            raise MalformedIdentifier("deflated identifier is cut or inflates past "
                                      f"{MAX_INFLATED} bytes")
        syntax = EXPLICIT_VR_LITTLE_ENDIAN
    try:
        check_dataset_end(data, len(data), syntax, lambda offset, n: data[offset:offset + n])
    except MalformedDataset as exc:
        raise MalformedIdentifier(str(exc)) from None
    try:
        ds = read_dataset(BytesIO(data), is_implicit_VR=syntax == IMPLICIT_VR_LITTLE_ENDIAN,
                          is_little_endian=syntax != EXPLICIT_VR_BIG_ENDIAN)
    except Exception as exc:  # whatever pydicom raises on bytes the walk let through: not decodable
        raise MalformedIdentifier(f"{type(exc).__name__}: {exc}") from None
    for tag in ds.keys():  # values are converted later, by the engine; a VR no one knows never converts
        vr = ds.get_item(tag).VR
        if vr is not None and vr not in _VRS:
            raise MalformedIdentifier(f"unknown VR {vr!r} in {tag}")
    return ds


def encode_identifier(ds: Dataset, transfer_syntax: str) -> bytes:
    """A response identifier encoded in the context's transfer syntax (text
    in the response's own Specific Character Set)."""
    syntax = transfer_syntax.rstrip("\0 ")
    fp = DicomBytesIO()
    fp.is_little_endian = syntax != EXPLICIT_VR_BIG_ENDIAN
    fp.is_implicit_VR = syntax == IMPLICIT_VR_LITTLE_ENDIAN
    write_dataset(fp, ds)
    data = fp.getvalue()
    if syntax == DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN:
        deflater = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
        data = deflater.compress(data) + deflater.flush()
    return data


# VRs written directly (the C-FIND key table's, and an empty SQ); the text
# ones are padded with a space to even length, UI with a NUL (PS3.5 6.2)
_TEXT = frozenset({"AE", "CS", "DA", "DT", "IS", "LO", "PN", "SH", "TM"})
_LONG_LENGTH = frozenset({"SQ"})  # explicit VR: 2 reserved bytes, 4-byte length (PS3.5 7.1.2)
# character sets in which an ASCII text is its ASCII bytes (PS3.3 C.12.1.1.2)
_ASCII_SETS = frozenset({"", "ISO_IR 6", "ISO_IR 100", "ISO_IR 101", "ISO_IR 109", "ISO_IR 110", "ISO_IR 144",
                         "ISO_IR 127", "ISO_IR 126", "ISO_IR 138", "ISO_IR 148", "ISO_IR 203", "ISO_IR 166",
                         "ISO_IR 192", "GB18030", "GBK"})


class _NotPlain(Exception):
    """An element ``encode_response`` leaves to pydicom."""


def encode_response(response: Response, transfer_syntax: str) -> bytes:
    """A C-FIND response identifier in the context's transfer syntax: the
    same bytes as ``encode_identifier(response.dataset(), transfer_syntax)``,
    written directly when every element is plain (see the module doc)."""
    syntax = transfer_syntax.rstrip("\0 ")
    charset = response.charset
    if (syntax in (IMPLICIT_VR_LITTLE_ENDIAN, EXPLICIT_VR_LITTLE_ENDIAN)
            and (charset is None or (isinstance(charset, str) and charset in _ASCII_SETS))):
        try:
            return _plain(response, syntax == IMPLICIT_VR_LITTLE_ENDIAN)
        except _NotPlain:
            pass
    return encode_identifier(response.dataset(), transfer_syntax)


def _plain(response: Response, implicit: bool) -> bytes:
    out = bytearray()
    for tag, vr, value in sorted(response.elements, key=_tag_of):
        if value is None:
            data = b""
        elif vr == "SQ":
            if not isinstance(value, DicomSequence) or len(value):
                raise _NotPlain
            data = b""
        elif vr == "US":
            if type(value) is not int or not 0 <= value <= 0xFFFF:
                raise _NotPlain
            data = struct.pack("<H", value)
        elif vr in _TEXT or vr == "UI":
            if isinstance(value, str):
                text = value
            elif type(value) is int and vr == "IS":
                text = str(value)
            elif isinstance(value, list) and value and all(isinstance(v, str) for v in value):
                text = "\\".join(value)
            else:
                raise _NotPlain
            if not text.isascii() or (vr == "PN" and "=" in text):  # pydicom rewrites PN component groups
                raise _NotPlain
            if any(part != part.strip(" \0") for part in text.split("\\")):  # and strips some VRs' padding
                raise _NotPlain
            data = text.encode("ascii")
            if len(data) % 2:
                data += b"\0" if vr == "UI" else b" "
        else:
            raise _NotPlain
        if len(data) > 0xFFFF:
            raise _NotPlain
        if implicit:
            out += struct.pack("<HHI", tag >> 16, tag & 0xFFFF, len(data))
        elif vr in _LONG_LENGTH:
            out += struct.pack("<HH2sHI", tag >> 16, tag & 0xFFFF, vr.encode(), 0, len(data))
        else:
            out += struct.pack("<HH2sH", tag >> 16, tag & 0xFFFF, vr.encode(), len(data))
        out += data
    return bytes(out)


def _tag_of(element: tuple[int, str, object]) -> int:
    return element[0]
