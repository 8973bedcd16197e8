"""The one DA parser (storage/values.py ``parse_da``) and its lenient form
for naming (``parse_date``). The catalog's date columns and C-FIND date keys
go through ``parse_da``; these cases pin what each accepts."""

from __future__ import annotations

import datetime as dt

import pytest

from fastscp.catalog.rows import patient_row, study_row
from fastscp.instance import InstanceInfo
from fastscp.storage.values import parse_da, parse_date

DA_CASES = [
    ("20240115", dt.date(2024, 1, 15)),
    (" 20240115 ", dt.date(2024, 1, 15)),  # padded to even length
    ("2024.01.15", dt.date(2024, 1, 15)),  # ACR-NEMA form, PS3.5 6.2 DA note
    ("20240230", None),  # not a calendar date
    ("2024011", None),
    ("", None),
    ("2024-01-15", None),
    ("2024.0115", None),  # dots only in the legacy positions
    ("20240115120000", None),  # a DT is not a DA
    ("20240115\\20240116", None),  # DA has VM 1
]


@pytest.mark.parametrize("text, expected", DA_CASES)
def test_parse_da(text: str, expected: dt.date | None) -> None:
    assert parse_da(text) == expected


@pytest.mark.parametrize("text, expected", [
    ("20240115", dt.date(2024, 1, 15)),
    ("2024.01.15", dt.date(2024, 1, 15)),
    ("20240115120000", dt.date(2024, 1, 15)),  # naming takes a DT's date part
    ("20240115\\20240116", dt.date(2024, 1, 15)),
    ("20240230", None),
    ("", None),
])
def test_parse_date_for_naming(text: str, expected: dt.date | None) -> None:
    assert parse_date(text) == expected


def test_catalog_rows_use_the_da_parser() -> None:
    now = dt.datetime(2025, 1, 1)
    info = InstanceInfo(sop_class_uid="1.2", sop_instance_uid="1.2.3", transfer_syntax_uid="1.2.840.10008.1.2.1",
                        patient_birth_date="1970.01.02", study_date="20240230", study_instance_uid="1.2.4")
    assert patient_row(info, now)[2] == dt.date(1970, 1, 2)
    assert study_row(info, now)[2] is None
