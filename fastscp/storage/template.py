"""The ``template`` naming scheme: a user pattern with DICOM placeholders.

The pattern is compiled once (at start, so a typo is a configuration error,
not a failure per instance) into literal text and placeholders. Syntax, in
the spirit of dcm4che's ``--filepath {00100020}/...`` and Conquest's
``FileNameSyntax`` (full reference: docs/naming.md)::

    {PatientID}/{StudyDate:%Y/%m}/{StudyInstanceUID}/{SOPInstanceUID}.dcm

    placeholder := "{" field ("," field)* step* "}"
    field       := DICOM keyword | 8 hex digits (ggggeeee) | CallingAE |
                   CalledAE | ReceivedDate | ReceivedTime | ReceivedDateTime
    step        := "[" slice "]"     characters, Python rules: [0:8] [-4:] [0]
                 | ":" spec          %-date format (DA/TM/DT values), or 0N:
                                     zero-pad to N digits; runs up to "|" or "}"
                 | "|" op            hash (16 hex of BLAKE2b), upper, lower,
                                     first (first of a multi-valued value)
    "{{" and "}}" are literal braces; "/" in the literal text separates folders.

The first non-empty field wins (``{AccessionNumber,StudyInstanceUID}``);
steps apply left to right. Values come from InstanceInfo when the keyword is
one of its fields, else from ``info.header`` (the header-only pydicom
Dataset). Every value is made safe (``safe_component``) after its steps, so a
value never adds a folder level; only ``/`` in the pattern or in a date spec
does. An empty value becomes ``UNKNOWN`` (a date spec renders ``UNKNOWN`` for
each of its % fields, so the folder depth stays the same).
"""

from __future__ import annotations

import functools
import hashlib
import re
import time
from collections.abc import Callable
from pathlib import PurePosixPath

from ..instance import InstanceInfo
from .safepath import UNKNOWN, bound_name, names_something, safe_component, split_ext
from .values import first_value, header_text, int_or_none, parse_datetime

__all__ = ["INFO_KEYWORDS", "TemplateNaming", "compile_template"]

# DICOM keyword -> InstanceInfo field, for values the header parser already decoded.
INFO_KEYWORDS: dict[str, str] = {
    "SOPClassUID": "sop_class_uid",
    "SOPInstanceUID": "sop_instance_uid",
    "TransferSyntaxUID": "transfer_syntax_uid",
    "PatientID": "patient_id",
    "PatientName": "patient_name",
    "PatientBirthDate": "patient_birth_date",
    "PatientSex": "patient_sex",
    "StudyInstanceUID": "study_instance_uid",
    "StudyDate": "study_date",
    "StudyTime": "study_time",
    "AccessionNumber": "accession_number",
    "StudyDescription": "study_description",
    "ReferringPhysicianName": "referring_physician",
    "RequestingPhysician": "requesting_physician",
    "SeriesInstanceUID": "series_instance_uid",
    "Modality": "modality",
    "SeriesNumber": "series_number",
    "SeriesDescription": "series_description",
    "BodyPartExamined": "body_part_examined",
    "ProtocolName": "protocol_name",
    "Manufacturer": "manufacturer",
    "StationName": "station_name",
    "InstitutionName": "institution_name",
    "InstanceNumber": "instance_number",
    "EchoNumbers": "echo_numbers",
    "Rows": "rows",
    "Columns": "columns",
    "NumberOfFrames": "number_of_frames",
    "SpecificCharacterSet": "specific_character_set",
}

Getter = Callable[[InstanceInfo], str]
Step = Callable[[str], str]

_FIELDS = re.compile(r"\s*([A-Za-z0-9_]+(?:\s*,\s*[A-Za-z0-9_]+)*)\s*")
_OP = re.compile(r"\|([a-z]+)")
_PAD = re.compile(r"0([1-9][0-9]?)")
_DIRECTIVE = re.compile(r"%.")
_HEX_TAG = re.compile(r"[0-9A-Fa-f]{8}")
_UNBOUNDED = 1 << 30


def _received(fmt: str) -> Getter:
    def get(info: InstanceInfo) -> str:
        return time.strftime(fmt, time.localtime(info.received_at if info.received_at > 0 else time.time()))

    return get


_RECEPTION: dict[str, Getter] = {
    "CallingAE": lambda info: info.calling_ae,
    "CalledAE": lambda info: info.called_ae,
    "ReceivedDate": _received("%Y%m%d"),
    "ReceivedTime": _received("%H%M%S"),
    "ReceivedDateTime": _received("%Y%m%d%H%M%S"),
}


def _info_getter(attr: str) -> Getter:
    def get(info: InstanceInfo) -> str:
        value = getattr(info, attr)
        return "" if value is None else str(value)

    return get


def _header_getter(tag: int) -> Getter:
    def get(info: InstanceInfo) -> str:
        header = info.header
        if header is None:
            return ""
        try:
            element = header.get(tag)
            return "" if element is None else header_text(element.value)
        except Exception:  # a malformed element names nothing rather than failing the store
            return ""

    return get


def _field_getter(name: str) -> Getter:
    from pydicom.datadict import keyword_for_tag, tag_for_keyword  # a template names DICOM keywords

    if name in _RECEPTION:
        return _RECEPTION[name]
    if _HEX_TAG.fullmatch(name):
        tag = int(name, 16)
        keyword = keyword_for_tag(tag)
        if keyword in INFO_KEYWORDS:
            return _info_getter(INFO_KEYWORDS[keyword])
        return _header_getter(tag)
    if name in INFO_KEYWORDS:
        return _info_getter(INFO_KEYWORDS[name])
    keyword_tag = tag_for_keyword(name)
    if keyword_tag is None:
        raise ValueError(f"unknown DICOM keyword {name!r} (use a keyword such as PatientID, or 8 hex digits)")
    return _header_getter(keyword_tag)


def _slice_step(text: str) -> Step:
    try:
        if ":" in text:
            start_text, _, stop_text = text.partition(":")
            start = int(start_text) if start_text.strip() else None
            stop = int(stop_text) if stop_text.strip() else None
            return lambda value: value[start:stop]
        index = int(text)
    except ValueError:
        raise ValueError(f"bad slice [{text}]: use [start:stop] or [index] with integers") from None
    stop_at = index + 1 or None  # [-1] means the last character
    return lambda value: value[index:stop_at]


def _spec_step(spec: str) -> tuple[Step, str | None]:
    """(step, text rendered when the value is absent) for a ':' spec."""
    if "%" in spec:
        @functools.lru_cache(maxsize=1024)  # study dates and times repeat across a study
        def date_step(value: str) -> str:
            moment = parse_datetime(value)
            return _DIRECTIVE.sub(UNKNOWN, spec) if moment is None else moment.strftime(spec)

        return date_step, _DIRECTIVE.sub(UNKNOWN, spec)
    pad = _PAD.fullmatch(spec)
    if pad:
        width = int(pad.group(1))

        def pad_step(value: str) -> str:
            number = int_or_none(value)
            return value.zfill(width) if number is None else f"{number:0{width}d}"

        return pad_step, None
    raise ValueError(f"bad format spec :{spec} (use a %-date format like %Y/%m, or 0N for zero padding)")


def _hash(value: str) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=8).hexdigest()


_OPS: dict[str, Step] = {
    "hash": _hash,
    "upper": str.upper,
    "lower": str.lower,
    "first": first_value,
}


class _Placeholder:
    """One ``{...}``: fields tried in order, then its steps, then made safe."""

    __slots__ = ("absent", "getters", "source", "splits", "steps")

    def __init__(self, body: str) -> None:
        self.source = "{" + body + "}"
        match = _FIELDS.match(body)
        if not match:
            raise ValueError(f"placeholder {self.source} must start with a keyword or a tag")
        self.getters = [_field_getter(name.strip()) for name in match.group(1).split(",")]
        self.steps: list[Step] = []
        self.absent = UNKNOWN
        self.splits = False
        rest = body[match.end():]
        while rest:
            if rest[0] == "[":
                end = rest.find("]")
                if end == -1:
                    raise ValueError(f"unclosed [ in {self.source}")
                self.steps.append(_slice_step(rest[1:end]))
                rest = rest[end + 1:]
            elif rest[0] == ":":
                end = rest.find("|")
                spec, rest = (rest[1:], "") if end == -1 else (rest[1:end], rest[end:])
                step, absent = _spec_step(spec)
                self.steps.append(step)
                if absent is not None:  # a date spec: its "/" are folder levels
                    self.splits = True
                    self.absent = absent
            elif rest[0] == "|":
                op = _OP.match(rest)
                if not op or op.group(1) not in _OPS:
                    raise ValueError(f"unknown operation in {self.source}; known: {', '.join(sorted(_OPS))}")
                self.steps.append(_OPS[op.group(1)])
                rest = rest[op.end():]
            else:
                raise ValueError(f"unexpected {rest[0]!r} in {self.source}")

    def render(self, info: InstanceInfo) -> str:
        """The first of the placeholder's values (``{A,B}``: A, else B) that
        still names something once its steps ran and it was sanitised; the
        choice is made after sanitising, so a value such as ``..`` falls
        back to the next one rather than to ``UNKNOWN``."""
        for get in self.getters:
            value = get(info)
            if not value:
                continue
            for step in self.steps:
                value = step(value)
            if self.splits:
                pieces = [safe_component(piece, empty="") for piece in value.split("/")]
                if any(map(names_something, pieces)):
                    return "/".join(piece or UNKNOWN for piece in pieces)
            elif names_something(clean := safe_component(value, empty="")):
                return clean
        return self.absent


def compile_template(pattern: str) -> list[str | _Placeholder]:
    """The pattern as literal strings and placeholders; ValueError on bad syntax."""
    pieces: list[str | _Placeholder] = []
    literal: list[str] = []
    i, n = 0, len(pattern)
    while i < n:
        char = pattern[i]
        if char in "{}" and pattern.startswith(char * 2, i):
            literal.append(char)
            i += 2
        elif char == "{":
            end = pattern.find("}", i)
            if end == -1:
                raise ValueError(f"unclosed {{ at position {i} of naming template {pattern!r}")
            if literal:
                pieces.append("".join(literal))
                literal = []
            pieces.append(_Placeholder(pattern[i + 1:end]))
            i = end + 1
        elif char == "}":
            raise ValueError(f"single }} at position {i} of naming template {pattern!r} (write }}}} for a brace)")
        else:
            literal.append(char)
            i += 1
    if literal:
        pieces.append("".join(literal))
    return pieces


class TemplateNaming:
    """Paths from a user pattern, e.g.
    ``{PatientID}/{StudyDate:%Y/%m}/{StudyInstanceUID}/{SOPInstanceUID}.dcm``."""

    name = "template"
    # placeholders may name any attribute: the receiver builds info.header
    needs_header = True

    def __init__(self, pattern: str) -> None:
        if not pattern or not pattern.strip():
            raise ValueError("the naming template is empty")
        self.pattern = pattern
        self._pieces = compile_template(pattern)
        # The folder structure comes only from the pattern: check it once with
        # stand-in values (every value renders non-empty and without "/").
        probe = InstanceInfo(sop_class_uid="1", sop_instance_uid="1", transfer_syntax_uid="1")
        for part in self._render(probe).split("/"):
            if part in ("", ".", ".."):
                raise ValueError(
                    f"naming template {pattern!r} must be a relative path without empty, '.' or '..' folders"
                )

    def _render(self, info: InstanceInfo) -> str:
        return "".join(piece if isinstance(piece, str) else piece.render(info) for piece in self._pieces)

    def relative_path(self, info: InstanceInfo) -> PurePosixPath:
        return PurePosixPath(self.relative_text(info))

    def relative_text(self, info: InstanceInfo) -> str:
        parts = []
        for part in self._render(info).split("/"):
            if not part:
                continue
            clean = safe_component(part, _UNBOUNDED, UNKNOWN, _UNBOUNDED)  # bound_name bounds it
            stem, ext = split_ext(clean)
            parts.append(bound_name(stem, ext))
        return "/".join(parts) if parts else UNKNOWN
