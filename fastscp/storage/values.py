"""DICOM value helpers for naming: person names, dates and times, numbers.

Values arrive already decoded (InstanceInfo text is ``str``, decoded with the
Specific Character Set). These helpers turn them into the readable forms that
naming schemes put into paths; they never make a value *safe* for a path, that
is ``safepath.safe_component``'s job. Value representations follow PS3.5 6.2
(PN, DA, TM, DT, IS) and accept the old ACR-NEMA forms ``YYYY.MM.DD`` and
``HH:MM:SS`` that PS3.5 still mentions for compatibility.
"""

from __future__ import annotations

import datetime as _dt
import functools
import time
from typing import Any

__all__ = [
    "first_value",
    "header_text",
    "int_or_none",
    "parse_da",
    "parse_date",
    "parse_datetime",
    "person_display",
    "person_groups",
    "received_date",
]


def first_value(text: str) -> str:
    """First value of a multi-valued string (values separated by backslash)."""
    return text.split("\\", 1)[0].strip()


def int_or_none(text: str | int | None) -> int | None:
    """An IS value (or its first value) as int; None when absent or not a number."""
    if text is None:
        return None
    if isinstance(text, int):
        return text
    head = first_value(text)
    if not head:
        return None
    try:
        return int(head)
    except ValueError:
        try:  # IS must be an integer, but senders do write "1.0"
            number = float(head)
        except ValueError:
            return None
        return int(number) if number.is_integer() else None


def person_groups(name: str) -> list[list[str]]:
    """A PN value split into its component groups (alphabetic, ideographic,
    phonetic), each a list of its non-empty components (family, given, middle,
    prefix, suffix). Empty groups are left out."""
    groups = []
    for group in name.split("="):
        parts = [part.strip() for part in group.split("^")]
        parts = [part for part in parts if part]
        if parts:
            groups.append(parts)
    return groups


@functools.lru_cache(maxsize=4096)
def person_display(name: str) -> str:
    """A PN value for a folder name: components joined by ``_``, component
    groups kept and joined by ``=``, empty trailing components dropped.
    ``Doe^John^^^`` -> ``Doe_John``; ``Yamada^Tarou=山田^太郎`` -> ``Yamada_Tarou=山田_太郎``."""
    if "^" not in name and "=" not in name:
        return name.strip()
    return "=".join("_".join(parts) for parts in person_groups(name))


def parse_da(text: str) -> _dt.date | None:
    """A DA value as a date: ``YYYYMMDD`` or the legacy ``YYYY.MM.DD``,
    surrounding spaces allowed; None if absent, of another form, or not a
    real calendar date. The one DA parser: the catalog's date columns, C-FIND
    date keys and the naming schemes (``parse_date``) all go through it."""
    value = text.strip()
    if len(value) == 10 and value[4] == "." and value[7] == ".":
        value = value[:4] + value[5:7] + value[8:]
    if len(value) != 8 or not value.isdigit():
        return None
    try:
        return _dt.date(int(value[:4]), int(value[4:6]), int(value[6:8]))
    except ValueError:
        return None


def parse_date(text: str) -> _dt.date | None:
    """Like ``parse_da``, but lenient for naming: a DT value (or anything
    that starts with a DA) gives its date part."""
    value = text.strip()
    if len(value) == 10 and value[4] == "." and value[7] == ".":
        return parse_da(value)
    return parse_da(value[:8])


def parse_datetime(text: str) -> _dt.datetime | None:
    """A DA, TM or DT value as a datetime, for strftime-style formatting.

    DA gives midnight of that day; TM gives that time on 1900-01-01; DT gives
    both (any UTC offset suffix is ignored: paths show the sender's local
    time). Partial times (``HH``, ``HHMM``) are allowed as PS3.5 allows them.
    None when absent or invalid."""
    value = text.strip()
    if not value:
        return None
    if len(value) == 10 and value[4] == "." and value[7] == ".":  # legacy DA
        value = value[:4] + value[5:7] + value[8:]
    elif ":" in value:  # legacy TM
        value = value.replace(":", "")
    # A DT may end in an offset; "-" and "+" cannot occur earlier.
    for sign in "+-":
        cut = value.find(sign, 1)
        if cut != -1:
            value = value[:cut]
    whole, _, fraction = value.partition(".")
    if not whole.isdigit() or (fraction and not fraction.isdigit()):
        return None
    micro = int((fraction + "000000")[:6]) if fraction else 0
    n = len(whole)
    try:
        if n in (8, 10, 12, 14):  # DA or DT
            return _dt.datetime(
                int(whole[:4]), int(whole[4:6]), int(whole[6:8]),
                int(whole[8:10] or 0), int(whole[10:12] or 0), int(whole[12:14] or 0),
                micro if n == 14 else 0,
            )
        if n in (2, 4, 6):  # TM
            return _dt.datetime(
                1900, 1, 1, int(whole[:2]), int(whole[2:4] or 0), int(whole[4:6] or 0), micro if n == 6 else 0
            )
    except ValueError:
        return None
    return None


def received_date(received_at: float, utc: bool = False) -> _dt.date:
    """The calendar date of reception (local time unless utc); "now" when the
    receiver did not fill ``received_at``."""
    stamp = received_at if received_at > 0 else time.time()
    parts = time.gmtime(stamp) if utc else time.localtime(stamp)
    return _dt.date(parts.tm_year, parts.tm_mon, parts.tm_mday)


def header_text(value: Any) -> str:
    """A pydicom element value as text: multi-values joined by backslash (as
    on the wire), person names in DICOM form, binary and sequence values as ""."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value.strip()
    if isinstance(value, (bytes, bytearray, memoryview)):
        return ""
    from pydicom.multival import MultiValue  # a pydicom value: pydicom is loaded
    from pydicom.sequence import Sequence

    if isinstance(value, Sequence):
        return ""
    if isinstance(value, (MultiValue, list, tuple)):
        return "\\".join(header_text(item) for item in value)
    return str(value).strip()  # PersonName, DSfloat, IS, UID ...
