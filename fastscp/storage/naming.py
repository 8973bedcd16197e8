"""Naming: where an instance goes, relative to the storage directory.

A naming scheme is any object with ``relative_path(info) -> PurePosixPath``.
It runs once per instance on the parsed header, never per fragment. Every
component made from a DICOM value passes through ``safe_component`` so a
hostile value cannot leave the storage directory.
"""

from __future__ import annotations

import hashlib
import re
from pathlib import PurePosixPath
from typing import Protocol

from ..instance import InstanceInfo

MAX_COMPONENT = 64
_UNSAFE = re.compile(r'[\x00-\x1f\x7f/\\:*?"<>|]')


class NamingScheme(Protocol):
    def relative_path(self, info: InstanceInfo) -> PurePosixPath: ...


def safe_component(value: str, max_len: int = MAX_COMPONENT, empty: str = "UNKNOWN") -> str:
    """One path component from a DICOM value: no separators, control or
    filesystem-illegal characters, no leading dots, bounded length (cut values
    get a short hash suffix so distinct long values stay distinct)."""
    text = _UNSAFE.sub("_", value.strip()).lstrip(".").strip()
    if not text:
        return empty
    if len(text) > max_len:
        digest = hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()
        text = text[: max_len - 9].rstrip() + "_" + digest
    return text


class FlatNaming:
    """``<SOPInstanceUID>.dcm`` in the storage directory itself."""

    name = "flat"

    def relative_path(self, info: InstanceInfo) -> PurePosixPath:
        return PurePosixPath(safe_component(info.sop_instance_uid, 128) + ".dcm")
