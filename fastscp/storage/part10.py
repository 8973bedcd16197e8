"""The Part-10 prefix written before the dataset: 128-byte preamble, "DICM",
and the File Meta Information group (PS3.10 7.1), explicit VR little endian.

Everything in it is known from the command set and the presentation context
before the first dataset byte arrives, so the prefix is written first and the
dataset streams after it unchanged.
"""

from __future__ import annotations

import functools
import struct

IMPLEMENTATION_CLASS_UID = "2.25.200841227432935489817306311526283714641"
IMPLEMENTATION_VERSION_NAME = "FASTSCP_010"

_PREAMBLE = bytes(128) + b"DICM"
_VERSION = b"\x02\x00\x01\x00OB\x00\x00" + struct.pack("<I", 2) + b"\x00\x01"


_SHORT_HEADER = struct.Struct("<HH2sH")  # a group 0002 element's header with a 16-bit length
_GROUP_LENGTH = struct.Struct("<HH2sHI")  # (0002,0000) UL, whole


def _short(tag_element: int, vr: bytes, value: bytes) -> bytes:
    return _SHORT_HEADER.pack(0x0002, tag_element, vr, len(value)) + value


def _ui(value: str) -> bytes:
    raw = value.encode("ascii")
    return raw + b"\x00" if len(raw) % 2 else raw


def _text(value: str) -> bytes:
    raw = value.encode("ascii", "replace")
    return raw + b" " if len(raw) % 2 else raw


_IMPLEMENTATION = (_short(0x0012, b"UI", _ui(IMPLEMENTATION_CLASS_UID))
                   + _short(0x0013, b"SH", _text(IMPLEMENTATION_VERSION_NAME)))


def file_meta(sop_class_uid: str, sop_instance_uid: str, transfer_syntax_uid: str, source_ae: str) -> bytes:
    """Preamble + DICM + group 0002 for one instance."""
    before, after = _meta_parts(sop_class_uid, transfer_syntax_uid, source_ae)
    instance = _short(0x0003, b"UI", _ui(sop_instance_uid))
    length = len(before) + len(instance) + len(after)
    return b"".join((_PREAMBLE, _GROUP_LENGTH.pack(0x0002, 0x0000, b"UL", 4, length), before, instance, after))


@functools.lru_cache(maxsize=256)
def _meta_parts(sop_class_uid: str, transfer_syntax_uid: str, source_ae: str) -> tuple[bytes, bytes]:
    """The group 0002 elements before and after (0002,0003), which repeat
    across the instances of an association: built once."""
    before = _VERSION + _short(0x0002, b"UI", _ui(sop_class_uid))
    after = b"".join((
        _short(0x0010, b"UI", _ui(transfer_syntax_uid)),
        _IMPLEMENTATION,
        _short(0x0016, b"AE", _text(source_ae[:16])) if source_ae else b"",
    ))
    return before, after
