"""Path safety: DICOM values as path components, and paths kept inside storage.

A DICOM value is whatever the sender wrote: ``../../etc``, ``/``, NUL, 10 kB
of text, a right-to-left override. ``safe_component`` turns any string into
one portable path component:

- Unicode NFC (macOS stores NFD; NFC keeps one spelling on every filesystem);
- C0/C1 control characters, DEL, path separators (``/`` and ``\\``), the
  characters Windows and SMB refuse (``: * ? " < > |``), lone surrogates,
  bidirectional overrides, zero-width space, BOM and the non-characters
  U+FFFE/U+FFFF are each replaced by ``_``;
- leading and trailing dots and whitespace are stripped (no ``.``/``..``, no
  hidden files, no Windows-invalid trailing dot or space);
- Windows device names (``CON``, ``NUL``, ``COM1`` ... also with an extension)
  get a leading ``_``;
- an empty result becomes the placeholder ``UNKNOWN``;
- the length is bounded in characters and in UTF-8 bytes; a cut value ends in
  ``_`` plus 8 hex digits of a BLAKE2b hash of the whole value, so two long
  values that share a prefix stay distinct.

Everything else, including every non-ASCII letter, is kept: decoded Latin-1,
UTF-8 and ISO 2022 names stay readable. Whole components built from several
values are bounded again by ``bound_name`` (``MAX_NAME_BYTES``, below the 255
bytes of NAME_MAX on ext4/XFS/APFS and the 255 UTF-16 units of NTFS, leaving
room for the collision and version suffixes added later).

``resolve_inside`` is the last gate before the filesystem: it refuses any
relative path that could leave the storage directory. ``free_path`` and
``versioned_path`` pick the disambiguated names used when two instances would
land on the same path.
"""

from __future__ import annotations

import functools
import hashlib
import os
import re
import unicodedata
from collections.abc import Callable
from pathlib import Path, PurePosixPath

__all__ = [
    "MAX_COMPONENT",
    "MAX_NAME_BYTES",
    "UNKNOWN",
    "UnsafePathError",
    "bound_name",
    "free_path",
    "is_safe_component",
    "names_something",
    "resolve_inside",
    "safe_choice",
    "safe_component",
    "split_ext",
    "versioned_path",
]

UNKNOWN = "UNKNOWN"
MAX_COMPONENT = 64  # characters of one value (64 is the LO/PN-group/UI maximum)
MAX_NAME_BYTES = 240  # UTF-8 bytes of one whole path component

_UNSAFE = re.compile(
    "[\x00-\x1f\x7f-\x9f/\\\\:*?\"<>|"
    "\ud800-\udfff"  # lone surrogates cannot be encoded into a filename
    "\u200b\u200e\u200f\u2028-\u202e\u2066-\u2069"  # invisible / bidi controls
    "\ufeff\ufffe\uffff]"
)
# Every Unicode whitespace character (all lie below U+3001) plus the dot:
# stripped from both ends of a component.
_EDGE = "".join(chr(c) for c in range(0x3001) if chr(c).isspace()) + "."
_RESERVED = frozenset(
    ["CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$"]
    + [f"{dev}{n}" for dev in ("COM", "LPT") for n in "0123456789\u00b9\u00b2\u00b3"]
)
_HASH_SUFFIX = 9  # "_" + 8 hex digits


class UnsafePathError(ValueError):
    """A relative path would leave (or is not a plain path inside) the storage directory."""


def _short_hash(value: str) -> str:
    return hashlib.blake2b(value.encode("utf-8", "surrogatepass"), digest_size=4).hexdigest()


def _cut(text: str, original: str, max_chars: int, max_bytes: int, ext: str = "") -> str:
    """Shorten text so text+ext fits both bounds, ending in a hash of original."""
    room_chars = max_chars - len(ext) - _HASH_SUFFIX
    room_bytes = max_bytes - len(ext.encode("utf-8")) - _HASH_SUFFIX
    head = text[: max(room_chars, 0)]
    encoded = head.encode("utf-8", "surrogatepass")
    if len(encoded) > room_bytes:
        head = encoded[: max(room_bytes, 0)].decode("utf-8", "ignore")  # drops a split character
    return head.rstrip(_EDGE) + "_" + _short_hash(original) + ext


def _fits(text: str, max_chars: int, max_bytes: int) -> bool:
    if len(text) > max_chars:
        return False
    # A str of n characters takes at most 4n UTF-8 bytes: skip encoding short ones.
    return len(text) * 4 <= max_bytes or len(text.encode("utf-8", "surrogatepass")) <= max_bytes


@functools.lru_cache(maxsize=8192)
def _sanitise(value: str, max_len: int, empty: str, max_bytes: int) -> str:
    text = value if value.isascii() else unicodedata.normalize("NFC", value)
    text = _UNSAFE.sub("_", text).strip(_EDGE)
    if not text:
        return empty
    if len(text) >= 3 and text.split(".", 1)[0].rstrip().upper() in _RESERVED:
        text = "_" + text
    if not _fits(text, max_len, max_bytes):
        text = _cut(text, value, max_len, max_bytes)
    return text


def safe_component(
    value: str, max_len: int = MAX_COMPONENT, empty: str = UNKNOWN, max_bytes: int = MAX_NAME_BYTES
) -> str:
    """One path component from a DICOM value: no separators, control or
    filesystem-illegal characters, no leading dots, bounded length (cut values
    get a short hash suffix so distinct long values stay distinct).

    Results are cached: patient, study and series values repeat across the
    instances of a study, so most calls cost a dictionary lookup. UIDs and
    numbers (digits and inner dots, already safe) skip the cache: each SOP
    Instance UID is new, and caching them would evict the repeating values."""
    if len(value) <= max_len and len(value) <= max_bytes and plain_value(value) is not None:
        return value
    return _sanitise(value, max_len, empty, max_bytes)


def safe_choice(*values: str) -> str:
    """The first of ``values`` that makes a non-empty path component, as
    ``safe_component`` makes it; ``UNKNOWN`` when none does. The choice
    between a value and its fallback is made after sanitising: a value such
    as ``..`` or ``///`` names nothing (nothing of it survives but the
    ``_`` put in place of unsafe characters), so the fallback is taken
    instead (docs/naming.md)."""
    for value in values:
        if value:
            clean = safe_component(value, empty="")
            if names_something(clean):
                return clean
    return UNKNOWN


def names_something(component: str) -> bool:
    """Whether a ``safe_component`` result keeps anything of its value:
    not empty, and not only the ``_`` that replace unsafe characters."""
    return bool(component.strip("_"))


# Digits with inner dots (a UID, a non-negative number): a match (not None)
# means safe_component returns the value unchanged when it is short enough.
plain_value = re.compile(r"[0-9](?:[0-9.]*[0-9])?").fullmatch


def bound_name(name: str, ext: str = "", max_bytes: int = MAX_NAME_BYTES) -> str:
    """``name + ext`` as one component within ``max_bytes`` UTF-8 bytes.

    ``name`` must already be made of safe parts (``safe_component`` results
    joined by safe literals); ``ext`` (e.g. ``.dcm``) survives a cut."""
    if not name:
        name = UNKNOWN
    full = name + ext
    if _fits(full, max_bytes, max_bytes):
        return full
    return _cut(name, full, max_bytes, max_bytes, ext)


def is_safe_component(name: str, max_bytes: int = MAX_NAME_BYTES) -> bool:
    """True if ``name`` is a component ``safe_component``/``bound_name`` could
    have produced: non-empty, no leading dot, within bounds, nothing unsafe."""
    return (
        bool(name)
        and name[0] != "."
        and name == name.strip(_EDGE)
        and _UNSAFE.search(name) is None
        and len(name.encode("utf-8", "surrogatepass")) <= max_bytes
        and name.split(".", 1)[0].rstrip().upper() not in _RESERVED
    )


def resolve_inside(storage_dir: Path, rel: PurePosixPath, follow_symlinks: bool = False) -> Path:
    """``storage_dir / rel``, guaranteed to lie inside ``storage_dir``.

    ``rel`` must be relative and every part a plain name: no empty part, no
    ``.``/``..``, no part starting with a dot (which also keeps ``.incoming``
    and other working folders out of reach), no NUL or separator inside a part.
    The check is lexical; with ``follow_symlinks`` the deepest existing
    ancestor is also resolved through symlinks and must stay inside the
    resolved storage directory (costs a few syscalls; off by default because
    a storage tree may legitimately hold symlinked account folders).

    Raises UnsafePathError otherwise."""
    base = os.fspath(storage_dir)
    base = os.path.normpath(base) if os.path.isabs(base) else os.path.abspath(base)
    if not isinstance(rel, PurePosixPath):
        rel = PurePosixPath(rel)
    target = join_inside(base, str(rel) if rel.parts else "")
    if follow_symlinks:
        real_base = os.path.realpath(base)
        probe = target
        while not os.path.lexists(probe) and probe != base:
            probe = os.path.dirname(probe)
        real = os.path.realpath(probe)
        if os.path.commonpath([real_base, real]) != real_base:
            raise UnsafePathError(f"{str(rel)!r} reaches outside {base!r} through a symlink")
    return Path(target)


def join_inside(base: str, rel: str) -> str:
    """``base + "/" + rel`` as text, where ``base`` is an absolute normalised
    directory and ``rel`` a "/"-separated relative path whose every part is a
    plain name: not empty, no leading dot (no ``.``/``..``, no ``.incoming``),
    no NUL or backslash. The lexical core of ``resolve_inside``, on strings
    (the receive path calls it once per instance). Raises UnsafePathError."""
    if not rel or rel[0] == "/":
        raise UnsafePathError(f"not a relative path inside storage: {rel!r}")
    if "\x00" in rel or "\\" in rel:
        raise UnsafePathError(f"unsafe character in {rel!r}")
    for part in rel.split("/"):
        if not part or part[0] == ".":
            raise UnsafePathError(f"unsafe path component {part!r} in {rel!r}")
    # The parts are plain names, so the join stays inside by construction.
    return base + rel if base.endswith("/") else base + "/" + rel


def split_ext(name: str) -> tuple[str, str]:
    """(stem, ext) where ext is a short alphabetic extension such as ``.dcm``;
    a UID-like name ``1.2.840.5`` has no extension."""
    dot = name.rfind(".")
    if dot > 0:
        ext = name[dot:]
        if 2 <= len(ext) <= 6 and ext[1:].isalpha():
            return name[:dot], ext
    return name, ""


def _with_suffix(path: Path, suffix: str) -> Path:
    stem, ext = split_ext(path.name)
    return path.with_name(bound_name(stem + suffix, ext, MAX_NAME_BYTES + 15))


def free_path(
    target: Path,
    sop_instance_uid: str,
    uid_at: Callable[[Path], str | None],
    limit: int = 10_000,
) -> Path:
    """The path an instance should take when ``target`` may be occupied.

    ``uid_at(path)`` tells who holds a path: None if nothing is there, else the
    SOP Instance UID of the file there (see ``duplicates.uid_in_file``). The
    first of ``target``, ``stem_2.ext``, ``stem_3.ext`` ... that is free or
    already holds this same instance is returned, so two different instances
    never share a path, and a re-sent instance finds its own file again (the
    duplicate policy then decides what happens to it)."""
    candidate = target
    for n in range(2, limit + 2):
        owner = uid_at(candidate)
        if owner is None or owner == sop_instance_uid:
            return candidate
        candidate = _with_suffix(target, f"_{n}")
    raise UnsafePathError(f"no free name near {str(target)!r} after {limit} tries")


def versioned_path(existing: Path, exists: Callable[[Path], bool] = os.path.lexists, limit: int = 10_000) -> Path:
    """Where the ``keep-both`` duplicate policy puts a new version of an
    instance stored at ``existing``: ``stem_v2.ext``, ``stem_v3.ext`` ...,
    the first that does not exist yet."""
    for n in range(2, limit + 2):
        candidate = _with_suffix(existing, f"_v{n}")
        if not exists(candidate):
            return candidate
    raise UnsafePathError(f"no free version name near {str(existing)!r} after {limit} tries")
