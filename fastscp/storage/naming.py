"""Naming: where an instance goes, relative to the storage directory.

A naming scheme is any object with ``relative_path(info) -> PurePosixPath``;
the built-in ones also have ``relative_text(info) -> str`` (the same path as
a "/"-joined string), which the receive path uses: building a PurePosixPath
per instance cost more than the naming itself. It runs once per instance on
the parsed header, never per fragment. Every
component made from a DICOM value passes through ``safe_component`` (see
safepath.py) so a hostile value cannot leave the storage directory; the
receiver still puts the result through ``resolve_inside`` before touching the
filesystem. The schemes (exact layouts in docs/naming.md):

- ``hierarchical`` (default): patient / study / series / instance, readable;
- ``flat``: ``<SOPInstanceUID>.dcm``;
- ``date-based``: ``YYYY/MM/DD`` of the study (or reception) date, then UIDs;
- ``physician``: the store server's per-account layout (seed 002);
- ``template``: a user pattern (template.py).

``make_naming(name, **options)`` builds one from configuration
(``storage.naming``, CLI ``--naming``).
"""

from __future__ import annotations

import collections
import inspect
import os
import re
import threading
import time
from collections.abc import Callable, Iterable
from pathlib import PurePosixPath
from typing import Protocol

from ..instance import InstanceInfo
from .safepath import MAX_COMPONENT, bound_name, plain_value, safe_choice, safe_component
from .template import TemplateNaming
from .values import int_or_none, parse_date, person_display, person_groups, received_date

__all__ = [
    "DEFAULT_NAMING",
    "MAX_COMPONENT",
    "NAMING_SCHEMES",
    "DateBasedNaming",
    "FlatNaming",
    "HierarchicalNaming",
    "NamingScheme",
    "PhysicianNaming",
    "TemplateNaming",
    "make_naming",
    "safe_component",
]


class NamingScheme(Protocol):
    def relative_path(self, info: InstanceInfo) -> PurePosixPath: ...


def _required(value: str) -> str:
    """A value that names the level: ``UNKNOWN`` when empty."""
    return safe_component(value)


def _optional(value: str) -> str:
    """A value that only decorates a name: left out (with its ``_``) when empty."""
    return safe_component(value, empty="")


def _joined(*parts: str, ext: str = "") -> str:
    return bound_name("_".join(part for part in parts if part), ext)


def _path(*parts: str) -> str:
    return "/".join(parts)


class TextNaming:
    """A scheme that builds its path as text; ``relative_path`` wraps it."""

    def relative_text(self, info: InstanceInfo) -> str:
        raise NotImplementedError

    def relative_path(self, info: InstanceInfo) -> PurePosixPath:
        return PurePosixPath(self.relative_text(info))


def relative_text(naming: NamingScheme, info: InstanceInfo) -> str:
    """The relative path ``naming`` gives ``info``, as "/"-joined text."""
    text = getattr(naming, "relative_text", None)
    return text(info) if text is not None else str(naming.relative_path(info))


def _number(value: int | None) -> str:
    return "" if value is None else str(value)


class FlatNaming(TextNaming):
    """``<SOPInstanceUID>.dcm`` in the storage directory itself."""

    name = "flat"

    def relative_text(self, info: InstanceInfo) -> str:
        return bound_name(safe_component(info.sop_instance_uid, 128), ".dcm")


class HierarchicalNaming(TextNaming):
    """Patient / study / series / instance, readable and unique::

        <PatientID>_<PatientName>/
          <StudyDate>_<AccessionNumber, or StudyInstanceUID if none>/
            <SeriesNumber>_<Modality>_<SeriesDescription>/
              <InstanceNumber>_<SOPInstanceUID>.dcm

    Person names show ``^`` as ``_`` (``DOE^JOHN`` -> ``DOE_JOHN``). Empty
    PatientName, Modality, SeriesDescription and InstanceNumber are left out
    with their ``_``; any other empty value is ``UNKNOWN``. Unique because the
    file name holds the SOP Instance UID."""

    name = "hierarchical"

    MAX_CACHED_FOLDERS = 4096

    def __init__(self) -> None:
        # raw values -> series folder: the instances of a series share it
        self._folders: dict[tuple[str | int | None, ...], str] = {}

    def relative_text(self, info: InstanceInfo) -> str:
        key = (info.patient_id, info.patient_name, info.study_date, info.accession_number,
               info.study_instance_uid, info.series_number, info.modality, info.series_description)
        folder = self._folders.get(key)
        if folder is None:
            folder = self._folder(info)
            if len(self._folders) >= self.MAX_CACHED_FOLDERS:
                self._folders.clear()
            self._folders[key] = folder
        return folder + "/" + self._file_name(info.instance_number, info.sop_instance_uid)

    @staticmethod
    def _file_name(number: int | None, uid: str) -> str:
        """``<InstanceNumber>_<SOPInstanceUID>.dcm``. When both parts are
        what ``safe_component`` passes through unchanged (digits with inner
        dots, at most 64 characters) the name is built directly; the general
        steps give the same name (tests/test_naming_schemes.py checks)."""
        if len(uid) <= MAX_COMPONENT and plain_value(uid):
            if number is None:
                return uid + ".dcm"
            text = str(number)
            if number >= 0 and len(text) <= MAX_COMPONENT:
                return text + "_" + uid + ".dcm"
        return _joined(_optional(_number(number)), _required(uid), ext=".dcm")

    @staticmethod
    def _folder(info: InstanceInfo) -> str:
        return _path(
            _joined(_required(info.patient_id), _optional(person_display(info.patient_name))),
            _joined(_required(info.study_date), safe_choice(info.accession_number, info.study_instance_uid)),
            _joined(
                _required(_number(info.series_number)),
                _optional(info.modality),
                _optional(info.series_description),
            ),
        )


class DateBasedNaming(TextNaming):
    """``YYYY/MM/DD/<StudyInstanceUID>/<SeriesInstanceUID>/<SOPInstanceUID>.dcm``.

    The date is the StudyDate; when it is absent or not a real date, the day
    the instance was received (``info.received_at``; local time, or UTC with
    ``utc=True``)."""

    name = "date-based"

    def __init__(self, utc: bool = False) -> None:
        self.utc = utc

    def relative_text(self, info: InstanceInfo) -> str:
        day = parse_date(info.study_date) or received_date(info.received_at, self.utc)
        return _path(
            f"{day.year:04d}/{day.month:02d}/{day.day:02d}",
            _required(info.study_instance_uid),
            _required(info.series_instance_uid),
            bound_name(_required(info.sop_instance_uid), ".dcm"),
        )


_NON_WORD = re.compile(r"[\W_]+")


def _account_key(name: str) -> str:
    """How names are compared with accounts: case-folded, and any run of
    spaces, punctuation, ``^`` or ``_`` counts as one separator."""
    return _NON_WORD.sub("_", name.casefold()).strip("_")


class PhysicianNaming(TextNaming):
    """The store server's per-account layout (seed 002).

    The account is chosen per instance:

    1. the Requesting Physician (0032,1032), if an account matches that name;
    2. else the Referring Physician (0008,0090), if an account matches;
    3. else ``Guest/<requesting physician, or referring if none>``;
    4. else, when neither tag has a value, ``Unknown``.

    Accounts are the folders under ``accounts_root`` (re-read when the folder
    changes, checked by one stat per instance) and/or the names in
    ``accounts``. A physician name matches an account when, compared
    case-insensitively and ignoring separators (``^``, ``_``, spaces,
    punctuation), the account equals the full name (``Smith^John`` ->
    ``Smith_John``, ``smith john``, ``SmithJohn``), the family and given
    names alone (``Smith^John^^Dr`` -> ``Smith_John``), or, with
    ``match_family_name``, the family name (``Smith``). Each component group
    of the name (alphabetic, ideographic, phonetic) is tried, full names
    before family names. The path keeps the account folder's own spelling.

    Inside the account::

        <StudyDate>_<PatientName>_<AccessionNumber, or StudyInstanceUID>/
          Dicom/
            <SeriesNumber>_<SeriesDescription>/
              <SeriesNumber:03>-<EchoNumbers:03>-<Count:06>.dcm

    Count is the InstanceNumber, or when absent the instance's arrival order in
    its series (counted by this object; a restart counts from 1 again, and the
    receiver's collision suffix keeps a repeat number from overwriting another
    instance). A missing SeriesNumber or EchoNumbers counts as 0; only the
    first of several echo numbers is used.
    """

    name = "physician"
    RESCAN_SECONDS = 10.0
    MAX_COUNTED_SERIES = 4096

    def __init__(
        self,
        accounts_root: str | os.PathLike[str] | None = None,
        accounts: Iterable[str] | None = None,
        guest: str = "Guest",
        unknown: str = "Unknown",
        match_family_name: bool = True,
    ) -> None:
        if accounts_root is None and accounts is None:
            raise ValueError("physician naming needs accounts_root (a folder of account folders) or accounts (a list)")
        self.accounts_root = None if accounts_root is None else os.fspath(accounts_root)
        self.guest = safe_component(guest)
        self.unknown = safe_component(unknown)
        self.match_family_name = match_family_name
        self._listed = [name for name in (accounts or ()) if name and name.strip()]
        self._stamp: tuple[int, float] | None = None
        self._accounts: dict[str, str] = self._account_map(self._listed)
        self._matches: dict[str, str | None] = {}  # physician name -> account, for the current accounts
        self._counts: collections.OrderedDict[str, int] = collections.OrderedDict()
        self._lock = threading.Lock()

    # -- accounts ---------------------------------------------------------

    def _account_map(self, names: Iterable[str]) -> dict[str, str]:
        reserved = {self.guest.casefold(), self.unknown.casefold()}
        found: dict[str, str] = {}
        for name in sorted(names):
            if name.startswith(".") or name.casefold() in reserved:
                continue
            found.setdefault(_account_key(name), name)
        return found

    def accounts(self) -> dict[str, str]:
        """Account key -> account folder name, re-read from ``accounts_root``
        when its modification time changed or ``RESCAN_SECONDS`` passed."""
        root = self.accounts_root
        if root is None:
            return self._accounts
        try:
            mtime = os.stat(root).st_mtime_ns
        except OSError:
            mtime = -1
        now = time.monotonic()
        stamp = self._stamp
        if stamp is None or stamp[0] != mtime or now - stamp[1] > self.RESCAN_SECONDS:
            names = list(self._listed)
            if mtime != -1:
                try:
                    with os.scandir(root) as entries:
                        names += [entry.name for entry in entries if entry.is_dir()]
                except OSError:
                    pass
            self._accounts = self._account_map(names)
            self._matches = {}
            self._stamp = (mtime, now)
        return self._accounts

    def account_for(self, physician: str) -> str | None:
        """The account folder matching a physician's name, or None."""
        if not physician:
            return None
        accounts = self.accounts()
        matches = self._matches
        if physician in matches:
            return matches[physician]
        if len(matches) > 4096:  # names repeat per study; keep the memo bounded
            matches.clear()
        found = matches[physician] = self._match(physician, accounts)
        return found

    def _match(self, physician: str, accounts: dict[str, str]) -> str | None:
        groups = person_groups(physician)
        if not groups:
            return None
        keys: list[str] = []
        for parts in groups:
            for words in (parts, parts[:2]):  # the whole name, then family^given alone
                key = _account_key("_".join(words))
                keys += (key, key.replace("_", ""))
        if self.match_family_name:
            keys += (_account_key(parts[0]) for parts in groups)
        for key in keys:
            account = accounts.get(key)
            if account is not None:
                return account
        return None

    def route(self, info: InstanceInfo) -> tuple[str, tuple[str, ...]]:
        """(branch, account folders): branch is ``requesting``, ``referring``,
        ``guest`` or ``unknown``."""
        account = self.account_for(info.requesting_physician)
        if account is not None:
            return "requesting", (safe_component(account),)
        account = self.account_for(info.referring_physician)
        if account is not None:
            return "referring", (safe_component(account),)
        for physician in (info.requesting_physician, info.referring_physician):
            if person_groups(physician):
                return "guest", (self.guest, safe_component(person_display(physician)))
        return "unknown", (self.unknown,)

    # -- inside the account -------------------------------------------------

    def count(self, info: InstanceInfo) -> int:
        """InstanceNumber, or the arrival order of this instance in its series."""
        if info.instance_number is not None:
            return info.instance_number
        key = info.series_instance_uid or f"{info.study_instance_uid}\x00{info.series_number}"
        with self._lock:
            number = self._counts.pop(key, 0) + 1
            self._counts[key] = number  # most recent last
            if len(self._counts) > self.MAX_COUNTED_SERIES:
                self._counts.popitem(last=False)
        return number

    def relative_text(self, info: InstanceInfo) -> str:
        _, account = self.route(info)
        series = info.series_number if info.series_number is not None else 0
        echo = int_or_none(info.echo_numbers) or 0
        return _path(
            *account,
            _joined(
                _required(info.study_date),
                _optional(person_display(info.patient_name)),
                safe_choice(info.accession_number, info.study_instance_uid),
            ),
            "Dicom",
            _joined(str(series), _optional(info.series_description)),
            bound_name(f"{series:03d}-{echo:03d}-{self.count(info):06d}", ".dcm"),
        )


NAMING_SCHEMES: dict[str, Callable[..., NamingScheme]] = {
    "hierarchical": HierarchicalNaming,
    "flat": FlatNaming,
    "date-based": DateBasedNaming,
    "physician": PhysicianNaming,
    "template": TemplateNaming,
}
DEFAULT_NAMING = "hierarchical"


def make_naming(name: str, **options: object) -> NamingScheme:
    """The naming scheme called ``name`` (``storage.naming``), built with its
    options: ``date-based``: utc; ``physician``: accounts_root, accounts,
    guest, unknown, match_family_name; ``template``: pattern. ValueError for
    an unknown name, an option the scheme does not take, or a bad template."""
    scheme = NAMING_SCHEMES.get(name)
    if scheme is None:
        raise ValueError(f"unknown naming scheme {name!r}; valid names: {', '.join(NAMING_SCHEMES)}")
    signature = inspect.signature(scheme)
    try:
        signature.bind(**options)
    except TypeError:
        accepted = ", ".join(signature.parameters) or "none"
        raise ValueError(
            f"naming scheme {name!r} got options {sorted(options)}; it accepts: {accepted}"
        ) from None
    return scheme(**options)
