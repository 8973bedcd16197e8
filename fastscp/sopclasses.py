"""Storage SOP classes and transfer syntaxes the receiver will negotiate.

Turns what users write (the guide's ``--accept "CT,MR,US"``, names as pydicom
spells them such as "CT Image Storage", keywords, dotted UIDs) into sets of
UIDs for presentation-context negotiation (PS3.8 Annex D, PS3.4 Annex B).

The storage SOP class list comes from pynetdicom (every Storage Service Class
SOP class of PS3.4 B.5) plus the retired storage classes pydicom still names,
so old archives can be received. Names come from pydicom's UID dictionary
(PS3.6 Annex A). Both libraries are imported only on first use: importing
this module costs nothing, the first lookup about 0.3 s.

Matching is forgiving about spelling: case, spaces, hyphens and punctuation are
ignored, so "CT Image Storage", "ct image storage" and "CTImageStorage" are the
same; common modality abbreviations in names ("US Image Storage" for pydicom's
"Ultrasound Image Storage") are accepted too.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

from ._uid_tables import ALL_STORAGE_SOP_CLASSES, ALL_TRANSFER_SYNTAXES

__all__ = [
    "MODALITY_SHORTHANDS",
    "TRANSFER_SYNTAX_GROUPS",
    "StorageSOPClass",
    "expand_accept",
    "expand_transfer_syntaxes",
    "is_valid_uid",
    "sop_class_name",
    "storage_sop_class_uids",
    "storage_sop_classes",
    "transfer_syntax_name",
]

# A UID per PS3.5 9.1: dot-separated numeric components, no leading zeros
# (except a lone "0"), at most 64 characters.
_UID_RE = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))+$")
_STORAGE_ROOT = "1.2.840.10008.5.1.4.1.1."

# Modality shorthand -> selectors. A selector is a pydicom/pynetdicom keyword,
# or a UID prefix ending in "." (every storage class under that arc), or
# "-keyword" to take one back out of a prefix. Keywords are checked by a
# test so a library upgrade that renames one cannot silently shrink a group.
_SC = (
    "SecondaryCaptureImageStorage",
    "MultiFrameSingleBitSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleByteSecondaryCaptureImageStorage",
    "MultiFrameGrayscaleWordSecondaryCaptureImageStorage",
    "MultiFrameTrueColorSecondaryCaptureImageStorage",
)
_ECG = (
    "TwelveLeadECGWaveformStorage",
    "GeneralECGWaveformStorage",
    "AmbulatoryECGWaveformStorage",
    "General32bitECGWaveformStorage",
)
_SHORTHANDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "CT": ("computed tomography", (
        "CTImageStorage", "EnhancedCTImageStorage", "LegacyConvertedEnhancedCTImageStorage",
    )),
    "MR": ("magnetic resonance", (
        "MRImageStorage", "EnhancedMRImageStorage", "EnhancedMRColorImageStorage",
        "LegacyConvertedEnhancedMRImageStorage", "MRSpectroscopyStorage",
    )),
    "US": ("ultrasound", (
        "UltrasoundImageStorage", "UltrasoundMultiFrameImageStorage", "EnhancedUSVolumeStorage",
        "UltrasoundImageStorageRetired", "UltrasoundMultiFrameImageStorageRetired",
    )),
    "CR": ("computed radiography", ("ComputedRadiographyImageStorage",)),
    "DX": ("digital radiography", (
        "DigitalXRayImageStorageForPresentation", "DigitalXRayImageStorageForProcessing",
    )),
    "IO": ("intra-oral radiography", (
        "DigitalIntraOralXRayImageStorageForPresentation",
        "DigitalIntraOralXRayImageStorageForProcessing",
    )),
    "MG": ("mammography", (
        "DigitalMammographyXRayImageStorageForPresentation",
        "DigitalMammographyXRayImageStorageForProcessing",
        "BreastTomosynthesisImageStorage",
        "BreastProjectionXRayImageStorageForPresentation",
        "BreastProjectionXRayImageStorageForProcessing",
    )),
    "NM": ("nuclear medicine", ("NuclearMedicineImageStorage", "NuclearMedicineImageStorageRetired")),
    "PT": ("positron emission tomography", (
        "PositronEmissionTomographyImageStorage", "EnhancedPETImageStorage",
        "LegacyConvertedEnhancedPETImageStorage",
    )),
    "XA": ("X-ray angiography", (
        "XRayAngiographicImageStorage", "EnhancedXAImageStorage",
        "XRay3DAngiographicImageStorage", "XRayAngiographicBiPlaneImageStorage",
    )),
    "RF": ("radio fluoroscopy", ("XRayRadiofluoroscopicImageStorage", "EnhancedXRFImageStorage")),
    "SC": ("secondary capture", _SC),
    "OT": ("other (secondary capture and raw data)", (*_SC, "RawDataStorage")),
    "SR": ("structured reports", (_STORAGE_ROOT + "88.", "-KeyObjectSelectionDocumentStorage")),
    "KO": ("key object selection", ("KeyObjectSelectionDocumentStorage",)),
    "PR": ("presentation states", (_STORAGE_ROOT + "11.", _STORAGE_ROOT + "9.100.")),
    "RT": ("radiotherapy", (
        _STORAGE_ROOT + "481.", "RTBeamsDeliveryInstructionStorage",
        "RTBrachyApplicationSetupDeliveryInstructionsStorage",
    )),
    "SEG": ("segmentations", (
        "SegmentationStorage", "SurfaceSegmentationStorage",
        "LabelMapSegmentationStorage", "HeightMapSegmentationStorage",
    )),
    "REG": ("registrations", ("SpatialRegistrationStorage", "DeformableSpatialRegistrationStorage")),
    "ECG": ("electrocardiograms", _ECG),
    "WAVEFORM": ("every waveform (ECG, hemodynamic, EEG, audio ...)", (
        _STORAGE_ROOT + "9.", "-WaveformPresentationStateStorage",
        "-WaveformAcquisitionPresentationStateStorage",
    )),
    "OP": ("ophthalmic photography", (
        "OphthalmicPhotography8BitImageStorage", "OphthalmicPhotography16BitImageStorage",
        "WideFieldOphthalmicPhotographyStereographicProjectionImageStorage",
        "WideFieldOphthalmicPhotography3DCoordinatesImageStorage",
    )),
    "OPT": ("ophthalmic tomography", (
        "OphthalmicTomographyImageStorage",
        "OphthalmicOpticalCoherenceTomographyEnFaceImageStorage",
        "OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage",
    )),
    "ES": ("endoscopy", ("VLEndoscopicImageStorage", "VideoEndoscopicImageStorage")),
    "XC": ("external-camera photography", ("VLPhotographicImageStorage", "VideoPhotographicImageStorage")),
    "SM": ("slide microscopy", ("VLWholeSlideMicroscopyImageStorage", "VLSlideCoordinatesMicroscopicImageStorage")),
    "VL": ("every visible-light image (endoscopy, microscopy, photography)", (
        _STORAGE_ROOT + "77.1.", "-OphthalmicPhotography8BitImageStorage",
        "-OphthalmicPhotography16BitImageStorage", "-StereometricRelationshipStorage",
        "-OphthalmicTomographyImageStorage",
        "-WideFieldOphthalmicPhotographyStereographicProjectionImageStorage",
        "-WideFieldOphthalmicPhotography3DCoordinatesImageStorage",
        "-OphthalmicOpticalCoherenceTomographyEnFaceImageStorage",
        "-OphthlamicOpticalCoherenceTomographyBscanVolumeAnalysisStorage",
    )),
    "DOC": ("encapsulated documents (PDF, CDA)", ("EncapsulatedPDFStorage", "EncapsulatedCDAStorage")),
    "M3D": ("3D models (STL, OBJ, MTL)", (
        "EncapsulatedSTLStorage", "EncapsulatedOBJStorage", "EncapsulatedMTLStorage",
    )),
    "PM": ("parametric maps", ("ParametricMapStorage",)),
}

# Shorthand -> one-line description, for help texts and error messages.
MODALITY_SHORTHANDS: dict[str, str] = {k: v[0] for k, v in _SHORTHANDS.items()}
_ALL = "ALL"

# Words in pydicom's names that users commonly abbreviate; each name also
# answers to its abbreviated spelling ("US Image Storage").
_ABBREVIATIONS = (
    ("Ultrasound", "US"),
    ("Positron Emission Tomography", "PET"),
    ("Nuclear Medicine", "NM"),
    ("Secondary Capture", "SC"),
    ("Computed Radiography", "CR"),
    ("X-Ray Angiographic", "XA"),
    ("X-Ray Radiofluoroscopic", "XRF"),
    ("Digital X-Ray", "DX"),
)


@dataclass(frozen=True, slots=True)
class StorageSOPClass:
    uid: str
    name: str  # as pydicom spells it ("CT Image Storage"); from the keyword if pydicom lacks it
    keyword: str
    retired: bool


def _norm(text: str) -> str:
    return re.sub(r"[^0-9a-z]", "", text.casefold())


def is_valid_uid(text: str) -> bool:
    """True when ``text`` is a syntactically valid DICOM UID (PS3.5 9.1)."""
    return len(text) <= 64 and _UID_RE.match(text) is not None


@dataclass(frozen=True)
class _Registry:
    classes: dict[str, StorageSOPClass]  # uid -> class
    by_norm: dict[str, str]  # normalised name/keyword/alias -> uid
    by_keyword: dict[str, str]
    groups: dict[str, frozenset[str]]  # modality shorthand -> uids
    other_uids: dict[str, str]  # known non-storage UIDs -> their kind (for messages)


@functools.cache
def _registry() -> _Registry:
    import pynetdicom.sop_class as sop_class
    from pydicom._uid_dict import UID_dictionary
    from pynetdicom.presentation import AllStoragePresentationContexts

    current = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    keywords: dict[str, list[str]] = {}
    for attr, value in vars(sop_class).items():
        if isinstance(value, str) and value in current and attr[:1].isupper():
            keywords.setdefault(str(value), []).append(attr)

    classes: dict[str, StorageSOPClass] = {}
    by_norm: dict[str, str] = {}
    by_keyword: dict[str, str] = {}

    def add_alias(alias: str, uid: str) -> None:
        by_norm.setdefault(_norm(alias), uid)

    # Current classes first so that a name shared with a retired class
    # ("Ultrasound Image Storage") means the current one.
    for uid in sorted(current, key=_uid_sort_key):
        entry = UID_dictionary.get(uid)
        kws = keywords.get(uid, [])
        keyword = entry[4] if entry and entry[4] else (kws[0] if kws else uid)
        name = entry[0] if entry and entry[0] else _words(keyword)
        classes[uid] = StorageSOPClass(uid, name, keyword, False)
        for kw in [keyword, *kws]:
            by_keyword.setdefault(kw, uid)
            add_alias(kw, uid)
        add_alias(name, uid)
    for uid, entry in UID_dictionary.items():
        name, kind, _info, retired, keyword = entry
        if (
            uid.startswith(_STORAGE_ROOT) and kind == "SOP Class" and retired
            and "Storage" in name and uid not in classes
        ):
            classes[uid] = StorageSOPClass(uid, name, keyword, True)
            by_keyword.setdefault(keyword, uid)
            add_alias(keyword, uid)
            add_alias(name + " (Retired)", uid)
            add_alias(name, uid)
    for uid, cls in list(classes.items()):
        for long, short in _ABBREVIATIONS:
            if long in cls.name:
                add_alias(cls.name.replace(long, short), uid)
                if cls.retired:
                    add_alias(cls.name.replace(long, short) + " (Retired)", uid)

    groups: dict[str, frozenset[str]] = {}
    for shorthand, (_desc, selectors) in _SHORTHANDS.items():
        uids: set[str] = set()
        for sel in selectors:
            if sel.endswith("."):
                uids.update(u for u in classes if u.startswith(sel))
            elif sel.startswith("-"):
                uids.discard(by_keyword.get(sel[1:], ""))
            elif sel in by_keyword:
                uids.add(by_keyword[sel])
        groups[shorthand] = frozenset(uids)

    other = {
        uid: entry[1] for uid, entry in UID_dictionary.items() if uid not in classes
    }
    return _Registry(classes, by_norm, by_keyword, groups, other)


def _words(keyword: str) -> str:
    """A readable name for a class pydicom does not name yet, from its
    keyword: "WaveformPresentationStateStorage" -> "Waveform Presentation
    State Storage"."""
    return re.sub(r"(?<=[a-z0-9])(?=[A-Z])", " ", keyword)


def _uid_sort_key(uid: str) -> tuple[int, ...]:
    return tuple(int(part) for part in uid.split("."))


def unresolved_shorthand_keywords() -> list[str]:
    """Keywords named in the shorthand table that the installed pydicom and
    pynetdicom do not know (should be empty; a test keeps it so)."""
    reg = _registry()
    return [
        sel.lstrip("-")
        for _desc, selectors in _SHORTHANDS.values()
        for sel in selectors
        if not sel.endswith(".") and sel.lstrip("-") not in reg.by_keyword
    ]


def storage_sop_classes() -> dict[str, StorageSOPClass]:
    """Every storage SOP class known (current and retired), by UID."""
    return dict(_registry().classes)


def storage_sop_class_uids(include_retired: bool = True) -> frozenset[str]:
    return frozenset(
        uid for uid, cls in _registry().classes.items() if include_retired or not cls.retired
    )


def sop_class_name(uid: str) -> str:
    """pydicom's name for a storage SOP class UID, or the UID itself."""
    cls = _registry().classes.get(uid)
    return cls.name if cls else uid


def _choices_message(item: str, kind: str, names: Iterable[str], groups: Iterable[str]) -> str:
    import difflib  # only for a bad value's suggestion

    close = difflib.get_close_matches(item, list(names), n=3, cutoff=0.6)
    hint = f" Did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return (
        f"unknown {kind} {item!r}.{hint} Valid choices: {', '.join(groups)}; "
        f"or a {kind} name as pydicom spells it, its keyword, or a dotted UID"
    )


@functools.lru_cache(maxsize=256)
def _expand_sop_item(item: str) -> frozenset[str]:
    text = item.strip()
    if not text:
        raise ValueError("empty SOP class entry")
    upper = text.upper()
    if upper == _ALL:  # the default: from the generated table, without importing pynetdicom
        return ALL_STORAGE_SOP_CLASSES
    reg = _registry()
    if upper in reg.groups:
        return reg.groups[upper]
    uid = reg.by_norm.get(_norm(text))
    if uid is not None:
        return frozenset((uid,))
    if text[0].isdigit() and is_valid_uid(text):
        kind = reg.other_uids.get(text)
        if kind is not None:
            raise ValueError(f"{text} is a {kind} UID, not a storage SOP class")
        # Not in the dictionaries: a private or newer storage class. Allowed
        # so that vendor-private objects can be received when listed.
        return frozenset((text,))
    if text[0].isdigit():
        raise ValueError(f"{text!r} is not a valid UID (digits and dots, at most 64 characters)")
    names = [cls.name for cls in reg.classes.values()]
    raise ValueError(_choices_message(text, "SOP class", names, ["all", *_SHORTHANDS]))


def expand_accept(spec: str | Iterable[str]) -> frozenset[str]:
    """SOP class UIDs for an accept specification.

    ``spec`` is a comma-separated string (the guide's ``--accept "CT,MR,US"``)
    or a list of entries. Each entry is ``all``, a modality shorthand (see
    ``MODALITY_SHORTHANDS``: CT means CT Image, Enhanced CT and Legacy
    Converted Enhanced CT Image Storage), a SOP class name or keyword, or a
    dotted UID. Raises ValueError naming the bad entry and the valid choices.
    """
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if not items or all(not str(i).strip() for i in items):
        raise ValueError("no SOP classes given")
    result: set[str] = set()
    for item in items:
        result |= _expand_sop_item(str(item))
    return frozenset(result)


# --- transfer syntaxes (PS3.5 Section 10, Annex A) --------------------------

_UNCOMPRESSED = (
    "ImplicitVRLittleEndian", "ExplicitVRLittleEndian", "ExplicitVRBigEndian",
    "EncapsulatedUncompressedExplicitVRLittleEndian",
)
_LOSSLESS_COMPRESSED = (
    "DeflatedExplicitVRLittleEndian", "JPEGLossless", "JPEGLosslessSV1",
    "JPEGLosslessNonHierarchical15", "JPEGLosslessHierarchical28", "JPEGLosslessHierarchical29",
    "JPEGLSLossless", "JPEG2000Lossless", "JPEG2000MCLossless", "HTJ2KLossless",
    "HTJ2KLosslessRPCL", "RLELossless",
)
# Syntaxes that may (not must) lose information: JPEG 2000 and HTJ2K without
# the "Lossless Only" restriction are here, since the SCP cannot know.
_LOSSY = (
    "JPEGBaseline8Bit", "JPEGExtended12Bit", "JPEGExtended35",
    "JPEGSpectralSelectionNonHierarchical68", "JPEGSpectralSelectionNonHierarchical79",
    "JPEGFullProgressionNonHierarchical1012", "JPEGFullProgressionNonHierarchical1113",
    "JPEGExtendedHierarchical1618", "JPEGExtendedHierarchical1719",
    "JPEGSpectralSelectionHierarchical2022", "JPEGSpectralSelectionHierarchical2123",
    "JPEGFullProgressionHierarchical2426", "JPEGFullProgressionHierarchical2527",
    "JPEGLSNearLossless", "JPEG2000", "JPEG2000MC", "HTJ2K",
)
_VIDEO = (
    "MPEG2MPML", "MPEG2MPMLF", "MPEG2MPHL", "MPEG2MPHLF", "MPEG4HP41", "MPEG4HP41F",
    "MPEG4HP41BD", "MPEG4HP41BDF", "MPEG4HP422D", "MPEG4HP422DF", "MPEG4HP423D",
    "MPEG4HP423DF", "MPEG4HP42STEREO", "MPEG4HP42STEREOF", "HEVCMP51", "HEVCM10P51",
)
# Pixel data held elsewhere, referenced by a JPIP URL (PS3.5 A.6).
_REFERENCED = ("JPIPReferenced", "JPIPReferencedDeflate", "JPIPHTJ2KReferenced", "JPIPHTJ2KReferencedDeflate")

_TS_GROUP_KEYWORDS: dict[str, tuple[str, ...]] = {
    "uncompressed": _UNCOMPRESSED,
    "lossless": _UNCOMPRESSED + _LOSSLESS_COMPRESSED,
    "lossy": _LOSSY + _VIDEO,
    "video": _VIDEO,
    "all": _UNCOMPRESSED + _LOSSLESS_COMPRESSED + _LOSSY + _VIDEO + _REFERENCED,
}
TRANSFER_SYNTAX_GROUPS: tuple[str, ...] = tuple(_TS_GROUP_KEYWORDS)


@dataclass(frozen=True)
class _TSRegistry:
    names: dict[str, str]  # uid -> name
    by_norm: dict[str, str]
    groups: dict[str, frozenset[str]]
    missing: tuple[str, ...]  # group keywords pydicom did not know


@functools.cache
def _ts_registry() -> _TSRegistry:
    from pydicom._uid_dict import UID_dictionary

    names: dict[str, str] = {}
    by_norm: dict[str, str] = {}
    by_keyword: dict[str, str] = {}
    for uid, (name, kind, _info, _retired, keyword) in UID_dictionary.items():
        if kind != "Transfer Syntax":
            continue
        names[uid] = name
        by_keyword[keyword] = uid
        by_norm.setdefault(_norm(keyword), uid)
        by_norm.setdefault(_norm(name), uid)
    missing: list[str] = []
    groups: dict[str, frozenset[str]] = {}
    for group, kws in _TS_GROUP_KEYWORDS.items():
        missing += [kw for kw in kws if kw not in by_keyword]
        groups[group] = frozenset(by_keyword[kw] for kw in kws if kw in by_keyword)
    return _TSRegistry(names, by_norm, groups, tuple(sorted(set(missing))))


def transfer_syntax_name(uid: str) -> str:
    return _ts_registry().names.get(uid, uid)


@functools.lru_cache(maxsize=256)
def _expand_ts_item(item: str) -> frozenset[str]:
    text = item.strip()
    if text.lower() == "all":  # the default: from the generated table, without importing pydicom
        return ALL_TRANSFER_SYNTAXES
    reg = _ts_registry()
    if text.lower() in reg.groups:
        return reg.groups[text.lower()]
    if text in reg.names:
        return frozenset((text,))
    uid = reg.by_norm.get(_norm(text)) if text else None
    if uid is not None:
        return frozenset((uid,))
    if text[:1].isdigit() and is_valid_uid(text):
        raise ValueError(
            f"{text} is not a transfer syntax pydicom knows; the receiver must "
            "understand a syntax's encoding to read instance headers"
        )
    raise ValueError(_choices_message(text, "transfer syntax", reg.names.values(), TRANSFER_SYNTAX_GROUPS))


def expand_transfer_syntaxes(spec: str | Iterable[str]) -> frozenset[str]:
    """Transfer syntax UIDs for a specification: group names (``uncompressed``,
    ``lossless``, ``lossy``, ``video``, ``all``), names as pydicom spells them,
    keywords (``JPEG2000Lossless``) or UIDs. A string is split on commas (use
    keywords there, as some names contain commas)."""
    items = spec.split(",") if isinstance(spec, str) else list(spec)
    if not items or all(not str(i).strip() for i in items):
        raise ValueError("no transfer syntaxes given")
    result: set[str] = set()
    for item in items:
        result |= _expand_ts_item(str(item))
    return frozenset(result)


def uid_tables_source() -> str:
    """The text of ``_uid_tables.py``: ``all`` SOP classes and transfer
    syntaxes as the installed pydicom and pynetdicom give them. The default
    configuration accepts ``all`` of both; reading them from that table
    keeps pydicom, pynetdicom and numpy (about 30 MB) out of a receiver
    that never needs them. tests/test_sopclasses.py fails when the table
    and the libraries part; regenerate it with
    ``python -c "from fastscp.sopclasses import uid_tables_source as s; print(s(), end='')" \
    > fastscp/_uid_tables.py``."""
    def block(name: str, uids: Iterable[str]) -> str:
        lines = "".join(f'    "{uid}",\n' for uid in sorted(uids, key=_uid_sort_key))
        return f"{name} = frozenset({{\n{lines}}})\n"

    return ('"""Generated by ``sopclasses.uid_tables_source()``: do not edit."""\n\n'
            + block("ALL_STORAGE_SOP_CLASSES", _registry().classes) + "\n"
            + block("ALL_TRANSFER_SYNTAXES", _ts_registry().groups["all"]))
