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
"""

from __future__ import annotations

import zlib
from io import BytesIO

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filereader import read_dataset
from pydicom.filewriter import write_dataset
from pydicom.valuerep import VR

from ..storage.header import (
    DEFLATED_EXPLICIT_VR_LITTLE_ENDIAN,
    EXPLICIT_VR_BIG_ENDIAN,
    EXPLICIT_VR_LITTLE_ENDIAN,
    IMPLICIT_VR_LITTLE_ENDIAN,
    MalformedDataset,
    check_dataset_end,
)

__all__ = ["MAX_INFLATED", "MalformedIdentifier", "decode_identifier", "encode_identifier"]

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
