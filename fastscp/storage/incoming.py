"""One instance being received, and why a received instance is not taken.

``Refusal`` names what storage finds wrong with a received instance, without
a DIMSE status: the Storage service (services/storage.py) maps each to its
answer in one table.
"""

from __future__ import annotations

import enum

__all__ = ["Refusal", "Refused"]


class Refusal(enum.Enum):
    HEADER_UNREADABLE = "header unreadable"  # the header-only parse failed
    DATASET_TRUNCATED = "dataset truncated"  # the data set ends inside an element
    INSTANCE_UID_DIFFERS = "instance UID differs"  # the data set's SOP Instance UID is not the command's
    CLASS_UID_DIFFERS = "class UID differs"  # the data set's SOP Class UID is not the command's
    UNSAFE_PATH = "unsafe path"  # the naming scheme gives no safe file name


class Refused(Exception):
    """A received instance storage does not take; ``detail`` says what was found."""

    def __init__(self, refusal: Refusal, detail: str) -> None:
        super().__init__(f"{refusal.value}: {detail}")
        self.refusal = refusal
        self.detail = detail
