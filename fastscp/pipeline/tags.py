"""``fastscp tags``: print a file's attributes, or set some and write a copy.

Attributes are named by keyword (``PatientName``) or tag (``0010,0010``,
``(0010,0010)``, ``00100010``). Printing walks the whole dataset (sequences
indented) or only the attributes asked for; ``--json`` prints the DICOM JSON
model (PS3.18 F.2) with bulk data (pixel data, other values over 1 KiB)
left out. Setting takes the VR from the data dictionary (a private tag needs
``GGGG,EEEE:VR=value``); ``\\`` separates multiple values; an empty value
empties the attribute. The file is rewritten with its own transfer syntax,
pixel data untouched. A value that the file's Specific Character Set cannot
encode switches the file to UTF-8 (ISO_IR 192) after decoding every text
value, so existing text is re-encoded rather than left in the old encoding.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from pydicom import Dataset
    from pydicom.dataelem import DataElement
    from pydicom.tag import BaseTag

__all__ = ["TagError", "format_dataset", "parse_tag", "register", "set_values"]


class TagError(ValueError):
    """A tag or value that cannot be used; the message says which."""


_HEX_TAG = re.compile(r"^\(?([0-9A-Fa-f]{4}),?([0-9A-Fa-f]{4})\)?$")


def parse_tag(text: str) -> BaseTag:
    from pydicom.datadict import tag_for_keyword
    from pydicom.tag import Tag

    m = _HEX_TAG.match(text.strip())
    if m:
        return Tag(int(m.group(1), 16), int(m.group(2), 16))
    tag = tag_for_keyword(text.strip())
    if tag is None:
        raise TagError(f"unknown keyword or tag {text!r} (use a DICOM keyword or GGGG,EEEE)")
    return Tag(tag)


def _value_text(elem: DataElement, limit: int = 80) -> str:
    if elem.VR == "SQ":
        return f"<{len(elem.value)} item(s)>"
    if elem.tag == 0x7FE00010 or elem.VR in ("OB", "OW", "OD", "OF", "OL", "OV", "UN"):
        value = elem.value
        n = len(value) if isinstance(value, (bytes, bytearray)) else 0
        return f"<{n} bytes>"
    value = elem.value
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        text = "\\".join(str(v) for v in value)
    else:
        text = "" if value is None else str(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


def format_dataset(ds: Dataset, tags: Sequence[BaseTag] | None = None, indent: int = 0) -> Iterable[str]:
    """Lines ``(GGGG,EEEE) VR Keyword  value``; sequences are expanded."""
    pad = "  " * indent
    if tags is not None:
        for tag in tags:
            if tag in ds:
                elem = ds[tag]
                yield (f"{pad}({tag.group:04X},{tag.element:04X}) {elem.VR:<2} {elem.keyword or '?':<32} "
                       f"{_value_text(elem)}")
            else:
                yield f"{pad}({tag.group:04X},{tag.element:04X}) -- (absent)"
        return
    if indent == 0 and getattr(ds, "file_meta", None):
        for elem in ds.file_meta:
            yield (f"({elem.tag.group:04X},{elem.tag.element:04X}) {elem.VR:<2} {elem.keyword or '?':<32} "
                   f"{_value_text(elem)}")
    for elem in ds:
        yield (f"{pad}({elem.tag.group:04X},{elem.tag.element:04X}) {elem.VR:<2} {elem.keyword or elem.name:<32} "
               f"{_value_text(elem)}")
        if elem.VR == "SQ":
            for i, item in enumerate(elem.value):
                yield f"{pad}  item {i + 1}"
                yield from format_dataset(item, None, indent + 2)


def _json(ds: Dataset, tags: Sequence[BaseTag] | None) -> bytes:
    import orjson
    from pydicom import Dataset

    if tags is not None:
        sub = Dataset()
        for tag in tags:
            if tag in ds:
                sub.add(ds[tag])
        ds = sub

    def omit(elem: DataElement) -> str:
        return "omitted:bulk-data"

    out = ds.to_json_dict(bulk_data_threshold=1024, bulk_data_element_handler=omit)
    return orjson.dumps(out, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS)


def set_values(ds: Dataset, assignments: Sequence[str]) -> None:
    """Apply ``KEYWORD=VALUE`` / ``GGGG,EEEE[:VR]=VALUE`` assignments."""
    from pydicom.datadict import dictionary_VR

    for text in assignments:
        name, sep, value = text.partition("=")
        if not sep:
            raise TagError(f"--set wants KEYWORD=VALUE, got {text!r}")
        name, _, vr = name.partition(":")
        tag = parse_tag(name)
        if not vr:
            try:
                vr = dictionary_VR(tag)
            except KeyError:
                raise TagError(f"{name}: not in the data dictionary; give its VR as {name}:VR=VALUE") from None
        vr = vr.upper()
        if vr == "SQ":
            raise TagError(f"{name} is a sequence; it cannot be set from the command line")
        if vr.startswith("US or") or " or " in vr:
            vr = vr.split(" or ")[0]
        if tag.group in (0x0002, 0x7FE0) or tag == 0x00080005:
            raise TagError(f"{name}: file meta, pixel data and the character set are managed by fastscp")
        parts = value.split("\\") if value else []
        converted = _convert(name, vr, parts)
        if not value.isascii():
            _ensure_charset(ds, value)  # before the new value, so decode() leaves it alone
        if not value:
            ds.add_new(tag, vr, None)
        else:
            ds.add_new(tag, vr, converted if len(converted) > 1 else converted[0])


def _convert(name: str, vr: str, parts: list[str]) -> list[Any]:
    try:
        if vr in ("US", "SS", "UL", "SL", "UV", "SV", "AT"):
            return [int(p, 0) for p in parts]
        if vr in ("FL", "FD"):
            return [float(p) for p in parts]
        if vr in ("OB", "OW", "UN", "OF", "OD", "OL", "OV"):
            raise TagError(f"{name}: binary VR {vr} cannot be set from text")
    except ValueError:
        raise TagError(f"{name}: {parts!r} is not valid for VR {vr}") from None
    return parts


def _ensure_charset(ds: Dataset, value: str) -> None:
    """A non-ASCII value in a file not already UTF-8: decode every text
    value with the old character set, then switch the file to UTF-8."""
    current = ds.get("SpecificCharacterSet")
    values = list(current) if current is not None and not isinstance(current, str) else [current or ""]
    if values == ["ISO_IR 192"]:
        return
    ds.decode()
    ds.SpecificCharacterSet = "ISO_IR 192"


def register(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("tags", help="print a file's attributes, or set some (--set ... -o OUT)")
    p.add_argument("file")
    p.add_argument("tags", nargs="*", help="keywords or GGGG,EEEE (default: all)")
    p.add_argument("--json", action="store_true", help="DICOM JSON model (PS3.18 F.2)")
    p.add_argument("--set", action="append", default=[], metavar="KEYWORD=VALUE",
                   help="set an attribute (repeatable); needs -o or --in-place")
    p.add_argument("-o", "--output", help="where to write the changed file")
    p.add_argument("--in-place", action="store_true", help="rewrite FILE itself (atomically)")
    p.set_defaults(func=_tags_cmd)


def _tags_cmd(args: argparse.Namespace) -> int:
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    try:
        wanted = [parse_tag(t) for t in args.tags] or None
        if args.set:
            if not args.output and not args.in_place:
                raise TagError("--set writes a file: give -o OUT or --in-place")
            ds = dcmread(args.file)
            set_values(ds, args.set)
            out = Path(args.file if args.in_place else args.output)
            tmp = out.with_name(f".{out.name}.tmp{os.getpid()}")
            ds.save_as(tmp, enforce_file_format=True)
            os.replace(tmp, out)
            print(f"wrote {out}")
            return 0
        ds = dcmread(args.file, stop_before_pixels=wanted is not None and 0x7FE00010 not in wanted)
        if args.json:
            sys.stdout.write(_json(ds, wanted).decode() + "\n")
        else:
            for line in format_dataset(ds, wanted):
                print(line)
    except TagError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except InvalidDicomError as exc:
        print(f"error: {args.file}: not a DICOM file ({exc})", file=sys.stderr)
        return 1
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0
