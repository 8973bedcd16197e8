"""SOP class and transfer syntax expansion for negotiation filters."""

from __future__ import annotations

import subprocess
import sys

import pydicom.uid
import pytest
from pynetdicom.presentation import AllStoragePresentationContexts

from fastscp.sopclasses import (
    MODALITY_SHORTHANDS,
    TRANSFER_SYNTAX_GROUPS,
    _ts_registry,
    expand_accept,
    expand_transfer_syntaxes,
    is_valid_uid,
    sop_class_name,
    storage_sop_class_uids,
    storage_sop_classes,
    unresolved_shorthand_keywords,
)

CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"
ENHANCED_CT = "1.2.840.10008.5.1.4.1.1.2.1"
LEGACY_CT = "1.2.840.10008.5.1.4.1.1.2.2"
MR_IMAGE = "1.2.840.10008.5.1.4.1.1.4"
ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
ENHANCED_MR_COLOR = "1.2.840.10008.5.1.4.1.1.4.3"
MR_SPECTROSCOPY = "1.2.840.10008.5.1.4.1.1.4.2"
US_IMAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME = "1.2.840.10008.5.1.4.1.1.3.1"
US_IMAGE_RETIRED = "1.2.840.10008.5.1.4.1.1.6"
US_MULTIFRAME_RETIRED = "1.2.840.10008.5.1.4.1.1.3"
KO = "1.2.840.10008.5.1.4.1.1.88.59"
GSPS = "1.2.840.10008.5.1.4.1.1.11.1"
BASIC_TEXT_SR = "1.2.840.10008.5.1.4.1.1.88.11"
PDF = "1.2.840.10008.5.1.4.1.1.104.1"


def test_ct_is_all_ct_storage_classes() -> None:
    assert expand_accept("CT") == {CT_IMAGE, ENHANCED_CT, LEGACY_CT}


def test_mr_and_us() -> None:
    mr = expand_accept("MR")
    assert {MR_IMAGE, ENHANCED_MR, ENHANCED_MR_COLOR, MR_SPECTROSCOPY} <= mr
    assert CT_IMAGE not in mr
    assert {US_IMAGE, US_MULTIFRAME, US_IMAGE_RETIRED, US_MULTIFRAME_RETIRED} <= expand_accept("US")


def test_guide_accept_string() -> None:
    accepted = expand_accept("CT,MR,US")
    assert accepted == expand_accept("CT") | expand_accept("MR") | expand_accept("US")
    assert ENHANCED_CT in accepted and "1.2.840.10008.5.1.4.1.1.1" not in accepted  # no CR
    assert expand_accept(" ct , mr ") == expand_accept(["CT", "MR"])


def test_names_as_pydicom_spells_them_keywords_and_variants() -> None:
    assert expand_accept(["CT Image Storage"]) == {CT_IMAGE}
    assert expand_accept("Enhanced CT Image Storage") == {ENHANCED_CT}
    assert expand_accept(["ct image storage"]) == {CT_IMAGE}
    assert expand_accept(["CTImageStorage"]) == {CT_IMAGE}
    assert expand_accept(["Ultrasound Multi-frame Image Storage"]) == {US_MULTIFRAME}
    assert expand_accept(["US Image Storage"]) == {US_IMAGE}  # the guide's spelling: the current class
    assert expand_accept(["Ultrasound Image Storage (Retired)"]) == {US_IMAGE_RETIRED}
    assert expand_accept(["Digital X-Ray Image Storage - For Presentation"]) == {"1.2.840.10008.5.1.4.1.1.1.1"}


def test_dotted_uids() -> None:
    assert expand_accept([CT_IMAGE, MR_IMAGE]) == {CT_IMAGE, MR_IMAGE}
    private = "1.3.6.1.4.1.99999.1.2.3"
    assert expand_accept([private]) == {private}  # vendor-private storage class
    with pytest.raises(ValueError, match="Transfer Syntax UID, not a storage SOP class"):
        expand_accept(["1.2.840.10008.1.2.1"])
    with pytest.raises(ValueError, match="not a valid UID"):
        expand_accept(["1.2.840.010008"])
    assert is_valid_uid("1.2.3") and not is_valid_uid("1." + "1" * 70) and not is_valid_uid("1..2")


def test_bad_entry_lists_valid_choices() -> None:
    with pytest.raises(ValueError) as info:
        expand_accept("CT,MRI")
    message = str(info.value)
    assert "'MRI'" in message
    for shorthand in MODALITY_SHORTHANDS:
        assert shorthand in message
    assert "dotted UID" in message and "all" in message
    with pytest.raises(ValueError, match="Did you mean 'CT Image Storage'"):
        expand_accept(["CT Imag Storage"])
    with pytest.raises(ValueError):
        expand_accept("")


def test_every_shorthand_resolves_and_stays_within_storage() -> None:
    assert unresolved_shorthand_keywords() == []
    storage = storage_sop_class_uids()
    for shorthand in MODALITY_SHORTHANDS:
        uids = expand_accept(shorthand)
        assert uids, shorthand
        assert uids <= storage, shorthand


def test_group_boundaries() -> None:
    assert KO not in expand_accept("SR") and BASIC_TEXT_SR in expand_accept("SR")
    assert expand_accept("KO") == {KO}
    assert GSPS in expand_accept("PR")
    assert expand_accept("DOC") == {PDF, "1.2.840.10008.5.1.4.1.1.104.2"}
    assert expand_accept("OT") > expand_accept("SC")
    assert not expand_accept("VL") & (expand_accept("OP") | expand_accept("OPT"))
    assert expand_accept("ECG") < expand_accept("WAVEFORM")
    assert "1.2.840.10008.5.1.4.1.1.481.5" in expand_accept("RT")  # RT Plan


def test_all_storage_classes() -> None:
    pynetdicom_storage = {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts}
    everything = expand_accept("all")
    assert everything == storage_sop_class_uids()
    assert pynetdicom_storage <= everything
    assert US_IMAGE_RETIRED in everything
    assert storage_sop_class_uids(include_retired=False) == pynetdicom_storage
    classes = storage_sop_classes()
    assert classes[CT_IMAGE].name == "CT Image Storage" and classes[CT_IMAGE].keyword == "CTImageStorage"
    assert classes[US_IMAGE_RETIRED].retired
    assert sop_class_name(ENHANCED_CT) == "Enhanced CT Image Storage"
    assert sop_class_name("1.2.3.4") == "1.2.3.4"
    assert "1.2.840.10008.1.1" not in everything  # Verification is not storage


# --- transfer syntaxes --------------------------------------------------------------

EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"
DEFLATED = "1.2.840.10008.1.2.1.99"
JPEG_BASELINE = "1.2.840.10008.1.2.4.50"
JPEG_LOSSLESS_SV1 = "1.2.840.10008.1.2.4.70"
JPEG_LS_LOSSLESS = "1.2.840.10008.1.2.4.80"
J2K_LOSSLESS = "1.2.840.10008.1.2.4.90"
J2K = "1.2.840.10008.1.2.4.91"
HTJ2K_LOSSLESS = "1.2.840.10008.1.2.4.201"
RLE = "1.2.840.10008.1.2.5"
MPEG2 = "1.2.840.10008.1.2.4.100"
HEVC = "1.2.840.10008.1.2.4.107"


def test_transfer_syntax_groups() -> None:
    assert _ts_registry().missing == ()
    uncompressed = expand_transfer_syntaxes("uncompressed")
    lossless = expand_transfer_syntaxes("lossless")
    lossy = expand_transfer_syntaxes("lossy")
    everything = expand_transfer_syntaxes("all")
    assert {IMPLICIT_LE, EXPLICIT_LE} <= uncompressed < lossless < everything
    assert {DEFLATED, JPEG_LOSSLESS_SV1, JPEG_LS_LOSSLESS, J2K_LOSSLESS, HTJ2K_LOSSLESS, RLE} <= lossless
    assert {JPEG_BASELINE, J2K, MPEG2, HEVC} <= lossy
    assert not lossless & lossy
    assert expand_transfer_syntaxes("video") < lossy
    assert set(TRANSFER_SYNTAX_GROUPS) == {"uncompressed", "lossless", "lossy", "video", "all"}
    # "all" is every syntax pydicom knows except the SMPTE ST 2110 ones,
    # which are for real-time video streams, not C-STORE.
    missing = {str(ts) for ts in pydicom.uid.AllTransferSyntaxes} - everything
    assert all(ts.startswith("1.2.840.10008.1.2.7.") for ts in missing)


def test_transfer_syntax_names_keywords_uids_and_errors() -> None:
    assert expand_transfer_syntaxes(["JPEG Baseline (Process 1)"]) == {JPEG_BASELINE}
    assert expand_transfer_syntaxes(["JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 [Selection Value 1])"]) == {JPEG_LOSSLESS_SV1}
    assert expand_transfer_syntaxes("JPEG2000Lossless,RLELossless") == {J2K_LOSSLESS, RLE}
    assert expand_transfer_syntaxes(["uncompressed", J2K]) == expand_transfer_syntaxes("uncompressed") | {J2K}
    with pytest.raises(ValueError, match="not a transfer syntax pydicom knows"):
        expand_transfer_syntaxes(["1.2.3.4"])
    with pytest.raises(ValueError) as info:
        expand_transfer_syntaxes(["compressed"])
    assert all(group in str(info.value) for group in TRANSFER_SYNTAX_GROUPS)


def test_imports_stay_cheap() -> None:
    code = (
        "import sys, fastscp.sopclasses, fastscp.config, fastscp.access, fastscp.net.tls\n"
        "heavy = [m for m in ('pydicom', 'pynetdicom') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
        "fastscp.config.load_config(None)\n"  # defaults need no lookups
        "fastscp.config.load_config(None, {'accepted_sop_classes': 'CT,MR,US'})\n"
        "assert 'pydicom' not in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_generated_tables_are_what_the_libraries_say() -> None:
    """fastscp/_uid_tables.py (``all``, read without importing pydicom or
    pynetdicom) equals what the installed libraries give; regenerate it with
    uid_tables_source() when they change."""
    from pathlib import Path

    import fastscp
    from fastscp.sopclasses import uid_tables_source

    table = Path(fastscp.__file__).parent / "_uid_tables.py"
    assert table.read_text() == uid_tables_source(), "regenerate fastscp/_uid_tables.py (see uid_tables_source)"
    assert expand_accept("all") == {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts} | {
        uid for uid in expand_accept("all") if uid not in {str(cx.abstract_syntax) for cx in
                                                          AllStoragePresentationContexts}}
    assert {str(cx.abstract_syntax) for cx in AllStoragePresentationContexts} <= expand_accept("all")
